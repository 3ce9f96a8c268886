"""The whole service on this machine, without Azure: what `scripts/start.sh --offline` runs.

    python -m local_azure.offline [--port 7071] [--host auto|func|minimal]

Starts, each child in a process group of its own (a terminal's Ctrl-C reaches this launcher only, which
then stops them in order and says so):
1. Azurite: blob, queue and table storage over http, data in memory (free ports, or AZURITE_BLOB_PORT,
   AZURITE_QUEUE_PORT, AZURITE_TABLE_PORT); the app gets one connection string for all three;
2. the managed identity endpoint (local_azure/identity_endpoint.py): the app's Entra ID tokens for the model;
3. the offline stand-in for Azure OpenAI (local_azure/emulator.py, local_azure/standin.py), unchecked
   against the OpenAI spec (only a test checkout has it beside it);
4. the app on `--port`: under `func start` when Azure Functions Core Tools 4 are installed, otherwise
   under the minimal local host (local_azure/funchost.py with the queue triggers of queue_instances.py).
Then it prints the first client commands and one line per request, until Ctrl-C, SIGTERM or SIGHUP.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Any

from local_azure.azurite import Azurite, free_port
from local_azure.emulator_client import start_emulator, stop_emulator
from local_azure.identity_endpoint import start_identity_endpoint, stop_process

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENT = "offline-stand-in"
DEFAULT_PORT = 7071
STAND_IN_LATENCY_SECONDS = "1.5"  # long enough to see the client wait, as for a real model
# Settings of the user's shell that would point the app elsewhere (the offline ones replace them).
REPLACED_PREFIXES = ("AZURE_OPENAI_", "OUTPUT_STORAGE_", "RUNS_QUEUE_STORAGE", "IDENTITY_", "AzureWebJobs")
MINIMAL_HOST_LINE = (
    "http://localhost:{port} on the minimal local host (local_azure/funchost.py; Core Tools are not installed): "
    "no function keys, one process, timer triggers do not run{left}"
)


def say(text: str = "", indent: bool = True) -> None:
    print(f"      {text}" if indent and text else text, flush=True)


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def func_version() -> str | None:
    """`func --version` when Core Tools 4 are installed."""
    if shutil.which("func") is None:
        return None
    try:
        version = subprocess.run(["func", "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return version if version.startswith("4.") else None


def example_settings() -> dict[str, str]:
    """The Values of local.settings.json.example: the app's settings as a local run has them."""
    values = json.loads((REPO_ROOT / "local.settings.json.example").read_text())["Values"]
    return {str(k): str(v) for k, v in values.items()}


def _env_port(name: str) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else free_port()


class Offline:
    """The running pieces; `stop()` ends them, the app first, and can be called any number of times."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.azurite: Azurite | None = None
        self.identity: subprocess.Popen[str] | None = None
        self.stand_in: subprocess.Popen[str] | None = None
        self.app: subprocess.Popen[str] | None = None
        self.app_name = ""

    def start_services(self) -> dict[str, str]:
        """Azurite, the identity endpoint and the stand-in; the app's environment to reach them."""
        self.azurite = Azurite(
            None,
            queue=True,
            port=_env_port("AZURITE_BLOB_PORT"),
            queue_port=_env_port("AZURITE_QUEUE_PORT"),
            table_port=_env_port("AZURITE_TABLE_PORT"),
            own_process_group=True,
        )
        self.azurite.start()
        ports = f"{self.azurite.port}, {self.azurite.queue_port}, {self.azurite.table_port}"
        say(f"Azurite: blob, queue and table storage on 127.0.0.1 ports {ports} (data in memory)")
        header = secrets.token_urlsafe(24)
        self.identity, token_url = start_identity_endpoint(header, process_group=0)
        say(f"managed identity endpoint: {token_url}")
        key = secrets.token_urlsafe(24)  # never used by the app (it signs in with the identity); required
        self.stand_in, model_url = start_emulator(
            key,
            {"EMULATOR_LATENCY": STAND_IN_LATENCY_SECONDS},
            extra_args=("--no-schema-check",),
            process_group=0,
        )
        say(f"Azure OpenAI: the OFFLINE STAND-IN at {model_url} (no model runs: it creates files, plots and")
        say("  summarises CSV inputs; anything else gets a note saying what it understands)")
        connection = self.azurite.services_connection_string
        env = {k: v for k, v in os.environ.items() if not k.startswith(REPLACED_PREFIXES)}
        env.pop("AZURE_CLIENT_ID", None)
        for name, value in example_settings().items():  # what a local `func start` would read
            if value and not name.startswith(REPLACED_PREFIXES):
                env.setdefault(name, value)
        env.update(
            AZURE_OPENAI_ENDPOINT=model_url,
            AZURE_OPENAI_DEPLOYMENT=DEPLOYMENT,
            IDENTITY_ENDPOINT=token_url,
            IDENTITY_HEADER=header,
            OUTPUT_STORAGE_CONNECTION_STRING=connection,
            RUNS_QUEUE_STORAGE=connection,
            AzureWebJobsStorage=connection,
            FUNCTIONS_WORKER_RUNTIME="python",
            PYTHONUNBUFFERED="1",
        )
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO_ROOT), env.get("PYTHONPATH"))))
        return env

    def start_app(self, env: dict[str, str], use_func: bool) -> None:
        if use_func:
            self.app_name = "func start"
            say(f"app: http://localhost:{self.port} under `func start` (Azure Functions Core Tools {func_version()})")
            # The worker runs on the `python` of PATH: this virtual environment's, as with `source .venv/bin/activate`.
            env = dict(env, VIRTUAL_ENV=sys.prefix, PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
            self.app = subprocess.Popen(
                ["func", "start", "--port", str(self.port)],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                text=True,
                process_group=0,
            )
            return
        self.app_name = "the minimal local host"
        cmd = [sys.executable, "-m", "local_azure.funchost", "--port", str(self.port)]
        cmd += ["--companion", "local_azure.queue_instances:companion"]
        self.app = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, process_group=0
        )
        assert self.app.stdout is not None
        ready, left = self.app.stdout.readline(), self.app.stdout.readline()
        if not ready.startswith("READY ") or not left.startswith("UNSERVED "):
            raise RuntimeError(f"the minimal local host did not start (exit code {self.app.wait()})")
        names = left.split(" ", 1)[1].strip()
        say("app: " + MINIMAL_HOST_LINE.format(port=self.port, left="" if names == "-" else f" (here: {names})"))
        _pump(self.app.stdout, sys.stdout)

    def first_failure(self) -> str | None:
        """The piece that stopped by itself, if any."""
        pieces: list[tuple[str, Any]] = [(self.app_name or "the app", self.app)]
        pieces += [("the stand-in", self.stand_in), ("the identity endpoint", self.identity)]
        for name, proc in pieces:
            if proc is not None and proc.poll() is not None:
                return f"{name} stopped (exit code {proc.returncode})"
        if self.azurite is not None and not self.azurite.running:
            return "Azurite stopped"
        return None

    def stop(self) -> list[str]:
        """Stop everything started, the app first; the names of what was stopped."""
        stopped = []
        if self.app is not None:
            if self.app.poll() is None:
                self.app.send_signal(signal.SIGINT if self.app_name == "func start" else signal.SIGTERM)
            try:
                self.app.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.app.kill()
                self.app.wait(timeout=10)
            self.app = None
            stopped.append("the app")
        if self.stand_in is not None:
            stop_emulator(self.stand_in)
            self.stand_in = None
            stopped.append("the stand-in")
        if self.identity is not None:
            stop_process(self.identity)
            self.identity = None
            stopped.append("the identity endpoint")
        if self.azurite is not None:
            self.azurite.stop()
            self.azurite = None
            stopped.append("Azurite")
        return stopped


def _pump(source: IO[str], sink: IO[str]) -> None:
    """Copy a child's output lines as they come (its request lines), in the background."""

    def copy() -> None:
        for line in source:
            sink.write(line)
            sink.flush()

    threading.Thread(target=copy, daemon=True, name="app-output").start()


def _stop_on(signals: tuple[int, ...]) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    for signum in signals:
        signal.signal(signum, handler)
    return handler


def client_hints(port: int) -> None:
    say()
    say("Ready. In another terminal, in this folder:", indent=False)
    say("source .venv/bin/activate")
    if port != DEFAULT_PORT:
        say(f"export CI_FILES_URL=http://localhost:{port}")
    say('ci-files run "Create test.txt containing hello world"')
    sample = REPO_ROOT / "docs" / "samples" / "weather.csv"
    try:
        shown = sample.relative_to(Path.cwd())
    except ValueError:
        shown = sample
    say(f'ci-files run --input {shown} --open "Plot the temperatures in weather.csv"')
    say("Ctrl-C here stops everything.", indent=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the whole service offline (scripts/start.sh --offline).")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"the app's port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--host",
        choices=("auto", "func", "minimal"),
        default="auto",
        help="auto: `func start` when Core Tools 4 are installed, else the minimal local host",
    )
    args = parser.parse_args(argv)
    if not port_is_free(args.port):
        print(
            f"error: port {args.port} is in use (another `func start` or scripts/start.sh?). What to do: stop it, "
            f"or use another port: scripts/start.sh --offline --port {args.port + 1} "
            f"(then export CI_FILES_URL=http://localhost:{args.port + 1})",
            file=sys.stderr,
        )
        return 1
    use_func = args.host == "func" or (args.host == "auto" and func_version() is not None)
    offline = Offline(args.port)
    _stop_on((signal.SIGINT, signal.SIGTERM, signal.SIGHUP))  # SIGINT too: a background start inherits it ignored
    failure: str | None = None
    try:
        offline.start_app(offline.start_services(), use_func)
        client_hints(args.port)
        while (failure := offline.first_failure()) is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print(flush=True)
        say("Stopping ...", indent=False)
    except Exception as error:  # noqa: BLE001 - told in one line; everything started is stopped below
        failure = f"could not start: {error}"
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        stopped = offline.stop()
    if failure:
        print(f"error: {failure}; stopped {', '.join(stopped) or 'nothing'}.", file=sys.stderr, flush=True)
        return 1
    say(f"Stopped {', '.join(stopped)}. Nothing is left running.", indent=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
