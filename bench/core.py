"""A benchmark run: every stage in order, each in its own Azurite, a failed one reported while
the others run; the machine, the tuning, the goals.

Import this only once ``SSL_CERT_FILE`` names the rig's CA: aiohttp reads it once, at import.
"""

from __future__ import annotations

import json
import os
import platform
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import stagerig
from bench.app import REPO_ROOT, RigCpu, app_settings, base_settings, close_services
from bench.catalog import catalog
from bench.copies import large_file, many_files, memory, network, uploader_stage
from bench.latency import queue_latency
from bench.plan import STAGES, Plan
from bench.runs import cold_start, concurrent_runs, inputs_stage, memory_budget, per_run
from code_interpreter_files import blob_upload, responses_api
from code_interpreter_files.settings import load_settings
from tests.rig.rig import Rig

# -- the whole run -------------------------------------------------------------------------------

Measurement = Callable[[Rig, Plan], Awaitable[dict[str, Any]]]
MEASUREMENTS: dict[str, Measurement] = {
    "large_file": large_file,
    "memory": memory,
    "many_files": many_files,
    "concurrent_runs": concurrent_runs,
    "per_run": per_run,
    "cold_start": cold_start,
    "memory_budget": memory_budget,
    "network": network,
    "uploader": uploader_stage,
    "inputs": inputs_stage,
    "queue_latency": queue_latency,
    "catalog": catalog,
}
assert tuple(MEASUREMENTS) == STAGES


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem_kib = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:")), 0)
    azurite = REPO_ROOT / "node_modules" / "azurite" / "package.json"
    packages = ("azure-functions", "azure-storage-blob", "azure-identity", "azure-core", "aiohttp", "openai")
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": models[0] if models else platform.processor(),
        "memory_GiB": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: metadata.version(name) for name in packages},
        "azurite": json.loads(azurite.read_text())["version"] if azurite.exists() else None,
    }


def tuning() -> dict[str, Any]:
    return {
        "BLOCK_BYTES": blob_upload.BLOCK_BYTES,
        "BLOCKS_IN_FLIGHT": blob_upload.BLOCKS_IN_FLIGHT,
        "DOWNLOAD_CHUNK_BYTES": responses_api.DOWNLOAD_CHUNK_BYTES,
        "COPY_CONCURRENCY": load_settings().copy_concurrency,
    }


async def _run_stage(
    rig: Rig, plan: Plan, name: str, measure: Measurement, progress: Callable[[str], None]
) -> dict[str, Any]:
    """One stage in its own Azurite and app clients; a failure is its result, never the run's end."""
    progress(f"[bench] {name} ...")
    started = time.perf_counter()
    try:
        with stagerig.fresh_storage(rig, name), app_settings(rig, **base_settings(plan)):
            try:
                result = await measure(rig, plan)
            finally:
                await close_services()  # no client of this stage outlives its Azurite
    except Exception as error:  # BenchError, a child's failure, the SDKs' errors: report, go on
        result = {"failed": True, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        progress(f"[bench] {name} FAILED after {time.perf_counter() - started:.1f} s:\n{result['traceback']}")
    else:
        progress(f"[bench] {name} done in {time.perf_counter() - started:.1f} s")
    result["stage_s"] = time.perf_counter() - started
    return result


async def run_benchmarks(
    rig: Rig,
    plan: Plan,
    only: tuple[str, ...] = STAGES,
    progress: Callable[[str], None] = lambda line: None,
    measurements: dict[str, Measurement] = MEASUREMENTS,
) -> dict[str, Any]:
    """Every measurement in `only`, in order, each in a fresh Azurite; the results as one JSON-able
    dict. A stage that fails has `failed` and its `error` in its place; the others still run."""
    from bench.goals import goals

    started, loadavg_start = time.perf_counter(), os.getloadavg()
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "plan": asdict(plan),
        "machine": machine(),
    }
    machine_cpu = RigCpu()
    before, times_before = machine_cpu.sample(), os.times()
    emulator_config = rig.emulator.config()
    rig.emulator.config(latency=0.0, chunk_size=1 << 20)  # the emulator's defaults, whatever ran before
    rig.identity.reset()
    stagerig.MEMORY = stagerig.AzuriteMemory()
    try:
        with app_settings(rig, **base_settings(plan)):
            results["tuning"] = tuning()
        for name in only:
            results[name] = await _run_stage(rig, plan, name, measurements[name], progress)
    finally:
        rig.emulator.config(**emulator_config)
        stagerig.MEMORY.close()
    results["azurite"] = stagerig.MEMORY.figures(rig)
    results["goals"] = goals(results)
    results["duration_s"] = time.perf_counter() - started
    after, times = machine_cpu.sample(), os.times()
    children = times.children_user + times.children_system - times_before.children_user - times_before.children_system
    ours = sum(after[name] - before[name] for name in machine_cpu.pids) + children
    results["machine"]["other_load_cpus"] = max(0.0, after["busy"] - before["busy"] - ours) / results["duration_s"]
    results["machine"]["loadavg_start"] = loadavg_start
    results["machine"]["loadavg_end"] = os.getloadavg()
    return results
