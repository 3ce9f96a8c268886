"""A TLS reverse proxy in front of one Azurite service that fails chosen requests, as a flaky network or a
busy storage front end would: the app is pointed at it the way an operator points it at any endpoint
(e.g. RUNS_TABLE_SERVICE_URL), and every request it does not fail reaches Azurite unchanged.

In-process, on the test's event loop:

    async with FaultProxy(rig.azurite.table_url, rig.tls) as proxy:
        proxy.fail(503, times=1, when=lambda request, body: request.method == "PATCH" and b"x" in body)
        proxy.drop(times=1, when=..., after_forwarding=True)  # the connection dropped, the answer lost
        configure(RUNS_TABLE_SERVICE_URL=proxy.url)

It can also hold a chosen request back until the test lets it go (`hold`), to put two requests of two
instances in a chosen order (a read that lands after another request's writes, as on a busy network).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from local_azure.certs import TlsFiles

Predicate = Callable[[web.Request, bytes], bool]
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"})


@dataclass
class Rule:
    status: int  # 0: drop the connection without an answer
    times: int | None
    when: Predicate
    served: int = 0
    after_forwarding: bool = False  # a dropped request reached Azurite first (it landed; its answer is lost)


@dataclass
class Hold:
    """The next request `when` matches waits (`reached` set) until `release()`; then it goes on unchanged."""

    when: Predicate
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    taken: bool = False

    def release(self) -> None:
        self.released.set()


@dataclass
class FaultProxy:
    target: str  # e.g. https://127.0.0.1:10002/devstoreaccount1
    tls: TlsFiles
    rules: list[Rule] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)
    seen: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every request
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    url: str = ""

    def fail(self, status: int, *, times: int | None = 1, when: Predicate = lambda request, body: True) -> Rule:
        """Answer `status` (an Azure Storage error body) to the next `times` requests `when` matches."""
        rule = Rule(status=status, times=times, when=when)
        self.rules.append(rule)
        return rule

    def drop(self, *, times: int | None = 1, when: Predicate, after_forwarding: bool = False) -> Rule:
        """Close the connection of the next `times` requests `when` matches without an answer: before they
        reach Azurite, or (`after_forwarding`) after Azurite carried them out."""
        rule = Rule(status=0, times=times, when=when, after_forwarding=after_forwarding)
        self.rules.append(rule)
        return rule

    def hold(self, when: Predicate) -> Hold:
        """Hold back the next request `when` matches until the returned Hold is released."""
        held = Hold(when=when)
        self.holds.append(held)
        return held

    async def __aenter__(self) -> FaultProxy:
        target = urlsplit(self.target)
        client_ssl = ssl.create_default_context(cafile=str(self.tls.ca_pem))
        self._session = aiohttp.ClientSession(
            base_url=f"{target.scheme}://{target.netloc}", connector=aiohttp.TCPConnector(ssl=client_ssl)
        )
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ssl.load_cert_chain(str(self.tls.cert_pem), str(self.tls.key_pem))
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=server_ssl)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"https://127.0.0.1:{port}{target.path}"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for held in self.holds:
            held.release()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append((request.method, request.path))
        for held in self.holds:
            if not held.taken and held.when(request, body):
                held.taken = True
                held.reached.set()
                await held.released.wait()
        for rule in self.rules:
            if (rule.times is None or rule.served < rule.times) and rule.when(request, body):
                rule.served += 1
                if rule.status == 0:
                    if rule.after_forwarding:
                        await self._upstream(request, body)
                    assert request.transport is not None
                    request.transport.abort()  # no answer: the client sees the connection dropped
                    return web.Response()
                return web.json_response(
                    {"odata.error": {"code": "ServerBusy", "message": {"value": "injected by the test's proxy"}}},
                    status=rule.status,
                )
        return await self._upstream(request, body)

    async def _upstream(self, request: web.Request, body: bytes) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(
            request.method, str(request.rel_url), headers=headers, data=body, allow_redirects=False
        ) as upstream:
            payload = await upstream.read()
            answer = web.Response(status=upstream.status, body=payload)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    answer.headers.add(name, value)
            return answer
