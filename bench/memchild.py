"""One copy in a fresh process, for its peak RSS (run by `bench.copies.memory`, one process per size).

    python -m bench.memchild --warm-prompt W --prompt P --bytes N --sha256 H [--set NAME=VALUE ...]

The parent starts it with the app's environment (identity for storage and model) and SSL_CERT_FILE
already set. A first small run loads the code and fetches tokens, the delegation key and
connections, as in a worker that has served a request; then the peak is reset (Linux
/proc/self/clear_refs, value 5) and the measured run copies one N-byte file. Prints one JSON line.
The emulator and Azurite are other processes: their memory does not count.

`--set` overrides a tuning constant in this process only (`bench.tune` compares variants):
BLOCK_BYTES, BLOCKS_IN_FLIGHT, SEND_SLICE_BYTES (blob_upload) or DOWNLOAD_CHUNK_BYTES (responses_api).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import threading
import time
from typing import Any


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


class _Sampler(threading.Thread):
    """Fallback when the peak cannot be reset: sample VmRSS every millisecond."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _status_bytes("VmRSS")
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.001):
            self.peak = max(self.peak, _status_bytes("VmRSS"))

    def finish(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, _status_bytes("VmRSS"))


class PeakRss:
    """Peak RSS growth over a `with` block (what `bench.loadchild` and `bench.uploadchild` measure)."""

    def __enter__(self) -> PeakRss:
        gc.collect()
        self.exact = _reset_peak()
        self._sampler = None if self.exact else _Sampler()
        if self._sampler is not None:
            self._sampler.start()
        self.before = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.peak = _status_bytes("VmHWM") if self._sampler is None else self._sampler.finish()
        self.growth = self.peak - self.before
        self.peak_from = "VmHWM after clear_refs" if self.exact else "VmRSS sampled every 1 ms"


TUNABLE = {
    "BLOCK_BYTES": "blob_upload",
    "BLOCKS_IN_FLIGHT": "blob_upload",
    "SEND_SLICE_BYTES": "blob_upload",
    "DOWNLOAD_CHUNK_BYTES": "responses_api",
}


def _apply(overrides: list[str]) -> dict[str, int]:
    import importlib

    applied = {}
    for item in overrides:
        name, _, value = item.partition("=")
        module = importlib.import_module(f"code_interpreter_files.{TUNABLE[name]}")
        setattr(module, name, int(value))
        applied[name] = int(value)
    return applied


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from bench.app import check_files, post_run
    from code_interpreter_files.services import get_services

    tuning = _apply(args.set)

    await post_run(args.warm_prompt)
    with PeakRss() as rss:
        started, cpu_started = time.perf_counter(), time.process_time()
        answer = await post_run(args.prompt)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    after = _status_bytes("VmRSS")
    check_files(answer, [{"bytes": args.bytes, "sha256": args.sha256}])
    await (await get_services()).aclose()
    return {
        "bytes": args.bytes,
        "rss_before_bytes": rss.before,
        "rss_peak_bytes": rss.peak,
        "rss_after_bytes": after,
        "rss_growth_bytes": rss.growth,
        "peak_from": rss.peak_from,
        "copy_s": elapsed,
        "cpu_s": cpu,
        "tuning": tuning,
        "response_id": answer["response_id"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--warm-prompt", required=True)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--bytes", type=int, required=True)
    parser.add_argument("--sha256", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help=", ".join(TUNABLE))
    print(json.dumps(asyncio.run(measure(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
