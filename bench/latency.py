"""11. The latency users feel (issue 22 item 5): from the model's end to the run's answer, for runs
posted with `wait: false` and finished by the queue, with and without Azure OpenAI webhooks.

Each run: POST /api/runs with `wait: false` and a `callback_url` (a receiver on loopback, as the
tests' one), one small file, a model latency of `latency_model_s`. The queue triggers run in this
process (`local_azure.queue_host`, as the tests' `host` fixture runs them), two pollers: the Functions
host fetches the next batch while one runs (host.json batchSize 4, newBatchThreshold 2), and one
in-process QueueHost waits for its whole batch, which would hold the webhook's message behind the
follower's. Runs go one at a time: the figure is a run's own latency, not a queue's backlog.

Times, all on this machine's clock: the model's end is the emulator's (`ends_at` of its run view);
the manifest written is when Azurite answered the app's Put Blob of `manifest.json` (seen on the
app's blob transport, bench only); the callback is when the receiver got it. With webhooks
(AZURE_OPENAI_WEBHOOK_SECRET set), the bench plays Azure OpenAI: at the model's end it posts a
signed `response.completed` event to the app's webhook function.

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
from local_azure.queue_host import QueueHost
from tests.helpers import SECRET, signed_webhook
from tests.rig.rig import Rig

MODES = ("queue", "webhook")
COPY_REPS = 5
QUEUE_POLL_SECONDS = 0.1  # the Functions host's shortest polling interval (it backs off from it when idle)


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


async def _mode(rig: Rig, plan: Plan, mode: str) -> dict[str, Any]:
    settings: dict[str, Any] = {
        **base_settings(plan),
        "RUNS_QUEUE": f"bench{mode}{uuid.uuid4().hex[:8]}",
        "CALLBACK_ALLOWED_HOSTS": "127.0.0.1",
        "CALLBACK_SIGNING_SECRET": SECRET,
    }
    if mode == "webhook":
        settings["AZURE_OPENAI_WEBHOOK_SECRET"] = SECRET
    content = "a,b\n1,2\n"
    prompt, specs = script(rig, [{"path": "/mnt/data/result.csv", "content": content}], plan.latency_model_s)
    receiver = _Receiver()
    with app_settings(rig, **settings):
        services = await warm(rig)
        await receiver.start()
        manifests = _ManifestTimes(services)
        stop = asyncio.Event()
        hosts = [QueueHost(functions().values(), environ=os.environ, poll_seconds=QUEUE_POLL_SECONDS) for _ in range(2)]
        pollers = [asyncio.create_task(h.run_forever(stop)) for h in hosts]
        to_callback: list[float] = []
        to_manifest: list[float] = []
        rids: list[str] = []
        try:
            body = json.dumps({"prompt": prompt, "wait": False, "callback_url": receiver.url}).encode()
            for _ in range(plan.latency_runs):
                status, answer = await call("create_run", "POST", "/api/runs", body)
                if status != 202:
                    raise BenchError(f"POST /api/runs with wait false answered {status}: {json.dumps(answer)[:300]}")
                rid = answer["response_id"]
                webhook = asyncio.create_task(_webhook_at_end(rig, rid)) if mode == "webhook" else None
                arrived = await receiver.wait(rid, within=60 + plan.latency_model_s)
                if webhook is not None:
                    await webhook
                ends_at = rig.emulator.run(rid)["ends_at"]
                to_callback.append(arrived - ends_at)
                to_manifest.append(manifests.written[rid] - ends_at)
                rids.append(rid)
            status, answer = await call(
                "get_run", "GET", f"/api/runs/{rids[-1]}", route_params={"response_id": rids[-1]}
            )
            if status != 200 or [(f["bytes"], f["sha256"]) for f in answer["files"]] != [
                (specs[0]["bytes"], specs[0]["sha256"])
            ]:
                raise BenchError(f"the last run answered {status} without its file")
            copy_s = await _copy_time(services, rig, rids[-1], content.encode())
        finally:
            stop.set()
            await asyncio.gather(*pollers, return_exceptions=True)
            for host in hosts:
                await host.close()
            manifests.remove()
            await receiver.stop()
    callback, manifest = _percentiles(to_callback), _percentiles(to_manifest)
    return {
        "runs": plan.latency_runs,
        "model_latency_s": plan.latency_model_s,
        "to_callback": callback,
        "to_manifest": manifest,
        "copy_s": copy_s,
        "goal_s": 2.0 + copy_s,
        "p95_vs_goal": callback["p95_s"] / (2.0 + copy_s),
        "samples_to_callback_s": to_callback,
    }


async def queue_latency(rig: Rig, plan: Plan) -> dict[str, Any]:
    results = {mode: await _mode(rig, plan, mode) for mode in MODES}
    return {**results, "queue_poll_s": QUEUE_POLL_SECONDS}
