"""A local managed identity endpoint (App Service / Functions protocol, api-version 2019-08-01).

``ManagedIdentityCredential`` (and ``DefaultAzureCredential``) talk to it when the environment
has ``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER``: ``GET {IDENTITY_ENDPOINT}?api-version=
2019-08-01&resource=<resource>[&client_id=<id>]`` with header ``X-IDENTITY-HEADER``.

Run: ``python -m local_azure.identity_endpoint --port 0 --header <secret> [--client-id <id>]``;
prints ``READY http://127.0.0.1:<port>/msi/token`` once listening.

Control API (no header needed): ``POST /_identity/config`` ``{"mode": "ok"|"fail"|"expired"}``,
``GET /_identity/stats`` -> ``{"requests": n, "by_resource": {...}, "mode": ...}``,
``POST /_identity/reset`` (mode ``ok``, counters zeroed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import selectors
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import httpx
import jwt
from aiohttp import web

REPO_ROOT = Path(__file__).resolve().parents[1]

TOKEN_PATH = "/msi/token"
API_VERSION = "2019-08-01"
TENANT_ID = "11111111-2222-3333-4444-555555555555"
#: Object id of the identity (Azurite derives the user delegation key from ``oid``/``tid``).
OBJECT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
#: Client (application) id reported for the system-assigned identity.
SYSTEM_CLIENT_ID = "99999999-8888-7777-6666-555555555555"
TOKEN_LIFETIME_S = 2 * 60 * 60

Mode = Literal["ok", "fail", "expired"]
MODES: tuple[str, ...] = ("ok", "fail", "expired")


class IdentityState:
    """Mutable server state: fault mode, counters, signing secret."""

    def __init__(self, header: str, client_id: str | None) -> None:
        self.header = header
        self.client_id = client_id
        self.mode: str = "ok"
        self.requests = 0
        self.by_resource: Counter[str] = Counter()
        self.signing_key = secrets.token_bytes(32)

    def reset(self) -> None:
        """Back to mode ``ok`` with zeroed counters."""
        self.mode = "ok"
        self.requests = 0
        self.by_resource.clear()

    def issue(self, resource: str, client_id: str, now: int) -> tuple[str, int]:
        """A JWT for ``resource`` and its expiry (epoch seconds); expired in mode ``expired``."""
        if self.mode == "expired":
            iat, exp = now - TOKEN_LIFETIME_S - 600, now - 600
        else:
            iat, exp = now - 60, now + TOKEN_LIFETIME_S  # iat/nbf a little early, like Entra ID
        claims = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{TENANT_ID}/",
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "oid": OBJECT_ID,
            "sub": OBJECT_ID,
            "tid": TENANT_ID,
            "appid": client_id,
            "appidacr": "2",
            "idtyp": "app",
            "ver": "1.0",
        }
        return jwt.encode(claims, self.signing_key, algorithm="HS256"), exp


def _error(status: int, error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)


def make_app(header: str, client_id: str | None = None) -> web.Application:
    """The aiohttp application: token endpoint plus the control API."""
    state = IdentityState(header, client_id)
    app = web.Application()

    async def token(request: web.Request) -> web.Response:
        resource = request.query.get("resource", "")
        state.requests += 1
        state.by_resource[resource] += 1
        if request.headers.get("X-IDENTITY-HEADER") != state.header:
            return _error(401, "unauthorized", "missing or wrong X-IDENTITY-HEADER")
        if request.query.get("api-version") != API_VERSION:
            return _error(400, "invalid_request", f"api-version must be {API_VERSION}")
        if not resource:
            return _error(400, "invalid_request", "resource is required")
        requested = request.query.get("client_id")
        if state.client_id is not None and requested != state.client_id:
            return _error(400, "invalid_request", f"no identity with client_id {requested!r}")
        if state.mode == "fail":
            return _error(500, "internal_error", "identity endpoint fault injected (mode=fail)")
        effective_client_id = requested or state.client_id or SYSTEM_CLIENT_ID
        access_token, expires_on = state.issue(resource, effective_client_id, int(time.time()))
        return web.json_response(
            {
                "access_token": access_token,
                "expires_on": str(expires_on),  # App Service sends epoch seconds as a string
                "resource": resource,
                "token_type": "Bearer",
                "client_id": effective_client_id,
            }
        )

    async def config(request: web.Request) -> web.Response:
        body: Any = await request.json()
        mode = body.get("mode") if isinstance(body, dict) else None
        if mode not in MODES:
            return _error(400, "invalid_request", f"mode must be one of {MODES}")
        state.mode = mode
        return web.json_response({"mode": state.mode})

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(
            {"requests": state.requests, "by_resource": dict(state.by_resource), "mode": state.mode}
        )

    async def reset(_: web.Request) -> web.Response:
        state.reset()
        return web.json_response({"mode": state.mode})

    app.router.add_get(TOKEN_PATH, token)
    app.router.add_post("/_identity/config", config)
    app.router.add_get("/_identity/stats", stats)
    app.router.add_post("/_identity/reset", reset)
    return app


async def serve(port: int, header: str, client_id: str | None, host: str = "127.0.0.1") -> None:
    """Serve until SIGTERM/SIGINT; print the READY line once listening."""
    runner = web.AppRunner(make_app(header, client_id), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = runner.addresses[0][1]
    print(f"READY http://{host}:{bound_port}{TOKEN_PATH}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--header", required=True, help="expected X-IDENTITY-HEADER value")
    parser.add_argument("--client-id", default=None, help="only serve this user-assigned id")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.header, args.client_id, args.host))


# -- starting it (the test rig, scripts/start.sh --offline) ----------------------------------------


def start_identity_endpoint(
    header: str, client_id: str | None = None, timeout: float = 30.0, process_group: int | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start the endpoint as a child process; return it and the token URL from READY.
    ``process_group=0``: in a group of its own (a terminal's Ctrl-C reaches only whoever started it)."""
    # `--header=VALUE`: a random header can begin with "-" (secrets.token_urlsafe), which argparse takes for an option.
    cmd = [sys.executable, "-m", "local_azure.identity_endpoint", "--port", "0", f"--header={header}"]
    if client_id is not None:
        cmd += [f"--client-id={client_id}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO_ROOT), env.get("PYTHONPATH"))))
    proc = subprocess.Popen(
        cmd,
        cwd=str(REPO_ROOT),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        process_group=process_group,
    )
    try:
        url = _read_ready_line(proc, timeout)
    except BaseException:
        stop_process(proc)
        raise
    return proc, url


def _read_ready_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0:
            if not sel.select(remaining):
                continue
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"identity endpoint exited early (code {proc.wait()})")
            if line.startswith("READY "):
                return line.split(" ", 1)[1].strip()
    raise RuntimeError(f"identity endpoint did not print READY within {timeout:.0f}s")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Terminate a child process (SIGTERM, then SIGKILL after ``timeout``) and close its pipes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


class IdentityControl:
    """Synchronous client for the endpoint's ``/_identity/*`` control API."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        """``url`` is the token URL (``http://127.0.0.1:<port>/msi/token``) or the base URL."""
        parsed = httpx.URL(url)
        self.base_url = str(parsed.copy_with(path="/", query=None)).rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, trust_env=False)

    def config(self, mode: Mode) -> None:
        """Switch the fault mode: ``ok``, ``fail`` (HTTP 500) or ``expired`` (past tokens)."""
        self._client.post("/_identity/config", json={"mode": mode}).raise_for_status()

    def stats(self) -> dict[str, Any]:
        """``{"requests": n, "by_resource": {resource: n}, "mode": mode}``."""
        response = self._client.get("/_identity/stats")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def reset(self) -> None:
        """Mode back to ``ok`` and counters to zero."""
        self._client.post("/_identity/reset").raise_for_status()

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()


if __name__ == "__main__":
    main()
