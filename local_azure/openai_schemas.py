"""The published OpenAI schemas of what the emulator answers, and a checker that tallies each body.

The spec is ``../shared/specs/openai-openapi.yaml`` beside the clone (found by walking up from the
repo root, so a git worktree under ``/work/wt/<name>`` finds ``/work/shared`` too). Parsing the 3 MB
YAML takes seconds, so the schemas the emulator needs (and everything they ``$ref``) are extracted
once and cached as JSON keyed by the spec's sha256 in ``local_azure/.cache/`` (a self-ignoring dir,
like ``.pytest_cache``).

Validation is ``jsonschema`` (2020-12, the dialect of OpenAPI 3.1) with ``$ref``s resolved against
the extracted document: openapi-core recurses without end on the Azure file's discriminators, and
plain jsonschema is the well-kept library that does what is needed here.

Azure overlay (``AzureResponse``): Azure's ``AzureResponse`` (``azure-v1-v1-generated.yaml``)
requires ``user``, a nullable string. OpenAI's ``ModelResponseProperties.user`` says ``string``
although its own examples answer ``"user": null``; the overlay widens it to string-or-null and
requires it.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import tempfile
import threading
from collections import Counter
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema.exceptions import ValidationError

REPO_ROOT = Path(__file__).resolve().parents[1]
SPEC_RELATIVE = Path("shared/specs/openai-openapi.yaml")
CACHE_DIR = Path(__file__).resolve().parent / ".cache"
#: Component schemas the emulator's bodies are checked against (``AzureResponse`` is the overlay).
ROOTS = (
    "Response",
    "ContainerFileResource",
    "ContainerFileListResource",
    "ErrorResponse",
    "ResponseCreatedEvent",
    "ResponseQueuedEvent",
    "ResponseInProgressEvent",
    "ResponseCompletedEvent",
    "ResponseFailedEvent",
    "ResponseIncompleteEvent",
    # Files, Uploads and the container object: the routes local_azure/emulator_files.py adds.
    "OpenAIFile",
    "ListFilesResponse",
    "DeleteFileResponse",
    "Upload",
    "UploadPart",
    "ContainerResource",
    # GET /models/{deployment}: how the app's /api/health learns the model is the offline stand-in.
    "Model",
)
EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.queued": "ResponseQueuedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.failed": "ResponseFailedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
}
AZURE_RESPONSE = "AzureResponse"
CACHE_VERSION = 4  # bump when the extraction (ROOTS) changes


def find_spec(start: Path = REPO_ROOT) -> Path | None:
    """``<ancestor>/shared/specs/openai-openapi.yaml`` for the nearest ancestor of ``start`` that has it."""
    for base in (start, *start.parents):
        candidate = base / SPEC_RELATIVE
        if candidate.is_file():
            return candidate
    return None


def _refs(node: Any, out: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                out.add(value)
            else:
                _refs(value, out)
    elif isinstance(node, list):
        for value in node:
            _refs(value, out)


def _pointer(ref: str) -> list[str]:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $refs are supported, got {ref!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in ref[2:].split("/")]


def extract(document: dict[str, Any], roots: tuple[str, ...] = ROOTS) -> dict[str, Any]:
    """The sub-document holding ``roots`` and every node they refer to, at the same JSON pointers."""
    out: dict[str, Any] = {}
    seen: set[str] = set()
    todo = [f"#/components/schemas/{name}" for name in roots]
    while todo:
        ref = todo.pop()
        if ref in seen:
            continue
        seen.add(ref)
        parts = _pointer(ref)
        node: Any = document
        for part in parts:
            node = node[part]
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = node
        found: set[str] = set()
        _refs(node, found)
        todo.extend(found - seen)
    return out


def _load_document(spec: Path, digest: str) -> dict[str, Any]:
    cached = CACHE_DIR / f"openai-schemas-v{CACHE_VERSION}-{digest}.json"
    try:
        return json.loads(cached.read_text())
    except (OSError, ValueError):
        pass
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with spec.open("rb") as fh:
        document = yaml.load(fh, Loader=loader)  # noqa: S506 - a safe loader
    sub = extract(document)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    (CACHE_DIR / ".gitignore").write_text("# created by local_azure/openai_schemas.py\n*\n")
    fd, tmp = tempfile.mkstemp(dir=CACHE_DIR, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(sub, fh, default=str)  # YAML dates in examples become strings
    os.replace(tmp, cached)  # atomic: concurrent emulators never read half a file
    for stale in CACHE_DIR.glob("openai-schemas-*.json"):
        if stale != cached:
            stale.unlink(missing_ok=True)
    return json.loads(cached.read_text())


def _azure_overlay(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    user = schemas["ModelResponseProperties"]["properties"]["user"]
    schemas["ModelResponseProperties"]["properties"]["user"] = {
        "anyOf": [{k: v for k, v in user.items() if k != "example"}, {"type": "null"}]
    }
    schemas[AZURE_RESPONSE] = {
        "allOf": [{"$ref": "#/components/schemas/Response"}],
        "required": ["user"],
        "properties": {"user": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
    }


@dataclass(frozen=True)
class Schemas:
    """Validators for the component schemas in ``ROOTS`` plus ``AzureResponse``."""

    spec: Path
    sha256: str
    validators: dict[str, jsonschema.protocols.Validator]

    def errors(self, name: str, body: Any) -> list[str]:
        """Why ``body`` is not a valid ``name`` (the most relevant error first); [] when it is."""
        explained = [_explain(e) for e in self.validators[name].iter_errors(body)]
        return [f"{e.json_path}: {e.message[:400]}" for e in explained]


def _explain(error: ValidationError) -> ValidationError:
    """The failure that says what is wrong: under an anyOf/oneOf, follow the branch whose ``type``
    matched (e.g. the annotation's missing ``filename``, not "'container_file_citation' is not one of
    ['file_citation']" from a sibling branch), down to a leaf."""
    if not error.context:
        return error
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)

    def type_mismatch(errors: list[ValidationError]) -> bool:
        return any(list(e.path) == ["type"] and e.validator in ("enum", "const") for e in errors)

    matching = [errs for errs in branches.values() if not type_mismatch(errs)] or list(branches.values())
    chosen = min(matching, key=len)
    return _explain(max(chosen, key=lambda e: len(e.absolute_path)))


@lru_cache(maxsize=4)
def load(spec: Path | None = None) -> Schemas:
    """Load (from the cache when it can) the schemas of ``spec`` (default: ``find_spec()``)."""
    spec = spec or find_spec()
    if spec is None:
        raise FileNotFoundError(f"no {SPEC_RELATIVE} beside {REPO_ROOT} or above it")
    digest = hashlib.sha256(spec.read_bytes()).hexdigest()
    document = _load_document(spec, digest)
    _azure_overlay(document)
    validators: dict[str, jsonschema.protocols.Validator] = {}
    for name in (*ROOTS, AZURE_RESPONSE):
        root = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
        validators[name] = jsonschema.Draft202012Validator(root)
    return Schemas(spec=spec, sha256=digest, validators=validators)


def _validate(spec: Path | None, name: str, text: bytes | str) -> tuple[str, str, list[tuple[str, list[str]]]]:
    """In the worker process: ``(spec path, sha256, [(schema, errors)])`` for one body; a stream
    event is checked against its event schema, and its embedded ``response`` against
    ``AzureResponse`` (the event schemas refer to plain ``Response``)."""
    schemas = load(spec)
    body = json.loads(text)
    pending = [(name, body)]
    if name in EVENT_SCHEMAS.values() and isinstance(body, dict) and "response" in body:
        pending.append((AZURE_RESPONSE, body["response"]))
    return str(schemas.spec), schemas.sha256, [(schema, schemas.errors(schema, value)) for schema, value in pending]


def _nothing() -> None:
    return None


@dataclass
class SchemaChecker:
    """Counts the bodies validated per schema and keeps the first ``keep`` violations.

    Checks run in order in one worker *process* (where the spec loads too): a Response takes ~10 ms
    of CPU to validate, which in a thread would hold the GIL and slow the emulator's answers.
    Serving a body never waits for its check; ``flush`` is done once the checks queued before it are.
    ``enabled=False`` (the offline product mode) starts no worker: bodies are counted as ``skipped``.
    """

    keep: int = 50
    spec: Path | None = None
    enabled: bool = True
    bodies_skipped: int = 0
    validated: Counter[str] = field(default_factory=Counter)
    violation_counts: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    deliberate_violations: list[str] = field(default_factory=list)
    unchecked: Counter[str] = field(default_factory=Counter)
    load_error: str | None = None
    spec_path: str | None = None
    sha256: str | None = None
    bodies_queued: int = 0
    bodies_checked: int = 0
    _pool: ProcessPoolExecutor | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:  # spawn: a forked copy of a running event loop is no place to work
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def check(self, name: str, text: bytes | str, where: str, deliberate: bool = False) -> Future[Any]:
        """Queue a check of the JSON ``text`` against schema ``name``; ``where`` names the route.
        ``deliberate``: a body a test made off-spec on purpose (its violations are kept apart)."""
        if not self.enabled:
            with self._lock:
                self.bodies_skipped += 1
            done: Future[Any] = Future()
            done.set_result(None)
            return done
        with self._lock:
            self.bodies_queued += 1
        future = self._executor().submit(_validate, self.spec, name, text)
        future.add_done_callback(lambda done: self._tally(done, where, deliberate))
        return future

    def note_unchecked(self, where: str) -> None:
        """A JSON body the spec has no schema for (counted, so nothing goes by unseen)."""
        with self._lock:
            self.unchecked[where] += 1

    def flush(self) -> Future[Any]:
        """A future done once every check queued before it has been tallied."""
        if not self.enabled:
            done: Future[Any] = Future()
            done.set_result(None)
            return done
        return self._executor().submit(_nothing)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=False)

    def _tally(self, done: Future[Any], where: str, deliberate: bool) -> None:
        try:
            spec_path, sha256, results = done.result()
        except Exception as exc:  # noqa: BLE001 - reported in the stats, where the session test sees it
            with self._lock:  # counted as queued, never as checked: the session check sees the gap
                self.load_error = self.load_error or f"{type(exc).__name__}: {exc}"
            return
        with self._lock:
            self.spec_path, self.sha256 = spec_path, sha256
            for schema, errors in results:
                self.validated[schema] += 1
                if not errors:
                    continue
                kept = self.deliberate_violations if deliberate else self.violations
                if not deliberate:
                    self.violation_counts[schema] += 1
                if len(kept) < self.keep:
                    kept.append(f"{where} [{schema}] {errors[0]}")
            self.bodies_checked += 1

    def stats(self) -> dict[str, Any]:
        """``{spec, sha256, load_error, bodies_queued, bodies_checked, validated: {schema: n},
        violation_counts, violations, deliberate_violations, unchecked: {route: n}}``."""
        with self._lock:
            return {
                "bodies_queued": self.bodies_queued,
                "bodies_checked": self.bodies_checked,
                "enabled": self.enabled,
                "bodies_skipped": self.bodies_skipped,
                "spec": self.spec_path,
                "sha256": self.sha256,
                "load_error": self.load_error,
                "validated": dict(self.validated),
                "violation_counts": dict(self.violation_counts),
                "violations": list(self.violations),
                "deliberate_violations": list(self.deliberate_violations),
                "unchecked": dict(self.unchecked),
            }
