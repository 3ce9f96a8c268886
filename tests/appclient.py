"""Call the function app the way the Python worker does, and check what comes back for real."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import ssl
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import azure.functions as func
import httpx

import function_app
from tests.openapi_contract import assert_matches_openapi
from tests.rig.rig import Rig

# The worker indexes the app once; get_functions() refuses a second indexing.
FUNCTIONS = {f.get_function_name(): f for f in function_app.app.get_functions()}


@dataclass
class Context:
    """What the worker passes as `context` (the parts the app reads)."""

    invocation_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_name: str = ""
    function_directory: str = ""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    invocation_id: str

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def error_code(self) -> str:
        return self.json["error"]["code"]


class AppClient:
    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.functions = FUNCTIONS
        self.http = httpx.Client(verify=ssl.create_default_context(cafile=str(rig.tls.ca_pem)), timeout=60)

    async def call(
        self,
        name: str,
        method: str,
        path: str,
        body: bytes = b"",
        params: dict[str, str] | None = None,
        route_params: dict[str, str] | None = None,
    ) -> Reply:
        """Invoke the indexed function's user callable with a func.HttpRequest, as the worker does."""
        request = func.HttpRequest(
            method=method,
            url=f"http://localhost:7071{path}",
            body=body,
            headers={"content-type": "application/json"},
            params=params or {},
            route_params=route_params or {},
        )
        user_function = self.functions[name].get_user_function()
        context = Context(function_name=name)
        takes_context = "context" in inspect.signature(user_function).parameters
        result = user_function(request, context) if takes_context else user_function(request)
        if inspect.isawaitable(result):
            result = await result
        reply = Reply(result.status_code, dict(result.headers), result.get_body(), context.invocation_id)
        assert b"Traceback" not in reply.body, reply.body
        assert_matches_openapi(
            method, path, reply.status, reply.body, reply.headers, request_body=body or None, query=params
        )
        return reply

    async def post_run(self, raw: bytes | None = None, **payload: Any) -> Reply:
        body = raw if raw is not None else json.dumps(payload).encode()
        return await self.call("create_run", "POST", "/api/runs", body)

    async def get_run(self, response_id: str, **params: str) -> Reply:
        return await self.call(
            "get_run",
            "GET",
            f"/api/runs/{quote(response_id, safe='')}",
            params=params,
            route_params={"response_id": response_id},
        )

    async def delete_run(self, response_id: str) -> Reply:
        return await self.call(
            "delete_run",
            "DELETE",
            f"/api/runs/{quote(response_id, safe='')}",
            route_params={"response_id": response_id},
        )

    def script(self, **script: Any) -> dict[str, Any]:
        """Register an emulator script; returns its info, with `prompt` carrying the marker."""
        info = self.rig.emulator.add_script(script)
        info["prompt"] = f"Make the files, please. {info['marker']}"
        return info

    def expected_files(self, response_id: str) -> dict[str, dict[str, Any]]:
        """What the emulator holds for this run, by file id."""
        return {f["file_id"]: f for f in self.rig.emulator.run(response_id)["files"]}

    def verify_link(self, file: dict[str, Any], sha256: str) -> bytes | None:
        """Fetch a SAS link as any caller would: right bytes and name; writes and deletes refused."""
        digest = hashlib.sha256()
        size = 0
        small = bytearray()
        with self.http.stream("GET", file["url"]) as response:
            assert response.status_code == 200, response.read()
            disposition = response.headers["content-disposition"]
            assert_disposition_names(disposition, file["filename"])
            assert response.headers["x-ms-meta-sha256"] == sha256
            assert response.headers["x-ms-meta-file_id"] == file["file_id"]
            for chunk in response.iter_bytes(1 << 20):
                digest.update(chunk)
                size += len(chunk)
                if size <= 1 << 16:
                    small += chunk
        assert digest.hexdigest() == sha256 == file["sha256"]
        assert size == file["bytes"]
        assert (
            self.http.put(file["url"], content=b"overwrite", headers={"x-ms-blob-type": "BlockBlob"}).status_code == 403
        )
        assert self.http.delete(file["url"]).status_code == 403
        sas = parse_qs(urlsplit(file["url"]).query)
        assert sas["sp"] == ["r"], sas["sp"]
        assert sas["sr"] == ["b"]
        return bytes(small) if size <= 1 << 16 else None

    def verify_answer(self, answer: dict[str, Any]) -> None:
        """Every copied file's link serves exactly what the emulator holds."""
        expected = self.expected_files(answer["response_id"])
        for file in answer["files"]:
            self.verify_link(file, expected[file["file_id"]]["sha256"])


def assert_disposition_names(header: str, filename: str) -> None:
    assert header.startswith("attachment"), header
    star = re.search(r"filename\*=UTF-8''([^;]+)", header)
    if star:
        assert unquote(star.group(1)) == filename, header
    else:
        assert f'filename="{filename}"' in header, header
