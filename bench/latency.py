"""11. The latency users feel (issue 22 item 5): from the model's end to the run's answer, for runs
posted with `wait: false` and finished by the queue, with and without Azure OpenAI webhooks.

Each run: POST /api/runs with `wait: false` and a `callback_url` (a receiver on loopback, as the
tests' one), one small file. Runs go in pairs of the same model latency (spread over the plan's
range), one per mode, one pair at a time: the figure is a run's own latency, not a queue's backlog.
The queue triggers run in this process (`local_azure.queue_host`, as the tests' `host` fixture runs
them).

Times, all on this machine's clock: the model's end is the emulator's (`ends_at` of its run view);
the manifest written is when Azurite answered the app's Put Blob of `manifest.json` (seen on the
app's blob transport, bench only); the callback is when the receiver got it. In the webhook mode
the bench plays Azure OpenAI: at the model's end it posts a signed `response.completed` event to the
app's webhook function.

The goal: p95 from the model's end to the callback within 2 s plus the copy time of the same file
on this rig (downloading it from the emulator, then uploading it, through the app's clients).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from bench.app import (
    BenchError,
    StorageCounter,
    app_settings,
    base_settings,
    call,
    download_only,
    functions,
    script,
    upload_only,
    uploader,
    warm,
)
from bench.plan import Plan
from code_interpreter_files.services import Services
from local_azure.queue_bindings import QueueSettings
from local_azure.queue_host import QueueHost
from tests.helpers import SECRET, signed_webhook
from tests.rig.rig import Rig

MODES = ("queue", "webhook")
COPY_REPS = 5
QUEUE_POLL_SECONDS = 0.1  # the Functions host polls 0.1 s after a message, backing off to maxPollingInterval


class _Receiver:
    """The caller's callback endpoint: when each run's callback arrived (the first delivery)."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.events: dict[str, asyncio.Event] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        now = time.time()
        rid = str(json.loads(await request.read()).get("response_id", ""))
        self.arrived.setdefault(rid, now)
        self.events.setdefault(rid, asyncio.Event()).set()
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/run-done", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hooks/run-done?token=bench"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait(self, rid: str, within: float) -> float:
        await asyncio.wait_for(self.events.setdefault(rid, asyncio.Event()).wait(), within)
        return self.arrived[rid]


class _ManifestTimes:
    """When Azurite answered each Put Blob of a manifest (wraps `send` of the app's blob transport,
    a private attribute, as bench.app.StorageCounter does; removed after)."""

    def __init__(self, services: Services) -> None:
        self.written: dict[str, float] = {}
        self._transport = services.store._service._pipeline._transport
        send = self._transport.send

        async def timed_send(request: Any, **kwargs: Any) -> Any:
            response = await send(request, **kwargs)
            path = urlsplit(request.url).path
            if request.method == "PUT" and path.endswith("/manifest.json") and response.status_code == 201:
                self.written.setdefault(path.rsplit("/", 2)[-2], time.time())
            return response

        self._transport.send = timed_send  # type: ignore[method-assign]

    def remove(self) -> None:
        del self._transport.send


async def _webhook_at_end(rig: Rig, rid: str) -> None:
    """Azure OpenAI's part: a signed `response.completed` event to the app once the model has ended."""
    ends_at = rig.emulator.run(rid)["ends_at"]
    await asyncio.sleep(max(0.0, ends_at - time.time()))
    event = {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "created_at": int(time.time()),
        "type": "response.completed",
        "data": {"id": rid},
    }
    body = json.dumps(event)
    status, answer = await call(
        "openai_webhook", "POST", "/api/openai-webhook", body.encode(), headers=signed_webhook(body, f"wh_{rid}")
    )
    if status != 200:
        raise BenchError(f"the webhook was answered {status}: {answer}")


async def _copy_time(services: Services, rig: Rig, rid: str, data: bytes) -> float:
    """The best this rig allows for the run's file: download it from the emulator, then upload it
    (through the app's clients), the median of COPY_REPS."""
    run = rig.emulator.run(rid)
    container, file_id = run["container_id"], run["files"][0]["file_id"]
    client = uploader(services)
    times = []
    try:
        for _ in range(COPY_REPS):
            started = time.perf_counter()
            if await download_only(services, container, file_id) != len(data):
                raise BenchError("the copy baseline downloaded the wrong number of bytes")
            await upload_only(client, services.settings.output_container, f"bench-{uuid.uuid4().hex}.txt", data)
            times.append(time.perf_counter() - started)
    finally:
        await client.close()
    return statistics.median(times)


def _percentiles(values: list[float]) -> dict[str, float]:
    p95 = statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) >= 2 else values[0]
    return {"median_s": statistics.median(values), "p95_s": p95, "max_s": max(values)}


def _latencies(plan: Plan) -> list[float]:
    """Each run's model latency, spread evenly over the plan's range: the follower polls a running model
    0.1 s after it starts, then 1.5 times later each time, at most every 2 s (responses_api), so when a
    run ends within that cycle decides what the polling adds; runs past ~5 s all poll every 2 s."""
    low, high = plan.latency_model_s
    n = plan.latency_runs
    return [low + (high - low) * i / max(1, n - 1) for i in range(n)]


async def _one(
    rig: Rig, receiver: _Receiver, manifests: _ManifestTimes, prompt: str, mode: str
) -> tuple[str, float, float]:
    """Post one run with wait false and a callback; (its id, model end to callback, to manifest)."""
    body = json.dumps({"prompt": prompt, "wait": False, "callback_url": receiver.url}).encode()
    status, answer = await call("create_run", "POST", "/api/runs", body)
    if status != 202:
        raise BenchError(f"POST /api/runs with wait false answered {status}: {json.dumps(answer)[:300]}")
    rid = answer["response_id"]
    webhook = asyncio.create_task(_webhook_at_end(rig, rid)) if mode == "webhook" else None
    arrived = await receiver.wait(rid, within=120)
    if webhook is not None:
        await webhook
    ends_at = rig.emulator.run(rid)["ends_at"]
    return rid, arrived - ends_at, manifests.written[rid] - ends_at


async def queue_latency(rig: Rig, plan: Plan) -> dict[str, Any]:
    """Each pair of runs (same model latency) at once: one finished by the queue alone, one whose end
    Azure OpenAI announces with a webhook. One set of app settings for both, AZURE_OPENAI_WEBHOOK_SECRET
    included: the secret changes nothing for a run no webhook comes for (only the webhook route reads it).

    The queue triggers: one QueueHost listening as the Functions host does (`QueueHost.listen`): a new
    batch while at most newBatchThreshold messages run, polling backed off up to maxPollingInterval
    (host.json) while the queues are empty: a message queued during a long run waits for that poll."""
    settings: dict[str, Any] = {
        **base_settings(plan),
        "RUNS_QUEUE": f"benchlatency{uuid.uuid4().hex[:8]}",
        "CALLBACK_ALLOWED_HOSTS": "127.0.0.1",
        "CALLBACK_SIGNING_SECRET": SECRET,
        "AZURE_OPENAI_WEBHOOK_SECRET": SECRET,
    }
    content = "a,b\n1,2\n"
    files = [{"path": "/mnt/data/result.csv", "content": content}]
    runs = [script(rig, files, latency) for latency in _latencies(plan)]
    receiver = _Receiver()
    samples: dict[str, dict[str, list[float]]] = {m: {"to_callback": [], "to_manifest": []} for m in MODES}
    with app_settings(rig, **settings):
        services = await warm(rig)
        await receiver.start()
        manifests = _ManifestTimes(services)
        counter = StorageCounter(services)  # the app's own requests (the queue host has its own clients)
        stop = asyncio.Event()
        host = QueueHost(functions().values(), environ=os.environ, poll_seconds=QUEUE_POLL_SECONDS)
        listener = asyncio.create_task(host.listen(stop))
        try:
            for prompt, _specs in runs:
                pair = await asyncio.gather(*(_one(rig, receiver, manifests, prompt, mode) for mode in MODES))
                for mode, (_rid, to_callback, to_manifest) in zip(MODES, pair, strict=True):
                    samples[mode]["to_callback"].append(to_callback)
                    samples[mode]["to_manifest"].append(to_manifest)
            last = pair[-1][0]
            counts = counter.take()
            specs = runs[-1][1]
            status, answer = await call("get_run", "GET", f"/api/runs/{last}", route_params={"response_id": last})
            if status != 200 or [(f["bytes"], f["sha256"]) for f in answer["files"]] != [
                (specs[0]["bytes"], specs[0]["sha256"])
            ]:
                raise BenchError(f"the last run answered {status} without its file")
            copy_s = await _copy_time(services, rig, last, content.encode())
        finally:
            stop.set()
            await asyncio.gather(listener, return_exceptions=True)
            await host.close()
            counter.remove()  # put on last, taken off first
            manifests.remove()
            await receiver.stop()
    results: dict[str, Any] = {
        "runs": plan.latency_runs,
        "model_latency_s": list(plan.latency_model_s),
        "queue_poll_s": [QUEUE_POLL_SECONDS, QueueSettings.from_host_json().max_polling_interval_seconds],
        "copy_s": copy_s,
        "goal_s": 2.0 + copy_s,
        # both modes together (their runs overlap): the webhook's marker, message and second finish included
        "storage_requests_per_run": sum(counts.values()) / (2 * plan.latency_runs),
        "storage_requests_by_kind_per_run": {k: v / (2 * plan.latency_runs) for k, v in sorted(counts.items())},
    }
    for mode in MODES:
        callback = _percentiles(samples[mode]["to_callback"])
        results[mode] = {
            "to_callback": callback,
            "to_manifest": _percentiles(samples[mode]["to_manifest"]),
            "p95_vs_goal": callback["p95_s"] / (2.0 + copy_s),
            "samples_to_callback_s": samples[mode]["to_callback"],
        }
    return results
