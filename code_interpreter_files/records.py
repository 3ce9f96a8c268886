"""The two records of a run, each the one home of its facts.

- `RunRecord`: what the run was started with and where it stands (owner, caller, inputs, continuation,
  callback, status, who is finishing it). Written when the run starts, before its finish is queued, as
  the run's row of the runs table (run_table.py); updated when it ends; removed when it is deleted.
- `Outcome`: what the run produced (text, copied files, failures, or the error it ended with): the
  run's `manifest.json` beside its files, written once by the finishing core (finishing.py).

Queue messages carry only the response id; GET, DELETE, the queue and the catalog read these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .models import Collect, CopiedFile, FailedFile, RunWarning

ContinuedIn = Literal["same_container", "new_container"]
RunStatus = Literal["running", "completed", "incomplete", "failed", "cancelled"]
ENDED_STATUSES: frozenset[str] = frozenset({"completed", "incomplete", "failed", "cancelled"})
PROMPT_PREVIEW_CHARS = 200
MANIFEST_VERSION = 3  # 1: before warnings, origin and incomplete runs; 2: errors carried an HTTP status


class InputRecord(BaseModel):
    """One of the caller's input files, as the answer shows it."""

    model_config = ConfigDict(frozen=True)
    name: str
    bytes: int
    sha256: str


class CarriedRecord(BaseModel):
    """A previous run's output carried into this run's new container (not an output of this run)."""

    model_config = ConfigDict(frozen=True)
    name: str
    sha256: str


class SetupWarning(BaseModel):
    model_config = ConfigDict(frozen=True)
    code: str
    message: str


class RunRecord(BaseModel):
    """A run's start facts and its state; the run's row in the runs table (see run_table.py)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    response_id: str
    owner: str  # OWNER_TAG of the deployment that started it
    principal: str | None = None  # the Easy Auth caller who started it, if any
    created_at: datetime  # the response's own created_at (Azure OpenAI's clock, whole seconds, UTC)
    collect: Collect = "cited"
    prompt: str = ""  # its first PROMPT_PREVIEW_CHARS characters, for the catalog
    previous_response_id: str | None = None
    continued_in: ContinuedIn | None = None
    inputs: tuple[InputRecord, ...] = ()
    carried: tuple[CarriedRecord, ...] = ()
    uploaded_file_ids: tuple[str, ...] = ()  # copies in Azure OpenAI, deleted when the run ends
    warnings: tuple[SetupWarning, ...] = ()
    # May carry the receiver's token in its query: read by the app alone (the table is the app's), never
    # put in a queue message, logged only as scheme://host:port.
    callback_url: str | None = None
    status: RunStatus = "running"
    files: int = 0
    bytes: int = 0
    ended_at: datetime | None = None
    error: str | None = None  # the code of why finishing failed so far (e.g. finish_failed); GET tries again
    finisher: str | None = None  # the claim of whoever is finishing it (claims.py)
    finishing_until: datetime | None = None

    @property
    def ended(self) -> bool:
        return self.status in ENDED_STATUSES

    def claimed(self, now: datetime | None = None) -> bool:
        """Someone holds a claim to finish the run that has not run out."""
        return self.finishing_until is not None and self.finishing_until > (now or datetime.now(UTC))


def preview(prompt: str) -> str:
    return prompt[:PROMPT_PREVIEW_CHARS]


class UnsupportedManifest(Exception):
    """A manifest written by a newer version of the app: never guess at its meaning."""


@dataclass(kw_only=True)
class Outcome:
    """What a finished run produced; `manifest.json` holds it, so links can be signed again later."""

    response_id: str
    status: str
    text: str
    incomplete_reason: str | None = None
    files: list[CopiedFile] = field(default_factory=list)
    failed_files: list[FailedFile] = field(default_factory=list)
    warnings: list[RunWarning] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)  # {name, bytes, sha256} of the caller's files
    continued_in: str | None = None  # same_container | new_container, for a continued conversation
    error: dict[str, str] | None = None  # {code, message}: how the run ended without its files
    owner: str | None = None  # OWNER_TAG of the deployment that started it (None: written before tags)
    principal: str | None = None  # the Easy Auth caller who started it, if any

    def to_manifest(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "response_id": self.response_id,
            "status": self.status,
            "incomplete_reason": self.incomplete_reason,
            "text": self.text,
            "files": [asdict(f) for f in self.files],
            "failed_files": [f.to_answer() for f in self.failed_files],
            "warnings": [w.to_answer() for w in self.warnings],
            "inputs": self.inputs,
            "continued_in": self.continued_in,
            "error": self.error,
            "owner": self.owner,
            "principal": self.principal,
        }

    @classmethod
    def from_manifest(cls, data: dict[str, Any]) -> Outcome:
        """Read this version or an older one; a newer one is an UnsupportedManifest."""
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise UnsupportedManifest(f"manifest version {version!r} is not a version this app wrote")
        if version > MANIFEST_VERSION:
            raise UnsupportedManifest(
                f"manifest version {version} is newer than this app reads ({MANIFEST_VERSION}): deploy the newer app"
            )
        error = data.get("error")
        return cls(
            response_id=data["response_id"],
            status=data["status"],
            text=data["text"],
            incomplete_reason=data.get("incomplete_reason"),
            files=[CopiedFile.from_manifest(f) for f in data["files"]],
            failed_files=[FailedFile(**f) for f in data["failed_files"]],
            warnings=[RunWarning(**w) for w in data.get("warnings", [])],
            inputs=data.get("inputs", []),
            continued_in=data.get("continued_in"),
            error={"code": str(error["code"]), "message": str(error["message"])} if error else None,
            owner=data.get("owner"),
            principal=data.get("principal"),
        )

    @property
    def complete(self) -> bool:
        """True when a later attempt could not copy more: no failure is worth retrying."""
        return not any(f.retryable for f in self.failed_files)

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)
