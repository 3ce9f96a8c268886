"""Call the function app the way the Python worker does, and check what comes back for real."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import ssl
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import azure.functions as func
import httpx

import function_app
from local_azure.azurite import ACCOUNT_KEY
from local_azure.funchost import indexed_functions
from local_azure.identity_endpoint import OBJECT_ID, TENANT_ID
from tests import figures
from tests.openapi_contract import assert_matches_openapi
from tests.rig.rig import Rig

# The worker indexes the app once; get_functions() refuses a second indexing (shared with the funchost).
FUNCTIONS = indexed_functions(function_app.app)


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


@dataclass
class Link:
    """A file of an answer, with the kind of SAS the app had to sign it with at the time."""

    file: dict[str, Any]
    identity: bool  # user delegation SAS (OUTPUT_STORAGE_ACCOUNT_URL) rather than a service SAS


class AppClient:
    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.functions = FUNCTIONS
        self.http = httpx.Client(verify=ssl.create_default_context(cafile=str(rig.tls.ca_pem)), timeout=60)
        self.links: dict[str, Link] = {}  # every SAS link the app answered with, by URL
        self.checked: set[str] = set()  # the ones that passed check_link (verify_link or at teardown)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.http.close()

    async def call(
        self,
        name: str,
        method: str,
        path: str,
        body: bytes = b"",
        params: dict[str, str] | None = None,
        route_params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """Invoke the indexed function's user callable with a func.HttpRequest, as the worker does."""
        request = func.HttpRequest(
            method=method,
            url=f"http://localhost:7071{path}",
            body=body,
            headers=headers or {"content-type": "application/json"},
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
        self._record(reply)
        return reply

    def _record(self, reply: Reply) -> None:
        """Keep error bodies for the session's secrets check, and every link for the SAS checks."""
        if reply.status >= 400:
            figures.ERROR_BODIES.append(reply.body)
            return
        text = reply.body.decode("utf-8", "replace")
        assert not figures.JWT.search(text), "a bearer token in an answer"
        assert ACCOUNT_KEY not in text and self.rig.api_key not in text
        if reply.status != 200 or not reply.body.startswith(b"{"):
            return
        identity = bool(os.environ.get("OUTPUT_STORAGE_ACCOUNT_URL"))
        for file in reply.json.get("files") or []:
            with self._lock:
                self.links.setdefault(file["url"], Link(file, identity))
            figures.SECRETS.add_signature(parse_qs(urlsplit(file["url"]).query)["sig"][0])

    async def post_run(self, raw: bytes | None = None, *, caller: str | None = None, **payload: Any) -> Reply:
        """POST /api/runs; `caller`: the principal id Easy Auth would put in front of the request."""
        body = raw if raw is not None else json.dumps(payload).encode()
        return await self.call("create_run", "POST", "/api/runs", body, headers=_headers(caller))

    async def list_runs(self, *, caller: str | None = None, **params: str) -> Reply:
        return await self.call("list_runs", "GET", "/api/runs", params=params, headers=_headers(caller))

    async def get_run(self, response_id: str, *, caller: str | None = None, **params: str) -> Reply:
        return await self.call(
            "get_run",
            "GET",
            f"/api/runs/{quote(response_id, safe='')}",
            params=params,
            route_params={"response_id": response_id},
            headers=_headers(caller),
        )

    async def delete_run(self, response_id: str, *, caller: str | None = None) -> Reply:
        return await self.call(
            "delete_run",
            "DELETE",
            f"/api/runs/{quote(response_id, safe='')}",
            route_params={"response_id": response_id},
            headers=_headers(caller),
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
        """Fetch a SAS link as any caller would: the right bytes, size, name and metadata; then
        `check_link`: read-only, this one blob only, https only, untamperable. Returns the bytes of a
        small file."""
        digest = hashlib.sha256()
        size = 0
        small = bytearray()
        with self.http.stream("GET", file["url"]) as response:
            assert response.status_code == 200, response.read()
            disposition = response.headers["content-disposition"]
            assert_disposition_names(disposition, file["filename"])
            assert response.headers["x-ms-meta-sha256"] == sha256
            assert response.headers["x-ms-meta-file_id"] == quote(file["file_id"], safe="")
            assert response.headers["x-ms-meta-response_id"] == file["blob"].split("/", 1)[0]
            for chunk in response.iter_bytes(1 << 20):
                digest.update(chunk)
                size += len(chunk)
                if size <= 1 << 16:
                    small += chunk
        assert digest.hexdigest() == sha256 == file["sha256"]
        assert size == file["bytes"]
        self.check_link(file)
        figures.count("files_verified")
        return bytes(small) if size <= 1 << 16 else None

    def check_link(self, file: dict[str, Any], identity: bool | None = None) -> None:
        """The security properties of one SAS link, whatever the blob holds (or whether it still exists).

        - read-only: PUT, DELETE and listing the container with the same query are refused;
        - one blob: the same query on another blob of the run (or a blob that is not there) is refused;
        - https only against an https endpoint (`spr=https`), and bounded in time (`st` <= now < `se`);
        - a download (`rscd=attachment...`), never a page rendered from the storage account's origin;
        - untamperable: a changed signature, permission, expiry, resource, protocol or header is refused;
        - the right kind: a user delegation SAS of the app's identity when it has no account key
          (`skoid`/`sktid` ...), a service SAS signed with the account key otherwise.
        """
        url = file["url"]
        if identity is None:
            link = self.links.get(url)
            identity = link.identity if link is not None else bool(os.environ.get("OUTPUT_STORAGE_ACCOUNT_URL"))
        parts = urlsplit(url)
        sas = parse_qs(parts.query)
        pairs = parse_qsl(parts.query)
        assert {k: v for k, v in sas.items() if len(v) != 1} == {}, "a SAS parameter given twice"
        assert sas["sp"] == ["r"], sas["sp"]
        assert sas["sr"] == ["b"], sas["sr"]
        assert parts.path.endswith("/" + quote(file["blob"], safe="/")), (parts.path, file["blob"])
        assert sas.get("rscd", [""])[0].startswith("attachment"), "the link must force a download"
        now = datetime.now(UTC)
        start, expiry = _sas_time(sas["st"][0]), _sas_time(sas["se"][0])
        assert start <= now + timedelta(minutes=1) and start >= now - timedelta(days=8)
        assert expiry <= now + timedelta(days=7, minutes=1)
        if parts.scheme == "https":
            assert sas["spr"] == ["https"], "a link to an https endpoint must refuse plain http"
        else:
            assert "spr" not in sas or sas["spr"] == ["https,http"]
        delegation = {"skoid", "sktid", "skt", "ske", "sks", "skv"}
        if identity:
            assert delegation <= set(sas), f"not a user delegation SAS: {sorted(sas)}"
            assert sas["skoid"] == [OBJECT_ID] and sas["sktid"] == [TENANT_ID] and sas["sks"] == ["b"]
            assert _sas_time(sas["ske"][0]) >= expiry, "the delegation key ends before the link"
        else:
            assert not delegation & set(sas), f"a service SAS with delegation fields: {sorted(sas)}"

        def refused(method: str, target: str, **kwargs: Any) -> None:
            status = self.http.request(method, target, **kwargs).status_code
            assert status == 403, f"{method} {target.split('?')[0]} with the link's SAS answered {status}, not 403"

        refused("PUT", url, content=b"overwrite", headers={"x-ms-blob-type": "BlockBlob"})
        refused("DELETE", url)
        refused("PUT", url + "&comp=metadata", headers={"x-ms-meta-evil": "1"})

        def at(path: str, query: str) -> str:
            return urlunsplit((parts.scheme, parts.netloc, path, query, ""))

        container_path = parts.path[: -len(quote(file["blob"], safe="/")) - 1]
        refused("GET", at(container_path, "restype=container&comp=list&" + parts.query))
        run_prefix, file_segment = file["blob"].split("/")[:2]
        for other in (f"{run_prefix}/manifest.json", f"{run_prefix}/{file_segment}/other.txt"):
            refused("GET", at(f"{container_path}/{quote(other, safe='/')}", parts.query))

        def tampered(name: str, value: str | None) -> str:
            changed = [(k, value if k == name else v) for k, v in pairs if not (k == name and value is None)]
            return at(parts.path, urlencode(changed))

        signature = sas["sig"][0]
        flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
        later = (expiry + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for name, value in (
            ("sig", flipped),
            ("sp", "rw"),
            ("sp", "racwdl"),
            ("se", later),
            ("sr", "c"),
            ("rscd", 'attachment; filename="evil.html"'),
            ("spr", "https,http" if "spr" in sas else None),
        ):
            if name in sas:
                refused("GET", tampered(name, value))
        with self._lock:
            self.checked.add(url)
        figures.count("links_checked")

    def check_remaining_links(self) -> None:
        """At the end of a test: every link it received and did not verify passes check_link too;
        and its blob serves the bytes the answer claims, unless the test deleted it or it expired."""
        for url, link in list(self.links.items()):
            if url in self.checked:
                continue
            status = self.http.head(url).status_code
            expired = _sas_time(parse_qs(urlsplit(url).query)["se"][0]) <= datetime.now(UTC)
            if status == 200:
                self.verify_link(link.file, link.file["sha256"])
            else:
                assert status == 404 or (status == 403 and expired), f"a link answered {status}: {url.split('?')[0]}"
                self.check_link(link.file, link.identity)

    def remember_secrets(self) -> None:
        """The app's current user delegation key must never appear in a log line either."""
        from code_interpreter_files import services

        current = services._current
        key = current[1].store.links.cached_key if current is not None else None
        if key is not None:
            figures.SECRETS.add(key.value)

    def assert_nothing_lost(self, answer: dict[str, Any], expected: set[str], *, copied: bool = False) -> None:
        """Every expected file id is copied, or (unless `copied`) reported in failed_files."""
        accounted = {f["file_id"] for f in answer["files"]}
        if not copied:
            accounted |= {f["file_id"] for f in answer["failed_files"]}
        lost = expected - accounted
        figures.count("files_lost", len(lost))
        assert not lost, f"files neither copied nor reported: {sorted(lost)}"

    def verify_answer(self, answer: dict[str, Any]) -> None:
        """Every copied file's link serves exactly what the emulator holds."""
        expected = self.expected_files(answer["response_id"])
        for file in answer["files"]:
            self.verify_link(file, expected[file["file_id"]]["sha256"])
        figures.count("runs_verified")


def _sas_time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def assert_disposition_names(header: str, filename: str) -> None:
    assert header.startswith("attachment"), header
    star = re.search(r"filename\*=UTF-8''([^;]+)", header)
    if star:
        assert unquote(star.group(1)) == filename, header
    else:
        assert f'filename="{filename}"' in header, header


def _headers(caller: str | None) -> dict[str, str]:
    """A JSON request's headers; with `caller`, the principal header Easy Auth sets after signing in."""
    headers = {"content-type": "application/json"}
    if caller is not None:
        headers["x-ms-client-principal-id"] = caller
    return headers
