"""Tuning sweep: `.venv/bin/python -m bench.tune [--reps N] [--mib N]` (about 4 minutes).

For each variant of BLOCK_BYTES / BLOCKS_IN_FLIGHT / DOWNLOAD_CHUNK_BYTES, one large file copied
by the app in a fresh process (time, the app's CPU, peak RSS growth); then COPY_CONCURRENCY for
many files in one run. Variants alternate within each repetition so that drift hits them alike;
the figures are medians, and times are ratios against the current constants in the same run.
Writes bench/results/tune.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from bench.launch import run_with_services, started_rig
from bench.plan import FULL, MIB
from bench.report import RESULTS_DIR, write_results

CONSTANT_VARIANTS: list[dict[str, int]] = [
    {},  # the current constants: the baseline of the ratios
    {"BLOCKS_IN_FLIGHT": 1},
    {"BLOCKS_IN_FLIGHT": 2},
    {"BLOCKS_IN_FLIGHT": 8},
    {"BLOCK_BYTES": 2 * MIB},
    {"BLOCK_BYTES": 8 * MIB, "BLOCKS_IN_FLIGHT": 2},
    {"BLOCK_BYTES": 8 * MIB},
    {"DOWNLOAD_CHUNK_BYTES": 256 * 1024},
    {"DOWNLOAD_CHUNK_BYTES": 4 * MIB},
    {"SEND_SLICE_BYTES": 64 * 1024},
    {"SEND_SLICE_BYTES": 1 * MIB},
]
COPY_CONCURRENCY_VARIANTS = (1, 2, 4, 8)


def _name(variant: dict[str, int]) -> str:
    return (
        ", ".join(f"{k}={v // MIB if v >= MIB else v}{' MiB' if v >= MIB else ''}" for k, v in variant.items())
        or "current"
    )


async def sweep(rig: Any, reps: int, size: int) -> dict[str, Any]:
    from bench import stagerig
    from bench.app import app_settings, base_settings, close_services, post_run, script, warm
    from bench.copies import copy_in_fresh_process
    from bench.core import tuning

    results: dict[str, Any] = {"bytes": size, "reps": reps}
    with app_settings(rig, **base_settings(FULL)):
        results["current"] = tuning()
    runs: dict[str, list[dict[str, Any]]] = {_name(v): [] for v in CONSTANT_VARIANTS}
    for rep in range(reps):  # each repetition in its own Azurite, which frees what it stored only when it stops
        with stagerig.fresh_storage(rig, f"tune.{rep}"), app_settings(rig, **base_settings(FULL)):
            services = await warm(rig)
            for variant in CONSTANT_VARIANTS:
                child = await copy_in_fresh_process(rig, services, size, variant)
                runs[_name(variant)].append(child)
                print(f"[tune] {rep + 1}/{reps} {_name(variant)}: {child['copy_s']:.2f} s", flush=True)
            await close_services()
    base = statistics.median(c["copy_s"] for c in runs["current"])
    results["constants"] = {
        name: {
            "copy_s": statistics.median(c["copy_s"] for c in children),
            "copy_vs_current": statistics.median(c["copy_s"] for c in children) / base,
            "app_cpu_s": statistics.median(c["cpu_s"] for c in children),
            "rss_growth_MiB": statistics.median(c["rss_growth_bytes"] for c in children) / MIB,
        }
        for name, children in runs.items()
    }

    files = [{"path": f"/mnt/data/part-{i:02d}.bin", "size": FULL.many_file_bytes} for i in range(FULL.many_files)]
    prompt, _ = script(rig, files)
    times: dict[int, list[float]] = {n: [] for n in COPY_CONCURRENCY_VARIANTS}
    for rep in range(reps):
        with stagerig.fresh_storage(rig, f"tune.copy_concurrency.{rep}"):
            for n in COPY_CONCURRENCY_VARIANTS:
                with app_settings(rig, **base_settings(FULL), COPY_CONCURRENCY=n):
                    await warm(rig)
                    started = time.perf_counter()
                    await post_run(prompt)
                    times[n].append(time.perf_counter() - started)
                    print(f"[tune] {rep + 1}/{reps} COPY_CONCURRENCY={n}: {times[n][-1]:.2f} s", flush=True)
            await close_services()
    base = statistics.median(times[1])
    results["copy_concurrency"] = {
        str(n): {"run_s": statistics.median(t), "vs_1": statistics.median(t) / base} for n, t in times.items()
    }
    return results


def table(results: dict[str, Any]) -> str:
    lines = [f"one file of {results['bytes'] // MIB} MiB, fresh process per copy, median of {results['reps']}:"]
    lines.append(f"  {'variant':42} {'time':>7} {'vs current':>10} {'app CPU':>8} {'RSS growth':>11}")
    for name, r in results["constants"].items():
        lines.append(
            f"  {name:42} {r['copy_s']:6.2f}s {r['copy_vs_current']:10.2f} {r['app_cpu_s']:7.2f}s "
            f"{r['rss_growth_MiB']:8.1f} MiB"
        )
    lines.append(f"32 files of 8 MiB in one run, median of {results['reps']}:")
    for n, r in results["copy_concurrency"].items():
        lines.append(f"  COPY_CONCURRENCY={n:<3} {r['run_s']:6.2f} s   vs 1: {r['vs_1']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.tune", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--mib", type=int, default=256, help="size of the one large file")
    args = parser.parse_args(argv)
    with started_rig() as rig:
        results = run_with_services(lambda: sweep(rig, args.reps, args.mib * MIB))
    print(table(results))
    print(f"\nJSON: {write_results(results, RESULTS_DIR / 'tune.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
