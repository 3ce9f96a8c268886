"""Benchmarks of the function app, one command: `.venv/bin/python -m bench [--smoke | --huge]`.

Starts the test rig (Azurite over HTTPS, the managed identity endpoint, the Responses emulator),
runs every measurement through the app's real code path, prints a table and writes the figures
to bench/results/latest.json (git-ignored). Each stage runs against its own fresh Azurite
(`bench.stagerig`); a stage that fails prints its error, is marked FAILED in the table, and the
others still run; the exit code is 1 if any stage failed. Stage 8 and 9 run the app and its
baselines through a shaping proxy (`bench.netshape`, `--latency-ms`, `--mib-per-s`). About 22
minutes on 2 busy cores; `--smoke` takes about a minute and a half.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from bench.launch import run_with_services, started_rig
from bench.plan import MIB, PLANS, STAGES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds (what the tests run)")
    size.add_argument("--huge", action="store_true", help="a 1 GiB file for the large-file time (default 256 MiB)")
    parser.add_argument("--only", action="append", choices=STAGES, help="run only this stage (repeatable)")
    parser.add_argument(
        "--latency-ms", type=float, default=None, help="simulated network: round trip per request (default 20)"
    )
    parser.add_argument(
        "--mib-per-s", type=float, default=None, help="simulated network: bandwidth per connection (default 40)"
    )
    parser.add_argument("--budget-file-mib", type=int, default=None, help="stage 7: size of each file (default 64)")
    parser.add_argument(
        "--json", type=Path, default=None, help="where to write the figures (default bench/results/latest.json)"
    )
    args = parser.parse_args(argv)
    plan = PLANS["smoke" if args.smoke else "huge" if args.huge else "full"]
    if args.latency_ms is not None:
        plan = replace(plan, latency_ms=args.latency_ms)
    if args.budget_file_mib is not None:
        plan = replace(plan, budget_file_bytes=args.budget_file_mib * MIB)
    if args.mib_per_s is not None:
        plan = replace(plan, mib_per_s=args.mib_per_s)
    only = tuple(stage for stage in STAGES if stage in args.only) if args.only else STAGES

    print(f"[bench] starting the rig (plan {plan.name})", flush=True)
    with started_rig() as rig:
        from bench.core import run_benchmarks
        from bench.goals import failed_stages
        from bench.report import LATEST, table, write_results

        results = run_with_services(
            lambda: run_benchmarks(rig, plan, only, progress=lambda line: print(line, flush=True))
        )
    print()
    print(table(results))
    path = write_results(results, args.json or LATEST)
    print(f"\nJSON: {path}")
    return 1 if failed_stages(results) else 0  # a missed goal is a figure; a failed stage is an error


if __name__ == "__main__":
    sys.exit(main())
