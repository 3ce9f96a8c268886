"""The Responses API: create (plain, background, event stream), retrieve, cancel and delete a run."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import time
from typing import Any

from aiohttp import web

from . import standin
from .emulator_errors import ApiError, bad_request, not_found, server_error
from .emulator_model import Run, Script, ScriptFile, ScriptImage
from .emulator_state import EmulatorState
from .emulator_views import response_obj
from .openai_schemas import EVENT_SCHEMAS

MARKER_RE = re.compile(r"\[\[script:([A-Za-z0-9_\-]+)\]\]")


def _collect_text(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for v in value:
            _collect_text(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _collect_text(v, out)


class ResponsesApi(EmulatorState):
    """The ``/responses`` handlers."""

    def _pick_script(self, body: dict[str, Any]) -> Script | None:
        """The script the input's marker names; None without a marker (the stand-in reads the prompt)."""
        texts: list[str] = []
        _collect_text(body.get("input"), texts)
        _collect_text(body.get("instructions"), texts)
        for t in texts:
            m = MARKER_RE.search(t)
            if m:
                script = self.scripts.get(m.group(1))
                if script is None:
                    raise bad_request(f"Emulator: unknown script id {m.group(1)!r}.", "input")
                return script
        return None

    async def _stand_in_script(self, body: dict[str, Any]) -> Script:
        """A script made from the prompt and the bytes of the run's input files (local_azure/standin.py);
        reading and drawing run off the event loop."""
        texts: list[str] = []
        _collect_text(body.get("input"), texts)
        tools = body.get("tools")
        tools = tools if isinstance(tools, list) else []
        loop = asyncio.get_running_loop()

        def make() -> standin.Plan:
            return standin.plan("\n".join(texts), self.inputs.stand_in_inputs(tools, standin.READ_LIMIT))

        made = await loop.run_in_executor(None, make)
        script_id = "standin-" + secrets.token_hex(6)
        files = [
            ScriptFile(path=f.path, size=len(f.data), sha256=hashlib.sha256(f.data).hexdigest(), seed=None, data=f.data)
            for f in made.files
        ]
        images = [
            ScriptImage(data=png, url="data:image/png;base64," + base64.b64encode(png).decode()) for png in made.images
        ]
        script = Script(
            id=script_id,
            files=files,
            text=made.text,
            images=images,
            logs="\n".join(made.logs) or None,
            code="\n\n".join(made.code) or None,
        )
        self.scripts[script_id] = script
        return script

    def _start_run(self, script: Script, body: dict[str, Any]) -> Run:
        """Create the run (and its container when it has the code_interpreter tool); it runs from now."""
        tools = body.get("tools") or []
        has_ci = any(isinstance(t, dict) and t.get("type") == "code_interpreter" for t in tools)
        now = time.time()
        latency = script.latency if script.latency is not None else self.latency
        container = None
        # inputs hooks (local_azure/emulator_inputs.py): previous_response_id, file_ids, a container by id
        self.inputs.check_previous(body)
        if has_ci and not script.no_container:
            container = self.inputs.container_for(script, tools, now + latency)
        run = Run(
            id="resp_" + secrets.token_hex(24),
            script=script,
            request=body,
            created=now,
            latency=latency,
            container=container,
        )
        script.runs += 1
        self.runs_started[script.id] += 1
        self.runs[run.id] = run
        return run

    @staticmethod
    def _fails_after_start(script: Script) -> bool:
        limit = script.create_500_after_start
        if limit is True or (limit is not False and script.create_500_served < limit):
            script.create_500_served += 1
            return True
        return False

    async def create_response(self, request: web.Request) -> web.StreamResponse:
        self.requests["POST /responses"] += 1
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise bad_request("We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise bad_request("Request body must be a JSON object.")
        script = self._pick_script(body) or await self._stand_in_script(body)
        request["off_spec"] = script.off_spec
        self._fault(script, "create")
        if not body.get("model"):
            raise bad_request("Missing required parameter: 'model'.", "model")
        background = bool(body.get("background", False))
        if background and body.get("store") is False:
            raise bad_request("Background mode requires 'store' to be true.", "background")
        run = self._start_run(script, body)
        if self._fails_after_start(script):
            raise server_error(500, "The server had an error while processing your request. Sorry about that!")
        if body.get("stream"):
            return await self._stream_events(request, run, background)
        if background:
            return web.json_response(response_obj(run, status="queued"))
        remaining = run.created + run.latency - time.time()
        if remaining > 0:
            await asyncio.sleep(remaining)
        return web.json_response(response_obj(run))

    async def _stream_events(self, request: web.Request, run: Run, background: bool) -> web.StreamResponse:
        """Server-sent events as the Responses API sends them: created, in_progress, then the final
        event with the whole response. A cancelled run's stream just ends (clients retrieve it).
        The script can end the stream before ``response.created``, cut it after in_progress, or
        keep it silent after ``response.created``. Each event is checked against its schema."""
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await stream.prepare(request)
        script = run.script
        sequence = 0

        async def send(kind: str, response: dict[str, Any]) -> None:
            nonlocal sequence
            data = json.dumps({"type": kind, "sequence_number": sequence, "response": response})
            self.schemas.check(EVENT_SCHEMAS[kind], data, f"POST /responses event {kind}", deliberate=script.off_spec)
            await stream.write(f"event: {kind}\ndata: {data}\n\n".encode())
            sequence += 1

        def drop() -> web.StreamResponse:
            if request.transport is not None:
                request.transport.close()  # the connection drops mid-stream
            return stream

        finals = {"completed": "response.completed", "failed": "response.failed", "incomplete": "response.incomplete"}
        self.streams_open += 1
        try:
            if script.stream_closes_before_created == "drop":
                return drop()
            if script.stream_closes_before_created == "eof":
                await stream.write_eof()
                return stream
            await send("response.created", response_obj(run, status="queued" if background else "in_progress"))
            if script.silent_stream:
                transport = request.transport
                while not self.closing and transport is not None and not transport.is_closing():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # no event, until the client leaves
                    transport = request.transport
                return stream
            await send("response.in_progress", response_obj(run, status="in_progress"))
            if script.cut_events:
                return drop()
            while run.running(time.time()):  # a cancel stops it, unless the script ignores cancels  # noqa: ASYNC110
                await asyncio.sleep(min(0.02, max(0.0, run.created + run.latency - time.time())))
            status = run.status(time.time())
            if status in finals:
                await send(finals[status], response_obj(run))
            await stream.write_eof()
        except ConnectionResetError:
            pass  # the client stopped listening; a background run goes on
        finally:
            self.streams_open -= 1
        return stream

    def _get_run(self, request: web.Request) -> Run:
        rid = request.match_info["id"]
        run = self.runs.get(rid)
        if run is None or run.deleted or run.request.get("store") is False:
            raise not_found(f"Response with id '{rid}' not found.")
        return run

    async def get_response(self, request: web.Request) -> web.StreamResponse:
        self.requests["GET /responses/{id}"] += 1
        run = self._get_run(request)
        request["off_spec"] = run.script.off_spec
        self._fault(run.script, "get_response")
        return web.json_response(response_obj(run))

    async def cancel_response(self, request: web.Request) -> web.StreamResponse:
        self.requests["POST /responses/{id}/cancel"] += 1
        run = self._get_run(request)
        request["off_spec"] = run.script.off_spec
        self._fault(run.script, "cancel")
        status = run.status(time.time())
        if status == "cancelled":
            return web.json_response(response_obj(run))
        if status != "in_progress":
            raise bad_request(f"Cannot cancel a response with status '{status}'.")
        if run.script.cancel_lands_after is not None:
            if run.cancel_at is None:
                run.cancel_at = time.time() + run.script.cancel_lands_after
            return web.json_response(response_obj(run))
        run.cancel_requested = True  # with cancel_ignored it only shows as cancelled
        return web.json_response(response_obj(run))

    async def delete_response(self, request: web.Request) -> web.StreamResponse:
        self.requests["DELETE /responses/{id}"] += 1
        run = self._get_run(request)
        self._fault(run.script, "delete")
        refused = run.script.delete_refused_while_running
        if refused is not None and run.running(time.time()):
            raise ApiError(refused, "Cannot delete a response that is in progress.")
        run.deleted = True
        return web.json_response({"id": run.id, "object": "response.deleted", "deleted": True})
