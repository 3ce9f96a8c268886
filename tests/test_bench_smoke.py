"""The benchmark's own code, run small so that it cannot rot: `python -m bench --smoke` in-process.

Only that every figure is there is checked, and that the bench cleans up after itself (each stage
in its own Azurite, well under its store's cap, a failed stage reported while the others run); the
goals are for the full run (`python -m bench`) on a quiet machine, see docs/benchmarks.md.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from bench import stagerig
from bench.app import BenchError, post_run, script
from bench.core import run_benchmarks
from bench.goals import AZURITE_VS_CAP, failed_stages
from bench.plan import PLANS, STAGES, Plan
from bench.report import table, write_results
from bench.runs import cold_start
from tests.rig.rig import Rig

FIGURES = {
    "large_file": (
        "app_s",
        "old_way_s",
        "download_only_s",
        "upload_only_s",
        "floor_s",
        "both_at_once_s",
        "app_vs_old_way",
        "app_vs_floor",
        "app_vs_both_at_once",
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
        "model_only_s",
        "download_only_s",
        "upload_only_s",
        "floor_s",
        "wall_vs_model_plus_floor",
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
        "large_file.floor_vs_old_way",
        "large_file.app_vs_floor",
        "large_file.app_vs_both_at_once",
        "many_files.concurrent_s",
        "many_files.sequential_s",
        "many_files.upload_only_s",
        "many_files.concurrent_vs_sequential",
        "many_files.concurrent_vs_upload_only",
    ),
    "uploader": (
        "shaped.ours_s",
        "shaped.sdk_s",
        "shaped.ours_growth_MiB",
        "shaped.sdk_growth_MiB",
    ),
    "inputs": ("max_growth_MiB", "spread_MiB", "app_MiB_per_s", "app_cpu_s_per_GiB"),
    "queue_latency": (
        "copy_s",
        "storage_requests_per_run",
        *(
            f"{mode}.{name}"
            for mode in ("queue", "webhook")
            for name in (
                "to_callback.median_s",
                "to_callback.p95_s",
                "to_manifest.median_s",
                "to_manifest.p95_s",
                "p95_vs_goal",
            )
        ),
    ),
    "catalog": (
        "listing.requests_per_page_smallest",
        "listing.requests_per_page_largest",
        "listing.requests_largest_vs_smallest",
        "listing.page_ms_smallest",
        "listing.page_ms_largest",
        "retention.invocations",
        "retention.invocation_s_max",
        "retention.ms_per_deleted_run",
        "retention.storage_requests_per_deleted_run",
    ),
}
GOALS = {
    "large_file.app_vs_floor",
    "memory.max_growth_MiB",
    "memory.spread_MiB",
    "many_files.concurrent_vs_upload_only",
    "concurrent_runs.wall_vs_model_plus_floor",
    "per_run.storage_requests_per_run",
    "per_run.identity_requests_after_first_run",
    "per_run.delegation_key_requests_after_first_run",
    "cold_start.app_vs_dependencies",
    "memory_budget.budget_growth_MiB",
    "memory_budget.bytes_unverified",
    "memory_budget.wall_vs_unlimited",
    "network.large_file.app_vs_floor",
    "network.many_files.concurrent_vs_upload_only",
    "inputs.max_growth_MiB",
    "inputs.spread_MiB",
    "queue_latency.queue.p95_vs_goal",
    "queue_latency.webhook.p95_vs_goal",
    "catalog.requests_largest_vs_smallest",
    "azurite.peak_vs_cap",
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
    # one storage request of each kind a one-file run needs, counted on all three services
    assert data["per_run"]["storage_requests_by_service_per_run"] == {"blob": 2, "table": 3, "queue": 1}
    # every run was finished by the queue and called back, and each mode timed them all
    for mode in ("queue", "webhook"):
        assert len(data["queue_latency"][mode]["samples_to_callback_s"]) == plan.latency_runs
    # a page at each size, from a cursor where there was more than a page; the sweep kept the fresh runs
    listing = data["catalog"]["listing"]
    assert [s["runs_stored"] for s in listing["sizes"]] == list(plan.catalog_sizes)
    assert "cursor_page" in listing["sizes"][-1] and listing["sizes"][-1]["cursor_page"]["runs_on_page"] > 0
    retention = data["catalog"]["retention"]
    assert retention["expired"] == plan.retention_expired and retention["fresh_kept"] == plan.retention_fresh

    # Every stage (and each mode of stage 7) wrote into its own Azurite, stopped after it: the
    # store of the largest stayed well under the cap, and nothing failed.
    azurite = data["azurite"]
    assert set(azurite["instances"]) == {*STAGES, "memory_budget.budget", "memory_budget.unlimited"}
    assert all(peak > 0 for peak in azurite["instances"].values())
    assert 0 < azurite["peak_vs_cap"] <= AZURITE_VS_CAP and azurite["all_at_once_peak_MiB"] >= azurite["peak_MiB"]
    assert stagerig.MEMORY.live == {} and failed_stages(data) == []

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
        "11. wait false, queue",
        "11. wait false, queue + webhook",
        "12. catalog",
        "12. retention",
    )
    for heading in (*headings, "bench: its own Azurite", "goals:", "stages failed: 0"):
        assert heading in printed


async def test_a_failed_stage_is_reported_and_the_others_still_run(rig: Rig) -> None:
    plan = PLANS["smoke"]
    ran: list[int] = []

    async def fails_midway(rig: Rig, plan: Plan) -> dict[str, Any]:
        prompt, _ = script(rig, [{"path": "/mnt/data/before.txt", "content": "written before the failure"}])
        await post_run(prompt)  # the stage wrote into its Azurite and made the app's clients
        ran.append(stagerig.current_pid() or 0)
        raise BenchError("the emulator answered nonsense")

    results = await run_benchmarks(
        rig, plan, only=("per_run", "cold_start"), measurements={"per_run": fails_midway, "cold_start": cold_start}
    )

    assert results["per_run"]["failed"] and "BenchError: the emulator answered nonsense" in results["per_run"]["error"]
    assert "fails_midway" in results["per_run"]["traceback"]
    assert is_figure(results["cold_start"]["app_vs_dependencies"])  # the next stage still ran
    assert failed_stages(results) == ["per_run"]
    assert {g["figure"] for g in results["goals"]} == {"cold_start.app_vs_dependencies", "azurite.peak_vs_cap"}
    [pid] = ran
    assert "per_run" in results["azurite"]["instances"]
    with pytest.raises(ProcessLookupError):  # the failed stage's Azurite was stopped, its data with it
        os.kill(pid, 0)
    printed = table(results)
    assert "5. per_run" in printed and "FAILED" in printed and "stages failed: 1 (per_run)" in printed
