"""The Containers API's file endpoints: list a run's container files, their metadata and content
(cut, paced or expired as the script says)."""

from __future__ import annotations

import asyncio
import math
import time

from aiohttp import web

from .emulator_errors import bad_request, not_found
from .emulator_model import Container, ContainerFile
from .emulator_state import EmulatorState


class ContainersApi(EmulatorState):
    """The ``/containers/{cid}/files`` handlers."""

    def _container(self, request: web.Request, on: str) -> Container:
        """The container, after the script's faults for endpoint ``on``; expired: its script's shape."""
        cid = request.match_info["cid"]
        c = self.containers.get(cid)
        if c is None:
            raise not_found("Container not found")
        self._fault(c.script, on)
        if c.is_expired(time.time()):
            if c.script.expired_shape == "azure_404":
                raise not_found(f"Container {cid} not found")
            raise bad_request("Container is expired.")
        return c

    def _file(self, request: web.Request, on: str) -> tuple[Container, ContainerFile]:
        c = self._container(request, on)
        fid = request.match_info["fid"]
        for f in c.files:
            if f.id == fid and not f.spec.missing:
                return c, f
        raise not_found(f"File with id '{fid}' not found.")

    async def list_files(self, request: web.Request) -> web.StreamResponse:
        self.requests["GET /containers/{cid}/files"] += 1
        c = self._container(request, "list")
        q = request.query
        try:
            limit = int(q.get("limit", "20"))
        except ValueError:
            raise bad_request("Invalid 'limit': expected an integer.", "limit") from None
        if not 1 <= limit <= 100:
            raise bad_request(
                f"Invalid 'limit': integer below minimum value or above maximum value (got {limit}).", "limit"
            )
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise bad_request("Invalid 'order': expected 'asc' or 'desc'.", "order")
        files = c.present()
        if order == "desc":
            files = files[::-1]
        after = q.get("after")
        if after:
            ids = [f.id for f in files]
            if after not in ids:
                raise bad_request(f"Invalid 'after': file '{after}' not found.", "after")
            files = files[ids.index(after) + 1 :]
        page = files[:limit]
        if c.expires == "after_list":
            c.expired = True
        return web.json_response(
            {
                "object": "list",
                "data": [f.obj(c.id) for f in page],
                # The schema's first_id/last_id are strings, never null: "" on an empty page.
                "first_id": page[0].id if page else "",
                "last_id": page[-1].id if page else "",
                "has_more": len(files) > limit,
            }
        )

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        self.requests["GET /containers/{cid}/files/{fid}"] += 1
        c, f = self._file(request, "retrieve")
        return web.json_response(f.obj(c.id))

    async def get_content(self, request: web.Request) -> web.StreamResponse:
        self.requests["GET /containers/{cid}/files/{fid}/content"] += 1
        c, f = self._file(request, "content")
        spec = f.spec
        f.downloads += 1
        self.downloads[f.id] += 1
        cut: int | None = None
        if spec.cut_after is not None and (spec.cut_times is None or f.downloads <= spec.cut_times):
            cut = min(spec.cut_after, spec.size)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/octet-stream"})
        resp.content_length = spec.size
        await resp.prepare(request)
        sent = 0
        pace = (spec.download_seconds or 0.0) / max(1, math.ceil(spec.size / self.chunk_size))
        for chunk in spec.chunks(self.chunk_size):
            if pace:
                await asyncio.sleep(pace)
            if cut is not None and sent + len(chunk) >= cut:
                chunk = chunk[: cut - sent]
                if chunk:
                    await resp.write(chunk)
                    sent += len(chunk)
                    self.bytes_served += len(chunk)
                transport = request.transport
                if transport is not None:
                    transport.close()  # flushes what was written, then drops the connection
                return resp
            await resp.write(chunk)
            sent += len(chunk)
            self.bytes_served += len(chunk)
        await resp.write_eof()
        if c.expires == "after_first_download":
            c.expired = True  # the container ends while the other files are still to be copied
        return resp
