"""The rig's queue host as a Functions instance runs it: beside the minimal HTTP host in one process
(`QueueCompanion`: `python -m local_azure.funchost --companion local_azure.queue_instances:companion`), or
as another instance in a child process (`python -m local_azure.queue_instances --app function_app:app`,
driven by `QueueHostProcess`), which prints `READY` and then one `OUTCOME {json}` line per message handled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import azure.functions as func

from local_azure.queue_bindings import (
    DEFAULT_LEASE_SECONDS,
    HOST_JSON,
    REPO_ROOT,
    Invocation,
    QueueSettings,
    load_app,
    queue_functions,
)
from local_azure.queue_host import QueueHost


class QueueCompanion:
    """The app's queue triggers, polled beside local_azure/funchost.py's HTTP server (one process, like one
    Functions instance): `python -m local_azure.funchost --companion local_azure.queue_instances:companion`.
    A poll that fails (storage not reachable a moment) is reported in one line and tried again."""

    def __init__(self, app: func.FunctionApp, poll_seconds: float = 0.5) -> None:
        self.app = app
        self.poll_seconds = poll_seconds
        self.host: QueueHost | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from local_azure.funchost import indexed_functions  # the app is indexed once per process

        functions = list(indexed_functions(self.app).values())
        if not queue_functions(functions, os.environ):
            return
        self.host = QueueHost(functions, poll_seconds=self.poll_seconds, on_outcome=_report_trouble)
        self._task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        assert self.host is not None
        while not self._stop.is_set():
            try:
                await self.host.run_forever(self._stop)
            except Exception as error:  # noqa: BLE001 - the host keeps polling, as the Functions host does
                print(f"      queue poll failed ({type(error).__name__}); trying again", file=sys.stderr, flush=True)
                try:
                    await asyncio.wait_for(self._stop.wait(), 2.0)
                except TimeoutError:
                    pass

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        if self.host is not None:
            await self.host.close()


def _report_trouble(invocation: Invocation) -> None:
    if invocation.outcome != "succeeded":
        attempt = f"attempt {invocation.dequeue_count}"
        print(
            f"      queue {invocation.function} {invocation.outcome} ({attempt}): {invocation.error or ''}".rstrip(),
            file=sys.stderr,
            flush=True,
        )


def companion(app: func.FunctionApp) -> QueueCompanion:
    """The `--companion` factory of local_azure/funchost.py."""
    return QueueCompanion(app)


# -- a separate instance ----------------------------------------------------------------------------


async def serve(app_spec: str, host_json: Path, lease_seconds: int, poll_seconds: float) -> None:
    """Run the queue host for the app until SIGTERM/SIGINT; print READY, then one OUTCOME line per message."""

    def report(invocation: Invocation) -> None:
        print("OUTCOME " + json.dumps(asdict(invocation)), flush=True)

    app = load_app(app_spec)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with QueueHost(
        app.get_functions(),
        settings=QueueSettings.from_host_json(host_json),
        lease_seconds=lease_seconds,
        poll_seconds=poll_seconds,
        on_outcome=report,
    ) as host:
        print("READY " + ",".join(f.queue_name for f in host.functions), flush=True)
        await host.run_forever(stop)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Queue triggers of a Functions app, played against Azure Storage.")
    parser.add_argument("--app", default="function_app:app", help="module:attribute of the FunctionApp")
    parser.add_argument("--host-json", type=Path, default=HOST_JSON)
    parser.add_argument("--lease-seconds", type=int, default=DEFAULT_LEASE_SECONDS)
    parser.add_argument("--poll-seconds", type=float, default=0.2)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.app, args.host_json, args.lease_seconds, args.poll_seconds))


class QueueHostProcess:
    """A queue host in a child process (another instance of the app); collects its OUTCOME lines."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        app: str = "function_app:app",
        host_json: Path = HOST_JSON,
        lease_seconds: int = DEFAULT_LEASE_SECONDS,
        poll_seconds: float = 0.2,
        timeout: float = 60.0,
    ) -> None:
        cmd = [sys.executable, "-m", "local_azure.queue_instances", "--app", app, "--host-json", str(host_json)]
        cmd += ["--lease-seconds", str(lease_seconds), "--poll-seconds", str(poll_seconds)]
        child_env = dict(env, PYTHONUNBUFFERED="1")
        child_env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO_ROOT), child_env.get("PYTHONPATH"))))
        self.outcomes: list[Invocation] = []
        self._ready = threading.Event()
        self.queues: list[str] = []
        self.proc = subprocess.Popen(
            cmd, cwd=str(REPO_ROOT), env=child_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"queue host did not print READY within {timeout:.0f}s")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("READY "):
                self.queues = line.split(" ", 1)[1].strip().split(",")
                self._ready.set()
            elif line.startswith("OUTCOME "):
                self.outcomes.append(Invocation(**json.loads(line.split(" ", 1)[1])))
        self._ready.set()  # exited: stop waiting

    def kill(self) -> None:
        """SIGKILL: a crashed instance; its leased messages come back when their leases run out."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the host stops polling), then SIGKILL after `timeout`."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> QueueHostProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    main()
