"""The emulator's Uploads API: ``POST /uploads``, ``POST /uploads/{id}/parts`` (multipart ``data``, at most
64 MB), ``POST /uploads/{id}/complete`` (``part_ids``, optional ``md5``), ``POST /uploads/{id}/cancel``.
Parts are streamed to disk and joined, on complete, into a Files API file (emulator_files.py)."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from .emulator_errors import api_error as _error

if TYPE_CHECKING:
    from .emulator_files import FilesApi, StoredFile

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision")
MAX_PART_BYTES = 64 * 1024 * 1024
MAX_UPLOAD_BYTES = 8 * 1024 * 1024 * 1024
UPLOAD_LIFETIME_SECONDS = 3600
READ_BYTES = 1 << 20  # the block size of every copy to and from disk


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


class UploadsApi:
    """Pending uploads and their handlers; `FilesApi` owns one, and stores what completes."""

    def __init__(self, files: FilesApi) -> None:
        self.files = files
        self.uploads: dict[str, PendingUpload] = {}
        self.reset_stats()

    def reset_stats(self) -> None:
        self.upload_parts = 0
        self.max_part_bytes = 0
        self.uploads_cancelled = 0

    def stats(self) -> dict[str, Any]:
        return {
            "upload_parts": self.upload_parts,
            "max_part_bytes": self.max_part_bytes,
            "uploads_cancelled": self.uploads_cancelled,
        }

    def add_routes(self, router: web.UrlDispatcher, prefix: str) -> None:
        router.add_post(prefix + "/uploads", self.create_upload)
        router.add_post(prefix + "/uploads/{uid}/parts", self.add_part)
        router.add_post(prefix + "/uploads/{uid}/complete", self.complete_upload)
        router.add_post(prefix + "/uploads/{uid}/cancel", self.cancel_upload)

    def _upload(self, request: web.Request) -> PendingUpload:
        uid = request.match_info["uid"]
        upload = self.uploads.get(uid)
        if upload is None:
            raise _error(404, f"Upload with id '{uid}' not found.", "upload_id")
        if upload.status == "pending" and time.time() >= upload.expires_at:
            upload.status = "expired"
        return upload

    async def create_upload(self, request: web.Request) -> web.StreamResponse:
        await self.files.fault(request, "uploads")
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
            file_expiry = self.files.expiry(expires_after.get("anchor"), expires_after.get("seconds"), "expires_after")
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
        await self.files.fault(request, "parts")
        if upload.status != "pending":
            raise _error(400, f"Upload {upload.id} is {upload.status}: no more parts may be added.")
        if not request.content_type.startswith("multipart/"):
            raise _error(400, "The request must be multipart/form-data.")
        reader = await request.multipart()
        received: tuple[Path, int, str] | None = None
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader) and part.name == "data" and received is None:
                received = await self.files.receive(part, MAX_PART_BYTES)
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
        path = self.files.new_path()
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
        upload.file = self.files.store(
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
