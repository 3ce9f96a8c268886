"""The test host itself: routes from the app's bindings, and the same app served from a separate process."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx

import function_app
from local_azure.funchost import FuncHost, route_pattern
from tests.helpers import ci_files, hello_script
from tests.rig.rig import Rig

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


async def test_subprocess_host_serves_a_whole_run(rig: Rig, tmp_path: Path) -> None:
    """`python -m local_azure.funchost --port 0` with the rig's app environment, as an operator sets it."""
    env = {k: v for k, v in os.environ.items() if k not in Rig.ENV_NAMES}
    env.update(rig.app_env("identity", "identity"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "local_azure.funchost",
        "--port",
        "0",
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
        assert line.startswith("READY http://127.0.0.1:"), line
        url = line.split()[1]
        async with httpx.AsyncClient() as http:
            health = await http.get(f"{url}/api/health")
        assert health.status_code == 200 and health.json()["configured"] is True
        assert health.headers["content-type"].startswith("application/json")

        result = await ci_files("run", hello_script(rig), url=url, cwd=tmp_path)
        assert result.code == 0, result.err + result.out
        assert (tmp_path / "downloads" / "test.txt").read_bytes() == b"hello world"
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
