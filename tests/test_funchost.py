"""The minimal local host: routes from the app's bindings, and the same app served from a separate process with
its queue triggers (what scripts/start.sh --offline runs)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from pathlib import Path

import azure.functions as func
import httpx

import function_app
from local_azure.funchost import FuncHost, route_pattern, unserved
from tests.helpers import ci_files, hello_script, storage_names
from tests.rig.rig import Rig

RUN_ID = re.compile(r"\bresp_[A-Za-z0-9_-]+")

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_routes_come_from_the_app_bindings() -> None:
    host = FuncHost(function_app.app)
    assert {(r.name, m) for r in host.routes for m in r.methods} >= {
        ("create_run", "POST"),
        ("get_run", "GET"),
        ("delete_run", "DELETE"),
        ("health", "GET"),
    }
    found = host.match("GET", "/api/runs/resp_a%2Fb")
    assert found is not None and found[0].name == "get_run" and found[1] == {"response_id": "resp_a/b"}
    assert host.match("PUT", "/api/runs/resp_1") is None
    assert host.match("GET", "/runs/resp_1") is None  # the /api prefix is required
    assert route_pattern("items/{id:int}/{rest?}").fullmatch("/api/items/7") is not None


class Recorder:
    """A companion (what a queue poller would be) that records when the host starts and stops it."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def start(self) -> None:
        self.events.append("start")

    async def stop(self) -> None:
        self.events.append("stop")


async def test_companions_run_with_the_host() -> None:
    recorder = Recorder()
    async with FuncHost(function_app.app, companions=[recorder]) as host:
        assert recorder.events == ["start"]
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{host.url}/api/nothing-here")).status_code == 404
    assert recorder.events == ["start", "stop"]


async def test_subprocess_host_serves_a_whole_run_and_its_queue(rig: Rig, tmp_path: Path) -> None:
    """`python -m local_azure.funchost --port 0 --companion local_azure.queue_instances:companion` with the rig's app
    environment, as an operator sets it: HTTP and the queue trigger in one process (a queue of its own here)."""
    env = {k: v for k, v in os.environ.items() if k not in Rig.ENV_NAMES}
    env.update(rig.app_env("identity", "identity"), RUNS_QUEUE=f"funchost-{uuid.uuid4().hex[:8]}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "local_azure.funchost",
        "--port",
        "0",
        "--companion",
        "local_azure.queue_instances:companion",
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
        assert line.startswith("READY http://127.0.0.1:"), line
        assert (await proc.stdout.readline()).decode().strip() == "UNSERVED sweep_runs (timerTrigger)"
        url = line.split()[1]
        async with httpx.AsyncClient() as http:
            health = await http.get(f"{url}/api/health")
        assert health.status_code == 200 and health.json()["configured"] is True
        assert health.headers["content-type"].startswith("application/json")

        result = await ci_files("run", hello_script(rig), url=url, cwd=tmp_path)
        assert result.code == 0, result.err + result.out
        run_id = RUN_ID.findall(result.out)[0]
        assert (tmp_path / "downloads" / run_id / "test.txt").read_bytes() == b"hello world"
        request_lines = [(await proc.stdout.readline()).decode().strip() for _ in range(3)]
        assert request_lines[0].startswith("GET /api/health -> 200 health (")
        assert request_lines[2].startswith("POST /api/runs -> 202 create_run (")

        # Started without waiting and never fetched: only the queue trigger can finish it.
        started = await ci_files("run", "--no-wait", hello_script(rig), url=url, cwd=tmp_path)
        queued_id = RUN_ID.findall(started.out)[0]
        for _ in range(300):
            if f"{queued_id}/manifest.json" in storage_names(rig, queued_id):
                break
            await asyncio.sleep(0.1)
        assert sorted(name.rsplit("/", 1)[-1] for name in storage_names(rig, queued_id)) == [
            "manifest.json",
            "test.txt",
        ]
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0


def test_a_route_the_app_adds_is_served_and_other_triggers_are_named() -> None:
    """Nothing is hard-coded: any HTTP route the app indexes is served; a timer trigger is reported as not run."""
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="runs", methods=["GET"])
    def list_runs(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("[]")

    @app.timer_trigger(arg_name="timer", schedule="0 0 3 * * *")
    def retention(timer: func.TimerRequest) -> None:
        return None

    host = FuncHost(app)
    found = host.match("GET", "/api/runs")
    assert found is not None and found[0].name == "list_runs"
    assert unserved(app) == ["retention (timerTrigger)"]
    assert unserved(function_app.app) == ["sweep_runs (timerTrigger)"]  # the retention timer
