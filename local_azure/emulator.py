"""HTTP emulator of the Azure OpenAI v1 Responses + Containers APIs (Code Interpreter subset).

Run: ``python -m local_azure.emulator --host 127.0.0.1 --port 0 --api-key KEY``; it prints
``READY http://<host>:<port>`` once listening and runs until SIGTERM.

Behaviour is driven by *scripts* registered via ``POST /_emulator/scripts``; a response picks a
script through the marker ``[[script:<id>]]`` found in its input. A prompt without a marker goes to
the offline stand-in (local_azure/standin.py), which does the few things a newcomer asks for real.
See ``emulator_client.EmulatorControl`` for the control API and ``emulator_scripts.parse_script``
for the script fields.
``GET /openai/v1/models/{deployment}`` answers the model object with ``owned_by: "offline-stand-in"``.

Every JSON body and stream event it serves under ``/openai/v1`` is checked (in a worker process)
against the published OpenAI component schemas plus Azure's required ``user``
(``openai_schemas``); ``/_emulator/stats`` reports the tally and the session's last test asserts
that nothing violated them. ``--no-schema-check`` (what `scripts/start.sh --offline` passes: a user's
clone has no spec beside it) serves the same bodies unchecked. Errors are
``{"error": {message, type, param, code}}``, unknown routes included; 401s and 429s carry Azure's
``code`` ("401", "429").

This module is the process (``main``) and the app (``Emulator``: routes, auth, the schema check of
what it serves); the rest, one concern a module: ``emulator_state`` (state, counters, scripted
faults), ``emulator_responses`` / ``emulator_containers`` / ``emulator_ctl`` (the handlers of
``/responses``, ``/containers/{id}/files``, ``/_emulator``), ``emulator_views`` (the response
object), ``emulator_model`` / ``emulator_scripts`` / ``emulator_errors`` (records, script parsing,
error bodies), ``emulator_files`` / ``emulator_inputs`` (Files and Uploads APIs, a run's inputs),
``emulator_client`` (starting, stopping and driving it from another process).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

import jwt
from aiohttp import web

from . import standin
from .emulator_containers import ContainersApi
from .emulator_ctl import ControlApi
from .emulator_errors import ApiError
from .emulator_responses import ResponsesApi
from .openai_schemas import AZURE_RESPONSE

PREFIX = "/openai/v1"
# The v1 docs' scope is https://ai.azure.com/.default; cognitiveservices is the legacy one, still accepted.
JWT_AUDIENCES = {
    "https://ai.azure.com",
    "https://ai.azure.com/",
    "https://cognitiveservices.azure.com",
    "https://cognitiveservices.azure.com/",
}
JWT_ISSUER_PREFIX = "https://sts.windows.net/"
#: The schema of each route's 2xx JSON body (method, path after /openai/v1); errors are ErrorResponse.
BODY_SCHEMAS: dict[tuple[str, str], str] = {
    ("POST", "/responses"): AZURE_RESPONSE,
    ("GET", "/responses/{id}"): AZURE_RESPONSE,
    ("POST", "/responses/{id}/cancel"): AZURE_RESPONSE,
    ("GET", "/containers/{cid}/files"): "ContainerFileListResource",
    ("GET", "/containers/{cid}/files/{fid}"): "ContainerFileResource",
    ("GET", "/models/{model}"): "Model",
    # local_azure/emulator_files.py
    ("POST", "/files"): "OpenAIFile",
    ("GET", "/files/{fid}"): "OpenAIFile",
    ("DELETE", "/files/{fid}"): "DeleteFileResponse",
    ("POST", "/uploads"): "Upload",
    ("POST", "/uploads/{uid}/parts"): "UploadPart",
    ("POST", "/uploads/{uid}/complete"): "Upload",
    ("POST", "/uploads/{uid}/cancel"): "Upload",
    ("GET", "/containers/{cid}"): "ContainerResource",
}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Emulator(ResponsesApi, ContainersApi, ControlApi):
    """The app: its routes, and the middleware that checks auth and the bodies served."""

    # ---- app

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 << 20)
        r = app.router
        r.add_post(PREFIX + "/responses", self.create_response)
        r.add_get(PREFIX + "/responses/{id}", self.get_response)
        r.add_post(PREFIX + "/responses/{id}/cancel", self.cancel_response)
        r.add_delete(PREFIX + "/responses/{id}", self.delete_response)
        r.add_get(PREFIX + "/containers/{cid}/files", self.list_files)
        r.add_get(PREFIX + "/containers/{cid}/files/{fid}", self.get_file)
        r.add_get(PREFIX + "/containers/{cid}/files/{fid}/content", self.get_content)
        r.add_get(PREFIX + "/models/{model}", self.get_model)
        self.files_api.add_routes(r)
        r.add_post("/_emulator/scripts", self.ctl_add_script)
        r.add_get("/_emulator/runs/{id}", self.ctl_run)
        r.add_get("/_emulator/scripts/{id}/runs", self.ctl_script_runs)
        r.add_get("/_emulator/stats", self.ctl_stats)
        r.add_post("/_emulator/reset", self.ctl_reset)
        r.add_post("/_emulator/config", self.ctl_config)
        r.add_post("/_emulator/containers/{cid}/expire", self.ctl_expire)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        api = request.path.startswith(PREFIX + "/")
        try:
            if api:
                for v in request.query.getall("api-version", []):
                    self.api_versions.add(v)
                self._check_auth(request)
            resp = await handler(request)
        except ApiError as exc:
            resp = exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            # aiohttp's own errors (unknown route, wrong method, body too large) in the API's shape.
            message = f"Invalid URL ({request.method} {request.path})" if exc.status in (404, 405) else exc.reason
            resp = ApiError(exc.status, message).response()
        resp.headers.setdefault("x-request-id", str(uuid.uuid4()))
        if api:
            self._check_body(request, resp)
        return resp

    def _check_body(self, request: web.Request, resp: web.StreamResponse) -> None:
        """Queue the schema check of a JSON body (event streams are checked event by event)."""
        if not isinstance(resp, web.Response) or resp.content_type != "application/json":
            return
        body = resp.body
        if not isinstance(body, bytes):
            return
        resource = request.match_info.route.resource
        template = resource.canonical[len(PREFIX) :] if resource is not None else request.path
        where = f"{request.method} {template} {resp.status}"
        name = "ErrorResponse" if resp.status >= 400 else BODY_SCHEMAS.get((request.method, template))
        if name is None:
            self.schemas.note_unchecked(where)
        else:
            self.schemas.check(name, body, where, deliberate=bool(request.get("off_spec")))

    def _check_auth(self, request: web.Request) -> None:
        """Raise the 401 the service answers unless the request has the key or a valid Entra ID token."""
        key = request.headers.get("api-key")
        authz = request.headers.get("Authorization", "")
        token = authz[7:].strip() if authz[:7].lower() == "bearer " else None
        if key is not None and secrets.compare_digest(key, self.api_key):
            self.auth["api_key"] += 1
            return
        if token is not None and secrets.compare_digest(token, self.api_key):
            self.auth["api_key"] += 1
            return
        self.auth["rejected"] += 1
        if token is not None and token.count(".") == 2:
            reason = self._check_jwt(token)
            if reason is None:
                self.auth["rejected"] -= 1
                self.auth["bearer_jwt"] += 1
                return
            raise self._unauthorized(
                "Unauthorized. Access token is missing, invalid, audience is incorrect "
                f"(https://ai.azure.com or https://cognitiveservices.azure.com), or have expired. ({reason})"
            )
        raise self._unauthorized(
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
            "provide a valid key for an active subscription and use a correct regional API "
            "endpoint for your resource."
        )

    def _check_jwt(self, token: str) -> str | None:
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            return f"malformed token: {exc}"
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else list(aud or [])
        self.audiences.update(str(a) for a in auds)  # every audience seen, accepted or not
        if not any(a in JWT_AUDIENCES for a in auds):
            return f"wrong audience {aud!r}"
        if not str(claims.get("iss", "")).startswith(JWT_ISSUER_PREFIX):
            return f"wrong issuer {claims.get('iss')!r}"
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or exp <= time.time():
            return "token expired or without exp"
        return None

    @staticmethod
    def _unauthorized(message: str) -> ApiError:
        """Azure's 401 (``code: "401"``) with the ``type``/``param`` the OpenAI Error schema requires."""
        return ApiError(401, message, code="401")

    # ---- models

    async def get_model(self, request: web.Request) -> web.StreamResponse:
        """Any deployment name is a model of this stand-in, and says so in ``owned_by``."""
        self.requests["GET /models/{model}"] += 1
        return web.json_response(
            {
                "id": request.match_info["model"],
                "object": "model",
                "created": self.started,
                "owned_by": standin.STAND_IN_OWNER,
            }
        )


# --------------------------------------------------------------------------------------------
# process entry point


async def _serve(host: str, port: int, emulator: Emulator) -> None:
    runner = web.AppRunner(emulator.app(), access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    site = web.SockSite(runner, sock)
    await site.start()
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"READY http://{shown}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    emulator.closing = True
    await runner.cleanup()
    emulator.schemas.close()


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (``python -m local_azure.emulator``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--api-key", default=os.environ.get("EMULATOR_API_KEY", "test-key"))
    p.add_argument("--latency", type=float, default=float(os.environ.get("EMULATOR_LATENCY", "0")))
    p.add_argument(
        "--no-schema-check",
        dest="schema_check",
        action="store_false",
        help="serve bodies without checking them against the OpenAI spec (which only a test checkout has beside it)",
    )
    args = p.parse_args(argv)
    emulator = Emulator(
        args.api_key,
        latency=args.latency,
        chunk_size=int(os.environ.get("EMULATOR_CHUNK_SIZE", str(1 << 20))),
        schema_check=args.schema_check,
    )
    asyncio.run(_serve(args.host, args.port, emulator))


if __name__ == "__main__":
    main()
