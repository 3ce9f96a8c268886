"""The `ci-files` command, run as a subprocess against the function app served over HTTP (local_azure/funchost.py)
with the real rig behind it: downloads, waiting, overwriting, and one readable line per error code."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import yaml
from aiohttp import web

import function_app
from ci_files_client.errors import HINTS, Exit
from code_interpreter_files.http_api import error_codes
from local_azure.funchost import FuncHost
from tests.helpers import Result, ci_files, hello_script
from tests.rig.rig import Rig

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_ID = re.compile(r"\bresp_[A-Za-z0-9_-]+")

# Error codes the contract adds to openapi.yaml's (some land in parallel); each needs a line and exit code.
CONTRACT_CODES = {
    "rate_limited": 429,
    "run_deleted": 409,
    "input_not_found": 400,
    "input_too_large": 413,
    "too_many_inputs": 400,
    "input_upload_failed": 502,
    "callback_not_allowed": 400,
    "invalid_webhook_signature": 401,
    "webhook_not_configured": 404,
}


@pytest.fixture
async def funchost(configure: Callable[..., dict[str, str]]) -> AsyncIterator[FuncHost]:
    """The app on a loopback port, on the session's event loop (where its async clients live)."""
    async with FuncHost(function_app.app) as host:
        yield host


def assert_one_error_line(result: Result, code: str) -> None:
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"error {code}"), lines[0]
    assert "What to do: " in lines[0]
    assert "Traceback" not in result.out + result.err
    assert result.code == HINTS[code].exit != 0, (result.code, result.err)


async def test_run_downloads_test_txt(rig: Rig, funchost: FuncHost, tmp_path: Path) -> None:
    result = await ci_files("run", hello_script(rig), url=funchost.url, cwd=tmp_path)

    assert result.code == 0, result.err + result.out
    saved = tmp_path / "downloads" / "test.txt"
    assert saved.read_bytes() == b"hello world"
    steps = re.findall(r"^\[(\d)/5\]", result.out, re.MULTILINE)
    assert steps == ["1", "2", "3", "4", "5"], result.out
    table_row = next(line for line in result.out.splitlines() if "test.txt" in line and "text/plain" in line)
    assert "11 bytes" in table_row and "cited" in table_row
    digest = hashlib.sha256(b"hello world").hexdigest()
    assert f"saved {saved}  (11 bytes, sha256 {digest[:16]}... verified)" in result.out
    assert [name for name, _ in funchost.invocations] == ["health", "create_run"]


async def test_run_polls_location_after_a_202(
    rig: Rig, funchost: FuncHost, tmp_path: Path, configure: Callable[..., dict[str, str]]
) -> None:
    """The service stops waiting after RUN_WAIT_SECONDS and answers 202: the client polls `Location`."""
    configure(RUN_WAIT_SECONDS="1")
    result = await ci_files("run", hello_script(rig, latency=3), url=funchost.url, cwd=tmp_path)

    assert result.code == 0, result.err + result.out
    assert (tmp_path / "downloads" / "test.txt").read_bytes() == b"hello world"
    assert funchost.invocations[:2] == [("health", 200), ("create_run", 202)]
    assert funchost.invocations[-1] == ("get_run", 200)


async def test_no_wait_then_get(rig: Rig, funchost: FuncHost, tmp_path: Path) -> None:
    started = await ci_files("run", "--no-wait", hello_script(rig, latency=0.5), url=funchost.url, cwd=tmp_path)
    assert started.code == 0, started.err
    assert re.findall(r"^\[(\d)/3\]", started.out, re.MULTILINE) == ["1", "2", "3"]
    run_id = RUN_ID.findall(started.out.split("ci-files get", 1)[1])[0]
    assert not (tmp_path / "downloads").exists()

    fetched = await ci_files("get", run_id, "--ttl", "5", url=funchost.url, cwd=tmp_path)
    assert fetched.code == 0, fetched.err + fetched.out
    assert (tmp_path / "downloads" / "test.txt").read_bytes() == b"hello world"
    assert ("get_run", 200) in funchost.invocations

    deleted = await ci_files("delete", run_id, url=funchost.url, cwd=tmp_path)
    assert deleted.code == 0 and "[1/1]" in deleted.out, deleted.err
    gone = await ci_files("get", run_id, url=funchost.url, cwd=tmp_path)
    assert gone.code != 0
    assert_one_error_line(gone, gone.err.split()[1])


async def test_input_file_is_sent_inline(rig: Rig, funchost: FuncHost, tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    result = await ci_files("run", "--input", "data.csv", hello_script(rig), url=funchost.url, cwd=tmp_path)

    assert result.code == 0, result.err + result.out
    assert "      input: data.csv (8 bytes)" in result.out.splitlines()
    assert (tmp_path / "downloads" / "test.txt").read_bytes() == b"hello world"


async def test_continue_a_run(rig: Rig, funchost: FuncHost, tmp_path: Path) -> None:
    first = await ci_files("run", "--json", hello_script(rig), url=funchost.url, cwd=tmp_path)
    assert first.code == 0, first.err
    run_id = RUN_ID.findall(first.out)[0]

    second = await ci_files("run", "--continue", run_id, hello_script(rig), url=funchost.url, cwd=tmp_path)
    assert second.code == 0, second.err + second.out
    assert "      continued in the same container" in second.out.splitlines()


async def test_existing_file_is_not_overwritten(rig: Rig, funchost: FuncHost, tmp_path: Path) -> None:
    mine = tmp_path / "downloads" / "test.txt"
    mine.parent.mkdir()
    mine.write_text("my own notes")

    refused = await ci_files("run", "--json", hello_script(rig), url=funchost.url, cwd=tmp_path)
    assert refused.code == 0  # --json only prints the answer: nothing is written
    run_id = RUN_ID.findall(refused.out)[0]
    kept = await ci_files("get", run_id, url=funchost.url, cwd=tmp_path)

    assert_one_error_line(kept, "file_exists")
    assert mine.read_text() == "my own notes"
    assert sorted(p.name for p in mine.parent.iterdir()) == ["test.txt"]  # no partial file left behind

    replaced = await ci_files("get", run_id, "--overwrite", url=funchost.url, cwd=tmp_path)
    assert replaced.code == 0, replaced.err
    assert mine.read_text() == "hello world"


async def test_service_errors_for_real(
    rig: Rig, funchost: FuncHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Errors the app really answers through the host, each one line with its exit code."""
    url = funchost.url
    assert_one_error_line(await ci_files("get", "not a run id", url=url, cwd=tmp_path), "invalid_run_id")
    assert_one_error_line(await ci_files("get", "resp_doesnotexist", url=url, cwd=tmp_path), "run_not_found")
    assert_one_error_line(
        await ci_files("run", "--ttl", "999999", "Make a file", url=url, cwd=tmp_path), "invalid_request"
    )
    failing = rig.emulator.add_script({"status": "failed", "files": []})
    assert_one_error_line(await ci_files("run", f"Fail {failing['marker']}", url=url, cwd=tmp_path), "run_failed")
    expired = rig.emulator.add_script(
        {"files": [{"path": "/mnt/data/a.txt", "content": "a"}], "container_expires": "before_list"}
    )
    assert_one_error_line(
        await ci_files("run", f"Expire {expired['marker']}", url=url, cwd=tmp_path), "container_expired"
    )
    monkeypatch.delenv("AZURE_OPENAI_DEPLOYMENT")
    unconfigured = await ci_files("run", "Make a file", url=url, cwd=tmp_path)
    assert_one_error_line(unconfigured, "not_configured")
    assert "AZURE_OPENAI_DEPLOYMENT" in unconfigured.err
    assert_one_error_line(await ci_files("get", "resp_x", url="http://127.0.0.1:9", cwd=tmp_path), "unreachable")


def every_error_code() -> dict[str, int]:
    """openapi.yaml's error codes (the Error enum) with the status whose description names each,
    and the contract's additions."""
    spec = yaml.safe_load((REPO_ROOT / "openapi.yaml").read_text())
    enum = spec["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    statuses: dict[str, int] = {}
    for path in spec["paths"].values():
        for operation in path.values():
            if not isinstance(operation, dict):
                continue  # path-level `parameters`
            for status, response in (operation.get("responses") or {}).items():
                name = response.get("$ref", "").rsplit("/", 1)[-1]
                description = spec["components"]["responses"].get(name, {}).get("description", "")
                for code in re.findall(r"`([a-z_]+)`", description):
                    statuses.setdefault(code, int(status))
    return {**CONTRACT_CODES, **raised_by_the_app(), **{code: statuses.get(code, 500) for code in enum}}


def raised_by_the_app() -> dict[str, int]:
    """Every error code the app can answer, and its status (http_api's one mapping)."""
    return error_codes()


async def test_every_error_code_is_one_line_and_an_exit_code(tmp_path: Path) -> None:
    """A server answering each documented error body: every code has its own hint and exit code;
    the host's empty 401/404 too."""
    codes = every_error_code()
    assert len(raised_by_the_app()) >= 15
    assert set(codes) <= set(HINTS), f"codes without a hint in ci_files_client/errors.py: {set(codes) - set(HINTS)}"

    async def answer(request: web.Request) -> web.Response:
        code = request.match_info["code"]
        if code in ("unauthorized", "route_not_found"):
            return web.Response(status=401 if code == "unauthorized" else 404)
        body = {"error": {"code": code, "message": f"the service said {code}.", "invocation_id": "inv-1"}}
        headers = {"Retry-After": "7"} if code == "rate_limited" else None
        return web.json_response(body, status=codes[code], headers=headers)

    server = web.Application()
    server.router.add_get("/{code}/api/runs/{id}", answer)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    limit = asyncio.Semaphore(4)

    async def check(code: str) -> None:
        async with limit:
            result = await ci_files("get", "resp_1", url=f"http://127.0.0.1:{port}/{code}", cwd=tmp_path)
        assert_one_error_line(result, code)
        if code not in ("unauthorized", "route_not_found"):
            assert f"the service said {code}" in result.err and "[invocation inv-1]" in result.err

    try:
        await asyncio.gather(*(check(code) for code in [*codes, "unauthorized", "route_not_found"]))
    finally:
        await runner.cleanup()
    assert {HINTS[code].exit for code in codes} >= {Exit.BAD_REQUEST, Exit.RUN_GONE, Exit.TRY_AGAIN}
