"""The benchmark's own code, run small so that it cannot rot: `python -m bench --smoke` in-process.

Only that every figure is there is checked; the goals are for the full run (`python -m bench`) on
a quiet machine, see the README's Benchmarks section.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.core import run_benchmarks
from bench.plan import PLANS, STAGES
from bench.report import table, write_results
from tests.rig.rig import Rig

FIGURES = {
    "large_file": (
        "app_s",
        "old_way_s",
        "download_only_s",
        "upload_only_s",
        "floor_s",
        "app_vs_old_way",
        "app_vs_floor",
        "floor_vs_old_way",
        "app_MiB_per_s",
        "app_storage_max_in_flight",
        "cpu_share_during_app.app",
        "cpu_share_during_app.azurite",
        "cpu_share_during_app.emulator",
    ),
    "memory": (
        "max_growth_MiB",
        "spread_MiB",
        "growth_per_GiB_of_file_MiB",
        "app_cpu_s_per_GiB",
        "expected_MiB",
    ),
    "many_files": (
        "concurrent_s",
        "sequential_s",
        "upload_only_s",
        "concurrent_vs_sequential",
        "concurrent_vs_upload_only",
        "upload_only_vs_sequential",
        "storage_max_in_flight.concurrent",
        "storage_max_in_flight.sequential",
        "cpu_share.concurrent.azurite",
    ),
    "concurrent_runs": (
        "wall_s",
        "runs_per_s",
        "run_latency_median_s",
        "run_latency_max_s",
        "overhead_past_model_median_s",
    ),
    "per_run": (
        "median_s",
        "model_requests_per_run",
        "storage_requests_per_run",
        "identity_requests_after_first_run",
        "delegation_key_requests_after_first_run",
        "first_run.model_requests",
        "first_run.identity_requests",
        "first_run.storage_requests",
        "first_run.delegation_key_requests",
    ),
    "cold_start": ("app_import_s", "dependencies_import_s", "app_vs_dependencies"),
    "memory_budget": (
        "budget_growth_MiB",
        "unlimited_growth_MiB",
        "budget_peak_MiB",
        "budget_waits",
        "budget_wall_s",
        "unlimited_wall_s",
        "wall_vs_unlimited",
        "bytes_verified",
        "bytes_unverified",
    ),
    "network": (
        "proxy_bytes",
        "latency_ms",
        "mib_per_s",
        "large_file.app_s",
        "large_file.old_way_s",
        "large_file.download_only_s",
        "large_file.upload_only_s",
        "large_file.app_vs_old_way",
        "large_file.app_vs_floor",
        "many_files.concurrent_s",
        "many_files.sequential_s",
        "many_files.concurrent_vs_sequential",
    ),
    "uploader": (
        "shaped.ours_s",
        "shaped.sdk_s",
        "shaped.ours_growth_MiB",
        "shaped.sdk_growth_MiB",
    ),
    "inputs": ("max_growth_MiB", "spread_MiB", "app_MiB_per_s", "app_cpu_s_per_GiB"),
}
GOALS = {
    "large_file.app_vs_old_way",
    "large_file.app_vs_floor",
    "memory.max_growth_MiB",
    "memory.spread_MiB",
    "many_files.concurrent_vs_sequential",
    "concurrent_runs.wall_s",
    "per_run.identity_requests_after_first_run",
    "per_run.delegation_key_requests_after_first_run",
    "cold_start.app_vs_dependencies",
    "memory_budget.budget_growth_MiB",
    "memory_budget.bytes_unverified",
    "memory_budget.wall_vs_unlimited",
    "network.large_file.app_vs_old_way",
    "network.large_file.app_vs_floor",
    "network.many_files.concurrent_vs_sequential",
    "inputs.max_growth_MiB",
    "inputs.spread_MiB",
}


def figure(results: dict[str, Any], dotted: str) -> Any:
    value: Any = results
    for key in dotted.split("."):
        value = value[key]
    return value


def is_figure(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


async def test_the_smoke_run_reports_every_figure(rig: Rig, tmp_path: Path) -> None:
    plan = PLANS["smoke"]
    results = await run_benchmarks(rig, plan)

    data = json.loads(write_results(results, tmp_path / "smoke.json").read_text())
    assert set(STAGES) <= set(data) and set(FIGURES) == set(STAGES)
    dotted = [f"{stage}.{name}" for stage, names in FIGURES.items() for name in names]
    missing = [name for name in dotted if not is_figure(figure(data, name))]
    assert not missing, missing
    assert [s["bytes"] for s in data["memory"]["sizes"]] == list(plan.memory_sizes)
    assert all(is_figure(s["rss_growth_bytes"]) and is_figure(s["copy_s"]) for s in data["memory"]["sizes"])
    assert {g["figure"] for g in data["goals"]} == GOALS
    assert all(isinstance(g["met"], bool) and is_figure(g["value"]) for g in data["goals"])
    assert data["machine"]["nproc"] >= 1 and data["tuning"]["BLOCK_BYTES"] > 0
    # The new measurements did their work: copies waited for the budget, which they never exceeded,
    # every byte of both modes was read back, and the shaped stages really went through the proxy.
    budget = data["memory_budget"]
    assert budget["budget_waits"] > 0 and budget["budget_peak_MiB"] <= plan.budget_memory_mb
    assert budget["bytes_unverified"] == 0 and budget["bytes_verified"] == budget["bytes_expected"] > 0
    # the app's copy alone moves the large file twice through the proxy (download and upload)
    assert data["network"]["proxy_bytes"] > 2 * plan.net_large_bytes and data["network"]["proxy_connections"] > 0
    assert data["uploader"]["shaped"]["proxy_bytes"] > 2 * plan.uploader_bytes
    # each input went up in parts through the Uploads API (its bytes checked against the emulator's)
    assert [(s["bytes"], s["parts"]) for s in data["inputs"]["sizes"]] == [
        (size, -(-size // data["inputs"]["part_bytes"])) for size in plan.input_sizes
    ]
    assert all(is_figure(s["rss_growth_bytes"]) and is_figure(s["upload_s"]) for s in data["inputs"]["sizes"])

    printed = table(data)
    headings = (
        "1. large file",
        "2. memory",
        "3. ",
        "4. ",
        "5. per run",
        "6. cold start",
        "7. ",
        "8. network",
        "9. uploader",
        "10. input upload",
    )
    for heading in (*headings, "goals:"):
        assert heading in printed
