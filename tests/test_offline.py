"""`scripts/start.sh --offline`, as a newcomer runs it on this checkout: it starts the whole service (on a free
port here, in case 7071 is taken), the `ci-files` client runs prompts and downloads (printing what the README's
first screen shows), Ctrl-C (SIGINT to the terminal's process group) stops everything: no process of the
session is left, every port is free."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_azure.azurite import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
CI_FILES = REPO_ROOT / ".venv" / "bin" / "ci-files"
RUN_ID = re.compile(r"\bresp_[A-Za-z0-9_-]+")

pytestmark = pytest.mark.timeout(600)


def developer_environment(**extra: str) -> dict[str, str]:
    """A developer's shell: none of the test session's settings, the venv not on PATH (start.sh finds Python)."""
    dropped = ("AZURE_OPENAI_", "VIRTUAL_ENV", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CI_FILES_", "IDENTITY_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(p) != Path(sys.executable).parent)
    env.update({"COLUMNS": "120", "NO_COLOR": "1", **extra})
    return env


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def session_pids(sid: int) -> list[int]:
    """The processes whose session is `sid` (what a closed terminal would leave behind)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # after the command: state, ppid, pgrp, session
            found.append(int(stat.parent.name))
    return found


def session_processes(sid: int) -> list[str]:
    found = []
    for pid in session_pids(sid):
        try:
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # ended meanwhile
            continue
    return found


def kill_session(sid: int) -> None:
    for pid in session_pids(sid):
        print(f"left running, killed: {pid}", file=sys.stderr)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def readme_example() -> str:
    """The client output the README's first screen shows."""
    readme = (REPO_ROOT / "README.md").read_text()
    return readme.split("```text\n", 1)[1].split("```", 1)[0]


def skeleton(output: str) -> list[str]:
    """Output lines without what changes from run to run (ids, links, paths, numbers)."""
    output = RUN_ID.sub("RUN", output)
    output = re.sub(r"http://127\.0\.0\.1:\S+", "LINK", output)
    output = re.sub(r" /\S*/downloads/", " .../downloads/", output)
    return [re.sub(r"\d+(\.\d+)?", "N", line).rstrip() for line in output.strip().splitlines()]


class Terminal:
    """start.sh in a session of its own, its output collected; `ctrl_c` sends SIGINT to its process group."""

    def __init__(self, *args: str) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            ["bash", str(REPO_ROOT / "scripts" / "start.sh"), *args],
            cwd=REPO_ROOT,
            env=developer_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def read_until(self, text: str, timeout: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if text in line:
                return "".join(self.lines)
        raise AssertionError(f"{text!r} not seen:\n{''.join(self.lines)}")

    def ctrl_c(self) -> str:
        os.killpg(self.proc.pid, signal.SIGINT)
        out, _ = self.proc.communicate(timeout=60)
        self.lines.append(out)
        return "".join(self.lines)

    def kill(self) -> None:
        """After a failed test: Ctrl-C first (the launcher stops what it started), then whatever is left
        in the session, by pid (the children have process groups of their own)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        kill_session(self.proc.pid)


@pytest.fixture
def terminal() -> Iterator[list[Terminal]]:
    started: list[Terminal] = []
    yield started
    for each in started:
        each.kill()


def ci_files(*args: str, port: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = developer_environment(CI_FILES_URL=f"http://localhost:{port}", COLUMNS="100")
    return subprocess.run([str(CI_FILES), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_offline_mode_from_start_to_ctrl_c(terminal: list[Terminal], tmp_path: Path) -> None:
    port = free_port()
    term = Terminal("--offline", "--port", str(port))
    terminal.append(term)
    started = term.read_until("Ctrl-C here stops everything.", timeout=300)

    assert re.findall(r"^\[(\d)/5\]", started, re.MULTILINE) == ["1", "2", "3", "4", "5"], started
    app_line = next(line for line in started.splitlines() if line.strip().startswith("app: "))
    assert f"http://localhost:{port} on the minimal local host" in app_line
    assert "no function keys, one process, timer triggers do not run" in app_line
    assert "the OFFLINE STAND-IN at http://127.0.0.1:" in started
    ports = [port, *map(int, re.search(r"ports (\d+), (\d+), (\d+)", started).groups())]  # type: ignore[union-attr]
    ports += [int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)", started)]
    assert all(listening(p) for p in ports), started

    hello = ci_files("run", "Create test.txt containing hello world", port=port, cwd=tmp_path)
    assert hello.returncode == 0, hello.stdout + hello.stderr
    assert "the model is an offline stand-in" in hello.stdout.split("[2/5]")[0]
    assert skeleton(hello.stdout.replace(f"localhost:{port}", "localhost:7071")) == skeleton(readme_example())
    run_id = RUN_ID.findall(hello.stdout)[0]
    assert (tmp_path / "downloads" / run_id / "test.txt").read_bytes() == b"hello world"

    sample = REPO_ROOT / "docs" / "samples" / "weather.csv"
    plotted = ci_files("run", "--input", str(sample), "Plot the temperatures in weather.csv", port=port, cwd=tmp_path)
    assert plotted.returncode == 0, plotted.stdout + plotted.stderr
    chart = tmp_path / "downloads" / RUN_ID.findall(plotted.stdout)[0] / "chart.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"      image: {chart}" in plotted.stdout

    stopped = term.ctrl_c()
    assert term.proc.returncode == 0, stopped
    assert "Stopped the app, the stand-in, the identity endpoint, Azurite. Nothing is left running." in stopped
    assert "Traceback" not in stopped, stopped
    assert session_processes(term.proc.pid) == []
    assert [p for p in ports if listening(p)] == []


def test_a_taken_port_is_named_with_the_fix(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "local_azure.offline", "--port", str(port)],
            cwd=REPO_ROOT,
            env=developer_environment(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1 and result.stdout == ""
    assert f"error: port {port} is in use" in result.stderr
    assert f"scripts/start.sh --offline --port {port + 1}" in result.stderr
    assert f"export CI_FILES_URL=http://localhost:{port + 1}" in result.stderr


# Stands in for Core Tools (they cannot be installed here): `--version`, then `start` records what it was
# given and runs until Ctrl-C.
FAKE_FUNC = r"""#!/usr/bin/env python3
import json, os, shutil, signal, sys, time
if sys.argv[1:] == ["--version"]:
    print("4.0.7030")
    sys.exit(0)
keys = ("AZURE_OPENAI_ENDPOINT", "AzureWebJobsStorage", "RUNS_QUEUE_STORAGE", "FUNCTIONS_WORKER_RUNTIME", "RUNS_QUEUE")
record = {"argv": sys.argv[1:], "python": shutil.which("python"), **{k: os.environ.get(k) for k in keys}}
with open(os.environ["FUNC_RECORD"], "w") as out:
    json.dump(record, out)
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
while True:
    time.sleep(1)
"""


def test_with_core_tools_installed_the_app_runs_under_func_start(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "func").write_text(FAKE_FUNC)
    (bin_dir / "func").chmod(0o755)
    record = tmp_path / "func.json"
    env = developer_environment(FUNC_RECORD=str(record))
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    port = free_port()
    launcher = subprocess.Popen(
        [str(REPO_ROOT / ".venv" / "bin" / "python"), "-m", "local_azure.offline", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert launcher.stdout is not None
        seen = ""
        while "Ctrl-C here stops everything." not in seen:
            line = launcher.stdout.readline()
            assert line, seen
            seen += line
        for _ in range(100):
            if record.exists() and record.stat().st_size:
                break
            time.sleep(0.1)
        os.killpg(launcher.pid, signal.SIGINT)
        rest, _ = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
        kill_session(launcher.pid)
    assert f"app: http://localhost:{port} under `func start` (Azure Functions Core Tools 4.0.7030)" in seen
    assert launcher.returncode == 0 and "Nothing is left running." in rest, seen + rest
    given = json.loads(record.read_text())
    assert given["argv"] == ["start", "--port", str(port)]
    assert given["python"] == str(REPO_ROOT / ".venv" / "bin" / "python")
    assert (
        given["AZURE_OPENAI_ENDPOINT"].startswith("http://127.0.0.1:") and given["FUNCTIONS_WORKER_RUNTIME"] == "python"
    )
    assert (
        given["AzureWebJobsStorage"] == given["RUNS_QUEUE_STORAGE"]
        and "QueueEndpoint=http://127.0.0.1:" in given["RUNS_QUEUE_STORAGE"]
    )
    assert given["RUNS_QUEUE"] == "code-interpreter-runs"
    assert session_processes(launcher.pid) == []
