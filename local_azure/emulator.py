"""HTTP emulator of the Azure OpenAI v1 Responses + Containers APIs (Code Interpreter subset).

Run: ``python -m local_azure.emulator --host 127.0.0.1 --port 0 --api-key KEY``; it prints
``READY http://<host>:<port>`` once listening and runs until SIGTERM.

Behaviour is driven by *scripts* registered via ``POST /_emulator/scripts``; a response picks a
script through the marker ``[[script:<id>]]`` found in its input. A prompt without a marker goes to
the offline stand-in (local_azure/standin.py), which does the few things a newcomer asks for real.
See ``EmulatorControl`` for the control API and ``_parse_script`` for the script fields.
``GET /openai/v1/models/{deployment}`` answers the model object with ``owned_by: "offline-stand-in"``.

Every JSON body and stream event it serves under ``/openai/v1`` is checked (in a worker process)
against the published OpenAI component schemas plus Azure's required ``user``
(``openai_schemas``); ``/_emulator/stats`` reports the tally and the session's last test asserts
that nothing violated them. ``--no-schema-check`` (what `scripts/start.sh --offline` passes: a user's
clone has no spec beside it) serves the same bodies unchecked. Errors are
``{"error": {message, type, param, code}}``, unknown routes included; 401s and 429s carry Azure's
``code`` ("401", "429").
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import math
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
from . import emulator_files, standin
from .openai_schemas import AZURE_RESPONSE, EVENT_SCHEMAS, SchemaChecker
from .png import png_of_size

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFIX = "/openai/v1"
# The v1 docs' scope is https://ai.azure.com/.default; cognitiveservices is the legacy one, still accepted.
JWT_AUDIENCES = {
    "https://ai.azure.com",
    "https://ai.azure.com/",
    "https://cognitiveservices.azure.com",
    "https://cognitiveservices.azure.com/",
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
    "GET /models/{model}",
)
EXPIRES_MODES = ("never", "before_list", "after_list", "after_first_download")
EXPIRED_SHAPES = ("openai_400", "azure_404")
#: Endpoint names a fault's ``on`` takes, with the request counter each one is.
FAULT_ENDPOINTS = {
    "create": "POST /responses",
    "get_response": "GET /responses/{id}",
    "cancel": "POST /responses/{id}/cancel",
    "delete": "DELETE /responses/{id}",
    "list": "GET /containers/{cid}/files",
    "retrieve": "GET /containers/{cid}/files/{fid}",
    "content": "GET /containers/{cid}/files/{fid}/content",
}
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
INCLUDE_CI_OUTPUTS = "code_interpreter_call.outputs"
RBAC_CHECK_ACCESS = (
    "Principal does not have access to API/Operation. OperationId get-container not supported for CheckAccess."
)

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


def _server_error(
    status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
) -> ApiError:
    return ApiError(status, message, type_="server_error", code=code, headers=headers)


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _fault_error(spec: FailSpec) -> ApiError:
    """The error a scripted fault answers, in the shape the service uses for that status."""
    headers: dict[str, str] = {}
    if spec.retry_after is not None:
        headers["retry-after"] = _seconds(spec.retry_after)
    if spec.retry_after_ms is not None:
        headers["retry-after-ms"] = _seconds(spec.retry_after_ms)
    if spec.status == 429:
        wait = spec.retry_after
        if wait is None and spec.retry_after_ms is not None:
            wait = math.ceil(spec.retry_after_ms / 1000)
        when = f"Please retry after {_seconds(wait)} seconds." if wait is not None else "Please retry later."
        message = (
            "Requests to the Responses API have exceeded the rate limit of your current deployment. "
            f"{when} To increase your default rate limit, visit: https://aka.ms/oai/quotaincrease."
        )
        return ApiError(429, spec.message or message, type_="requests", code=spec.code or "429", headers=headers)
    if spec.status >= 500:
        message = "The server had an error while processing your request. Sorry about that!"
        return _server_error(spec.status, spec.message or message, spec.code, headers)
    if spec.status == 403:
        return ApiError(403, spec.message or RBAC_CHECK_ACCESS, code=spec.code or "PermissionDenied", headers=headers)
    if spec.status == 404 and spec.on in ("list", "retrieve", "content"):
        return ApiError(404, spec.message or "Container not found", code=spec.code, headers=headers)
    return ApiError(spec.status, spec.message or f"Emulated error {spec.status}.", code=spec.code, headers=headers)


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
    download_seconds: float | None = None  # each download is spread over at least this long

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
    """An error answered on one endpoint (``on``) ``times`` times (None: every time)."""

    status: int
    times: int | None
    retry_after: float | None
    retry_after_ms: float | None
    message: str | None
    code: str | None
    on: str = "create"
    for_seconds: float | None = None  # an outage: every request fails this long after the first one did
    started: float | None = None


@dataclass
class ScriptImage:
    """One image output of the run's code_interpreter_call (a data URL unless ``url`` is literal)."""

    data: bytes
    url: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Script:
    id: str
    files: list[ScriptFile]
    text: str | None = None
    latency: float | None = None
    faults: list[FailSpec] = field(default_factory=list)  # fail_first, list_fails, retrieve_fails
    status: str = "completed"
    incomplete_reason: str = "max_output_tokens"
    error: dict[str, Any] | None = None
    container_expires: Any = "never"
    expired_shape: str = "openai_400"
    no_container: bool = False
    cut_events: bool = False  # the event stream breaks off after response.in_progress
    stream_closes_before_created: str | None = None  # "eof" | "drop"
    silent_stream: bool = False
    create_500_after_start: bool | int = False  # True: every create; n: the first n
    delete_refused_while_running: int | None = None  # the status of the refusal
    cancel_ignored: bool = False
    cancel_lands_after: float | None = None
    images: list[ScriptImage] = field(default_factory=list)
    logs: str | None = None
    code: str | None = None  # the code_interpreter_call's code (default: a line per file written)
    extra_annotations: list[dict[str, Any]] = field(default_factory=list)
    off_spec: bool = False  # its responses may break the schema on purpose (hostile-input tests)
    runs: int = 0
    create_500_served: int = 0


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
    script: Script
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
    cancel_requested: bool = False
    cancel_at: float | None = None  # a cancel that lands late (the script's cancel_lands_after)
    deleted: bool = False

    def running(self, now: float) -> bool:
        """Whether the run still works (a cancel the script ignores does not stop it)."""
        self._land_cancel(now)
        if self.cancel_requested and not self.script.cancel_ignored:
            return False
        return now - self.created < self.latency

    def _land_cancel(self, now: float) -> None:
        if self.cancel_at is not None and now >= self.cancel_at and now - self.created < self.latency:
            self.cancel_requested, self.cancel_at = True, None

    def status(self, now: float) -> str:
        """What the API shows: an ignored cancel shows ``cancelled`` until the run ends anyway."""
        self._land_cancel(now)
        if self.cancel_requested and not self.script.cancel_ignored:
            return "cancelled"
        if now - self.created >= self.latency:
            return self.script.status
        return "cancelled" if self.cancel_requested else "in_progress"


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
    if "copy_of_input" in raw:  # inputs hook: a copy of an input file (local_azure/emulator_files.py)
        return emulator_files.parse_copy_file(index, raw)
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
        download_seconds=_opt_number(raw, "download_seconds"),
    )


def _opt_number(d: dict[str, Any], key: str) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
        raise _bad_request(f"'{key}' must be a number >= 0", key)
    return float(v)


def _parse_fail(raw: Any, field_name: str, on: str | None = None) -> FailSpec:
    """One fault; in ``fail_first`` a missing ``times`` is 1, elsewhere (``on`` given) every time."""
    if not isinstance(raw, dict) or not isinstance(raw.get("status"), int) or isinstance(raw["status"], bool):
        raise _bad_request(f"{field_name} needs an integer 'status'", field_name)
    if not 400 <= raw["status"] <= 599:
        raise _bad_request(f"{field_name}.status must be 400..599", field_name)
    where = raw.get("on", "create") if on is None else on
    if where not in FAULT_ENDPOINTS:
        raise _bad_request(f"{field_name}.on must be one of {', '.join(FAULT_ENDPOINTS)}", field_name)
    for_seconds = _opt_number(raw, "for_seconds")
    if "times" in raw:
        times = _opt_int(raw, "times", 1)
    else:
        times = 1 if on is None and for_seconds is None else None
    for key in ("message", "code"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise _bad_request(f"{field_name}.{key} must be a string", field_name)
    return FailSpec(
        status=raw["status"],
        times=times,
        retry_after=_opt_number(raw, "retry_after"),
        retry_after_ms=_opt_number(raw, "retry_after_ms"),
        message=raw.get("message"),
        code=raw.get("code"),
        on=where,
        for_seconds=for_seconds,
    )


def _parse_images(script_id: str, raw: Any) -> list[ScriptImage]:
    if not isinstance(raw, list):
        raise _bad_request("'images' must be a list", "images")
    out: list[ScriptImage] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or len(item) != 1 or not {"png_bytes", "content_base64", "url"} & set(item):
            raise _bad_request(f"images[{i}] needs exactly one of png_bytes, content_base64, url", "images")
        if "png_bytes" in item:
            size = _opt_int(item, "png_bytes", 1)
            if size is None or size > 64 << 20:
                raise _bad_request(f"images[{i}].png_bytes must be 1..{64 << 20}", "images")
            try:
                data = png_of_size(size, f"{script_id}/image/{i}")
            except ValueError as exc:
                raise _bad_request(f"images[{i}].png_bytes: {exc}", "images") from None
        elif "content_base64" in item:
            try:
                data = base64.b64decode(str(item["content_base64"]), validate=True)
            except ValueError:
                raise _bad_request(f"images[{i}].content_base64 is not base64", "images") from None
        else:
            if not isinstance(item["url"], str):
                raise _bad_request(f"images[{i}].url must be a string", "images")
            out.append(ScriptImage(data=b"", url=item["url"]))
            continue
        out.append(ScriptImage(data=data, url="data:image/png;base64," + base64.b64encode(data).decode()))
    return out


def _parse_script(script_id: str, body: Any) -> Script:
    """Validate a script body. Fields (all optional):

    Run and answer:
    - ``files``: files written into each run's container (see ``_parse_file``).
    - ``text``: the answer text (default: a sentence citing each file's ``sandbox:`` link).
    - ``latency``: seconds the run takes (default: the emulator's ``latency``).
    - ``status``: ``completed`` (default) | ``failed`` | ``incomplete``. ``incomplete`` keeps the
      container and its files, the message item is ``status: incomplete`` and
      ``incomplete_details.reason`` is ``incomplete_reason`` (``max_output_tokens`` by default,
      or ``content_filter``).
    - ``error``: ``{code, message}`` of a failed run (default ``server_error``).
    - ``no_container``: the run uses no container even with the code_interpreter tool.
    - ``extra_annotations``: annotations appended to the message; ``"$container_id"`` becomes the
      run's container id and ``"$file_id:<n>"`` the id of the run's n-th file.
    - ``images``: image outputs of the run's code_interpreter_call, each ``{"png_bytes": n}`` (a
      real PNG of exactly n bytes: 104, or 124 and more), ``{"content_base64": "..."}`` (those bytes)
      or ``{"url": "..."}`` (that URL as it is). They appear as ``outputs: [{"type": "image", "url":
      "data:image/png;base64,..."}]`` only when the request has ``include:
      ["code_interpreter_call.outputs"]``; without it ``outputs`` is null (as on the real service).
    - ``logs``: with that include, a ``{"type": "logs", "logs": <logs>}`` output before the images.
    - ``off_spec``: true when the script's responses break the published schema on purpose (e.g. an
      ``error.code`` outside the enum); implied by ``extra_annotations`` and by a
      ``citation_filename`` of null. Their violations are listed apart (``deliberate_violations``)
      and do not fail the session's schema check.

    Faults (each consumed per script, over all its runs, in order of the list):
    - ``fail_first``: ``[{status, times?, on?, retry_after?, retry_after_ms?, message?, code?}]``:
      the endpoint ``on`` (``create`` by default; ``get_response``, ``cancel``, ``delete``, ``list``,
      ``retrieve`` (file metadata), ``content``) answers ``status`` ``times`` times (default 1; null:
      every time) before working; ``for_seconds``: an outage, every request fails for that long after
      the first one did (then it works). A failed create starts no run. ``retry_after`` (seconds) sends
      ``retry-after``, ``retry_after_ms`` sends ``retry-after-ms``; both, either or neither.
      Bodies: 429 is Azure's ``{"error": {"code": "429", "message": "... Please retry after N
      seconds. ..."}}`` (no number when neither header is sent) plus ``type: "requests"``,
      ``param: null``; 5xx is OpenAI's ``server_error``; 403 is Azure's RBAC ``PermissionDenied``
      "OperationId get-container not supported for CheckAccess"; 404 on a container endpoint is
      "Container not found"; ``message``/``code`` override.
    - ``list_fails``: ``{status, times?, retry_after?, retry_after_ms?, message?, code?}``: GET
      ``/containers/{id}/files`` fails like a ``fail_first`` entry with ``on: "list"`` but by default
      every time (``times`` null). Downloads (``/content``) keep working.
    - ``retrieve_fails``: the same for GET ``/containers/{id}/files/{fid}`` (file metadata).
    - ``create_500_after_start``: true (every create) or n (the first n creates): the run is created
      and runs (it counts in ``runs_started``, retrieve finds it), yet the create answers 500.

    Containers:
    - ``container_expires``: ``never`` (default) | ``before_list`` (expired once the run is done) |
      ``after_first_download`` (expires once one file's content has been served whole) |
      ``after_list`` (expires after its first listing) | seconds after the run is done.
    - ``expired_shape``: what every container endpoint (list, retrieve, content) answers once
      expired: ``openai_400`` (default; OpenAI's ``400 {"error": {"message": "Container is
      expired.", "type": "invalid_request_error", "param": null, "code": null}}``) or ``azure_404``
      (``404 {"error": {"message": "Container <id> not found", "type": "invalid_request_error",
      "param": null, "code": null}}``).

    Event streams (``stream: true`` creates):
    - ``cut_events``: the connection drops after ``response.in_progress``.
    - ``stream_closes_before_created``: true or ``"eof"`` (a 200 event stream that ends without any
      event) or ``"drop"`` (the connection drops before any event). The run exists and runs.
    - ``silent_stream``: only ``response.created`` is sent; then nothing (no in_progress, no final
      event) while the connection stays open until the client leaves; the run ends as scripted.

    Lifecycle:
    - ``delete_refused_while_running``: true (400) or 400/409: ``DELETE /responses/{id}`` of a run
      still working answers that status, "Cannot delete a response that is in progress."; per
      script because Azure's behaviour is unconfirmed (the app must survive both).
    - ``cancel_lands_after``: seconds: cancel is accepted (the response still ``in_progress``) and the
      run stops, ``cancelled``, only that long after (Azure's cancel is best effort and late).
    - ``cancel_ignored``: cancel answers the response as ``cancelled`` (and retrieve shows
      ``cancelled``) but the run goes on and ends as scripted (Azure's cancel is best effort).
    """
    if not isinstance(body, dict):
        raise _bad_request("script must be a JSON object")
    files_raw = body.get("files", [])
    if not isinstance(files_raw, list):
        raise _bad_request("'files' must be a list", "files")
    status = body.get("status", "completed")
    if status not in ("completed", "failed", "incomplete"):
        raise _bad_request("'status' must be completed, failed or incomplete", "status")
    reason = body.get("incomplete_reason", "max_output_tokens")
    if reason not in ("max_output_tokens", "content_filter"):
        raise _bad_request("'incomplete_reason' must be max_output_tokens or content_filter", "incomplete_reason")
    expires = body.get("container_expires", "never")
    if not (expires in EXPIRES_MODES or (isinstance(expires, (int, float)) and not isinstance(expires, bool))):
        raise _bad_request(
            "'container_expires' must be never, before_list, after_list, after_first_download or seconds"
        )
    shape = body.get("expired_shape", "openai_400")
    if shape not in EXPIRED_SHAPES:
        raise _bad_request("'expired_shape' must be openai_400 or azure_404", "expired_shape")
    latency = body.get("latency")
    if latency is not None and (not isinstance(latency, (int, float)) or latency < 0):
        raise _bad_request("'latency' must be a number >= 0", "latency")
    extra = body.get("extra_annotations") or []
    if not isinstance(extra, list) or not all(isinstance(a, dict) for a in extra):
        raise _bad_request("'extra_annotations' must be a list of objects", "extra_annotations")
    error = body.get("error")
    if error is not None and not isinstance(error, dict):
        raise _bad_request("'error' must be an object", "error")
    for key in ("text", "logs"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise _bad_request(f"'{key}' must be a string", key)
    fail_first = body.get("fail_first") or []
    if not isinstance(fail_first, list):
        raise _bad_request("'fail_first' must be a list", "fail_first")
    faults = [_parse_fail(f, "fail_first") for f in fail_first]
    for key, on in (("list_fails", "list"), ("retrieve_fails", "retrieve")):
        if body.get(key) is not None:
            faults.append(_parse_fail(body[key], key, on))
    after_start = body.get("create_500_after_start", False)
    if not isinstance(after_start, int) or after_start < 0:  # bools are ints
        raise _bad_request("'create_500_after_start' must be true, false or a count", "create_500_after_start")
    closes = body.get("stream_closes_before_created", False)
    if closes not in (False, None, True, "eof", "drop"):
        raise _bad_request("'stream_closes_before_created' must be true, 'eof' or 'drop'")
    refused = body.get("delete_refused_while_running", False)
    if not (refused is None or isinstance(refused, bool) or (type(refused) is int and refused in (400, 409))):
        raise _bad_request("'delete_refused_while_running' must be true, 400 or 409")
    files = [_parse_file(script_id, i, f) for i, f in enumerate(files_raw)]
    off_spec = bool(body.get("off_spec", False)) or bool(extra) or any(f.citation_filename is None for f in files)
    return Script(
        id=script_id,
        files=files,
        text=body.get("text"),
        latency=float(latency) if latency is not None else None,
        faults=faults,
        status=status,
        incomplete_reason=reason,
        error=error,
        container_expires=expires,
        expired_shape=shape,
        no_container=bool(body.get("no_container", False)),
        extra_annotations=extra,
        off_spec=off_spec,
        cut_events=bool(body.get("cut_events", False)),
        stream_closes_before_created="eof" if closes is True else (closes or None),
        silent_stream=bool(body.get("silent_stream", False)),
        create_500_after_start=after_start,
        delete_refused_while_running=(400 if refused is True else refused) or None,
        cancel_ignored=bool(body.get("cancel_ignored", False)),
        cancel_lands_after=_opt_number(body, "cancel_lands_after"),
        images=_parse_images(script_id, body.get("images") or []),
        logs=body.get("logs"),
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

    def __init__(
        self, api_key: str, latency: float = 0.0, chunk_size: int = 1 << 20, schema_check: bool = True
    ) -> None:
        self.api_key = api_key
        self.started = int(time.time())
        self.latency = latency
        self.chunk_size = chunk_size
        self.scripts: dict[str, Script] = {}
        self.runs: dict[str, Run] = {}
        self.containers: dict[str, Container] = {}
        self.files_api = emulator_files.FilesApi(self)  # Files, Uploads, GET /containers/{id}, inputs
        # Not reset by reset_stats: the session check adds up every body this process served.
        self.schemas = SchemaChecker(enabled=schema_check)
        self.streams_open = 0  # a gauge: event streams whose handler still runs
        self.closing = False  # set on shutdown: silent streams end instead of holding it up
        self.reset_stats()

    # ---- stats

    def reset_stats(self) -> None:
        self.requests: Counter[str] = Counter({k: 0 for k in REQUEST_KEYS})
        self.downloads: Counter[str] = Counter()
        self.bytes_served = 0
        self.auth: Counter[str] = Counter({"api_key": 0, "bearer_jwt": 0, "rejected": 0})
        self.audiences: Counter[str] = Counter()
        self.api_versions: set[str] = set()
        self.files_api.reset_stats()
        self.runs_started: Counter[str] = Counter()
        self.faults_served: Counter[str] = Counter()

    def stats(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "downloads": dict(self.downloads),
            "bytes_served": self.bytes_served,
            "auth": dict(self.auth),
            "jwt_audiences": sorted(self.audiences),
            "jwt_audience_counts": dict(self.audiences),
            "api_versions": sorted(self.api_versions),
            "files": self.files_api.stats(),
            "runs_started": {"total": sum(self.runs_started.values()), "by_script": dict(self.runs_started)},
            "faults_served": dict(self.faults_served),
            "streams_open": self.streams_open,
            "schemas": self.schemas.stats(),
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
                        "code": run.script.code or _code_for(files),
                        "outputs": self._ci_outputs(run),
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
            incomplete = {"reason": run.script.incomplete_reason}
        done = status in ("completed", "incomplete")
        obj: dict[str, Any] = {
            "id": run.id,
            "object": "response",
            "created_at": int(run.created),
            "status": status,
            "completed_at": int(run.created + run.latency) if status == "completed" else None,
            "model": req.get("model"),
            "background": bool(req.get("background", False)),
            "error": error,
            "incomplete_details": incomplete,
            "instructions": req.get("instructions"),
            "max_output_tokens": req.get("max_output_tokens"),
            "max_tool_calls": None,
            "metadata": req.get("metadata") or {},
            "tools": req.get("tools") or [],
            "output": output,
            "store": bool(req.get("store", True)),
            "parallel_tool_calls": True,
            "previous_response_id": req.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "temperature": 1.0,
            "top_p": 1.0,
            "top_logprobs": 0,
            "tool_choice": "auto",
            "truncation": "disabled",
            "text": {"format": {"type": "text"}},
            "user": None,  # Azure's AzureResponse requires it
        }
        if done:  # the schema's usage is an object, never null: absent until the run ends
            obj["usage"] = {
                "input_tokens": 42,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": 17,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 59,
            }
        return obj

    @staticmethod
    def _ci_outputs(run: Run) -> list[dict[str, Any]] | None:
        """Logs and images, only when the request asked for them (``include``), as the service does."""
        include = run.request.get("include") or []
        if not isinstance(include, list) or INCLUDE_CI_OUTPUTS not in include:
            return None
        outputs: list[dict[str, Any]] = []
        if run.script.logs is not None:
            outputs.append({"type": "logs", "logs": run.script.logs})
        outputs += [{"type": "image", "url": image.url} for image in run.script.images]
        return outputs

    def _pick_script(self, body: dict[str, Any]) -> Script | None:
        """The script the input's marker names; None without a marker (the stand-in reads the prompt)."""
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
        return None

    async def _stand_in_script(self, body: dict[str, Any]) -> Script:
        """A script made from the prompt and the bytes of the run's input files (local_azure/standin.py);
        reading and drawing run off the event loop."""
        texts: list[str] = []
        _collect_text(body.get("input"), texts)
        tools = body.get("tools")
        tools = tools if isinstance(tools, list) else []
        loop = asyncio.get_running_loop()

        def make() -> standin.Plan:
            return standin.plan("\n".join(texts), self.files_api.stand_in_inputs(tools, standin.READ_LIMIT))

        made = await loop.run_in_executor(None, make)
        script_id = "standin-" + secrets.token_hex(6)
        files = [
            ScriptFile(path=f.path, size=len(f.data), sha256=hashlib.sha256(f.data).hexdigest(), seed=None, data=f.data)
            for f in made.files
        ]
        images = [
            ScriptImage(data=png, url="data:image/png;base64," + base64.b64encode(png).decode()) for png in made.images
        ]
        script = Script(
            id=script_id,
            files=files,
            text=made.text,
            images=images,
            logs="\n".join(made.logs) or None,
            code="\n\n".join(made.code) or None,
        )
        self.scripts[script_id] = script
        return script

    def _fault(self, script: Script, on: str) -> None:
        """Raise the next scripted fault of endpoint ``on``, if any is left (an outage: while it lasts)."""
        now = time.monotonic()
        spec = next(
            (
                f
                for f in script.faults
                if f.on == on
                and (f.times is None or f.times > 0)
                and (f.for_seconds is None or f.started is None or now - f.started < f.for_seconds)
            ),
            None,
        )
        if spec is None:
            return
        if spec.for_seconds is not None and spec.started is None:
            spec.started = now
        if spec.times is not None:
            spec.times -= 1
        self.faults_served[f"{on} {spec.status}"] += 1
        raise _fault_error(spec)

    def _new_container(self, script: Script, done_at: float) -> Container:
        now = int(time.time())
        files = [ContainerFile(id="cfile_" + uuid.uuid4().hex, spec=f, created_at=now) for f in script.files]
        c = Container(
            id="cntr_" + uuid.uuid4().hex,
            script=script,
            files=files,
            expires=script.container_expires,
            done_at=done_at,
        )
        self.containers[c.id] = c
        return c

    def _start_run(self, script: Script, body: dict[str, Any]) -> Run:
        """Create the run (and its container when it has the code_interpreter tool); it runs from now."""
        tools = body.get("tools") or []
        has_ci = any(isinstance(t, dict) and t.get("type") == "code_interpreter" for t in tools)
        now = time.time()
        latency = script.latency if script.latency is not None else self.latency
        container = None
        # inputs hooks (local_azure/emulator_files.py): previous_response_id, file_ids, a container by id
        self.files_api.check_previous(body)
        if has_ci and not script.no_container:
            container = self.files_api.container_for(script, tools, now + latency)
        run = Run(
            id="resp_" + secrets.token_hex(24),
            script=script,
            request=body,
            created=now,
            latency=latency,
            container=container,
        )
        script.runs += 1
        self.runs_started[script.id] += 1
        self.runs[run.id] = run
        return run

    @staticmethod
    def _fails_after_start(script: Script) -> bool:
        limit = script.create_500_after_start
        if limit is True or (limit is not False and script.create_500_served < limit):
            script.create_500_served += 1
            return True
        return False

    async def create_response(self, request: web.Request) -> web.StreamResponse:
        self.requests["POST /responses"] += 1
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _bad_request("We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise _bad_request("Request body must be a JSON object.")
        script = self._pick_script(body) or await self._stand_in_script(body)
        request["off_spec"] = script.off_spec
        self._fault(script, "create")
        if not body.get("model"):
            raise _bad_request("Missing required parameter: 'model'.", "model")
        background = bool(body.get("background", False))
        if background and body.get("store") is False:
            raise _bad_request("Background mode requires 'store' to be true.", "background")
        run = self._start_run(script, body)
        if self._fails_after_start(script):
            raise _server_error(500, "The server had an error while processing your request. Sorry about that!")
        if body.get("stream"):
            return await self._stream_events(request, run, background)
        if background:
            return web.json_response(self._response_obj(run, status="queued"))
        remaining = run.created + run.latency - time.time()
        if remaining > 0:
            await asyncio.sleep(remaining)
        return web.json_response(self._response_obj(run))

    async def _stream_events(self, request: web.Request, run: Run, background: bool) -> web.StreamResponse:
        """Server-sent events as the Responses API sends them: created, in_progress, then the final
        event with the whole response. A cancelled run's stream just ends (clients retrieve it).
        The script can end the stream before ``response.created``, cut it after in_progress, or
        keep it silent after ``response.created``. Each event is checked against its schema."""
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await stream.prepare(request)
        script = run.script
        sequence = 0

        async def send(kind: str, response: dict[str, Any]) -> None:
            nonlocal sequence
            data = json.dumps({"type": kind, "sequence_number": sequence, "response": response})
            self.schemas.check(EVENT_SCHEMAS[kind], data, f"POST /responses event {kind}", deliberate=script.off_spec)
            await stream.write(f"event: {kind}\ndata: {data}\n\n".encode())
            sequence += 1

        def drop() -> web.StreamResponse:
            if request.transport is not None:
                request.transport.close()  # the connection drops mid-stream
            return stream

        finals = {"completed": "response.completed", "failed": "response.failed", "incomplete": "response.incomplete"}
        self.streams_open += 1
        try:
            if script.stream_closes_before_created == "drop":
                return drop()
            if script.stream_closes_before_created == "eof":
                await stream.write_eof()
                return stream
            await send("response.created", self._response_obj(run, status="queued" if background else "in_progress"))
            if script.silent_stream:
                transport = request.transport
                while not self.closing and transport is not None and not transport.is_closing():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # no event, until the client leaves
                    transport = request.transport
                return stream
            await send("response.in_progress", self._response_obj(run, status="in_progress"))
            if script.cut_events:
                return drop()
            while run.running(time.time()):  # a cancel stops it, unless the script ignores cancels  # noqa: ASYNC110
                await asyncio.sleep(min(0.02, max(0.0, run.created + run.latency - time.time())))
            status = run.status(time.time())
            if status in finals:
                await send(finals[status], self._response_obj(run))
            await stream.write_eof()
        except ConnectionResetError:
            pass  # the client stopped listening; a background run goes on
        finally:
            self.streams_open -= 1
        return stream

    def _get_run(self, request: web.Request) -> Run:
        rid = request.match_info["id"]
        run = self.runs.get(rid)
        if run is None or run.deleted or run.request.get("store") is False:
            raise _not_found(f"Response with id '{rid}' not found.")
        return run

    async def get_response(self, request: web.Request) -> web.StreamResponse:
        self.requests["GET /responses/{id}"] += 1
        run = self._get_run(request)
        request["off_spec"] = run.script.off_spec
        self._fault(run.script, "get_response")
        return web.json_response(self._response_obj(run))

    async def cancel_response(self, request: web.Request) -> web.StreamResponse:
        self.requests["POST /responses/{id}/cancel"] += 1
        run = self._get_run(request)
        request["off_spec"] = run.script.off_spec
        self._fault(run.script, "cancel")
        status = run.status(time.time())
        if status == "cancelled":
            return web.json_response(self._response_obj(run))
        if status != "in_progress":
            raise _bad_request(f"Cannot cancel a response with status '{status}'.")
        if run.script.cancel_lands_after is not None:
            if run.cancel_at is None:
                run.cancel_at = time.time() + run.script.cancel_lands_after
            return web.json_response(self._response_obj(run))
        run.cancel_requested = True  # with cancel_ignored it only shows as cancelled
        return web.json_response(self._response_obj(run))

    async def delete_response(self, request: web.Request) -> web.StreamResponse:
        self.requests["DELETE /responses/{id}"] += 1
        run = self._get_run(request)
        self._fault(run.script, "delete")
        refused = run.script.delete_refused_while_running
        if refused is not None and run.running(time.time()):
            raise ApiError(refused, "Cannot delete a response that is in progress.")
        run.deleted = True
        return web.json_response({"id": run.id, "object": "response.deleted", "deleted": True})

    # ---- containers

    def _container(self, request: web.Request, on: str) -> Container:
        """The container, after the script's faults for endpoint ``on``; expired: its script's shape."""
        cid = request.match_info["cid"]
        c = self.containers.get(cid)
        if c is None:
            raise _not_found("Container not found")
        self._fault(c.script, on)
        if c.is_expired(time.time()):
            if c.script.expired_shape == "azure_404":
                raise _not_found(f"Container {cid} not found")
            raise _bad_request("Container is expired.")
        return c

    def _file(self, request: web.Request, on: str) -> tuple[Container, ContainerFile]:
        c = self._container(request, on)
        fid = request.match_info["fid"]
        for f in c.files:
            if f.id == fid and not f.spec.missing:
                return c, f
        raise _not_found(f"File with id '{fid}' not found.")

    async def list_files(self, request: web.Request) -> web.StreamResponse:
        self.requests["GET /containers/{cid}/files"] += 1
        c = self._container(request, "list")
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
                # The schema's first_id/last_id are strings, never null: "" on an empty page.
                "first_id": page[0].id if page else "",
                "last_id": page[-1].id if page else "",
                "has_more": len(files) > limit,
            }
        )

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        self.requests["GET /containers/{cid}/files/{fid}"] += 1
        c, f = self._file(request, "retrieve")
        return web.json_response(f.obj(c.id))

    async def get_content(self, request: web.Request) -> web.StreamResponse:
        self.requests["GET /containers/{cid}/files/{fid}/content"] += 1
        c, f = self._file(request, "content")
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
        pace = (spec.download_seconds or 0.0) / max(1, math.ceil(spec.size / self.chunk_size))
        for chunk in spec.chunks(self.chunk_size):
            if pace:
                await asyncio.sleep(pace)
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
        if c.expires == "after_first_download":
            c.expired = True  # the container ends while the other files are still to be copied
        return resp

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
                "images": [{"bytes": len(i.data), "sha256": i.sha256, "url": i.url} for i in script.images],
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
                "status": run.status(time.time()),
                # the model's start and end on this machine's clock (epoch seconds, not rounded): the
                # bench times what follows the model's end from here
                "created_at": run.created,
                "ends_at": run.created + run.latency,
                "deleted": run.deleted,
                "container_id": c.id if c else None,
                "code_interpreter_call_id": run.ci_id if c else None,
                "images": [{"bytes": len(i.data), "sha256": i.sha256} for i in run.script.images],
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
        await asyncio.wrap_future(self.schemas.flush())  # the checks of every body served so far
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


# --------------------------------------------------------------------------------------------
# client helpers

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


if __name__ == "__main__":
    main()
