"""The `ci-files` command, run as a subprocess against the function app served over HTTP (local_azure/funchost.py)
with the real rig behind it: the run id first, links and their expiry, downloads per run, Ctrl-C, the time
waited, images and --open (its errors: tests/test_client_errors.py)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import signal
import ssl
from pathlib import Path

import httpx

from local_azure.funchost import FuncHost
from local_azure.png import MINIMUM, png_of_size
from tests.helpers import CI_FILES, assert_one_error_line, ci_files, ci_files_environ, hello_script
from tests.rig.rig import Rig

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_ID = re.compile(r"\bresp_[A-Za-z0-9_-]+")
LINK = re.compile(r"^      #(\d+) (https://\S+)$", re.MULTILINE)


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
