"""The emulator's Files and Uploads APIs (and the container object): where a run's input files come from.

- Files API: ``POST /files`` (multipart: ``file``, ``purpose``, ``expires_after[...]``), ``GET /files/{id}``,
  ``GET /files/{id}/content``, ``DELETE /files/{id}``.
- Uploads API: ``POST /uploads``, ``POST /uploads/{id}/parts`` (multipart ``data``, at most 64 MB),
  ``POST /uploads/{id}/complete`` (``part_ids``, optional ``md5``), ``POST /uploads/{id}/cancel``.
- ``GET /containers/{id}``: the container object, ``status`` ``running`` or ``expired``.
- How a run uses these files (``file_ids``, ``previous_response_id``, ``copy_of_input``): emulator_inputs.py.

Uploaded bytes are streamed to a temporary directory (never whole in memory), so large inputs cost
the emulator disk, not memory. Bodies follow the published schemas (OpenAIFile, Upload, UploadPart,
ContainerResource, DeleteFileResponse).
"""

from __future__ import annotations

import hashlib
import json
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

if TYPE_CHECKING:
    from .emulator_client import EmulatorControl
    from .emulator_state import EmulatorState

PREFIX = "/openai/v1"
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision")
MAX_PART_BYTES = 64 * 1024 * 1024
MAX_UPLOAD_BYTES = 8 * 1024 * 1024 * 1024
UPLOAD_LIFETIME_SECONDS = 3600
READ_BYTES = 1 << 20


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


@dataclass
class PendingUpload:
    id: str
    filename: str
    size: int
    purpose: str
    mime_type: str
    created_at: int
    expires_at: int
    file_expires_after: int | None
    status: str = "pending"
    parts: dict[str, tuple[Path, int]] = field(default_factory=dict)
    file: StoredFile | None = None

    def obj(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "upload",
            "bytes": self.size,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": self.status,
            "expires_at": self.expires_at,
            "file": self.file.obj() if self.file is not None else None,
        }


class FilesApi:
    """State and handlers; `Emulator` owns one (emulator_inputs.RunInputs reads its files)."""

    def __init__(self, emulator: EmulatorState) -> None:
        self.emulator = emulator
        self._dir = tempfile.TemporaryDirectory(prefix="emulator-files-")
        self.root = Path(self._dir.name)
        self.files: dict[str, StoredFile] = {}
        self.uploads: dict[str, PendingUpload] = {}
        self.faults: dict[str, list[int]] = {}  # target -> statuses to answer next (see ctl_faults)
        self.reset_stats()

    # ---- stats

    def reset_stats(self) -> None:
        self.files_uploaded = 0
        self.files_deleted = 0
        self.bytes_received = 0
        self.upload_parts = 0
        self.max_part_bytes = 0
        self.uploads_cancelled = 0

    def stats(self) -> dict[str, Any]:
        return {
            "files_uploaded": self.files_uploaded,
            "files_deleted": self.files_deleted,
            "files_live": sum(1 for f in self.files.values() if not f.deleted),
            "bytes_received": self.bytes_received,
            "upload_parts": self.upload_parts,
            "max_part_bytes": self.max_part_bytes,
            "uploads_cancelled": self.uploads_cancelled,
        }

    # ---- routes

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(PREFIX + "/files", self.create_file)
        router.add_get(PREFIX + "/files/{fid}", self.get_file)
        router.add_get(PREFIX + "/files/{fid}/content", self.get_file_content)
        router.add_delete(PREFIX + "/files/{fid}", self.delete_file)
        router.add_post(PREFIX + "/uploads", self.create_upload)
        router.add_post(PREFIX + "/uploads/{uid}/parts", self.add_part)
        router.add_post(PREFIX + "/uploads/{uid}/complete", self.complete_upload)
        router.add_post(PREFIX + "/uploads/{uid}/cancel", self.cancel_upload)
        router.add_get(PREFIX + "/containers/{cid}", self.get_container)
        router.add_get("/_emulator/files", self.ctl_files)
        router.add_post("/_emulator/files/faults", self.ctl_faults)

    # ---- storage

    def _new_path(self) -> Path:
        return self.root / secrets.token_hex(12)

    async def _receive(self, part: BodyPartReader, limit: int | None = None) -> tuple[Path, int, str]:
        """Stream one multipart field to disk; return its path, size and sha256."""
        path = self._new_path()
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

    def _store(
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
    def _expiry(anchor: str | None, seconds: Any, param: str) -> int | None:
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

    async def _fault(self, request: web.Request, target: str) -> None:
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
        await self._fault(request, "files")
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
                received = await self._receive(part)
            elif part.name:
                fields[part.name] = (await part.read()).decode("utf-8", "replace")
        try:
            if received is None:
                raise _error(400, "Missing required parameter: 'file'.", "file")
            purpose = fields.get("purpose")
            if purpose not in PURPOSES:
                raise _error(400, f"Invalid value for 'purpose': {purpose!r}.", "purpose")
            expires = self._expiry(
                fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]"), "expires_after"
            )
        except Exception:
            if received is not None:
                received[0].unlink(missing_ok=True)
            raise
        stored = self._store(filename, purpose, *received, expires_after=expires)
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

    def _upload(self, request: web.Request) -> PendingUpload:
        uid = request.match_info["uid"]
        upload = self.uploads.get(uid)
        if upload is None:
            raise _error(404, f"Upload with id '{uid}' not found.", "upload_id")
        if upload.status == "pending" and time.time() >= upload.expires_at:
            upload.status = "expired"
        return upload

    async def create_upload(self, request: web.Request) -> web.StreamResponse:
        await self._fault(request, "uploads")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _error(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise _error(400, "Request body must be a JSON object.")
        for name in ("bytes", "filename", "mime_type", "purpose"):
            if name not in body:
                raise _error(400, f"Missing required parameter: '{name}'.", name)
        size = body["bytes"]
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_UPLOAD_BYTES:
            raise _error(400, f"Invalid 'bytes': between 1 and {MAX_UPLOAD_BYTES}.", "bytes")
        if body["purpose"] not in UPLOAD_PURPOSES:
            raise _error(400, f"Invalid value for 'purpose': {body['purpose']!r}.", "purpose")
        if not isinstance(body["filename"], str) or not body["filename"]:
            raise _error(400, "Invalid 'filename'.", "filename")
        if not isinstance(body["mime_type"], str) or "/" not in body["mime_type"]:
            raise _error(400, "Invalid 'mime_type'.", "mime_type")
        expires_after = body.get("expires_after")
        file_expiry = None
        if expires_after is not None:
            if not isinstance(expires_after, dict):
                raise _error(400, "Invalid 'expires_after'.", "expires_after")
            file_expiry = self._expiry(expires_after.get("anchor"), expires_after.get("seconds"), "expires_after")
        now = int(time.time())
        upload = PendingUpload(
            id="upload_" + secrets.token_hex(12),
            filename=body["filename"],
            size=size,
            purpose=body["purpose"],
            mime_type=body["mime_type"],
            created_at=now,
            expires_at=now + UPLOAD_LIFETIME_SECONDS,
            file_expires_after=file_expiry,
        )
        self.uploads[upload.id] = upload
        return web.json_response(upload.obj())

    async def add_part(self, request: web.Request) -> web.StreamResponse:
        upload = self._upload(request)
        await self._fault(request, "parts")
        if upload.status != "pending":
            raise _error(400, f"Upload {upload.id} is {upload.status}: no more parts may be added.")
        if not request.content_type.startswith("multipart/"):
            raise _error(400, "The request must be multipart/form-data.")
        reader = await request.multipart()
        received: tuple[Path, int, str] | None = None
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader) and part.name == "data" and received is None:
                received = await self._receive(part, MAX_PART_BYTES)
            elif isinstance(part, BodyPartReader):
                await part.release()
        if received is None:
            raise _error(400, "Missing required parameter: 'data'.", "data")
        path, size, _ = received
        part_id = "part_" + secrets.token_hex(12)
        upload.parts[part_id] = (path, size)
        self.upload_parts += 1
        self.max_part_bytes = max(self.max_part_bytes, size)
        return web.json_response(
            {"id": part_id, "object": "upload.part", "created_at": int(time.time()), "upload_id": upload.id}
        )

    async def complete_upload(self, request: web.Request) -> web.StreamResponse:
        upload = self._upload(request)
        if upload.status != "pending":
            raise _error(400, f"Upload {upload.id} is {upload.status}: it cannot be completed.")
        body = await request.json()
        part_ids = body.get("part_ids") if isinstance(body, dict) else None
        if not isinstance(part_ids, list) or not all(isinstance(p, str) for p in part_ids):
            raise _error(400, "Missing required parameter: 'part_ids'.", "part_ids")
        unknown = [p for p in part_ids if p not in upload.parts]
        if unknown or len(set(part_ids)) != len(part_ids):
            raise _error(400, f"Invalid part ids: {unknown or 'duplicates'}.", "part_ids")
        total = sum(upload.parts[p][1] for p in part_ids)
        if total != upload.size:
            raise _error(
                400,
                f"The number of bytes uploaded upon completion ({total}) does not match the expected "
                f"bytes ({upload.size}).",
            )
        path = self._new_path()
        sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        with path.open("wb") as out:
            for p in part_ids:
                with upload.parts[p][0].open("rb") as part_file:
                    while block := part_file.read(READ_BYTES):
                        sha.update(block)
                        md5.update(block)
                        out.write(block)
        expected_md5 = body.get("md5")
        if expected_md5 is not None and expected_md5 != md5.hexdigest():
            path.unlink(missing_ok=True)
            raise _error(400, "The md5 checksum does not match the uploaded bytes.", "md5")
        sizes = [upload.parts[p][1] for p in part_ids]
        for part_path, _ in upload.parts.values():
            part_path.unlink(missing_ok=True)
        upload.file = self._store(
            upload.filename, upload.purpose, path, total, sha.hexdigest(), upload.file_expires_after, sizes
        )
        upload.status = "completed"
        return web.json_response(upload.obj())

    async def cancel_upload(self, request: web.Request) -> web.StreamResponse:
        upload = self._upload(request)
        if upload.status not in ("pending", "cancelled"):
            raise _error(400, f"Upload {upload.id} is {upload.status}: it cannot be cancelled.")
        if upload.status == "pending":
            upload.status = "cancelled"
            self.uploads_cancelled += 1
            for part_path, _ in upload.parts.values():
                part_path.unlink(missing_ok=True)
        return web.json_response(upload.obj())

    # ---- containers

    async def get_container(self, request: web.Request) -> web.StreamResponse:
        await self._fault(request, "containers")
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
                "uploads": [{"id": u.id, "status": u.status, "parts": len(u.parts)} for u in self.uploads.values()],
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
