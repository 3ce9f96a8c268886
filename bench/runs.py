"""The run measurements: 4. many runs at once, 5. what one run costs, 6. cold start, 7. the
worker's memory budget under many runs, 10. one blob input streamed to Azure OpenAI."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import Any

from bench import stagerig
from bench.app import (
    REPO_ROOT,
    BenchError,
    StorageCounter,
    app_settings,
    base_settings,
    check_files,
    download_only,
    post_run,
    run_child,
    script,
    upload_only,
    uploader,
    warm,
)
from bench.plan import MIB, Plan
from code_interpreter_files import blob_upload, responses_api
from code_interpreter_files.services import Services, get_services
from local_azure import content
from local_azure.emulator_files import files_state
from tests.rig.rig import Rig


def cold_start_dependencies() -> list[str]:
    """Every module outside the standard library that function_app and code_interpreter_files import
    at module level, read from their source (imports inside functions, such as the Azure Monitor
    exporter's, are not part of a cold start). (A hand-kept list drifted: the tables, queue, telemetry and webhook
    packages the app gained since were counted as the app's own import time.)"""
    sources = [REPO_ROOT / "function_app.py", *sorted((REPO_ROOT / "code_interpreter_files").glob("*.py"))]
    found: set[str] = set()
    for source in sources:
        for node in ast.parse(source.read_text()).body:  # module level: what `import function_app` runs
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
    ours = ("code_interpreter_files", "function_app", "__future__")
    return sorted(
        name for name in found if name.split(".")[0] not in sys.stdlib_module_names and name.split(".")[0] not in ours
    )


# -- 4. concurrent runs on one worker -------------------------------------------------------------


async def _model_only(services: Services, prompt: str) -> str:
    """The model's part of one run as the app does it (start in background, follow the events to
    the end), nothing found or copied; the response id."""
    started = await responses_api.start_response(
        services.openai, services.settings, prompt=prompt, instructions=None, metadata={}, listen=True
    )
    response = await responses_api.wait_for_response(
        services.openai, started, services.settings.run_events_idle_seconds
    )
    return response.id


async def concurrent_runs(rig: Rig, plan: Plan) -> dict[str, Any]:
    """`concurrent_runs` runs of one small file posted at once, against what the rig allows for
    them: the same runs' model part alone (`_model_only`, all at once) plus the floor of their
    bytes (the slower of downloading every file at once and uploading every file at once)."""
    n = plan.concurrent_runs
    prompt, specs = script(rig, [{"path": "/mnt/data/result.csv", "content": "a,b\n1,2\n"}], plan.concurrent_latency)
    data = content.generate(specs[0]["seed"], specs[0]["bytes"])
    services = await warm(rig)
    client = uploader(services)
    container = services.settings.output_container
    await upload_only(client, container, "bench-warm.bin", b"warm")
    latencies: list[float] = []
    files: list[tuple[str, str]] = []  # (container id, file id) of the model-only runs, for the download floor

    async def app() -> float:
        async def one() -> float:
            started = time.perf_counter()
            check_files(await post_run(prompt), specs)
            return time.perf_counter() - started  # a few bytes a run: the stage's Azurite goes with them

        started = time.perf_counter()
        latencies.extend(await asyncio.gather(*(one() for _ in range(n))))
        return time.perf_counter() - started

    async def model() -> float:
        started = time.perf_counter()
        ids = await asyncio.gather(*(_model_only(services, prompt) for _ in range(n)))
        elapsed = time.perf_counter() - started
        runs = [rig.emulator.run(response_id) for response_id in ids]
        files[:] = [(run["container_id"], run["files"][0]["file_id"]) for run in runs]
        return elapsed

    async def download() -> float:
        started = time.perf_counter()
        got = await asyncio.gather(*(download_only(services, c, f) for c, f in files))
        if got != [len(data)] * n:
            raise BenchError("the download-only baseline got the wrong number of bytes")
        return time.perf_counter() - started

    async def upload() -> float:
        names = [f"bench-{uuid.uuid4().hex}/result.csv" for _ in range(n)]
        started = time.perf_counter()
        await asyncio.gather(*(upload_only(client, container, name, data) for name in names))
        return time.perf_counter() - started

    # model first in each rep: the download floor reads the files of its runs
    measure = {"model_only": model, "download_only": download, "app": app, "upload_only": upload}
    samples: dict[str, list[float]] = {name: [] for name in measure}
    try:
        for _ in range(plan.concurrent_reps):
            for name, run in measure.items():
                samples[name].append(await run())
    finally:
        await client.close()
    median = {name: statistics.median(values) for name, values in samples.items()}
    floor = max(median["download_only"], median["upload_only"])
    best = median["model_only"] + floor
    return {
        "runs": n,
        "model_latency_s": plan.concurrent_latency,
        "reps": plan.concurrent_reps,
        "statistic": "median of reps",
        "samples_s": samples,
        "wall_s": median["app"],
        "model_only_s": median["model_only"],
        "download_only_s": median["download_only"],
        "upload_only_s": median["upload_only"],
        "floor_s": floor,
        "model_plus_floor_s": best,
        "wall_vs_model_plus_floor": median["app"] / best,
        "runs_per_s": n / median["app"],
        "run_latency_median_s": statistics.median(latencies),
        "run_latency_max_s": max(latencies),
        "overhead_past_model_median_s": statistics.median(latencies) - plan.concurrent_latency,
    }


# -- 5. per-run cost -----------------------------------------------------------------------------


DELEGATION_KEY = "blob POST userdelegationkey"


def _by_service(counts: Counter[str], runs: int) -> dict[str, float]:
    """Requests per run of each storage service (blob, table, queue)."""
    services: Counter[str] = Counter()
    for kind, count in counts.items():
        services[kind.split(" ", 1)[0]] += count
    return {name: services[name] / runs for name in ("blob", "table", "queue")}


def _model_requests(rig: Rig) -> Counter[str]:
    return Counter({k: v for k, v in rig.emulator.stats()["requests"].items() if v})


async def per_run(rig: Rig, plan: Plan) -> dict[str, Any]:
    prompt, specs = script(rig, [{"path": "/mnt/data/small.txt", "content": "hello world"}])
    # A fresh worker: new services (a changed setting makes them), so the first run pays for
    # tokens, the delegation key and the output container; then the steady state.
    with app_settings(rig, **base_settings(plan), SAS_TTL_MINUTES=59):
        services = await get_services()
        counter = StorageCounter(services)
        try:
            rig.emulator.reset()
            rig.identity.reset()
            check_files(await post_run(prompt), specs)
            first = {
                "model": _model_requests(rig),
                "identity": rig.identity.stats()["requests"],
                "storage": counter.take(),
            }
            rig.emulator.reset()
            rig.identity.reset()
            times = []
            for _ in range(plan.per_run_runs):
                started = time.perf_counter()
                check_files(await post_run(prompt), specs)
                times.append(time.perf_counter() - started)
            model, storage_counts = _model_requests(rig), counter.take()
            identity = rig.identity.stats()["requests"]
        finally:
            counter.remove()
    runs = plan.per_run_runs
    median = statistics.median(times)
    return {
        "runs": runs,
        "median_s": median,
        "p90_s": statistics.quantiles(times, n=10)[-1] if runs >= 2 else times[0],
        "runs_per_s_sequential": 1 / median,
        "model_requests_per_run": sum(model.values()) / runs,
        "model_requests_by_kind_per_run": {k: v / runs for k, v in sorted(model.items())},
        "storage_requests_per_run": sum(storage_counts.values()) / runs,
        "storage_requests_by_service_per_run": _by_service(storage_counts, runs),
        "storage_requests_by_kind_per_run": {k: v / runs for k, v in sorted(storage_counts.items())},
        "identity_requests_after_first_run": identity,
        "delegation_key_requests_after_first_run": storage_counts[DELEGATION_KEY],
        "first_run": {
            "model_requests": sum(first["model"].values()),
            "identity_requests": first["identity"],
            "storage_requests": sum(first["storage"].values()),
            "storage_requests_by_kind": dict(sorted(first["storage"].items())),
            "delegation_key_requests": first["storage"][DELEGATION_KEY],
        },
    }


# -- 6. cold start -------------------------------------------------------------------------------

_IMPORT_TIMER = "import time; t = time.perf_counter(); import {}; print(time.perf_counter() - t)"


def _import_seconds(modules: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_TIMER.format(modules)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return float(done.stdout.strip())


def _cold_start(plan: Plan) -> dict[str, Any]:
    dependencies = cold_start_dependencies()
    variants = {"app": "function_app", "dependencies": ", ".join(dependencies)}
    for modules in variants.values():  # compile the .pyc files first: a deployed app has them
        _import_seconds(modules)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(plan.cold_reps):
        for name, modules in variants.items():
            samples[name].append(_import_seconds(modules))
    app, deps = statistics.median(samples["app"]), statistics.median(samples["dependencies"])
    return {
        "reps": plan.cold_reps,
        "statistic": "median of reps",
        "samples_s": samples,
        "app_import_s": app,
        "dependencies_import_s": deps,
        "dependencies": dependencies,
        "app_vs_dependencies": app / deps,
    }


async def cold_start(rig: Rig, plan: Plan) -> dict[str, Any]:
    return await asyncio.to_thread(_cold_start, plan)


# -- 7. the worker's memory budget under many runs -----------------------------------------------

UNLIMITED_COPY_MEMORY_MB = 16384  # COPY_MEMORY_MB's maximum: no copy ever waits


async def memory_budget(rig: Rig, plan: Plan) -> dict[str, Any]:
    """`budget_runs` runs of `budget_files` files at once in a fresh worker process, with
    COPY_MEMORY_MB and with it unlimited: peak RSS growth, wall time, every byte read back."""
    files = [{"path": f"/mnt/data/big-{i}.bin", "size": plan.budget_file_bytes} for i in range(plan.budget_files)]
    prompt, specs = script(rig, files)
    warm_prompt, _ = script(rig, [{"path": "/mnt/data/warm.txt", "content": "warm"}])
    args = ["--warm-prompt", warm_prompt, "--prompt", prompt, "--runs", str(plan.budget_runs)]
    args += ["--specs", json.dumps([{"bytes": s["bytes"], "sha256": s["sha256"]} for s in specs])]
    modes = {"budget": plan.budget_memory_mb, "unlimited": UNLIMITED_COPY_MEMORY_MB}
    results: dict[str, dict[str, Any]] = {}
    for mode, megabytes in modes.items():
        # Each mode in its own Azurite, its blobs on disk: one mode writes runs x files x file bytes
        # (5 GiB at 64 MiB files). Kept in memory, that Azurite peaked at 5880 MiB RSS, 0.49 of its
        # store's cap (full run, load 4-5); on disk at 342 MiB, and the same load took 57 s, not
        # 110 (a quieter moment too, load 3: not separated). Measured 2026-12-07.
        # RUN_WAIT_SECONDS at its maximum: the load is meant to take long, never to answer 202.
        with (
            stagerig.fresh_storage(rig, f"memory_budget.{mode}", on_disk=True),
            app_settings(rig, **base_settings(plan), COPY_MEMORY_MB=megabytes, RUN_WAIT_SECONDS=210),
        ):
            results[mode] = await run_child("bench.loadchild", args)
    budget, unlimited = results["budget"], results["unlimited"]
    total = plan.budget_runs * plan.budget_files * plan.budget_file_bytes
    return {
        "runs": plan.budget_runs,
        "files_per_run": plan.budget_files,
        "file_bytes": plan.budget_file_bytes,
        "copy_memory_mb": plan.budget_memory_mb,
        "by_mode": results,
        "budget_growth_MiB": budget["rss_growth_bytes"] / MIB,
        "unlimited_growth_MiB": unlimited["rss_growth_bytes"] / MIB,
        "budget_growth_over_limit_MiB": budget["rss_growth_bytes"] / MIB - plan.budget_memory_mb,
        "budget_peak_MiB": budget["budget_peak_bytes"] / MIB,
        "budget_waits": budget["budget_waits"],
        "budget_wall_s": budget["wall_s"],
        "unlimited_wall_s": unlimited["wall_s"],
        "wall_vs_unlimited": budget["wall_s"] / unlimited["wall_s"],
        "bytes_expected": 2 * total,
        "bytes_verified": budget["bytes_verified"] + unlimited["bytes_verified"],
        "bytes_unverified": 2 * total - budget["bytes_verified"] - unlimited["bytes_verified"],
    }


# -- 10. one blob input streamed into Azure OpenAI -----------------------------------------------


async def _put_input(client: Any, container: str, blob: str, size: int) -> str:
    """Write an input blob (`local_azure.content` bytes, seeded by its name), as a caller's job
    would; its sha256."""
    await client.get_blob_client(container, blob).upload_blob(
        content.chunks(blob, size), length=size, overwrite=True, max_concurrency=blob_upload.BLOCKS_IN_FLIGHT
    )
    return content.sha256_of(blob, size)


async def inputs_stage(rig: Rig, plan: Plan) -> dict[str, Any]:
    """`upload_inputs` of one blob input per size in a fresh process (`bench.inputchild`): peak RSS
    growth, time, and the bytes the emulator stored checked against the blob's sha256."""
    from azure.core.exceptions import ResourceExistsError

    from code_interpreter_files import inputs

    sizes: list[dict[str, Any]] = []
    with app_settings(rig, **base_settings(plan), MAX_INPUT_BYTES=max(plan.input_sizes)):
        services = await warm(rig)
        client = uploader(services)
        container = services.settings.input_container
        prefix = f"bench-inputs-{uuid.uuid4().hex}"
        warm_blob = f"{prefix}/warm.bin"
        try:
            with contextlib.suppress(ResourceExistsError):
                await client.create_container(container)
            await _put_input(client, container, warm_blob, inputs.PART_BYTES + 1)
            for size in plan.input_sizes:
                blob = f"{prefix}/input-{size}.bin"
                sha256 = await _put_input(client, container, blob, size)
                child = await run_child("bench.inputchild", ["--warm-blob", warm_blob, "--blob", blob])
                stored = {f["id"]: f for f in files_state(rig.emulator)["files"]}.get(child["file_id"], {})
                got = {(child["bytes"], child["sha256"]), (stored.get("bytes"), stored.get("sha256"))}
                if got != {(size, sha256)}:  # what the app counted and what the emulator stored
                    raise BenchError(f"the {size}-byte input reached the emulator with the wrong bytes")
                child["parts"] = len(stored["parts"])
                sizes.append(child)
                await inputs.delete_uploaded(services, [child["file_id"]])
                await client.get_blob_client(container, blob).delete_blob()
            await client.get_blob_client(container, warm_blob).delete_blob()
        finally:
            await client.close()
    growth = [s["rss_growth_bytes"] for s in sizes]
    last = sizes[-1]
    return {
        "sizes": sizes,
        "max_growth_MiB": max(growth) / MIB,
        "spread_MiB": (max(growth) - min(growth)) / MIB,
        "part_bytes": inputs.PART_BYTES,
        "parts_in_flight": inputs.PARTS_IN_FLIGHT,
        "app_MiB_per_s": last["bytes"] / MIB / last["upload_s"],
        "app_cpu_s_per_GiB": last["cpu_s"] / (last["bytes"] / (1024 * MIB)),
    }
