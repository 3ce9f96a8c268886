"""Script parsing: a test's ``POST /_emulator/scripts`` body checked and turned into a ``Script``
(``parse_script`` lists every field)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from . import emulator_inputs
from .emulator_errors import bad_request
from .emulator_model import FailSpec, Script, ScriptFile, ScriptImage
from .png import png_of_size

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


def _opt_int(d: dict[str, Any], key: str, minimum: int = 0) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise bad_request(f"'{key}' must be an integer >= {minimum}", key)
    return v


def _parse_file(script_id: str, index: int, raw: Any) -> ScriptFile:
    if not isinstance(raw, dict) or not isinstance(raw.get("path"), str) or not raw["path"]:
        raise bad_request(f"files[{index}] needs a 'path' string", "files")
    path: str = raw["path"]
    if "copy_of_input" in raw:  # inputs hook: a copy of an input file (local_azure/emulator_inputs.py)
        return emulator_inputs.parse_copy_file(index, raw)
    if ("content" in raw) == ("size" in raw):
        raise bad_request(f"files[{index}] needs exactly one of 'content' or 'size'", "files")
    seed: str | None = None
    data: bytes | None = None
    if "content" in raw:
        if not isinstance(raw["content"], str):
            raise bad_request(f"files[{index}].content must be a string", "files")
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
        raise bad_request(f"files[{index}].source must be 'assistant' or 'user'", "files")
    extra = raw.get("citation_extra") or {}
    if not isinstance(extra, dict):
        raise bad_request(f"files[{index}].citation_extra must be an object", "files")
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
        raise bad_request(f"'{key}' must be a number >= 0", key)
    return float(v)


def _parse_fail(raw: Any, field_name: str, on: str | None = None) -> FailSpec:
    """One fault; in ``fail_first`` a missing ``times`` is 1, elsewhere (``on`` given) every time."""
    if not isinstance(raw, dict) or not isinstance(raw.get("status"), int) or isinstance(raw["status"], bool):
        raise bad_request(f"{field_name} needs an integer 'status'", field_name)
    if not 400 <= raw["status"] <= 599:
        raise bad_request(f"{field_name}.status must be 400..599", field_name)
    where = raw.get("on", "create") if on is None else on
    if where not in FAULT_ENDPOINTS:
        raise bad_request(f"{field_name}.on must be one of {', '.join(FAULT_ENDPOINTS)}", field_name)
    for_seconds = _opt_number(raw, "for_seconds")
    if "times" in raw:
        times = _opt_int(raw, "times", 1)
    else:
        times = 1 if on is None and for_seconds is None else None
    for key in ("message", "code"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise bad_request(f"{field_name}.{key} must be a string", field_name)
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
        raise bad_request("'images' must be a list", "images")
    out: list[ScriptImage] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or len(item) != 1 or not {"png_bytes", "content_base64", "url"} & set(item):
            raise bad_request(f"images[{i}] needs exactly one of png_bytes, content_base64, url", "images")
        if "png_bytes" in item:
            size = _opt_int(item, "png_bytes", 1)
            if size is None or size > 64 << 20:
                raise bad_request(f"images[{i}].png_bytes must be 1..{64 << 20}", "images")
            try:
                data = png_of_size(size, f"{script_id}/image/{i}")
            except ValueError as exc:
                raise bad_request(f"images[{i}].png_bytes: {exc}", "images") from None
        elif "content_base64" in item:
            try:
                data = base64.b64decode(str(item["content_base64"]), validate=True)
            except ValueError:
                raise bad_request(f"images[{i}].content_base64 is not base64", "images") from None
        else:
            if not isinstance(item["url"], str):
                raise bad_request(f"images[{i}].url must be a string", "images")
            out.append(ScriptImage(data=b"", url=item["url"]))
            continue
        out.append(ScriptImage(data=data, url="data:image/png;base64," + base64.b64encode(data).decode()))
    return out


def parse_script(script_id: str, body: Any) -> Script:
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
        raise bad_request("script must be a JSON object")
    files_raw = body.get("files", [])
    if not isinstance(files_raw, list):
        raise bad_request("'files' must be a list", "files")
    status = body.get("status", "completed")
    if status not in ("completed", "failed", "incomplete"):
        raise bad_request("'status' must be completed, failed or incomplete", "status")
    reason = body.get("incomplete_reason", "max_output_tokens")
    if reason not in ("max_output_tokens", "content_filter"):
        raise bad_request("'incomplete_reason' must be max_output_tokens or content_filter", "incomplete_reason")
    expires = body.get("container_expires", "never")
    if not (expires in EXPIRES_MODES or (isinstance(expires, (int, float)) and not isinstance(expires, bool))):
        raise bad_request("'container_expires' must be never, before_list, after_list, after_first_download or seconds")
    shape = body.get("expired_shape", "openai_400")
    if shape not in EXPIRED_SHAPES:
        raise bad_request("'expired_shape' must be openai_400 or azure_404", "expired_shape")
    latency = body.get("latency")
    if latency is not None and (not isinstance(latency, (int, float)) or latency < 0):
        raise bad_request("'latency' must be a number >= 0", "latency")
    extra = body.get("extra_annotations") or []
    if not isinstance(extra, list) or not all(isinstance(a, dict) for a in extra):
        raise bad_request("'extra_annotations' must be a list of objects", "extra_annotations")
    error = body.get("error")
    if error is not None and not isinstance(error, dict):
        raise bad_request("'error' must be an object", "error")
    for key in ("text", "logs"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise bad_request(f"'{key}' must be a string", key)
    fail_first = body.get("fail_first") or []
    if not isinstance(fail_first, list):
        raise bad_request("'fail_first' must be a list", "fail_first")
    faults = [_parse_fail(f, "fail_first") for f in fail_first]
    for key, on in (("list_fails", "list"), ("retrieve_fails", "retrieve")):
        if body.get(key) is not None:
            faults.append(_parse_fail(body[key], key, on))
    after_start = body.get("create_500_after_start", False)
    if not isinstance(after_start, int) or after_start < 0:  # bools are ints
        raise bad_request("'create_500_after_start' must be true, false or a count", "create_500_after_start")
    closes = body.get("stream_closes_before_created", False)
    if closes not in (False, None, True, "eof", "drop"):
        raise bad_request("'stream_closes_before_created' must be true, 'eof' or 'drop'")
    refused = body.get("delete_refused_while_running", False)
    if not (refused is None or isinstance(refused, bool) or (type(refused) is int and refused in (400, 409))):
        raise bad_request("'delete_refused_while_running' must be true, 400 or 409")
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
