"""Every way `ci-files` can fail, run as a subprocess: one readable line on stderr that names the user's own option
(--url, CI_FILES_URL, --ttl, --key, --input...) and the fix, and its exit code; the service's errors for real
through the minimal host and the rig, and every documented error code from a stand-in server."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from ci_files_client.errors import HINTS, Exit
from code_interpreter_files.http_api import error_codes
from local_azure.funchost import FuncHost
from tests.helpers import assert_one_error_line, ci_files
from tests.rig.rig import Rig

REPO_ROOT = Path(__file__).resolve().parents[1]

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


async def test_errors_name_the_users_option_and_the_fix(rig: Rig, funchost: FuncHost, tmp_path: Path) -> None:
    url = funchost.url
    bad = assert_one_error_line(await ci_files("run", "x", "--url", "not-a-url", url=url, cwd=tmp_path), "invalid_url")
    assert "--url not-a-url is not the address of a service" in bad and "--url http://localhost:7071" in bad
    from_env = await ci_files("get", "resp_1", url="localhost:7071", cwd=tmp_path)
    assert "CI_FILES_URL=localhost:7071" in assert_one_error_line(from_env, "invalid_url")
    route = assert_one_error_line(await ci_files("get", "resp_1", url=f"{url}/api/runs", cwd=tmp_path), "invalid_url")
    assert f"export CI_FILES_URL={url}" in route

    https = "https://" + url.split("://", 1)[1]
    tls = assert_one_error_line(await ci_files("get", "resp_1", "--url", https, url=url, cwd=tmp_path), "tls_mismatch")
    assert "but not over https (TLS)" in tls and f"use --url {url}" in tls
    nothing = assert_one_error_line(
        await ci_files("get", "resp_x", url="http://127.0.0.1:9", cwd=tmp_path), "unreachable"
    )
    assert "scripts/start.sh --offline" in nothing and "CI_FILES_URL" in nothing

    ttl = assert_one_error_line(
        await ci_files("run", "--ttl", "99999", "Make a file", url=url, cwd=tmp_path), "invalid_request"
    )
    assert "--ttl 99999" in ttl and "sas_ttl_minutes" not in ttl and "pass a smaller --ttl" in ttl

    expired = rig.emulator.add_script(
        {"files": [{"path": "/mnt/data/a.txt", "content": "a"}], "container_expires": "before_list"}
    )
    gone = assert_one_error_line(
        await ci_files("run", f"Expire {expired['marker']}", url=url, cwd=tmp_path), "container_expired"
    )
    assert gone.count("prompt again") == 1, gone

    (tmp_path / "big.csv").write_bytes(b"1\n" * 300_000)
    big = assert_one_error_line(
        await ci_files("run", "--input", "big.csv", "Read it", url=url, cwd=tmp_path), "input_too_large_inline"
    )
    assert "--input big.csv (600,000 bytes)" in big
    assert "az storage blob upload" in big and "--name big.csv --file big.csv" in big and "--input-blob big.csv" in big


async def test_no_key_and_a_wrong_key_are_told_apart(tmp_path: Path) -> None:
    """A host that wants a function key answers 401 without a body (as the Functions host does)."""

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=401)

    server = web.Application()
    server.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        none = assert_one_error_line(await ci_files("get", "resp_1", url=url, cwd=tmp_path), "key_missing")
        wrong = assert_one_error_line(
            await ci_files("get", "resp_1", "--key", "nope", url=url, cwd=tmp_path), "unauthorized"
        )
        env_key = await ci_files("get", "resp_1", url=url, cwd=tmp_path, env={"CI_FILES_KEY": "nope"})
    finally:
        await runner.cleanup()
    assert "none was given" in none and "export CI_FILES_KEY=" in none
    assert "refused the function key given with --key" in wrong
    assert "refused the function key given with CI_FILES_KEY" in assert_one_error_line(env_key, "unauthorized")
    for line in (none, wrong):
        assert "az functionapp keys list --resource-group <group> --name <app>" in line
        assert "func keys list" not in line and "nope" not in line


async def test_service_errors_for_real(
    rig: Rig, funchost: FuncHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Errors the app really answers through the host, each one line with its exit code."""
    url = funchost.url
    assert_one_error_line(await ci_files("get", "not a run id", url=url, cwd=tmp_path), "invalid_run_id")
    assert_one_error_line(await ci_files("get", "resp_doesnotexist", url=url, cwd=tmp_path), "run_not_found")
    failing = rig.emulator.add_script({"status": "failed", "files": []})
    assert_one_error_line(await ci_files("run", f"Fail {failing['marker']}", url=url, cwd=tmp_path), "run_failed")
    monkeypatch.delenv("AZURE_OPENAI_DEPLOYMENT")
    unconfigured = await ci_files("run", "Make a file", url=url, cwd=tmp_path)
    assert "AZURE_OPENAI_DEPLOYMENT" in assert_one_error_line(unconfigured, "not_configured")


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
    the host's empty 401 (with a key sent) and 404 too."""
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
            result = await ci_files("get", "resp_1", "--key", "k", url=f"http://127.0.0.1:{port}/{code}", cwd=tmp_path)
        assert_one_error_line(result, code)
        if code not in ("unauthorized", "route_not_found"):
            assert f"the service said {code}" in result.err and "[invocation inv-1]" in result.err

    try:
        await asyncio.gather(*(check(code) for code in [*codes, "unauthorized", "route_not_found"]))
    finally:
        await runner.cleanup()
    assert {HINTS[code].exit for code in codes} >= {Exit.BAD_REQUEST, Exit.RUN_GONE, Exit.TRY_AGAIN}


async def test_list_all_stops_at_a_failing_page_or_a_cursor_that_never_moves(tmp_path: Path) -> None:
    """A stand-in service: the second page fails (`--all`: the first page stays on screen, `--json --all` leaves
    its list open rather than pass part of the runs for all of them); one whose cursor never moves; one older
    than `GET /api/runs`."""
    run = {
        "response_id": "resp_1",
        "created_at": "2026-01-02T03:04:05Z",
        "status": "completed",
        "prompt": "p",
        "files": 1,
        "bytes": 11,
        "previous_response_id": None,
        "error": None,
    }

    async def failing(request: web.Request) -> web.Response:
        if request.query.get("cursor") == "c1":
            body = {"error": {"code": "storage_error", "message": "the runs table failed."}}
            return web.json_response(body, status=503)
        return web.json_response({"runs": [run], "next_cursor": "c1"})

    async def looping(request: web.Request) -> web.Response:
        return web.json_response({"runs": [run], "next_cursor": "c1"})

    server = web.Application()
    server.router.add_get("/failing/api/runs", failing)
    server.router.add_get("/looping/api/runs", looping)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        table = await ci_files("list", "--all", url=f"{base}/failing", cwd=tmp_path)
        streamed = await ci_files("list", "--all", "--json", url=f"{base}/failing", cwd=tmp_path)
        first = await ci_files("list", "--json", url=f"{base}/failing", cwd=tmp_path)
        loop = await ci_files("list", "--all", url=f"{base}/looping", cwd=tmp_path)
        older = await ci_files("list", url=f"{base}/older", cwd=tmp_path)
    finally:
        await runner.cleanup()
    assert "#1 resp_1" in table.out and "storage_error" in assert_one_error_line(table, "storage_error")
    assert_one_error_line(streamed, "storage_error")
    assert streamed.out.startswith("[\n  {") and "resp_1" in streamed.out and "storage_error" not in streamed.out
    assert streamed.out.rstrip().endswith("}"), streamed.out  # the list is left open: not valid JSON
    assert json.loads(first.out) == {"runs": [run], "next_cursor": "c1"}  # one page, as it came
    assert "the same next_cursor twice" in assert_one_error_line(loop, "bad_answer")
    assert "deploy the current version" in assert_one_error_line(older, "route_not_found")
