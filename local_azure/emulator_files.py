"""The emulator's Files API (and the container object): where a run's input files come from.

- Files API: ``POST /files`` (multipart: ``file``, ``purpose``, ``expires_after[...]``), ``GET /files/{id}``,
  ``GET /files/{id}/content``, ``DELETE /files/{id}``.
- Uploads API: emulator_uploads.py; it receives parts through ``receive`` and stores its file with ``store``.
- ``GET /containers/{id}``: the container object, ``status`` ``running`` or ``expired``.
- How a run uses these files (``file_ids``, ``previous_response_id``, ``copy_of_input``): emulator_inputs.py.

Uploaded bytes are streamed to a temporary directory (never whole in memory), so large inputs cost
the emulator disk, not memory. Bodies follow the published schemas (OpenAIFile, Upload, UploadPart,
ContainerResource, DeleteFileResponse).
"""

from __future__ import annotations

import hashlib
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from .emulator_errors import api_error as _error
from .emulator_model import StoredSpec
from .emulator_uploads import READ_BYTES, UploadsApi

if TYPE_CHECKING:
    from .emulator_client import EmulatorControl
    from .emulator_state import EmulatorState

PREFIX = "/openai/v1"
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")


@dataclass
class StoredFile:
    """A file of the Files API; its bytes live on disk."""

    id: str
    filename: str
    purpose: str
    size: int
    sha256: str
    path: Path
    created_at: int
    expires_at: int | None = None
    parts: list[int] = field(default_factory=list)  # part sizes, when it came through the Uploads API
    deleted: bool = False

    def obj(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "file",
            "bytes": self.size,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }
        if self.expires_at is not None:
            body["expires_at"] = self.expires_at
        return body

    def chunks(self, chunk_size: int) -> Iterator[bytes]:
        with self.path.open("rb") as handle:
            while block := handle.read(chunk_size):
                yield block


class FilesApi:
    """State and handlers; `Emulator` owns one (emulator_inputs.RunInputs reads its files)."""

    def __init__(self, emulator: EmulatorState) -> None:
        self.emulator = emulator
        self._dir = tempfile.TemporaryDirectory(prefix="emulator-files-")
        self.root = Path(self._dir.name)
        self.files: dict[str, StoredFile] = {}
        self.faults: dict[str, list[int]] = {}  # target -> statuses to answer next (see ctl_faults)
        self.uploads_api = UploadsApi(self)
        self.reset_stats()

    # ---- stats

    def reset_stats(self) -> None:
        self.files_uploaded = 0
        self.files_deleted = 0
        self.bytes_received = 0
        self.uploads_api.reset_stats()

    def stats(self) -> dict[str, Any]:
        return {
            "files_uploaded": self.files_uploaded,
            "files_deleted": self.files_deleted,
            "files_live": sum(1 for f in self.files.values() if not f.deleted),
            "bytes_received": self.bytes_received,
            **self.uploads_api.stats(),
        }

    # ---- routes

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(PREFIX + "/files", self.create_file)
        router.add_get(PREFIX + "/files/{fid}", self.get_file)
        router.add_get(PREFIX + "/files/{fid}/content", self.get_file_content)
        router.add_delete(PREFIX + "/files/{fid}", self.delete_file)
        self.uploads_api.add_routes(router, PREFIX)
        router.add_get(PREFIX + "/containers/{cid}", self.get_container)
        router.add_get("/_emulator/files", self.ctl_files)
        router.add_post("/_emulator/files/faults", self.ctl_faults)

    # ---- storage

    def new_path(self) -> Path:
        return self.root / secrets.token_hex(12)

    async def receive(self, part: BodyPartReader, limit: int | None = None) -> tuple[Path, int, str]:
        """Stream one multipart field to disk; return its path, size and sha256."""
        path = self.new_path()
        digest = hashlib.sha256()
        size = 0
        with path.open("wb") as handle:
            while chunk := await part.read_chunk(READ_BYTES):
                size += len(chunk)
                if limit is not None and size > limit:
                    handle.close()
                    path.unlink(missing_ok=True)
                    raise _error(400, f"Part is too large: at most {limit} bytes.", "data")
                digest.update(chunk)
                handle.write(chunk)
        self.bytes_received += size
        return path, size, digest.hexdigest()

    def store(
        self,
        filename: str,
        purpose: str,
        path: Path,
        size: int,
        sha256: str,
        expires_after: int | None,
        parts: list[int] | None = None,
    ) -> StoredFile:
        now = int(time.time())
        stored = StoredFile(
            id="file-" + secrets.token_hex(12),
            filename=filename,
            purpose=purpose,
            size=size,
            sha256=sha256,
            path=path,
            created_at=now,
            expires_at=now + expires_after if expires_after is not None else None,
            parts=parts or [],
        )
        self.files[stored.id] = stored
        self.files_uploaded += 1
        return stored

    def live_file(self, file_id: str) -> StoredFile | None:
        stored = self.files.get(file_id)
        return stored if stored is not None and not stored.deleted else None

    @staticmethod
    def expiry(anchor: str | None, seconds: Any, param: str) -> int | None:
        if anchor is None and seconds is None:
            return None
        try:
            value = int(seconds)
        except (TypeError, ValueError):
            raise _error(400, "Invalid 'expires_after.seconds': expected an integer.", param) from None
        if anchor != "created_at" or not 3600 <= value <= 2592000:
            raise _error(
                400,
                "Invalid 'expires_after': anchor must be 'created_at' and seconds between 3600 and 2592000.",
                param,
            )
        return value

    async def fault(self, request: web.Request, target: str) -> None:
        """Answer the next request to `target` with a queued error status (the body is read first,
        as the service does, so the client sees the answer rather than a reset connection)."""
        queued = self.faults.get(target)
        if queued:
            status = queued.pop(0)
            if not status:
                return
            await request.release()
            raise _error(status, f"Emulated refusal ({status}) of {target}.")

    # ---- Files API

    async def create_file(self, request: web.Request) -> web.StreamResponse:
        await self.fault(request, "files")
        if not request.content_type.startswith("multipart/"):
            raise _error(400, "The request must be multipart/form-data.")
        reader = await request.multipart()
        fields: dict[str, str] = {}
        received: tuple[Path, int, str] | None = None
        filename = "upload"
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "file":
                filename = part.filename or "upload"
                received = await self.receive(part)
            elif part.name:
                fields[part.name] = (await part.read()).decode("utf-8", "replace")
        try:
            if received is None:
                raise _error(400, "Missing required parameter: 'file'.", "file")
            purpose = fields.get("purpose")
            if purpose not in PURPOSES:
                raise _error(400, f"Invalid value for 'purpose': {purpose!r}.", "purpose")
            expires = self.expiry(
                fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]"), "expires_after"
            )
        except Exception:
            if received is not None:
                received[0].unlink(missing_ok=True)
            raise
        stored = self.store(filename, purpose, *received, expires_after=expires)
        return web.json_response(stored.obj())

    def _file(self, request: web.Request) -> StoredFile:
        fid = request.match_info["fid"]
        stored = self.live_file(fid)
        if stored is None:
            raise _error(404, f"No such File object: {fid}", "id")
        return stored

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._file(request).obj())

    async def get_file_content(self, request: web.Request) -> web.StreamResponse:
        stored = self._file(request)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = stored.size
        await response.prepare(request)
        for block in stored.chunks(READ_BYTES):
            await response.write(block)
        await response.write_eof()
        return response

    async def delete_file(self, request: web.Request) -> web.StreamResponse:
        stored = self._file(request)
        stored.deleted = True
        stored_in_use = any(
            isinstance(cf.spec, StoredSpec) and cf.spec.stored is stored
            for c in self.emulator.containers.values()
            for cf in c.files
        )
        if not stored_in_use:  # a container keeps its own copy, as the service does
            stored.path.unlink(missing_ok=True)
        self.files_deleted += 1
        return web.json_response({"id": stored.id, "object": "file", "deleted": True})

    # ---- Uploads API

    # ---- containers

    async def get_container(self, request: web.Request) -> web.StreamResponse:
        await self.fault(request, "containers")
        cid = request.match_info["cid"]
        container = self.emulator.containers.get(cid)
        if container is None:
            raise _error(404, "Container not found")
        now = time.time()
        return web.json_response(
            {
                "id": container.id,
                "object": "container",
                "name": f"Container for {cid}",
                "created_at": int(container.done_at),
                "status": "expired" if container.is_expired(now) else "running",
                "last_active_at": int(min(now, max(container.done_at, 0))),
                "expires_after": {"anchor": "last_active_at", "minutes": 20},
            }
        )

    # ---- control

    async def ctl_faults(self, request: web.Request) -> web.StreamResponse:
        """`{"target": "files" | "uploads" | "parts" | "containers", "status": 403, "after": 0, "times": 1}`: the next
        `times` requests to target, after `after` good ones, answer `status`."""
        body = await request.json()
        target, status = body.get("target"), body.get("status")
        if target not in ("files", "uploads", "parts", "containers") or not isinstance(status, int):
            raise _error(400, "faults need 'target' (files, uploads, parts, containers) and an integer 'status'")
        self.faults[target] = [0] * int(body.get("after", 0)) + [status] * int(body.get("times", 1))
        return web.json_response({"target": target, "queued": self.faults[target]})

    async def ctl_files(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "files": [
                    {
                        "id": f.id,
                        "filename": f.filename,
                        "purpose": f.purpose,
                        "bytes": f.size,
                        "sha256": f.sha256,
                        "expires_at": f.expires_at,
                        "parts": f.parts,
                        "deleted": f.deleted,
                    }
                    for f in self.files.values()
                ],
                "uploads": [
                    {"id": u.id, "status": u.status, "parts": len(u.parts)} for u in self.uploads_api.uploads.values()
                ],
                **self.stats(),
            }
        )


def queue_fault(control: EmulatorControl, target: str, status: int, *, after: int = 0, times: int = 1) -> None:
    """Make the next `times` requests to `target` (files, uploads, parts, containers: `GET /containers/{id}`),
    after `after` good ones, fail with `status`."""
    body = {"target": target, "status": status, "after": after, "times": times}
    control._call("POST", "/_emulator/files/faults", body)


def files_state(control: EmulatorControl) -> dict[str, Any]:
    """The emulator's files (``files``: id, filename, bytes, sha256, parts, deleted), uploads and counts."""
    return control._call("GET", "/_emulator/files")
