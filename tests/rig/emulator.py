"""HTTP emulator of the Azure OpenAI v1 Responses + Containers APIs (Code Interpreter subset).

Run: ``python -m tests.rig.emulator --host 127.0.0.1 --port 0 --api-key KEY``; it prints
``READY http://<host>:<port>`` once listening and runs until SIGTERM.

Behaviour is driven by *scripts* registered via ``POST /_emulator/scripts``; a response picks a
script through the marker ``[[script:<id>]]`` found in its input (else the default script).
See ``EmulatorControl`` for the control API and ``_parse_script`` for the script fields.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import posixpath
import queue
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
from aiohttp import web

from . import content as gen

REPO_ROOT = Path(__file__).resolve().parents[2]
PREFIX = "/openai/v1"
JWT_AUDIENCES = {
    "https://cognitiveservices.azure.com",
    "https://cognitiveservices.azure.com/",
    "https://ai.azure.com",  # AZURE_OPENAI_TOKEN_SCOPE's default (the current v1 docs)
    "https://ai.azure.com/",
}
JWT_ISSUER_PREFIX = "https://sts.windows.net/"
MARKER_RE = re.compile(r"\[\[script:([A-Za-z0-9_\-]+)\]\]")
REQUEST_KEYS = (
    "POST /responses",
    "GET /responses/{id}",
    "POST /responses/{id}/cancel",
    "DELETE /responses/{id}",
    "GET /containers/{cid}/files",
    "GET /containers/{cid}/files/{fid}",
    "GET /containers/{cid}/files/{fid}/content",
)
EXPIRES_MODES = ("never", "before_list", "after_list")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --------------------------------------------------------------------------------------------
# errors


class ApiError(Exception):
    """An error answered with an OpenAI-shaped body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        self.headers = headers or {}

    def response(self) -> web.Response:
        return web.json_response(self.body, status=self.status, headers=self.headers)


def _not_found(message: str, code: str | None = None) -> ApiError:
    return ApiError(404, message, code=code)


def _bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


# --------------------------------------------------------------------------------------------
# model


@dataclass
class ScriptFile:
    """One file a script writes into each run's container."""

    path: str
    size: int
    sha256: str
    seed: str | None  # generated content; None for literal ``content``
    data: bytes | None  # literal content
    source: str = "assistant"
    cite: bool = True
    cite_times: int = 1
    citation_filename: Any = "$default"  # "$default" | "$file_id" | "$file_id_ext" | None | str
    citation_extra: dict[str, Any] = field(default_factory=dict)
    cut_after: int | None = None
    cut_times: int | None = None  # None: every download is cut
    missing: bool = False

    @property
    def basename(self) -> str:
        return posixpath.basename(self.path)

    def chunks(self, chunk_size: int) -> Iterator[bytes]:
        if self.data is not None:
            return gen.data_chunks(self.data, chunk_size)
        assert self.seed is not None
        return gen.chunks(self.seed, self.size, chunk_size)


@dataclass
class FailSpec:
    status: int
    times: int
    retry_after: float | None
    message: str | None
    code: str | None


@dataclass
class Script:
    id: str
    files: list[ScriptFile]
    text: str | None = None
    latency: float | None = None
    fail_first: list[FailSpec] = field(default_factory=list)
    status: str = "completed"
    error: dict[str, Any] | None = None
    container_expires: Any = "never"
    no_container: bool = False
    cut_events: bool = False  # the event stream breaks off after response.in_progress
    extra_annotations: list[dict[str, Any]] = field(default_factory=list)
    runs: int = 0


@dataclass
class ContainerFile:
    id: str
    spec: ScriptFile
    created_at: int
    downloads: int = 0

    def obj(self, container_id: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "container.file",
            "bytes": self.spec.size,
            "container_id": container_id,
            "created_at": self.created_at,
            "path": self.spec.path,
            "source": self.spec.source,
        }


@dataclass
class Container:
    id: str
    files: list[ContainerFile]  # includes ``missing`` ones (never served)
    expires: Any
    done_at: float  # when the run completes; reference for expiry
    expired: bool = False

    def is_expired(self, now: float) -> bool:
        if self.expired:
            return True
        if self.expires == "before_list":
            return now >= self.done_at
        if isinstance(self.expires, (int, float)) and not isinstance(self.expires, bool):
            return now >= self.done_at + float(self.expires)
        return False

    def present(self) -> list[ContainerFile]:
        return [f for f in self.files if not f.spec.missing]


@dataclass
class Run:
    """One response created by POST /responses."""

    id: str
    script: Script
    request: dict[str, Any]
    created: float
    latency: float
    container: Container | None
    ci_id: str = field(default_factory=lambda: "ci_" + secrets.token_hex(24))
    msg_id: str = field(default_factory=lambda: "msg_" + secrets.token_hex(24))
    cancelled: bool = False
    deleted: bool = False

    def status(self, now: float) -> str:
        if self.cancelled:
            return "cancelled"
        if now - self.created >= self.latency:
            return self.script.status
        return "in_progress"


# --------------------------------------------------------------------------------------------
# script parsing


def _opt_int(d: dict[str, Any], key: str, minimum: int = 0) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise _bad_request(f"'{key}' must be an integer >= {minimum}", key)
    return v


def _parse_file(script_id: str, index: int, raw: Any) -> ScriptFile:
    if not isinstance(raw, dict) or not isinstance(raw.get("path"), str) or not raw["path"]:
        raise _bad_request(f"files[{index}] needs a 'path' string", "files")
    path: str = raw["path"]
    if ("content" in raw) == ("size" in raw):
        raise _bad_request(f"files[{index}] needs exactly one of 'content' or 'size'", "files")
    seed: str | None = None
    data: bytes | None = None
    if "content" in raw:
        if not isinstance(raw["content"], str):
            raise _bad_request(f"files[{index}].content must be a string", "files")
        data = raw["content"].encode("utf-8")
        size = len(data)
        sha = hashlib.sha256(data).hexdigest()
    else:
        size_v = _opt_int(raw, "size")
        assert size_v is not None
        size = size_v
        seed = f"{script_id}/{index}/{path}"
        sha = ""  # filled in by the caller (off the event loop)
    source = raw.get("source", "assistant")
    if source not in ("assistant", "user"):
        raise _bad_request(f"files[{index}].source must be 'assistant' or 'user'", "files")
    extra = raw.get("citation_extra") or {}
    if not isinstance(extra, dict):
        raise _bad_request(f"files[{index}].citation_extra must be an object", "files")
    cite_times = _opt_int(raw, "cite_times")
    return ScriptFile(
        path=path,
        size=size,
        sha256=sha,
        seed=seed,
        data=data,
        source=source,
        cite=bool(raw.get("cite", True)),
        cite_times=cite_times if cite_times is not None else 1,
        citation_filename=raw["citation_filename"] if "citation_filename" in raw else "$default",
        citation_extra=dict(extra),
        cut_after=_opt_int(raw, "cut_after"),
        cut_times=_opt_int(raw, "cut_times"),
        missing=bool(raw.get("missing", False)),
    )


def _parse_fail(raw: Any) -> FailSpec:
    if not isinstance(raw, dict) or not isinstance(raw.get("status"), int):
        raise _bad_request("fail_first entries need an integer 'status'", "fail_first")
    ra = raw.get("retry_after")
    return FailSpec(
        status=raw["status"],
        times=_opt_int(raw, "times", 1) or 1,
        retry_after=float(ra) if ra is not None else None,
        message=raw.get("message"),
        code=raw.get("code"),
    )


def _parse_script(script_id: str, body: Any) -> Script:
    """Validate a script body (fields: files, text, latency, fail_first, status, error,
    container_expires, no_container, extra_annotations, cut_events).

    In ``extra_annotations`` the string ``"$container_id"`` becomes the run's container id and
    ``"$file_id:<n>"`` the id of the run's n-th file (as listed in ``files``)."""
    if not isinstance(body, dict):
        raise _bad_request("script must be a JSON object")
    files_raw = body.get("files", [])
    if not isinstance(files_raw, list):
        raise _bad_request("'files' must be a list", "files")
    status = body.get("status", "completed")
    if status not in ("completed", "failed", "incomplete"):
        raise _bad_request("'status' must be completed, failed or incomplete", "status")
    expires = body.get("container_expires", "never")
    if not (expires in EXPIRES_MODES or (isinstance(expires, (int, float)) and not isinstance(expires, bool))):
        raise _bad_request("'container_expires' must be never, before_list, after_list or seconds")
    latency = body.get("latency")
    if latency is not None and (not isinstance(latency, (int, float)) or latency < 0):
        raise _bad_request("'latency' must be a number >= 0", "latency")
    extra = body.get("extra_annotations") or []
    if not isinstance(extra, list) or not all(isinstance(a, dict) for a in extra):
        raise _bad_request("'extra_annotations' must be a list of objects", "extra_annotations")
    error = body.get("error")
    if error is not None and not isinstance(error, dict):
        raise _bad_request("'error' must be an object", "error")
    text = body.get("text")
    if text is not None and not isinstance(text, str):
        raise _bad_request("'text' must be a string", "text")
    return Script(
        id=script_id,
        files=[_parse_file(script_id, i, f) for i, f in enumerate(files_raw)],
        text=text,
        latency=float(latency) if latency is not None else None,
        fail_first=[_parse_fail(f) for f in body.get("fail_first") or []],
        status=status,
        error=error,
        container_expires=expires,
        no_container=bool(body.get("no_container", False)),
        extra_annotations=extra,
        cut_events=bool(body.get("cut_events", False)),
    )


# --------------------------------------------------------------------------------------------
# helpers


def _collect_text(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for v in value:
            _collect_text(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _collect_text(v, out)


def _sandbox_link(spec: ScriptFile) -> str:
    return f"sandbox:{spec.path}"


def _default_text(files: list[ScriptFile]) -> str:
    if not files:
        return "Done."
    parts = []
    for f in files:
        if f.cite:
            parts.append(f"Created [{f.basename}]({_sandbox_link(f)}).")
        else:
            parts.append(f"Also wrote {f.basename}.")
    return " ".join(parts)


def _replace_token(value: Any, token: str, repl: str) -> Any:
    if isinstance(value, str):
        return repl if value == token else value
    if isinstance(value, list):
        return [_replace_token(v, token, repl) for v in value]
    if isinstance(value, dict):
        return {k: _replace_token(v, token, repl) for k, v in value.items()}
    return value


def _annotations(run: Run, text: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    container = run.container
    if container is not None:
        for cf in container.files:
            spec = cf.spec
            if not spec.cite:
                continue
            link = _sandbox_link(spec)
            pos = 0
            for _ in range(spec.cite_times):
                start = text.find(link, pos)
                if start < 0:
                    start = text.find(link)  # reuse the first hit, else 0/0
                s, e = (start, start + len(link)) if start >= 0 else (0, 0)
                if start >= 0:
                    pos = start + 1
                ann: dict[str, Any] = {
                    "type": "container_file_citation",
                    "container_id": container.id,
                    "file_id": cf.id,
                }
                name = spec.citation_filename
                if name == "$default":
                    ann["filename"] = spec.basename
                elif name == "$file_id":
                    ann["filename"] = cf.id
                elif name == "$file_id_ext":
                    ann["filename"] = cf.id + posixpath.splitext(spec.path)[1]
                elif name is not None:
                    ann["filename"] = name
                ann["start_index"] = s
                ann["end_index"] = e
                ann.update(spec.citation_extra)
                out.append(ann)
    cid = container.id if container else ""
    file_ids = [cf.id for cf in container.files] if container else []
    for raw in run.script.extra_annotations:
        annotation = _replace_token(raw, "$container_id", cid)
        for index, file_id in enumerate(file_ids):
            annotation = _replace_token(annotation, f"$file_id:{index}", file_id)
        out.append(annotation)
    return out


def _code_for(files: list[ScriptFile]) -> str:
    lines = [f"open({f.path!r}, 'wb').write(b'...')  # {f.size} bytes" for f in files]
    return "\n".join(lines) or "print('hello')"


# --------------------------------------------------------------------------------------------
# the emulator


class Emulator:
    """In-memory state and aiohttp handlers."""

    def __init__(self, api_key: str, latency: float = 0.0, chunk_size: int = 1 << 20) -> None:
        self.api_key = api_key
        self.latency = latency
        self.chunk_size = chunk_size
        self.scripts: dict[str, Script] = {}
        self.runs: dict[str, Run] = {}
        self.containers: dict[str, Container] = {}
        default = _parse_script(
            "default",
            {
                "files": [{"path": "/mnt/data/test.txt", "content": "hello world"}],
                "text": "Created [test.txt](sandbox:/mnt/data/test.txt).",
            },
        )
        self.scripts["default"] = default
        self.reset_stats()

    # ---- stats

    def reset_stats(self) -> None:
        self.requests: Counter[str] = Counter({k: 0 for k in REQUEST_KEYS})
        self.downloads: Counter[str] = Counter()
        self.bytes_served = 0
        self.auth: Counter[str] = Counter({"api_key": 0, "bearer_jwt": 0, "rejected": 0})
        self.audiences: set[str] = set()
        self.api_versions: set[str] = set()

    def stats(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "downloads": dict(self.downloads),
            "bytes_served": self.bytes_served,
            "auth": dict(self.auth),
            "jwt_audiences": sorted(self.audiences),
            "api_versions": sorted(self.api_versions),
        }

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
        if request.path.startswith(PREFIX + "/"):
            for v in request.query.getall("api-version", []):
                self.api_versions.add(v)
            denied = self._check_auth(request)
            if denied is not None:
                self.auth["rejected"] += 1
                return denied
        try:
            resp = await handler(request)
        except ApiError as exc:
            resp = exc.response()
        resp.headers.setdefault("x-request-id", str(uuid.uuid4()))
        return resp

    def _check_auth(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("api-key")
        authz = request.headers.get("Authorization", "")
        token = authz[7:].strip() if authz[:7].lower() == "bearer " else None
        if key is not None and secrets.compare_digest(key, self.api_key):
            self.auth["api_key"] += 1
            return None
        if token is not None and secrets.compare_digest(token, self.api_key):
            self.auth["api_key"] += 1
            return None
        if token is not None and token.count(".") == 2:
            reason = self._check_jwt(token)
            if reason is None:
                self.auth["bearer_jwt"] += 1
                return None
            return self._unauthorized(
                "Unauthorized. Access token is missing, invalid, audience is incorrect "
                f"(https://cognitiveservices.azure.com), or have expired. ({reason})"
            )
        return self._unauthorized(
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
        self.audiences.update(str(a) for a in auds)
        if not any(a in JWT_AUDIENCES for a in auds):
            return f"wrong audience {aud!r}"
        if not str(claims.get("iss", "")).startswith(JWT_ISSUER_PREFIX):
            return f"wrong issuer {claims.get('iss')!r}"
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or exp <= time.time():
            return "token expired or without exp"
        return None

    @staticmethod
    def _unauthorized(message: str) -> web.Response:
        return web.json_response({"error": {"code": "401", "message": message}}, status=401)

    # ---- responses

    def _response_obj(self, run: Run, status: str | None = None) -> dict[str, Any]:
        now = time.time()
        status = status or run.status(now)
        req = run.request
        output: list[dict[str, Any]] = []
        error = None
        incomplete = None
        if status == "failed":
            err = run.script.error or {"code": "server_error", "message": "The model run failed."}
            error = {"code": err.get("code", "server_error"), "message": err.get("message", "")}
        if status in ("completed", "incomplete"):
            files = [cf.spec for cf in run.container.files] if run.container else []
            text = run.script.text if run.script.text is not None else _default_text(files)
            if run.container is not None:
                output.append(
                    {
                        "type": "code_interpreter_call",
                        "id": run.ci_id,
                        "status": "completed",
                        "container_id": run.container.id,
                        "code": _code_for(files),
                        "outputs": None,
                    }
                )
            output.append(
                {
                    "type": "message",
                    "id": run.msg_id,
                    "role": "assistant",
                    "status": "completed" if status == "completed" else "incomplete",
                    "content": [
                        {
                            "type": "output_text",
                            "text": text,
                            "annotations": _annotations(run, text),
                            "logprobs": [],
                        }
                    ],
                }
            )
        if status == "incomplete":
            incomplete = {"reason": "max_output_tokens"}
        done = status in ("completed", "incomplete")
        return {
            "id": run.id,
            "object": "response",
            "created_at": int(run.created),
            "status": status,
            "model": req.get("model"),
            "background": bool(req.get("background", False)),
            "error": error,
            "incomplete_details": incomplete,
            "instructions": req.get("instructions"),
            "max_output_tokens": req.get("max_output_tokens"),
            "metadata": req.get("metadata") or {},
            "tools": req.get("tools") or [],
            "output": output,
            "usage": {
                "input_tokens": 42,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 17 if done else 0,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 59 if done else 42,
            }
            if done
            else None,
            "store": bool(req.get("store", True)),
            "parallel_tool_calls": True,
            "previous_response_id": req.get("previous_response_id"),
            "temperature": 1.0,
            "top_p": 1.0,
            "tool_choice": "auto",
            "truncation": "disabled",
            "text": {"format": {"type": "text"}},
        }

    def _pick_script(self, body: dict[str, Any]) -> Script:
        texts: list[str] = []
        _collect_text(body.get("input"), texts)
        _collect_text(body.get("instructions"), texts)
        for t in texts:
            m = MARKER_RE.search(t)
            if m:
                script = self.scripts.get(m.group(1))
                if script is None:
                    raise _bad_request(f"Emulator: unknown script id {m.group(1)!r}.", "input")
                return script
        return self.scripts["default"]

    @staticmethod
    def _consume_fault(script: Script) -> ApiError | None:
        if not script.fail_first:
            return None
        spec = script.fail_first[0]
        spec.times -= 1
        if spec.times <= 0:
            script.fail_first.pop(0)
        headers = {}
        if spec.retry_after is not None:
            ra = spec.retry_after
            headers["retry-after"] = str(int(ra)) if float(ra).is_integer() else str(ra)
        if spec.status == 429:
            return ApiError(
                429,
                spec.message or "Rate limit reached for requests. Please retry after a moment.",
                type_="requests",
                code=spec.code or "rate_limit_exceeded",
                headers=headers,
            )
        if spec.status >= 500:
            return ApiError(
                spec.status,
                spec.message or "The server had an error while processing your request. Sorry about that!",
                type_="server_error",
                code=spec.code,
                headers=headers,
            )
        return ApiError(
            spec.status,
            spec.message or f"Emulated error {spec.status}.",
            code=spec.code,
            headers=headers,
        )

    def _new_container(self, script: Script, done_at: float) -> Container:
        now = int(time.time())
        files = [ContainerFile(id="cfile_" + uuid.uuid4().hex, spec=f, created_at=now) for f in script.files]
        c = Container(id="cntr_" + uuid.uuid4().hex, files=files, expires=script.container_expires, done_at=done_at)
        self.containers[c.id] = c
        return c

    async def create_response(self, request: web.Request) -> web.StreamResponse:
        self.requests["POST /responses"] += 1
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _bad_request("We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise _bad_request("Request body must be a JSON object.")
        script = self._pick_script(body)
        fault = self._consume_fault(script)
        if fault is not None:
            raise fault
        if not body.get("model"):
            raise _bad_request("Missing required parameter: 'model'.", "model")
        background = bool(body.get("background", False))
        if background and body.get("store") is False:
            raise _bad_request("Background mode requires 'store' to be true.", "background")
        tools = body.get("tools") or []
        has_ci = any(isinstance(t, dict) and t.get("type") == "code_interpreter" for t in tools)
        now = time.time()
        latency = script.latency if script.latency is not None else self.latency
        container = None
        if has_ci and not script.no_container:
            container = self._new_container(script, now + latency)
        run = Run(
            id="resp_" + secrets.token_hex(24),
            script=script,
            request=body,
            created=now,
            latency=latency,
            container=container,
        )
        script.runs += 1
        self.runs[run.id] = run
        if body.get("stream"):
            return await self._stream_events(request, run, background)
        if background:
            return web.json_response(self._response_obj(run, status="queued"))
        remaining = run.created + latency - time.time()
        if remaining > 0:
            await asyncio.sleep(remaining)
        return web.json_response(self._response_obj(run))

    async def _stream_events(self, request: web.Request, run: Run, background: bool) -> web.StreamResponse:
        """Server-sent events as the Responses API sends them: created, in_progress, then the final
        event with the whole response. A cancelled run's stream just ends (clients retrieve it)."""
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await stream.prepare(request)
        sequence = 0

        async def send(kind: str, response: dict[str, Any]) -> None:
            nonlocal sequence
            data = json.dumps({"type": kind, "sequence_number": sequence, "response": response})
            await stream.write(f"event: {kind}\ndata: {data}\n\n".encode())
            sequence += 1

        finals = {"completed": "response.completed", "failed": "response.failed", "incomplete": "response.incomplete"}
        try:
            await send("response.created", self._response_obj(run, status="queued" if background else "in_progress"))
            await send("response.in_progress", self._response_obj(run, status="in_progress"))
            if run.script.cut_events:
                if request.transport is not None:
                    request.transport.close()  # the connection drops mid-stream
                return stream
            while (status := run.status(time.time())) == "in_progress":  # a cancel flips it  # noqa: ASYNC110
                await asyncio.sleep(min(0.02, max(0.0, run.created + run.latency - time.time())))
            if status in finals:
                await send(finals[status], self._response_obj(run))
            await stream.write_eof()
        except ConnectionResetError:
            pass  # the client stopped listening; a background run goes on
        return stream

    def _get_run(self, request: web.Request) -> Run:
        rid = request.match_info["id"]
        run = self.runs.get(rid)
        if run is None or run.deleted or run.request.get("store") is False:
            raise _not_found(f"Response with id '{rid}' not found.")
        return run

    async def get_response(self, request: web.Request) -> web.StreamResponse:
        self.requests["GET /responses/{id}"] += 1
        return web.json_response(self._response_obj(self._get_run(request)))

    async def cancel_response(self, request: web.Request) -> web.StreamResponse:
        self.requests["POST /responses/{id}/cancel"] += 1
        run = self._get_run(request)
        status = run.status(time.time())
        if status == "cancelled":
            return web.json_response(self._response_obj(run))
        if status != "in_progress":
            raise _bad_request(f"Cannot cancel a response with status '{status}'.")
        run.cancelled = True
        return web.json_response(self._response_obj(run))

    async def delete_response(self, request: web.Request) -> web.StreamResponse:
        self.requests["DELETE /responses/{id}"] += 1
        run = self._get_run(request)
        run.deleted = True
        return web.json_response({"id": run.id, "object": "response.deleted", "deleted": True})

    # ---- containers

    def _container(self, request: web.Request) -> Container:
        cid = request.match_info["cid"]
        c = self.containers.get(cid)
        if c is None:
            raise _not_found("Container not found")
        if c.is_expired(time.time()):
            raise _not_found("Container is expired.", code="container_expired")
        return c

    def _file(self, request: web.Request) -> tuple[Container, ContainerFile]:
        c = self._container(request)
        fid = request.match_info["fid"]
        for f in c.files:
            if f.id == fid and not f.spec.missing:
                return c, f
        raise _not_found(f"File with id '{fid}' not found.")

    async def list_files(self, request: web.Request) -> web.StreamResponse:
        self.requests["GET /containers/{cid}/files"] += 1
        c = self._container(request)
        q = request.query
        try:
            limit = int(q.get("limit", "20"))
        except ValueError:
            raise _bad_request("Invalid 'limit': expected an integer.", "limit") from None
        if not 1 <= limit <= 100:
            raise _bad_request(
                f"Invalid 'limit': integer below minimum value or above maximum value (got {limit}).", "limit"
            )
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise _bad_request("Invalid 'order': expected 'asc' or 'desc'.", "order")
        files = c.present()
        if order == "desc":
            files = files[::-1]
        after = q.get("after")
        if after:
            ids = [f.id for f in files]
            if after not in ids:
                raise _bad_request(f"Invalid 'after': file '{after}' not found.", "after")
            files = files[ids.index(after) + 1 :]
        page = files[:limit]
        if c.expires == "after_list":
            c.expired = True
        return web.json_response(
            {
                "object": "list",
                "data": [f.obj(c.id) for f in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(files) > limit,
            }
        )

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        self.requests["GET /containers/{cid}/files/{fid}"] += 1
        c, f = self._file(request)
        return web.json_response(f.obj(c.id))

    async def get_content(self, request: web.Request) -> web.StreamResponse:
        self.requests["GET /containers/{cid}/files/{fid}/content"] += 1
        _, f = self._file(request)
        spec = f.spec
        f.downloads += 1
        self.downloads[f.id] += 1
        cut: int | None = None
        if spec.cut_after is not None and (spec.cut_times is None or f.downloads <= spec.cut_times):
            cut = min(spec.cut_after, spec.size)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/octet-stream"})
        resp.content_length = spec.size
        await resp.prepare(request)
        sent = 0
        for chunk in spec.chunks(self.chunk_size):
            if cut is not None and sent + len(chunk) >= cut:
                chunk = chunk[: cut - sent]
                if chunk:
                    await resp.write(chunk)
                    sent += len(chunk)
                    self.bytes_served += len(chunk)
                transport = request.transport
                if transport is not None:
                    transport.close()  # flushes what was written, then drops the connection
                return resp
            await resp.write(chunk)
            sent += len(chunk)
            self.bytes_served += len(chunk)
        await resp.write_eof()
        return resp

    # ---- control API

    async def ctl_add_script(self, request: web.Request) -> web.StreamResponse:
        script_id = secrets.token_hex(6)
        script = _parse_script(script_id, await request.json())
        loop = asyncio.get_running_loop()
        for f in script.files:
            if f.seed is not None:
                f.sha256 = await loop.run_in_executor(None, gen.sha256_of, f.seed, f.size)
        self.scripts[script_id] = script
        return web.json_response(
            {
                "script_id": script_id,
                "marker": f"[[script:{script_id}]]",
                "files": [{"path": f.path, "bytes": f.size, "sha256": f.sha256, "seed": f.seed} for f in script.files],
            }
        )

    async def ctl_run(self, request: web.Request) -> web.StreamResponse:
        rid = request.match_info["id"]
        run = self.runs.get(rid)
        if run is None:
            raise _not_found(f"Response with id '{rid}' not found.")
        c = run.container
        return web.json_response(
            {
                "response_id": run.id,
                "script_id": run.script.id,
                "container_id": c.id if c else None,
                "files": [
                    {
                        "file_id": f.id,
                        "path": f.spec.path,
                        "bytes": f.spec.size,
                        "sha256": f.spec.sha256,
                        "missing": f.spec.missing,
                    }
                    for f in (c.files if c else [])
                ],
                "request": run.request,
            }
        )

    async def ctl_script_runs(self, request: web.Request) -> web.StreamResponse:
        sid = request.match_info["id"]
        if sid not in self.scripts:
            raise _not_found(f"Script with id '{sid}' not found.")
        return web.json_response({"runs": [run.id for run in self.runs.values() if run.script.id == sid]})

    async def ctl_stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats())

    async def ctl_reset(self, request: web.Request) -> web.StreamResponse:
        self.reset_stats()
        return web.json_response({"ok": True})

    async def ctl_config(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not isinstance(body, dict):
            raise _bad_request("config must be a JSON object")
        if "latency" in body:
            lat = body["latency"]
            if not isinstance(lat, (int, float)) or lat < 0:
                raise _bad_request("'latency' must be a number >= 0", "latency")
            self.latency = float(lat)
        if "chunk_size" in body:
            cs = body["chunk_size"]
            if not isinstance(cs, int) or cs <= 0:
                raise _bad_request("'chunk_size' must be a positive integer", "chunk_size")
            self.chunk_size = cs
        return web.json_response({"latency": self.latency, "chunk_size": self.chunk_size})

    async def ctl_expire(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["cid"]
        c = self.containers.get(cid)
        if c is None:
            raise _not_found("Container not found")
        c.expired = True
        return web.json_response({"container_id": cid, "expired": True})


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
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (``python -m tests.rig.emulator``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--api-key", default=os.environ.get("EMULATOR_API_KEY", "test-key"))
    args = p.parse_args(argv)
    emulator = Emulator(
        args.api_key,
        latency=float(os.environ.get("EMULATOR_LATENCY", "0")),
        chunk_size=int(os.environ.get("EMULATOR_CHUNK_SIZE", str(1 << 20))),
    )
    asyncio.run(_serve(args.host, args.port, emulator))


# --------------------------------------------------------------------------------------------
# client helpers


def start_emulator(api_key: str, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """Start the emulator as a subprocess; return ``(process, base_url)`` once it is READY."""
    env = {**os.environ, **(extra_env or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.rig.emulator", "--host", "127.0.0.1", "--port", "0", "--api-key", api_key],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
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
            return proc, line.split(" ", 1)[1].strip()
        if line == "":
            code = proc.wait()
            raise RuntimeError(f"emulator exited with code {code} before READY")


def stop_emulator(proc: subprocess.Popen[Any]) -> None:
    """Terminate the emulator (SIGTERM, then SIGKILL after 5 s)."""
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
        """Return request/download/auth counters."""
        return self._call("GET", "/_emulator/stats")

    def reset(self) -> None:
        """Zero the stats (scripts, responses and containers are kept)."""
        self._call("POST", "/_emulator/reset")

    def expire_container(self, container_id: str) -> None:
        """Expire a container now: its file endpoints answer 404 container_expired."""
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


if __name__ == "__main__":
    main()
