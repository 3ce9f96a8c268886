"""The copy measurements: 1. one large file, 2. memory, 3. many files, 8. the same through a
simulated network, 9. upload_stream against the SDK's uploader."""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.app import (
    BenchError,
    RigCpu,
    StorageCounter,
    app_settings,
    base_settings,
    blob_client,
    check_files,
    close_services,
    download_only,
    post_run,
    rotated,
    run_child,
    script,
    shaped_network,
    upload_only,
    uploader,
    warm,
)
from bench.plan import MIB, Plan
from code_interpreter_files import blob_upload, responses_api
from code_interpreter_files.services import Services
from code_interpreter_files.settings import load_settings
from local_azure import content
from tests.rig.rig import Rig

# -- 1. one large file: the app vs the old way vs the transfer floor -----------------------------


class OldScript:
    """The old script's way: the openai SDK's `content.retrieve` (the whole body in memory), then
    `write_to_file`, then azure-storage-blob's `upload_blob` from the file. Synchronous SDKs with
    their defaults, as the script had; the same identity, tokens fetched before the clock starts."""

    def __init__(self, services: Services) -> None:
        from azure.identity import DefaultAzureCredential, get_bearer_token_provider
        from azure.storage.blob import BlobServiceClient
        from openai import OpenAI

        settings = services.settings
        self.container = settings.output_container
        self.credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
        token = get_bearer_token_provider(self.credential, settings.token_scope)
        token()
        self.credential.get_token("https://storage.azure.com/.default")
        self.openai = OpenAI(base_url=settings.openai_base_url, api_key=token)
        assert settings.storage_account_url
        self.blobs = BlobServiceClient(settings.storage_account_url, credential=self.credential)
        self.tmpdir = Path(tempfile.mkdtemp(prefix="ci-files-bench-old-"))

    def copy(self, container_id: str, file_id: str, blob: str) -> float:
        started = time.perf_counter()
        path = self.tmpdir / "download.bin"
        self.openai.containers.files.content.retrieve(file_id, container_id=container_id).write_to_file(path)
        with path.open("rb") as data:
            self.blobs.get_blob_client(self.container, blob).upload_blob(data, overwrite=True)
        elapsed = time.perf_counter() - started
        path.unlink()
        return elapsed

    def close(self) -> None:
        self.openai.close()
        self.blobs.close()
        self.credential.close()
        self.tmpdir.rmdir()


async def large_file(rig: Rig, plan: Plan) -> dict[str, Any]:
    return await _large_file(rig, plan.large_bytes, plan.large_reps)


async def _large_file(rig: Rig, size: int, reps: int) -> dict[str, Any]:
    prompt, specs = script(rig, [{"path": "/mnt/data/large.bin", "size": size}])
    services = await warm(rig)
    # A run of the script for the baselines to read from (started directly: nothing is copied).
    started_run = await responses_api.start_response(
        services.openai, services.settings, prompt=prompt, instructions=None, metadata={}, listen=False
    )
    run = rig.emulator.run(started_run.response.id)
    container_id, file_id = run["container_id"], run["files"][0]["file_id"]
    data = content.generate(specs[0]["seed"], size)
    old = await asyncio.to_thread(OldScript, services)
    upload_client = uploader(services)
    container = services.settings.output_container
    await upload_only(upload_client, container, "bench-warm.bin", b"warm")  # its connection and token first
    cpu, counter = RigCpu(), StorageCounter(services)
    max_in_flight = 0

    async def app() -> float:
        nonlocal max_in_flight
        counter.take()
        started = time.perf_counter()
        with cpu.span():
            answer = await post_run(prompt)
        elapsed = time.perf_counter() - started
        max_in_flight = max(max_in_flight, counter.max_in_flight)
        check_files(answer, specs)
        await services.store.delete_run_blobs(answer["response_id"])
        return elapsed

    async def old_way() -> float:
        blob = f"bench-{uuid.uuid4().hex}/old-way.bin"
        elapsed = await asyncio.to_thread(old.copy, container_id, file_id, blob)
        await blob_client(services, blob).delete_blob()
        return elapsed

    async def download() -> float:
        started = time.perf_counter()
        if await download_only(services, container_id, file_id) != size:
            raise BenchError("the download-only baseline got the wrong number of bytes")
        return time.perf_counter() - started

    async def upload() -> float:
        blob = f"bench-{uuid.uuid4().hex}/upload-only.bin"
        started = time.perf_counter()
        await upload_only(upload_client, container, blob, data)
        elapsed = time.perf_counter() - started
        await blob_client(services, blob).delete_blob()
        return elapsed

    async def both() -> float:
        """Download only and upload only at the same time, uncoupled: what the machine allows
        for the two transfers a copy makes at once (they share its CPUs)."""
        # both start together; each times itself (the upload's delete comes after its clock stops)
        return max(await asyncio.gather(download(), upload()))

    measure = {
        "app": app,
        "old_way": old_way,
        "download_only": download,
        "upload_only": upload,
        "both_at_once": both,
    }
    samples: dict[str, list[float]] = {name: [] for name in measure}
    try:
        for rep in range(reps):
            for name in rotated(tuple(measure), rep):
                samples[name].append(await measure[name]())
        await blob_client(services, "bench-warm.bin").delete_blob()
    finally:
        counter.remove()
        await upload_client.close()
        await asyncio.to_thread(old.close)
    best = {name: min(values) for name, values in samples.items()}
    floor = max(best["download_only"], best["upload_only"])
    return {
        "bytes": size,
        "reps": reps,
        "statistic": "best of reps",
        "samples_s": samples,
        "app_s": best["app"],
        "old_way_s": best["old_way"],
        "download_only_s": best["download_only"],
        "upload_only_s": best["upload_only"],
        "floor_s": floor,
        "both_at_once_s": best["both_at_once"],
        "app_vs_old_way": best["app"] / best["old_way"],
        "app_vs_floor": best["app"] / floor,
        "app_vs_both_at_once": best["app"] / best["both_at_once"],
        # What app / (a) would be if the app ran exactly at the floor: the best this rig allows.
        "floor_vs_old_way": floor / best["old_way"],
        "app_MiB_per_s": size / MIB / best["app"],
        "floor_MiB_per_s": size / MIB / floor,
        "app_storage_max_in_flight": max_in_flight,
        "cpu_share_during_app": cpu.figures(),
    }


# -- 2. memory: one copy per fresh process --------------------------------------------------------


async def copy_in_fresh_process(
    rig: Rig, services: Services, size: int, overrides: dict[str, int] | None = None
) -> dict[str, Any]:
    """One run copying one `size`-byte file in a new interpreter (`bench.memchild`): its peak RSS
    growth, time and CPU. `overrides` set tuning constants in that process only."""
    warm_prompt, _ = script(rig, [{"path": "/mnt/data/warm.txt", "content": "warm"}])
    prompt, specs = script(rig, [{"path": f"/mnt/data/memory-{size}.bin", "size": size}])
    args = ["--warm-prompt", warm_prompt, "--prompt", prompt, "--bytes", str(size), "--sha256", specs[0]["sha256"]]
    args += [f"--set={name}={value}" for name, value in (overrides or {}).items()]
    child = await run_child("bench.memchild", args)
    await services.store.delete_run_blobs(child.pop("response_id"))
    return child


async def memory(rig: Rig, plan: Plan) -> dict[str, Any]:
    services = await warm(rig)
    sizes = [await copy_in_fresh_process(rig, services, size) for size in plan.memory_sizes]
    growth = [s["rss_growth_bytes"] for s in sizes]
    first, last = sizes[0], sizes[-1]
    return {
        "sizes": sizes,
        "max_growth_MiB": max(growth) / MIB,
        "spread_MiB": (max(growth) - min(growth)) / MIB,
        "growth_per_GiB_of_file_MiB": (last["rss_growth_bytes"] - first["rss_growth_bytes"])
        / (last["bytes"] - first["bytes"])
        * 1024,
        "app_cpu_s_per_GiB": last["cpu_s"] / (last["bytes"] / (1024 * MIB)),
        # What one copy reserves of the worker's budget (upload_stream's docstring: what it holds).
        "expected_MiB": (blob_upload.BLOCK_BYTES + blob_upload.BLOCK_SLACK_BYTES)
        * (blob_upload.BLOCKS_IN_FLIGHT + 1)
        / MIB,
    }


# -- 3. many files in one run: concurrent vs one after another ------------------------------------


async def upload_files_only(client: Any, container: str, files: list[bytes], concurrency: int) -> float:
    """The floor for many files: the same bytes from memory, `concurrency` files at a time."""
    gate = asyncio.Semaphore(concurrency)
    names = [f"bench-{uuid.uuid4().hex}/{index:03d}.bin" for index in range(len(files))]

    async def one(name: str, data: bytes) -> None:
        async with gate:
            await upload_only(client, container, name, data)

    started = time.perf_counter()
    await asyncio.gather(*(one(name, data) for name, data in zip(names, files, strict=True)))
    elapsed = time.perf_counter() - started
    blobs = client.get_container_client(container)
    for name in names:
        await blobs.delete_blob(name)
    return elapsed


async def many_files(rig: Rig, plan: Plan) -> dict[str, Any]:
    return await _many_files(rig, plan, plan.many_files, plan.many_file_bytes, plan.many_reps)


async def _many_files(rig: Rig, plan: Plan, count: int, file_bytes: int, reps: int) -> dict[str, Any]:
    files = [{"path": f"/mnt/data/part-{i:02d}.bin", "size": file_bytes} for i in range(count)]
    prompt, specs = script(rig, files)
    data = [content.generate(spec["seed"], spec["bytes"]) for spec in specs]
    in_flight = {"concurrent": 0, "sequential": 0}
    cpu = {"concurrent": RigCpu(), "sequential": RigCpu()}
    concurrency = load_settings().copy_concurrency  # the default, or what the environment says

    async def app(mode: str, overrides: dict[str, Any]) -> float:
        with app_settings(rig, **base_settings(plan), **overrides):
            services = await warm(rig)
            counter = StorageCounter(services)
            try:
                started = time.perf_counter()
                with cpu[mode].span():
                    answer = await post_run(prompt)
                elapsed = time.perf_counter() - started
                in_flight[mode] = max(in_flight[mode], counter.max_in_flight)
            finally:
                counter.remove()
            check_files(answer, specs)
            await services.store.delete_run_blobs(answer["response_id"])
            return elapsed

    async def upload() -> float:
        services = await warm(rig)
        client = uploader(services)
        try:
            container = services.settings.output_container
            await upload_only(client, container, "bench-warm.bin", b"warm")
            elapsed = await upload_files_only(client, container, data, concurrency)
            await blob_client(services, "bench-warm.bin").delete_blob()
        finally:
            await client.close()
        return elapsed

    measure = {
        "concurrent": lambda: app("concurrent", {}),
        "sequential": lambda: app("sequential", {"COPY_CONCURRENCY": 1}),
        "upload_only": upload,
    }
    samples: dict[str, list[float]] = {name: [] for name in measure}
    for rep in range(reps):
        for name in rotated(tuple(measure), rep):
            samples[name].append(await measure[name]())
    best = {name: min(values) for name, values in samples.items()}
    total = count * file_bytes
    return {
        "files": count,
        "file_bytes": file_bytes,
        "copy_concurrency": concurrency,
        "reps": reps,
        "statistic": "best of reps",
        "samples_s": samples,
        "concurrent_s": best["concurrent"],
        "sequential_s": best["sequential"],
        "upload_only_s": best["upload_only"],
        "concurrent_vs_sequential": best["concurrent"] / best["sequential"],
        "concurrent_vs_upload_only": best["concurrent"] / best["upload_only"],
        # What concurrent / sequential would be at the floor: the best this rig allows.
        "upload_only_vs_sequential": best["upload_only"] / best["sequential"],
        "concurrent_MiB_per_s": total / MIB / best["concurrent"],
        "sequential_MiB_per_s": total / MIB / best["sequential"],
        "storage_max_in_flight": in_flight,
        "cpu_share": {mode: c.figures() for mode, c in cpu.items()},
    }


# -- 8. a simulated network: the same measurements through the shaping proxy ---------------------


async def network(rig: Rig, plan: Plan) -> dict[str, Any]:
    """1. and 3. again, with every connection of the app and of the baselines to the emulator and
    to Azurite through `bench.netshape` (per-request latency, per-connection bandwidth)."""
    with shaped_network(rig, plan.latency_ms, plan.mib_per_s) as shaping:
        with app_settings(rig, **base_settings(plan)):
            large = await _large_file(rig, plan.net_large_bytes, plan.net_large_reps)
            many = await _many_files(rig, plan, plan.net_many_files, plan.net_many_file_bytes, plan.net_many_reps)
        await close_services()  # before the proxy stops: no pooled connection outlives it
    return {
        "latency_ms": shaping["latency_ms"],
        "mib_per_s": shaping["mib_per_s"],
        "proxy_connections": shaping.get("proxy_connections", 0),
        "proxy_bytes": shaping.get("proxy_bytes", 0),
        "large_file": large,
        "many_files": many,
    }


# -- 9. upload_stream against azure-storage-blob's own upload_blob --------------------------------


async def uploader_stage(rig: Rig, plan: Plan) -> dict[str, Any]:
    """The same streamed upload by both, a fresh process each (peak RSS), on loopback and through
    the shaping proxy; best time and its peak of `uploader_reps`, ways alternating."""

    async def both() -> dict[str, Any]:
        samples: dict[str, list[dict[str, Any]]] = {"ours": [], "sdk": []}
        with app_settings(rig, **base_settings(plan)):
            for rep in range(plan.uploader_reps):
                for way in rotated(("ours", "sdk"), rep):
                    samples[way].append(
                        await run_child("bench.uploadchild", [f"--way={way}", f"--bytes={plan.uploader_bytes}"])
                    )
        best = {way: min(runs, key=lambda r: r["upload_s"]) for way, runs in samples.items()}
        return {
            "ours_s": best["ours"]["upload_s"],
            "sdk_s": best["sdk"]["upload_s"],
            "ours_growth_MiB": max(r["rss_growth_bytes"] for r in samples["ours"]) / MIB,
            "sdk_growth_MiB": max(r["rss_growth_bytes"] for r in samples["sdk"]) / MIB,
            "ours_cpu_s": best["ours"]["cpu_s"],
            "sdk_cpu_s": best["sdk"]["cpu_s"],
            "ours_vs_sdk": best["ours"]["upload_s"] / best["sdk"]["upload_s"],
            "samples": samples,
        }

    networks: dict[str, Any] = {}
    if "loopback" in plan.uploader_networks:
        networks["loopback"] = await both()
    if "shaped" in plan.uploader_networks:
        with shaped_network(rig, plan.latency_ms, plan.mib_per_s) as shaping:
            networks["shaped"] = await both()
        networks["shaped"]["proxy_bytes"] = shaping.get("proxy_bytes", 0)
    return {
        "bytes": plan.uploader_bytes,
        "reps": plan.uploader_reps,
        "block_bytes": blob_upload.BLOCK_BYTES,
        "blocks_in_flight": blob_upload.BLOCKS_IN_FLIGHT,
        "latency_ms": plan.latency_ms,
        "mib_per_s": plan.mib_per_s,
        **networks,
    }
