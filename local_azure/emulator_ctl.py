"""The ``/_emulator`` control API a test drives the emulator with: scripts, run lookups, stats, config,
expiry (the server side; ``emulator_client.EmulatorControl`` is its client)."""

from __future__ import annotations

import asyncio
import secrets
import time

from aiohttp import web

from . import content as gen
from .emulator_errors import bad_request, not_found
from .emulator_scripts import parse_script
from .emulator_state import EmulatorState


class ControlApi(EmulatorState):
    """The ``/_emulator`` handlers."""

    async def ctl_add_script(self, request: web.Request) -> web.StreamResponse:
        script_id = secrets.token_hex(6)
        script = parse_script(script_id, await request.json())
        loop = asyncio.get_running_loop()
        for f in script.files:
            if f.seed is not None:
                f.sha256 = await loop.run_in_executor(None, gen.sha256_of, f.seed, f.size)
        self.scripts[script_id] = script
        return web.json_response(
            {
                "script_id": script_id,
                "marker": f"[[script:{script_id}]]",
                "files": [{"path": f.path, "bytes": f.size, "sha256": f.sha256, "seed": f.seed} for f in script.files],
                "images": [{"bytes": len(i.data), "sha256": i.sha256, "url": i.url} for i in script.images],
            }
        )

    async def ctl_run(self, request: web.Request) -> web.StreamResponse:
        rid = request.match_info["id"]
        run = self.runs.get(rid)
        if run is None:
            raise not_found(f"Response with id '{rid}' not found.")
        c = run.container
        return web.json_response(
            {
                "response_id": run.id,
                "script_id": run.script.id,
                "status": run.status(time.time()),
                # the model's start and end on this machine's clock (epoch seconds, not rounded): the
                # bench times what follows the model's end from here
                "created_at": run.created,
                "ends_at": run.created + run.latency,
                "deleted": run.deleted,
                "container_id": c.id if c else None,
                "code_interpreter_call_id": run.ci_id if c else None,
                "images": [{"bytes": len(i.data), "sha256": i.sha256} for i in run.script.images],
                "files": [
                    {
                        "file_id": f.id,
                        "path": f.spec.path,
                        "bytes": f.spec.size,
                        "sha256": f.spec.sha256,
                        "missing": f.spec.missing,
                    }
                    for f in (c.files if c else [])
                ],
                "request": run.request,
            }
        )

    async def ctl_script_runs(self, request: web.Request) -> web.StreamResponse:
        sid = request.match_info["id"]
        if sid not in self.scripts:
            raise not_found(f"Script with id '{sid}' not found.")
        return web.json_response({"runs": [run.id for run in self.runs.values() if run.script.id == sid]})

    async def ctl_stats(self, request: web.Request) -> web.StreamResponse:
        await asyncio.wrap_future(self.schemas.flush())  # the checks of every body served so far
        return web.json_response(self.stats())

    async def ctl_reset(self, request: web.Request) -> web.StreamResponse:
        self.reset_stats()
        return web.json_response({"ok": True})

    async def ctl_config(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not isinstance(body, dict):
            raise bad_request("config must be a JSON object")
        if "latency" in body:
            lat = body["latency"]
            if not isinstance(lat, (int, float)) or lat < 0:
                raise bad_request("'latency' must be a number >= 0", "latency")
            self.latency = float(lat)
        if "chunk_size" in body:
            cs = body["chunk_size"]
            if not isinstance(cs, int) or cs <= 0:
                raise bad_request("'chunk_size' must be a positive integer", "chunk_size")
            self.chunk_size = cs
        return web.json_response({"latency": self.latency, "chunk_size": self.chunk_size})

    async def ctl_expire(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["cid"]
        c = self.containers.get(cid)
        if c is None:
            raise not_found("Container not found")
        c.expired = True
        return web.json_response({"container_id": cid, "expired": True})
