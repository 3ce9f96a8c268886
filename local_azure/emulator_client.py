"""Driving an emulator from another process: start and stop it (``python -m local_azure.emulator``),
its control API client (``EmulatorControl``), and the session-wide schema report of the emulators
this process started."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]


# The schema tallies of the emulators this test process started: live ones by pid (their URL),
# and those already stopped (read just before stopping), for the session-wide check.
_LIVE: dict[int, str] = {}
_STOPPED_SCHEMAS: list[dict[str, Any]] = []


def _schemas_of(url: str) -> dict[str, Any] | None:
    try:
        return httpx.get(url + "/_emulator/stats", timeout=30).json()["schemas"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def schema_report() -> dict[str, Any]:
    """Every emulator this process started (stopped or live), summed: ``{emulators, unreachable,
    bodies_queued, bodies_checked, validated: {schema: n}, violation_counts, violations, unchecked,
    load_errors, specs}``."""
    tallies = list(_STOPPED_SCHEMAS)
    unreachable = 0
    for url in list(_LIVE.values()):
        got = _schemas_of(url)
        if got is None:
            unreachable += 1
        else:
            tallies.append(got)
    report: dict[str, Any] = {
        "emulators": len(tallies) + unreachable,
        "unreachable": unreachable,
        "bodies_queued": sum(t["bodies_queued"] for t in tallies),
        "bodies_checked": sum(t["bodies_checked"] for t in tallies),
        "validated": Counter(),
        "violation_counts": Counter(),
        "violations": [],
        "unchecked": Counter(),
        "load_errors": [],
        "specs": sorted({t["spec"] for t in tallies if t.get("spec")}),
    }
    for tally in tallies:
        report["validated"].update(tally["validated"])
        report["violation_counts"].update(tally["violation_counts"])
        report["unchecked"].update(tally["unchecked"])
        report["violations"] += tally["violations"]
        if tally.get("load_error"):
            report["load_errors"].append(tally["load_error"])
    return report


def start_emulator(
    api_key: str,
    extra_env: dict[str, str] | None = None,
    *,
    extra_args: tuple[str, ...] = (),
    process_group: int | None = None,
) -> tuple[subprocess.Popen[str], str]:
    """Start the emulator as a subprocess; return ``(process, base_url)`` once it is READY."""
    env = {**os.environ, **(extra_env or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        # `--api-key=KEY`: a random key can begin with "-" (secrets.token_urlsafe), which argparse takes for an option.
        [sys.executable, "-m", "local_azure.emulator", "--host", "127.0.0.1", "--port", "0", f"--api-key={api_key}"]
        + list(extra_args),
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        process_group=process_group,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True, name="emulator-stdout").start()
    deadline = time.monotonic() + 20
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            stop_emulator(proc)
            raise RuntimeError("emulator did not print READY within 20 s") from None
        if line.startswith("READY "):
            url = line.split(" ", 1)[1].strip()
            _LIVE[proc.pid] = url
            return proc, url
        if line == "":
            code = proc.wait()
            raise RuntimeError(f"emulator exited with code {code} before READY")


def stop_emulator(proc: subprocess.Popen[Any]) -> None:
    """Keep its schema tally, then terminate the emulator (SIGTERM, then SIGKILL after 5 s)."""
    url = _LIVE.pop(proc.pid, None)
    if url is not None and proc.poll() is None:
        tally = _schemas_of(url)
        if tally is not None:
            _STOPPED_SCHEMAS.append(tally)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class EmulatorControl:
    """Synchronous client for the emulator's ``/_emulator`` control API."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        # json.dumps escapes non-ASCII, so scripts may carry any string, even lone surrogates.
        content = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"} if body is not None else None
        r = self._http.request(method, path, content=content, headers=headers)
        if r.status_code >= 400:
            raise RuntimeError(f"emulator {method} {path} -> {r.status_code}: {r.text}")
        return r.json()

    def add_script(self, script: dict[str, Any]) -> dict[str, Any]:
        """Register a script; returns ``{script_id, marker, files: [{path, bytes, sha256, seed}]}``."""
        return self._call("POST", "/_emulator/scripts", script)

    def run(self, response_id: str) -> dict[str, Any]:
        """Map a response id to ``{container_id, files: [{file_id, path, bytes, sha256, missing}], ...}``."""
        return self._call("GET", f"/_emulator/runs/{response_id}")

    def runs_for(self, script_id: str) -> list[str]:
        """The response ids of the runs that used a script, oldest first (known as soon as created)."""
        return self._call("GET", f"/_emulator/scripts/{script_id}/runs")["runs"]

    def stats(self) -> dict[str, Any]:
        """Counters: ``requests``, ``downloads``, ``bytes_served``, ``auth``, ``jwt_audiences``,
        ``jwt_audience_counts``, ``api_versions``, ``runs_started: {total, by_script}``,
        ``faults_served: {"<on> <status>": n}`` (all since the last ``reset``) and ``schemas`` (every
        body this process served: ``validated``/``violation_counts`` per schema, the first
        ``violations``, ``unchecked`` routes, ``spec``, ``load_error``; never reset)."""
        return self._call("GET", "/_emulator/stats")

    def reset(self) -> None:
        """Zero the stats but ``schemas`` (scripts, responses and containers are kept)."""
        self._call("POST", "/_emulator/reset")

    def expire_container(self, container_id: str) -> None:
        """Expire a container now: its endpoints answer its script's ``expired_shape``."""
        self._call("POST", f"/_emulator/containers/{container_id}/expire")

    def config(self, **kwargs: Any) -> dict[str, Any]:
        """Set defaults (``latency`` seconds, ``chunk_size`` bytes); returns the current config."""
        return self._call("POST", "/_emulator/config", kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EmulatorControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
