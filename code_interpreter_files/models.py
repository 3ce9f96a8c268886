"""Typed data passed between the pipeline's steps, and the request body the callers send."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_PROMPT_CHARS = 32_000
Collect = Literal["cited", "all"]


class RunRequest(BaseModel):
    """Body of `POST /api/runs`. Strict: no coercion, no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    instructions: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    collect: Collect = "cited"
    sas_ttl_minutes: int | None = Field(default=None, ge=1)
    wait: bool = True

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain more than white space")
        return value


@dataclass(frozen=True)
class Citation:
    """One `container_file_citation` of the answer, as the model wrote it (untrusted)."""

    container_id: str
    file_id: str
    filename: str | None


@dataclass(frozen=True)
class ContainerFile:
    """A file as the Containers API describes it."""

    container_id: str
    file_id: str
    path: str
    bytes: int | None
    source: str | None


@dataclass(frozen=True)
class FoundFile:
    """A file to copy: who made it, what the user will call it, whether the answer cites it."""

    container_id: str
    file_id: str
    filename: str
    sandbox_path: str | None
    bytes: int | None
    cited: bool


@dataclass(frozen=True)
class CopiedFile:
    """A file safely in Blob Storage. The manifest stores it; the answer adds a signed URL."""

    filename: str
    file_id: str
    container_id: str
    blob: str
    bytes: int
    content_type: str
    sha256: str
    cited: bool
    sandbox_path: str | None = None

    def to_answer(self, url: str, expires_at: str) -> dict[str, Any]:
        data = asdict(self)
        data.pop("sandbox_path")
        return {**data, "url": url, "expires_at": expires_at}


@dataclass(frozen=True)
class FailedFile:
    filename: str
    file_id: str
    code: str
    message: str
    retryable: bool = False

    def to_answer(self) -> dict[str, str]:
        return {"filename": self.filename, "file_id": self.file_id, "code": self.code, "message": self.message}


@dataclass
class RunRecord:
    """What a finished run produced; `manifest.json` holds it, so links can be signed again later."""

    response_id: str
    status: str
    text: str
    files: list[CopiedFile] = field(default_factory=list)
    failed_files: list[FailedFile] = field(default_factory=list)

    def to_manifest(self) -> dict[str, Any]:
        return {
            "version": 1,
            "response_id": self.response_id,
            "status": self.status,
            "text": self.text,
            "files": [asdict(f) for f in self.files],
            "failed_files": [f.to_answer() for f in self.failed_files],
        }

    @classmethod
    def from_manifest(cls, data: dict[str, Any]) -> RunRecord:
        return cls(
            response_id=data["response_id"],
            status=data["status"],
            text=data["text"],
            files=[CopiedFile(**f) for f in data["files"]],
            failed_files=[FailedFile(**f) for f in data["failed_files"]],
        )

    @property
    def complete(self) -> bool:
        """True when a later attempt could not copy more: no failure is worth retrying."""
        return not any(f.retryable for f in self.failed_files)
