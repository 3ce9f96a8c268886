"""The `ci-files` command, run as a subprocess against the function app served over HTTP (local_azure/funchost.py)
with the real rig behind it: the run id first, links and their expiry, downloads per run, Ctrl-C, images and
--open, and one readable line per error that names the user's own option and the fix."""

from __future__ import annotations

import ast
import asyncio
import base64
import hashlib
import os
import re
import signal
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import yaml
from aiohttp import web

import function_app
from ci_files_client.errors import HINTS, Exit
from local_azure.funchost import FuncHost
from local_azure.png import MINIMUM, png_of_size
from tests.helpers import CI_FILES, Result, ci_files, ci_files_environ, hello_script
from tests.rig.rig import Rig

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_ID = re.compile(r"\bresp_[A-Za-z0-9_-]+")
LINK = re.compile(r"^      #(\d+) (https://\S+)$", re.MULTILINE)

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


def assert_one_error_line(result: Result, code: str) -> str:
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"error {code}"), lines[0]
    assert "What to do: " in lines[0]
    assert "Traceback" not in result.out + result.err
    assert result.code == HINTS[code].exit != 0, (result.code, result.err)
    return lines[0]


async def fetch(link: str) -> bytes:
    """A link as anyone holding it would read it (the rig's Azurite trusts the test CA)."""
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])) as http:
        return (await http.get(link)).content


def run_folder(cwd: Path, out: str) -> Path:
    return cwd / "downloads" / RUN_ID.findall(out)[0]


async def test_run_shows_its_id_first_then_the_links_and_downloads_per_run(
    rig: Rig, funchost: FuncHost, tmp_path: Path
) -> None:
    result = await ci_files("run", hello_script(rig, latency=1), url=funchost.url, cwd=tmp_path, env={"COLUMNS": "100"})

    assert result.code == 0, result.err + result.out
    steps = re.findall(r"^\[(\d)/5\]", result.out, re.MULTILINE)
    assert steps == ["1", "2", "3", "4", "5"], result.out
    run_id = RUN_ID.findall(result.out)[0]
    assert result.out.index(f"run id {run_id}") < result.out.index("[3/5] Waiting")
    # The run was started without holding the request open, then followed with GET.
    assert funchost.invocations[:2] == [("health", 200), ("create_run", 202)]
    assert funchost.invocations[-1] == ("get_run", 200)
    assert re.search(r"^      status: completed after \d+\.\d s$", result.out, re.MULTILINE), result.out
    table = [line for line in result.out.splitlines() if line[:1] in "┏┃┡│└"]
    assert table and max(len(line) for line in table) <= 100, "\n".join(table)
    row = next(line for line in table if "test.txt" in line)
    assert "11 bytes" in row and "text/plain" in row and "cited" in row and "UTC" in row
    ((number, link),) = LINK.findall(result.out)
    assert number == "1" and "/test.txt?" in link and "sig=" in link and "se=" in link
    assert await fetch(link) == b"hello world"
    saved = tmp_path / "downloads" / run_id / "test.txt"
    assert saved.read_bytes() == b"hello world"
    digest = hashlib.sha256(b"hello world").hexdigest()
    assert f"saved {saved}  (11 bytes, sha256 {digest[:16]}... verified)" in result.out

    again = await ci_files("run", hello_script(rig), url=funchost.url, cwd=tmp_path)
    assert again.code == 0, again.err + again.out  # a second run never collides with the first
    assert len(list((tmp_path / "downloads").iterdir())) == 2


async def test_get_prints_fresh_links_and_links_only_prints_just_them(
    rig: Rig, funchost: FuncHost, tmp_path: Path
) -> None:
    first = await ci_files("run", "--no-download", hello_script(rig), url=funchost.url, cwd=tmp_path)
    assert first.code == 0, first.err
    run_id = RUN_ID.findall(first.out)[0]
    ((_, old_link),) = LINK.findall(first.out)
    assert not (tmp_path / "downloads").exists()

    fresh = await ci_files("get", run_id, "--ttl", "5", "--no-download", url=funchost.url, cwd=tmp_path)
    assert fresh.code == 0, fresh.err
    ((_, new_link),) = LINK.findall(fresh.out)
    assert new_link != old_link and "(in 5 min)" in fresh.out

    links = await ci_files("get", run_id, "--links-only", url=funchost.url, cwd=tmp_path)
    assert links.code == 0 and links.err == "", links.err
    (only,) = links.out.splitlines()
    assert only.startswith("https://") and await fetch(only) == b"hello world"
    assert not (tmp_path / "downloads").exists()


async def test_options_before_the_command(rig: Rig, funchost: FuncHost, tmp_path: Path) -> None:
    result = await ci_files(
        "--url", funchost.url, "--out", "mine", "run", hello_script(rig), url="http://127.0.0.1:9", cwd=tmp_path
    )
    assert result.code == 0, result.err + result.out
    run_id = RUN_ID.findall(result.out)[0]
    assert (tmp_path / "mine" / run_id / "test.txt").read_bytes() == b"hello world"

    wrong = await ci_files("--out", "x", "delete", run_id, url=funchost.url, cwd=tmp_path)
    assert "--out applies to `run` and `get`, not `delete`" in assert_one_error_line(wrong, "option_not_for_command")


async def test_no_wait_then_get_then_delete(rig: Rig, funchost: FuncHost, tmp_path: Path) -> None:
    started = await ci_files("run", "--no-wait", hello_script(rig, latency=0.5), url=funchost.url, cwd=tmp_path)
    assert started.code == 0, started.err
    assert re.findall(r"^\[(\d)/3\]", started.out, re.MULTILINE) == ["1", "2", "3"]
    run_id = RUN_ID.findall(started.out.split("ci-files get", 1)[1])[0]
    assert not (tmp_path / "downloads").exists()

    fetched = await ci_files("get", run_id, url=funchost.url, cwd=tmp_path)
    assert fetched.code == 0, fetched.err + fetched.out
    assert (tmp_path / "downloads" / run_id / "test.txt").read_bytes() == b"hello world"

    deleted = await ci_files("delete", run_id, url=funchost.url, cwd=tmp_path)
    assert deleted.code == 0 and "[1/1]" in deleted.out, deleted.err
    gone = await ci_files("get", run_id, url=funchost.url, cwd=tmp_path)
    assert gone.code != 0
    assert_one_error_line(gone, gone.err.split()[1])


async def test_ctrl_c_tells_the_exact_command_to_come_back(rig: Rig, funchost: FuncHost, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(CI_FILES),
        "run",
        hello_script(rig, latency=4),
        cwd=tmp_path,
        env=ci_files_environ(funchost.url),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    seen = ""
    while "run id" not in seen:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line, seen
        seen += line
    run_id = RUN_ID.findall(seen)[0]
    proc.send_signal(signal.SIGINT)
    await asyncio.wait_for(proc.wait(), 30)
    err = (await proc.stderr.read()).decode()
    assert proc.returncode == 130, err
    assert err.strip() == f"interrupted: the run goes on in the service; come back to it with: ci-files get {run_id}"

    back = await ci_files("get", run_id, url=funchost.url, cwd=tmp_path)
    assert back.code == 0, back.err + back.out
    assert (tmp_path / "downloads" / run_id / "test.txt").read_bytes() == b"hello world"


async def test_the_time_waited_shows_while_waiting(rig: Rig, funchost: FuncHost, tmp_path: Path) -> None:
    """In a terminal (a pseudo-terminal here) the waiting line counts the seconds."""
    import pty

    controller, terminal = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        str(CI_FILES),
        "run",
        "--no-download",
        hello_script(rig, latency=3),
        cwd=tmp_path,
        env={**ci_files_environ(funchost.url), "TERM": "xterm"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    screen = b""
    loop = asyncio.get_running_loop()
    while True:
        try:
            chunk = await loop.run_in_executor(None, os.read, controller, 65536)
        except OSError:  # the terminal closed: the command ended
            break
        if not chunk:
            break
        screen += chunk
    os.close(controller)
    assert await asyncio.wait_for(proc.wait(), 30) == 0, screen.decode(errors="replace")
    text = screen.decode(errors="replace")
    assert re.search(r"the run is (queued|in_progress) · [1-9]\d* s", text), text


async def test_images_are_located_and_opened_with_the_system_viewer(
    rig: Rig, funchost: FuncHost, tmp_path: Path
) -> None:
    chart = png_of_size(MINIMUM, "client-open")
    script = rig.emulator.add_script(
        {
            "files": [{"path": "/mnt/data/notes.txt", "content": "n"}],
            "images": [{"content_base64": base64.b64encode(chart).decode()}],
        }
    )
    prompt = f"Draw it {script['marker']}"
    viewer_bin = tmp_path / "bin"
    viewer_bin.mkdir()
    opened = tmp_path / "opened.txt"
    fake = viewer_bin / "xdg-open"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> {opened}\n')
    fake.chmod(0o755)

    result = await ci_files(
        "run", "--all", "--open", prompt, url=funchost.url, cwd=tmp_path, env={"PATH": str(viewer_bin)}
    )
    assert result.code == 0, result.err + result.out
    folder = run_folder(tmp_path, result.out)
    (image,) = [p for p in folder.iterdir() if p.suffix == ".png"]
    assert image.read_bytes() == chart
    assert f"      image: {image}" in result.out.splitlines()
    assert f"opened {image.name} in the system's viewer" in result.out
    for _ in range(100):  # the viewer is started detached
        if opened.exists():
            break
        await asyncio.sleep(0.1)
    assert opened.read_text().splitlines() == [str(image)]

    nothing = tmp_path / "empty-bin"
    nothing.mkdir()
    result = await ci_files("run", "--open", prompt, url=funchost.url, cwd=tmp_path, env={"PATH": str(nothing)})
    assert result.code == 0, result.err
    assert "not opened: no system viewer here (xdg-open is not installed); the files are in" in result.out


async def test_input_file_is_sent_inline(rig: Rig, funchost: FuncHost, tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    result = await ci_files("run", "--input", "data.csv", hello_script(rig), url=funchost.url, cwd=tmp_path)

    assert result.code == 0, result.err + result.out
    assert "      input: data.csv (8 bytes)" in result.out.splitlines()
    assert (run_folder(tmp_path, result.out) / "test.txt").read_bytes() == b"hello world"


async def test_continue_a_run(rig: Rig, funchost: FuncHost, tmp_path: Path) -> None:
    first = await ci_files("run", "--json", hello_script(rig), url=funchost.url, cwd=tmp_path)
    assert first.code == 0, first.err
    run_id = RUN_ID.findall(first.out)[0]

    second = await ci_files("run", "--continue", run_id, hello_script(rig), url=funchost.url, cwd=tmp_path)
    assert second.code == 0, second.err + second.out
    assert "      continued in the same container" in second.out.splitlines()


async def test_overwrite_only_matters_within_a_run(rig: Rig, funchost: FuncHost, tmp_path: Path) -> None:
    first = await ci_files("run", hello_script(rig), url=funchost.url, cwd=tmp_path)
    assert first.code == 0, first.err
    run_id = RUN_ID.findall(first.out)[0]
    mine = tmp_path / "downloads" / run_id / "test.txt"
    mine.write_text("my own notes")

    kept = await ci_files("get", run_id, url=funchost.url, cwd=tmp_path)
    assert_one_error_line(kept, "file_exists")
    assert mine.read_text() == "my own notes"
    assert sorted(p.name for p in mine.parent.iterdir()) == ["test.txt"]  # no partial file left behind

    replaced = await ci_files("get", run_id, "--overwrite", url=funchost.url, cwd=tmp_path)
    assert replaced.code == 0, replaced.err
    assert mine.read_text() == "hello world"


async def test_a_run_without_files_says_what_to_do(rig: Rig, funchost: FuncHost, tmp_path: Path) -> None:
    empty = rig.emulator.add_script({"files": [], "text": "I only talked."})
    result = await ci_files("run", f"Talk {empty['marker']}", url=funchost.url, cwd=tmp_path)
    assert result.code == 0, result.err
    assert "[4/5] Files found: 0" in result.out and "┏" not in result.out
    assert "The run made no file. What to do: ask for one by name" in result.out and "--all" in result.out
    assert "[5/5] Nothing to download" in result.out


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
    """Every `ApiError(status, "code", ...)` in the app's source, documented yet or not."""
    codes = {}
    for source in (REPO_ROOT / "code_interpreter_files").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ApiError" and len(node.args) >= 2:
                status, code = node.args[:2]
                if isinstance(status, ast.Constant) and isinstance(code, ast.Constant):
                    codes[str(code.value)] = int(status.value)
    return codes


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
