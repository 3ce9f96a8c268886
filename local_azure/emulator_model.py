"""The emulator's records: a script (its files, images, faults), a run's container and its files, a run."""

from __future__ import annotations

import hashlib
import posixpath
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import content as gen


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
class StoredSpec(ScriptFile):
    """A container file whose bytes are another's: a stored file (an input), or a container file's
    spec (a copy of an input or of an earlier run's file)."""

    stored: Any = None

    def chunks(self, chunk_size: int) -> Iterator[bytes]:
        assert self.stored is not None
        return self.stored.chunks(chunk_size)


@dataclass
class InputCopySpec(ScriptFile):
    """A script file to be written with the bytes of a container file named `copy_of_input`."""

    copy_of_input: str = ""


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
