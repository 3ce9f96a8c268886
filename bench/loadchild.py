"""Many runs at once in a fresh process, for the memory budget's peak RSS (run by `bench.runs.memory_budget`).

    python -m bench.loadchild --warm-prompt W --prompt P --runs N --specs JSON

The parent sets the app's environment (COPY_MEMORY_MB among it). After one small warm-up run,
the peak is reset and N runs of prompt P are posted at once, as N callers would; then every
copied file is read back from Blob Storage and its sha256 compared (after the peak is taken, so
the check costs no memory in the figure). Prints one JSON line: peak RSS growth, wall time, the
budget's own counters, bytes verified.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from typing import Any

from bench.memchild import PeakRss


async def _verify(services: Any, answers: list[dict[str, Any]]) -> int:
    """Read every copied blob back and compare its sha256 and size with the answer's; bytes read."""
    gate = asyncio.Semaphore(4)
    container = services.store._service.get_container_client(services.settings.output_container)  # the app's client

    async def one(file: dict[str, Any]) -> int:
        async with gate:
            digest, size = hashlib.sha256(), 0
            downloader = await container.download_blob(file["blob"])
            async for chunk in downloader.chunks():
                digest.update(chunk)
                size += len(chunk)
        if (size, digest.hexdigest()) != (file["bytes"], file["sha256"]):
            raise RuntimeError(f"{file['blob']}: stored bytes differ from the answer")
        return size

    return sum(await asyncio.gather(*(one(f) for answer in answers for f in answer["files"])))


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from bench.app import check_files, post_run, post_run_to_the_end
    from code_interpreter_files.services import get_services

    specs = json.loads(args.specs)
    await post_run(args.warm_prompt)
    services = await get_services()
    with PeakRss() as rss:
        started = time.perf_counter()
        answers = await asyncio.gather(*(post_run_to_the_end(args.prompt) for _ in range(args.runs)))
        wall = time.perf_counter() - started
    for answer in answers:
        check_files(answer, specs)
    budget = services.memory_budget
    figures = {
        "runs": args.runs,
        "copy_memory_MiB": budget.limit / (1024 * 1024),
        "wall_s": wall,
        "rss_before_bytes": rss.before,
        "rss_growth_bytes": rss.growth,
        "peak_from": rss.peak_from,
        "budget_peak_bytes": budget.peak,
        "budget_limit_bytes": budget.limit,
        "budget_waits": budget.waits,
        "files": sum(len(a["files"]) for a in answers),
    }
    figures["bytes_verified"] = await _verify(services, answers)
    for answer in answers:
        await services.store.delete_run_blobs(answer["response_id"])
    await services.aclose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--warm-prompt", required=True)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--specs", required=True, help="JSON list of the files' {bytes, sha256}")
    print(json.dumps(asyncio.run(measure(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
