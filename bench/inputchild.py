"""One blob input uploaded to Azure OpenAI in a fresh process, for its peak RSS (run by
`bench.runs.inputs_stage`, one process per size).

    python -m bench.inputchild --warm-blob W --blob B

The parent puts both blobs into INPUT_CONTAINER and sets the app's environment (identity for
storage and model). The warm-up uploads W through the same path (it is over one part, so the
Uploads API's code, tokens and connections are ready), its file is deleted; then the peak is reset
and `inputs.upload_inputs` uploads B. Prints one JSON line; the parent checks the bytes against the
emulator's record and deletes the file. The emulator and Azurite are other processes: their memory
does not count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from bench.memchild import PeakRss


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from code_interpreter_files import inputs
    from code_interpreter_files.models import BlobInput
    from code_interpreter_files.runlog import RunLog
    from code_interpreter_files.services import get_services

    services = await get_services()
    log = RunLog("bench-inputs", "inputs")
    [warm] = await inputs.upload_inputs(services, [BlobInput(blob=args.warm_blob)], log)
    await inputs.delete_uploaded(services, [warm.file_id], log)
    with PeakRss() as rss:
        started, cpu_started = time.perf_counter(), time.process_time()
        [uploaded] = await inputs.upload_inputs(services, [BlobInput(blob=args.blob)], log)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    await services.aclose()
    return {
        "bytes": uploaded.bytes,
        "file_id": uploaded.file_id,
        "sha256": uploaded.sha256,
        "rss_before_bytes": rss.before,
        "rss_peak_bytes": rss.peak,
        "rss_growth_bytes": rss.growth,
        "peak_from": rss.peak_from,
        "upload_s": elapsed,
        "cpu_s": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--warm-blob", required=True)
    parser.add_argument("--blob", required=True)
    print(json.dumps(asyncio.run(measure(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
