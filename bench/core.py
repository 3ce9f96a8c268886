"""The measurements, through the app's real code path against a started `tests.rig.rig.Rig`.

Import this only once ``SSL_CERT_FILE`` names the rig's CA: aiohttp reads it once, at import.

The app is called as the Functions Python worker calls it: the indexed function's user callable,
awaited on one event loop with a ``func.HttpRequest`` and a context. Storage and the model are
reached with the managed identity (the rig's identity endpoint), as in production. Nothing here
switches the app's behaviour; the few private attributes read (the blob client's transport, to
count storage requests) are named where used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import azure.functions as func

from bench import stagerig
from bench.plan import MIB, STAGES, Plan
from code_interpreter_files import blob_upload, responses_api
from code_interpreter_files.services import Services, get_services
from code_interpreter_files.settings import SETTING_NAMES, load_settings
from local_azure import content
from local_azure.emulator_files import files_state
from tests.rig.rig import Rig

REPO_ROOT = Path(__file__).resolve().parents[1]
COLD_START_DEPENDENCIES = (
    "azure.functions",
    "openai",
    "azure.identity.aio",
    "azure.storage.blob.aio",
    "pydantic",
    "aiohttp",
)


class BenchError(RuntimeError):
    """The app did not do what the measurement needs (a failed run, a wrong byte count)."""


# -- calling the app as the worker does ----------------------------------------------------------

_functions: dict[str, Any] | None = None


def functions() -> dict[str, Any]:
    """The indexed functions. The worker indexes once and `get_functions()` refuses a second time,
    so inside pytest the index `tests.appclient` made is reused."""
    global _functions
    if _functions is None:
        appclient = sys.modules.get("tests.appclient")
        if appclient is not None and hasattr(appclient, "FUNCTIONS"):
            _functions = appclient.FUNCTIONS
        else:
            import function_app

            _functions = {str(f.get_function_name()): f for f in function_app.app.get_functions()}
    return _functions


@dataclass
class Context:
    """What the worker passes as `context` (the parts the app reads)."""

    invocation_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_name: str = ""
    function_directory: str = ""


async def call(
    name: str, method: str, path: str, body: bytes = b"", route_params: dict[str, str] | None = None
) -> tuple[int, Any]:
    request = func.HttpRequest(
        method=method,
        url=f"http://localhost:7071{path}",
        body=body,
        headers={"content-type": "application/json"},
        params={},
        route_params=route_params or {},
    )
    response = await functions()[name].get_user_function()(request, Context(function_name=name))
    raw = response.get_body()
    return response.status_code, json.loads(raw) if raw else None


async def post_run(prompt: str) -> dict[str, Any]:
    """POST /api/runs with wait; the answer, which must have copied every file."""
    status, answer = await call("create_run", "POST", "/api/runs", json.dumps({"prompt": prompt}).encode())
    if status != 200 or answer.get("failed_files"):
        raise BenchError(f"POST /api/runs answered {status}: {json.dumps(answer)[:500]}")
    return answer


async def post_run_to_the_end(prompt: str) -> dict[str, Any]:
    """POST /api/runs, then GET it again while it answers 202 (a copy longer than RUN_WAIT_SECONDS
    goes on in the worker), as a patient caller does; the answer must have copied every file."""
    status, answer = await call("create_run", "POST", "/api/runs", json.dumps({"prompt": prompt}).encode())
    while status == 202:
        response_id = answer["response_id"]
        status, answer = await call(
            "get_run", "GET", f"/api/runs/{response_id}", route_params={"response_id": response_id}
        )
    if status != 200 or answer.get("failed_files"):
        raise BenchError(f"the run answered {status}: {json.dumps(answer)[:500]}")
    return answer


def check_files(answer: dict[str, Any], specs: list[dict[str, Any]]) -> None:
    """The answer holds every file of the script, with its size and hash."""
    got = sorted((f["bytes"], f["sha256"]) for f in answer["files"])
    want = sorted((s["bytes"], s["sha256"]) for s in specs)
    if got != want:
        raise BenchError(f"the run copied {len(got)} files, not the {len(want)} expected, or wrong bytes")


# -- the rig and the app's settings --------------------------------------------------------------


def script(rig: Rig, files: list[dict[str, Any]], latency: float = 0.0) -> tuple[str, list[dict[str, Any]]]:
    """Register an emulator script; returns the prompt that picks it and its files (bytes, sha256, seed)."""
    info = rig.emulator.add_script({"files": files, "latency": latency})
    return f"Make the files, please. {info['marker']}", info["files"]


def base_settings(plan: Plan) -> dict[str, str]:
    """Limits that let every file of the plan through; everything else at its default."""
    return {"MAX_FILE_BYTES": str(plan.max_file_bytes), "MAX_FILES_PER_RUN": str(max(20, plan.many_files))}


#: Endpoints of the network in use: empty on loopback, the shaping proxy's inside `shaped_network`.
NETWORK: dict[str, str] = {}


@contextlib.contextmanager
def shaped_network(rig: Rig, latency_ms: float, mib_per_s: float) -> Iterator[dict[str, Any]]:
    """Every connection of the app (and of the baselines, which use its settings) to the emulator
    and to Azurite goes through one `bench.netshape` process while this is open."""
    azurite = urlsplit(stagerig.storage_url(rig))
    emulator = urlsplit(rig.emulator_url)
    command = [sys.executable, "-m", "bench.netshape", f"--latency-ms={latency_ms}", f"--mib-per-s={mib_per_s}"]
    command += [f"--upstream={azurite.netloc}", f"--upstream={emulator.netloc}"]
    proxy = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proxy.stdout is not None
        ready = proxy.stdout.readline().split()
        if not ready or ready[0] != "READY":
            raise BenchError("bench.netshape did not start")
        via = {azurite.netloc: f"127.0.0.1:{ready[1]}", emulator.netloc: f"127.0.0.1:{ready[2]}"}
        saved = dict(NETWORK)
        NETWORK.update(
            {
                "OUTPUT_STORAGE_ACCOUNT_URL": azurite._replace(netloc=via[azurite.netloc]).geturl(),
                "AZURE_OPENAI_ENDPOINT": emulator._replace(netloc=via[emulator.netloc]).geturl(),
            }
        )
        shaping: dict[str, Any] = {"latency_ms": latency_ms, "mib_per_s": mib_per_s}
        try:
            yield shaping
        finally:
            NETWORK.clear()
            NETWORK.update(saved)
    finally:
        proxy.terminate()
        out, _ = proxy.communicate(timeout=30)
    forwarded = out.split()
    if forwarded[:1] == ["FORWARDED"]:  # filled in after the block: read it once the `with` ends
        shaping["proxy_connections"], shaping["proxy_bytes"] = int(forwarded[1]), int(forwarded[2])


@contextlib.contextmanager
def app_settings(rig: Rig, **overrides: Any) -> Iterator[dict[str, str]]:
    """The app's environment as an operator sets it (identity for storage and model), restored after."""
    names = set(Rig.ENV_NAMES) | set(SETTING_NAMES)
    saved = {name: os.environ.get(name) for name in names}
    for name in names - {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"}:
        os.environ.pop(name, None)
    env = rig.app_env("identity", "identity")
    env.update(stagerig.STORAGE)  # the current stage's own Azurite
    env.update(NETWORK)
    env.update({name: str(value) for name, value in overrides.items()})
    os.environ.update(env)
    try:
        yield env
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def warm(rig: Rig) -> Services:
    """The services for the current settings, after one small run: tokens, delegation key, output
    container and connection pools are ready, as in a worker that has served a request."""
    prompt, _ = script(rig, [{"path": "/mnt/data/warm.txt", "content": "warm"}])
    await post_run(prompt)
    return await get_services()


def _blob_client(services: Services, blob: str) -> Any:
    # The app's own BlobServiceClient (private attribute): same credential, transport and pipeline.
    return services.store._service.get_blob_client(services.settings.output_container, blob)


def _storage_operation(request: Any) -> str:
    query = parse_qs(urlsplit(request.url).query)
    what = query.get("comp", query.get("restype", ["blob"]))[0]
    return f"{request.method} {what}"


class StorageCounter:
    """Counts every request the app's blob clients put on the wire (retries included), and the
    most that were in flight at once.

    Wraps `send` of the transport that the app's BlobServiceClient and every container and blob
    client made from it share (private: `_pipeline._transport`). Bench only; removed after."""

    def __init__(self, services: Services) -> None:
        self.counts: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._transport = services.store._service._pipeline._transport
        send = self._transport.send

        async def counting_send(request: Any, **kwargs: Any) -> Any:
            self.counts[_storage_operation(request)] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                return await send(request, **kwargs)
            finally:
                self.in_flight -= 1

        self._transport.send = counting_send  # type: ignore[method-assign]

    def take(self) -> Counter[str]:
        counts, self.counts, self.max_in_flight = self.counts, Counter(), 0
        return counts

    def remove(self) -> None:
        del self._transport.send


class RigCpu:
    """CPU seconds of the rig's processes (children of this one) and of this one, over a span.

    Azurite's share of the wall time says whether a copy ran at the transfer limit: its one
    Node.js thread busy all the time means nothing on the client side can go faster."""

    NAMES = {"emulator": "local_azure.emulator", "proxy": "bench.netshape"}

    def __init__(self) -> None:
        self.pids = {"app": os.getpid()}
        azurite = stagerig.current_pid()  # the stage's own Azurite, not the rig's idle one
        if azurite is not None:
            self.pids["azurite"] = azurite
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) != os.getpid():
                continue
            for name, needle in self.NAMES.items():
                if needle in cmdline:
                    self.pids[name] = int(entry.name)
        self.shares: dict[str, list[float]] = {name: [] for name in (*self.pids, "other")}

    @staticmethod
    def _cpu(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def sample(self) -> dict[str, float]:
        """CPU seconds so far: each process, and the whole machine (`busy`)."""
        cpu = {name: self._cpu(pid) for name, pid in self.pids.items()}
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        cpu["busy"] = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        return cpu

    @contextlib.contextmanager
    def span(self) -> Iterator[None]:
        before = self.sample()
        started = time.perf_counter()
        yield
        wall = time.perf_counter() - started
        after = self.sample()
        for name in self.pids:
            self.shares[name].append((after[name] - before[name]) / wall)
        ours = sum(after[name] - before[name] for name in self.pids)
        self.shares["other"].append(max(0.0, after["busy"] - before["busy"] - ours) / wall)

    def figures(self) -> dict[str, float]:
        """Median share of one CPU per process over the spans (1.0: one core busy all the time);
        `other`: everything else on the machine (other users' work makes the figures noisy)."""
        return {name: statistics.median(shares) for name, shares in self.shares.items() if shares}


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


async def download_only(services: Services, container_id: str, file_id: str) -> int:
    """The same bytes from the emulator through the app's download path, discarded."""
    received = 0
    async with responses_api.open_file_content(services.openai, container_id, file_id) as chunks:
        async for chunk in chunks:
            received += len(chunk)
    return received


def uploader(services: Services) -> Any:
    """The SDK's own parallel upload, set like the app: the app's credential, BLOCK_BYTES blocks."""
    from azure.storage.blob.aio import BlobServiceClient

    return BlobServiceClient(
        services.settings.storage_account_url or "",
        credential=services.credential,
        max_block_size=blob_upload.BLOCK_BYTES,
        max_single_put_size=blob_upload.BLOCK_BYTES,
    )


async def upload_only(client: Any, container: str, blob: str, data: bytes) -> None:
    """The same bytes from memory, BLOCKS_IN_FLIGHT blocks at a time."""
    await client.get_blob_client(container, blob).upload_blob(
        data, overwrite=True, max_concurrency=blob_upload.BLOCKS_IN_FLIGHT
    )


def rotated(names: tuple[str, ...], rep: int) -> tuple[str, ...]:
    """The measurements of one repetition, each rep starting one further: none always runs first
    (after Azurite's clean-up of the previous blobs) or always last."""
    shift = rep % len(names)
    return names[shift:] + names[:shift]


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
        await services.store.delete_run(answer["response_id"])
        return elapsed

    async def old_way() -> float:
        blob = f"bench-{uuid.uuid4().hex}/old-way.bin"
        elapsed = await asyncio.to_thread(old.copy, container_id, file_id, blob)
        await _blob_client(services, blob).delete_blob()
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
        await _blob_client(services, blob).delete_blob()
        return elapsed

    measure = {"app": app, "old_way": old_way, "download_only": download, "upload_only": upload}
    samples: dict[str, list[float]] = {name: [] for name in measure}
    try:
        for rep in range(reps):
            for name in rotated(tuple(measure), rep):
                samples[name].append(await measure[name]())
        await _blob_client(services, "bench-warm.bin").delete_blob()
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
        "app_vs_old_way": best["app"] / best["old_way"],
        "app_vs_floor": best["app"] / floor,
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
    command = [sys.executable, "-m", "bench.memchild", "--warm-prompt", warm_prompt, "--prompt", prompt]
    command += ["--bytes", str(size), "--sha256", specs[0]["sha256"]]
    command += [f"--set={name}={value}" for name, value in (overrides or {}).items()]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(REPO_ROOT), os.environ.get("PYTHONPATH")))))
    done = await asyncio.to_thread(
        subprocess.run, command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise BenchError(f"bench.memchild failed ({done.returncode}): {_child_error(done.stderr)}")
    child = json.loads(done.stdout.strip().splitlines()[-1])
    await services.store.delete_run(child.pop("response_id"))
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
        # What upload_stream's docstring expects: twice the blocks held (TLS buffers) + ~10 MiB.
        "expected_MiB": 2 * blob_upload.BLOCK_BYTES * (blob_upload.BLOCKS_IN_FLIGHT + 1) / MIB + 10,
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
            await services.store.delete_run(answer["response_id"])
            return elapsed

    async def upload() -> float:
        services = await warm(rig)
        client = uploader(services)
        try:
            container = services.settings.output_container
            await upload_only(client, container, "bench-warm.bin", b"warm")
            elapsed = await upload_files_only(client, container, data, concurrency)
            await _blob_client(services, "bench-warm.bin").delete_blob()
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
        "storage_requests_by_kind_per_run": {k: v / runs for k, v in sorted(storage_counts.items())},
        "identity_requests_after_first_run": identity,
        "delegation_key_requests_after_first_run": storage_counts["POST userdelegationkey"],
        "first_run": {
            "model_requests": sum(first["model"].values()),
            "identity_requests": first["identity"],
            "storage_requests": sum(first["storage"].values()),
            "storage_requests_by_kind": dict(sorted(first["storage"].items())),
            "delegation_key_requests": first["storage"]["POST userdelegationkey"],
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
    variants = {"app": "function_app", "dependencies": ", ".join(COLD_START_DEPENDENCIES)}
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
        "dependencies": list(COLD_START_DEPENDENCIES),
        "app_vs_dependencies": app / deps,
    }


async def cold_start(rig: Rig, plan: Plan) -> dict[str, Any]:
    return await asyncio.to_thread(_cold_start, plan)


# -- 7. the worker's memory budget under many runs -----------------------------------------------

UNLIMITED_COPY_MEMORY_MB = 16384  # COPY_MEMORY_MB's maximum: no copy ever waits


def _child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(REPO_ROOT), os.environ.get("PYTHONPATH")))))


def _child_error(stderr: str) -> str:
    """The child's traceback (its last one, clipped), not the warnings printed after it."""
    start = stderr.rfind("Traceback (most recent call last)")
    text = stderr[start:] if start >= 0 else stderr
    # the exception's own line: the first one after the header that is not indented
    error = next((line for line in text.splitlines()[1:] if line and not line[0].isspace()), "")
    return f"{error}\n{text[:3000]}"


async def _run_child(module: str, args: list[str]) -> dict[str, Any]:
    """Run `python -m <module> ...` with the current app environment; its last line as JSON."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise BenchError(f"{module} failed ({done.returncode}): {_child_error(done.stderr)}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


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
        # Each mode in its own Azurite: one mode alone writes runs x files x file bytes (5 GiB at
        # 64 MiB files), which Azurite frees only with its process (see bench.stagerig).
        # RUN_WAIT_SECONDS at its maximum: the load is meant to take long, never to answer 202.
        with (
            stagerig.fresh_storage(rig, f"memory_budget.{mode}"),
            app_settings(rig, **base_settings(plan), COPY_MEMORY_MB=megabytes, RUN_WAIT_SECONDS=210),
        ):
            results[mode] = await _run_child("bench.loadchild", args)
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


# -- 8. a simulated network: the same measurements through the shaping proxy ---------------------


async def network(rig: Rig, plan: Plan) -> dict[str, Any]:
    """1. and 3. again, with every connection of the app and of the baselines to the emulator and
    to Azurite through `bench.netshape` (per-request latency, per-connection bandwidth)."""
    with shaped_network(rig, plan.latency_ms, plan.mib_per_s) as shaping:
        with app_settings(rig, **base_settings(plan)):
            large = await _large_file(rig, plan.net_large_bytes, plan.net_large_reps)
            many = await _many_files(rig, plan, plan.net_many_files, plan.net_many_file_bytes, plan.net_many_reps)
        await _close_services()  # before the proxy stops: no pooled connection outlives it
    return {
        "latency_ms": shaping["latency_ms"],
        "mib_per_s": shaping["mib_per_s"],
        "proxy_connections": shaping.get("proxy_connections", 0),
        "proxy_bytes": shaping.get("proxy_bytes", 0),
        "large_file": large,
        "many_files": many,
    }


async def _close_services() -> None:
    from code_interpreter_files import services

    if services._current is not None:
        await services._current[1].aclose()
        services._current = None


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
                        await _run_child("bench.uploadchild", [f"--way={way}", f"--bytes={plan.uploader_bytes}"])
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
                child = await _run_child("bench.inputchild", ["--warm-blob", warm_blob, "--blob", blob])
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
                await _close_services()  # no client of this stage outlives its Azurite
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
