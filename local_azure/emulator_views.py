"""What the API shows of a run: the response object (output items, citations, usage)."""

from __future__ import annotations

import posixpath
import time
from typing import Any

from .emulator_model import Run, ScriptFile

INCLUDE_CI_OUTPUTS = "code_interpreter_call.outputs"


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


def response_obj(run: Run, status: str | None = None) -> dict[str, Any]:
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
                    "outputs": ci_outputs(run),
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


def ci_outputs(run: Run) -> list[dict[str, Any]] | None:
    """Logs and images, only when the request asked for them (``include``), as the service does."""
    include = run.request.get("include") or []
    if not isinstance(include, list) or INCLUDE_CI_OUTPUTS not in include:
        return None
    outputs: list[dict[str, Any]] = []
    if run.script.logs is not None:
        outputs.append({"type": "logs", "logs": run.script.logs})
    outputs += [{"type": "image", "url": image.url} for image in run.script.images]
    return outputs
