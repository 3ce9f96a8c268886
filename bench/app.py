"""Calling the app as the Functions worker does, against a started `tests.rig.rig.Rig`, and what
every measurement shares: the app's settings, the simulated network, counters, baselines, children.

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
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import azure.functions as func

from bench import stagerig
from bench.plan import Plan
from code_interpreter_files import blob_upload, responses_api
from code_interpreter_files.services import Services, get_services
from code_interpreter_files.settings import SETTING_NAMES
from tests.rig.rig import Rig

REPO_ROOT = Path(__file__).resolve().parents[1]


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
    name: str,
    method: str,
    path: str,
    body: bytes = b"",
    route_params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> tuple[int, Any]:
    request = func.HttpRequest(
        method=method,
        url=f"http://localhost:7071{path}",
        body=body,
        headers={"content-type": "application/json", **(headers or {})},
        params=params or {},
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


def blob_client(services: Services, blob: str) -> Any:
    # The app's own BlobServiceClient (private attribute): same credential, transport and pipeline.
    return services.store._service.get_blob_client(services.settings.output_container, blob)


def _storage_operation(service: str, request: Any) -> str:
    """`<service> <method> <what>`: what a request does, e.g. `blob PUT blob`, `table PATCH row`,
    `queue POST messages`."""
    parts = urlsplit(request.url)
    if service == "blob":
        query = parse_qs(parts.query)
        what = query.get("comp", query.get("restype", ["blob"]))[0]
    elif service == "table":  # /<account>/<table>(PartitionKey=..,RowKey=..), /<account>/<table>(), /Tables
        last = parts.path.rstrip("/").rsplit("/", 1)[-1]
        what = (
            "tables"
            if last.startswith("Tables")
            else "batch"
            if last == "$batch"
            else "row"
            if "(P" in last
            else "runs"
        )
    else:  # /<account>/<queue>/messages, /<account>/<queue>
        what = "messages" if parts.path.rstrip("/").endswith("/messages") else "queue"
    return f"{service} {request.method} {what}"


class StorageCounter:
    """Counts every request the app's storage clients put on the wire (retries included), by kind
    (`blob ...`, `table ...`, `queue ...`), and the most blob requests that were in flight at once.

    Wraps `send` of the three transports the app's clients use (private attributes, bench only;
    removed after): the BlobServiceClient's (shared by every container and blob client made from
    it, `_pipeline._transport`), the runs TableClient's (`_client._client._pipeline._transport`) and
    the runs QueueClient's (`_pipeline._transport`), which RunQueue makes on first use: made here
    if not yet (as RunQueue makes it; no request), so its first use (Create Queue) is counted too."""

    def __init__(self, services: Services) -> None:
        from code_interpreter_files.run_queue import build_queue_client

        self.counts: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._replaced: list[tuple[Any, Any]] = []
        self._wrap(services.store._service._pipeline._transport, "blob")
        self._wrap(services.table._table._client._client._pipeline._transport, "table")
        queue = services.queue
        if queue._client is None:
            queue._client = build_queue_client(queue._settings, queue._credential, queue.name)
        self._wrap(queue._client._pipeline._transport, "queue")

    def _wrap(self, transport: Any, service: str) -> None:
        send = transport.send
        self._replaced.append((transport, vars(transport).get("send")))  # another wrapper's, if any

        async def counting_send(request: Any, **kwargs: Any) -> Any:
            self.counts[_storage_operation(service, request)] += 1
            if service != "blob":
                return await send(request, **kwargs)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                return await send(request, **kwargs)
            finally:
                self.in_flight -= 1

        transport.send = counting_send

    def take(self) -> Counter[str]:
        counts, self.counts, self.max_in_flight = self.counts, Counter(), 0
        return counts

    def remove(self) -> None:
        """Undo the wrapping (after any wrapper put on since is removed: last on, first off)."""
        for transport, previous in self._replaced:
            if previous is None:
                del transport.send
            else:
                transport.send = previous


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


# -- baselines: the same bytes without the app -------------------------------------------------


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
    """The same bytes from memory, BLOCKS_IN_FLIGHT blocks at a time, each with its MD5 as the
    app sends them (`validate_content`): without one, Azurite computes a CRC64 of every block in
    JavaScript (see blob_upload), which would slow the baseline and not the app."""
    await client.get_blob_client(container, blob).upload_blob(
        data, overwrite=True, max_concurrency=blob_upload.BLOCKS_IN_FLIGHT, validate_content=True
    )


def rotated(names: tuple[str, ...], rep: int) -> tuple[str, ...]:
    """The measurements of one repetition, each rep starting one further: none always runs first
    (after Azurite's clean-up of the previous blobs) or always last."""
    shift = rep % len(names)
    return names[shift:] + names[:shift]


# -- children: a measurement in a fresh process ---------------------------------------------------


def child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(REPO_ROOT), os.environ.get("PYTHONPATH")))))


def child_error(stderr: str) -> str:
    """The child's traceback (its last one, clipped), not the warnings printed after it."""
    start = stderr.rfind("Traceback (most recent call last)")
    text = stderr[start:] if start >= 0 else stderr
    # the exception's own line: the first one after the header that is not indented
    error = next((line for line in text.splitlines()[1:] if line and not line[0].isspace()), "")
    return f"{error}\n{text[:3000]}"


async def run_child(module: str, args: list[str]) -> dict[str, Any]:
    """Run `python -m <module> ...` with the current app environment; its last line as JSON."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise BenchError(f"{module} failed ({done.returncode}): {child_error(done.stderr)}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def close_services() -> None:
    from code_interpreter_files import services

    if services._current is not None:
        await services._current[1].aclose()
        services._current = None
