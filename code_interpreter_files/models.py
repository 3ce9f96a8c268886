"""Typed data passed between the pipeline's steps, and the request body the callers send."""

from __future__ import annotations

import base64
import binascii
import builtins
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator
from pydantic_core import PydanticCustomError

from .naming import blob_path_problem

MAX_PROMPT_CHARS = 32_000
MAX_INLINE_BASE64_CHARS = 1_400_000  # more than a 1 MiB body can hold
INVALID_INPUT_NAME = "invalid_input_name"  # the pydantic error type http_api answers as its own code


def _plain_path(value: str) -> str:
    """An input's `blob` and `name`: a plain relative path (naming.blob_path_problem), taken literally.

    No length bounds on the fields themselves: an empty or too long name is this error too, not a
    generic `invalid_request`."""
    problem = blob_path_problem(value)
    if problem is not None:
        raise PydanticCustomError(INVALID_INPUT_NAME, "{problem}", {"problem": problem})
    return value


class BlobInput(BaseModel):
    """`{"blob": "<name in INPUT_CONTAINER>", "name"?: "<file name in the container>"}`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    blob: str
    name: str | None = None

    @field_validator("blob", "name")
    @classmethod
    def _plain(cls, value: str | None) -> str | None:
        return None if value is None else _plain_path(value)


class InlineInput(BaseModel):
    """`{"name": "<file name>", "content_base64": "..."}`: a small file inside the request body."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str
    content_base64: str = Field(max_length=MAX_INLINE_BASE64_CHARS)

    @field_validator("name")
    @classmethod
    def _plain(cls, value: str) -> str:
        return _plain_path(value)

    @field_validator("content_base64")
    @classmethod
    def _is_base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be standard base64 (A-Z, a-z, 0-9, +, /, = padding)") from None
        return value

    def data(self) -> bytes:
        return base64.b64decode(self.content_base64, validate=True)


def _kind(value: Any) -> str:
    """Which model an item is for: one clear error per item instead of one per union member."""
    if isinstance(value, BlobInput) or (isinstance(value, dict) and "blob" in value):
        return "blob"
    return "inline"


# The `input_files` items of a run request: `list[InputSpec]`.
InputSpec = Annotated[Annotated[BlobInput, Tag("blob")] | Annotated[InlineInput, Tag("inline")], Discriminator(_kind)]

Collect = Literal["cited", "all"]
Origin = Literal["cited", "listed", "image_output"]


class RunRequest(BaseModel):
    """Body of `POST /api/runs`. Strict: no coercion, no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    instructions: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    collect: Collect = "cited"
    sas_ttl_minutes: int | None = Field(default=None, ge=1)
    wait: bool = True
    # No max_length here: inputs.py answers 400 too_many_inputs naming MAX_INPUT_FILES.
    input_files: list[InputSpec] = Field(default_factory=list)
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=200)
    callback_url: str | None = Field(default=None, min_length=1, max_length=2048)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain more than white space")
        return value


@dataclass(frozen=True, kw_only=True)
class Citation:
    """One `container_file_citation` of the answer, as the model wrote it (untrusted)."""

    container_id: str
    file_id: str
    filename: str | None
    sandbox_path: str | None = None  # the `sandbox:/mnt/data/...` link the citation covers, if any


@dataclass(frozen=True, kw_only=True)
class ContainerFile:
    """A file as the Containers API describes it."""

    container_id: str
    file_id: str
    path: str
    bytes: int | None
    source: str | None


@dataclass(frozen=True, kw_only=True)
class RunWarning:
    """Something the caller should know that did not stop the run (e.g. the file list was unavailable)."""

    code: str
    message: str

    def to_answer(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, kw_only=True)
class FoundFile:
    """A file to copy: where it is, what the user will call it, how the run revealed it.

    `bytes` is None when the container's metadata could not be read: the size then comes from the
    bytes received. `data` holds an image output's bytes (they arrive inside the response).
    """

    container_id: str
    file_id: str
    filename: str
    sandbox_path: str | None
    bytes: int | None
    origin: Origin
    data: builtins.bytes | None = field(default=None, repr=False)

    @property
    def cited(self) -> bool:
        return self.origin == "cited"


@dataclass(frozen=True, kw_only=True)
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
    origin: Origin
    sandbox_path: str | None = None

    def to_answer(self, url: str, expires_at: str) -> dict[str, Any]:
        data = asdict(self)
        data.pop("sandbox_path")
        return {**data, "url": url, "expires_at": expires_at}

    @classmethod
    def from_manifest(cls, data: dict[str, Any]) -> CopiedFile:
        origin = data.get("origin") or ("cited" if data.get("cited") else "listed")  # version 1 had no origin
        if origin not in get_args(Origin):
            raise ValueError(f"unknown file origin {origin!r}")
        return cls(**{**data, "origin": origin})


@dataclass(frozen=True, kw_only=True)
class FailedFile:
    filename: str
    file_id: str
    code: str
    message: str
    retryable: bool = False

    def to_answer(self) -> dict[str, str]:
        return {"filename": self.filename, "file_id": self.file_id, "code": self.code, "message": self.message}
