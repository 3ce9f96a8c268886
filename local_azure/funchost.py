"""The minimal local Functions host: serves the app's HTTP functions (and, with the queue companion of
local_azure/queue_instances.py, its queue triggers) when Azure Functions Core Tools are not installed.

`scripts/start.sh --offline` runs the app under it; the tests serve the app through it to the client and
the notebook (`func start` cannot run on the test machines: its binary comes from a CDN). What it does not
do: check function keys, run more than one process, run timer or other triggers (`unserved` names them).
Each request becomes the invocation the Python worker makes:
a `func.HttpRequest` (method, full URL, body, headers, query, route parameters) and a `context`, given to
the indexed function's user callable under its trigger's binding name. Routes come from the app's own
bindings (`route`, `methods`, the host.json prefix `api`). Function keys are not checked.

In-process: `async with FuncHost(app) as host: host.url` (on the running event loop, which the app's
async clients are bound to). As a process: `python -m local_azure.funchost --port 0` prints
`READY http://127.0.0.1:<port>`, then `UNSERVED <functions it does not run, or ->`, then one line per
request, and serves until SIGTERM or SIGINT, with the app configured by its environment.
Other triggers (queues) are served by *companions*: objects with async `start()`/`stop()` that run
alongside (`FuncHost(app, companions=[...])`, or `--companion module:factory` where `factory(app)`
makes one), so a queue poller in its own module can share this host.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import inspect
import re
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import unquote

import azure.functions as func
from aiohttp import web
from azure.functions.decorators.function_app import Function

ROUTE_PREFIX = "api"  # host.json extensions.http.routePrefix
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}?]*)?(\?)?\}")


@functools.cache
def indexed_functions(app: func.FunctionApp) -> dict[str, Function]:
    """The app's functions by name, indexed once per process as the worker does (a second
    `get_functions()` on the same app raises a duplicate-name error)."""
    return {str(f.get_function_name()): f for f in app.get_functions()}


class Companion(Protocol):
    """Something that runs next to the HTTP server, e.g. a queue-trigger poller."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Context:
    """What the worker passes as `context` (the parts the app reads)."""

    function_name: str
    invocation_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_directory: str = ""


@dataclass
class HttpRoute:
    """One HTTP-triggered function: its route pattern, methods and the binding name of its request."""

    function: Function
    pattern: re.Pattern[str]
    methods: frozenset[str]
    binding: str

    @property
    def name(self) -> str:
        return str(self.function.get_function_name())


def route_pattern(template: str) -> re.Pattern[str]:
    """A Functions route template (`runs/{id}`, `{id:int}`, `{id?}`) as a regex over the raw path,
    segment by segment; constraints are not enforced (the app checks its own parameters)."""
    out = [f"/{ROUTE_PREFIX}"]
    for segment in template.strip("/").split("/"):
        whole = _PARAM.fullmatch(segment)
        if whole and whole.group(2):  # an optional last parameter: the slash goes with it
            out.append(f"(?:/(?P<{whole.group(1)}>[^/]+))?")
            continue
        pieces, pos = ["/"], 0
        for match in _PARAM.finditer(segment):
            pieces.append(re.escape(segment[pos : match.start()]) + f"(?P<{match.group(1)}>[^/]+)")
            pos = match.end()
        pieces.append(re.escape(segment[pos:]))
        out.append("".join(pieces))
    return re.compile("".join(out) + "/?")


SERVED_TRIGGERS = ("httpTrigger", "queueTrigger")


def unserved(app: func.FunctionApp) -> list[str]:
    """`name (trigger type)` of each function whose trigger this host and its queue companion do not run."""
    out = []
    for name, function in indexed_functions(app).items():
        trigger = function.get_trigger()
        kind = str(trigger.get_dict_repr().get("type")) if trigger is not None else "no trigger"
        if kind not in SERVED_TRIGGERS:
            out.append(f"{name} ({kind})")
    return out


def http_routes(app: func.FunctionApp) -> list[HttpRoute]:
    """Every HTTP-triggered function of the app, from its bindings (as the host reads function metadata)."""
    routes = []
    for function in indexed_functions(app).values():
        for binding in function.get_bindings_dict()["bindings"]:
            if binding.get("type") != "httpTrigger":
                continue
            template = binding.get("route") or function.get_function_name()
            methods = binding.get("methods") or ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
            routes.append(
                HttpRoute(
                    function=function,
                    pattern=route_pattern(str(template)),
                    methods=frozenset(str(m).upper() for m in methods),
                    binding=binding["name"],
                )
            )
    return routes


class FuncHost:
    """Serves the HTTP functions of `app` on 127.0.0.1 (`port=0`: a free port)."""

    def __init__(
        self,
        app: func.FunctionApp,
        port: int = 0,
        companions: Sequence[Companion] = (),
        on_invocation: Callable[[str], None] | None = None,
    ) -> None:
        self.routes = http_routes(app)
        self.port = port
        self.companions = list(companions)
        self.invocations: list[tuple[str, int]] = []  # (function name, status), for tests
        self._on_invocation = on_invocation  # one line per request (the process prints them)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FuncHost:
        web_app = web.Application(client_max_size=64 * 1024 * 1024)
        web_app.router.add_route("*", "/{tail:.*}", self._serve)
        self._runner = web.AppRunner(web_app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        for companion in self.companions:
            await companion.start()
        return self

    async def stop(self) -> None:
        for companion in reversed(self.companions):
            await companion.stop()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FuncHost:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def match(self, method: str, raw_path: str) -> tuple[HttpRoute, dict[str, str]] | None:
        """The function serving this request and its route parameters (percent-decoded, as the host does)."""
        for route in self.routes:
            found = route.pattern.fullmatch(raw_path)
            if found and method in route.methods:
                params = {k: unquote(v) for k, v in found.groupdict().items() if v is not None}
                return route, params
        return None

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        found = self.match(request.method, request.raw_path.split("?", 1)[0])
        if found is None:
            return web.Response(status=404)
        route, route_params = found
        http_request = func.HttpRequest(
            method=request.method,
            url=str(request.url),
            body=await request.read(),
            headers=dict(request.headers),
            params=dict(request.query),
            route_params=route_params,
        )
        started = time.monotonic()
        response = await self.invoke(route, http_request)
        self.invocations.append((route.name, response.status_code))
        if self._on_invocation is not None:
            elapsed = (time.monotonic() - started) * 1000
            self._on_invocation(
                f"{request.method} {request.path} -> {response.status_code} {route.name} ({elapsed:.0f} ms)"
            )
        headers = dict(response.headers)
        if response.mimetype and not any(k.lower() == "content-type" for k in headers):
            charset = f"; charset={response.charset}" if response.charset else ""
            headers["Content-Type"] = f"{response.mimetype}{charset}"
        return web.Response(status=response.status_code, body=response.get_body(), headers=headers)

    async def invoke(self, route: HttpRoute, request: func.HttpRequest) -> func.HttpResponse:
        """Call the user function as the worker does: async ones awaited, sync ones on a thread;
        an exception becomes an empty 500, like the host's answer."""
        user_function = route.function.get_user_function()
        arguments: dict[str, Any] = {route.binding: request}
        if "context" in inspect.signature(user_function).parameters:
            arguments["context"] = Context(function_name=route.name)
        try:
            if inspect.iscoroutinefunction(user_function):
                result = await user_function(**arguments)
            else:
                result = await asyncio.to_thread(user_function, **arguments)
        except Exception:
            return func.HttpResponse(status_code=500)
        if not isinstance(result, func.HttpResponse):
            return func.HttpResponse(status_code=500)
        return result


def load_companion(spec: str, app: func.FunctionApp) -> Companion:
    """`module:factory` -> `factory(app)`."""
    module, _, name = spec.partition(":")
    factory = getattr(importlib.import_module(module), name)
    companion: Companion = factory(app)
    return companion


async def _serve_until_stopped(port: int, companion_specs: Sequence[str]) -> None:
    import function_app  # imported here: the environment configures the app before its first import

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    companions = [load_companion(spec, function_app.app) for spec in companion_specs]

    def log(line: str) -> None:
        print(f"      {line}", flush=True)

    async with FuncHost(function_app.app, port, companions, on_invocation=log) as host:
        print(f"READY {host.url}", flush=True)
        print(f"UNSERVED {', '.join(unserved(function_app.app)) or '-'}", flush=True)
        await stop.wait()
    from code_interpreter_files import services

    if services._current is not None:  # close the app's clients as the worker's shutdown does
        await services._current[1].aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the function app's HTTP functions (the minimal local host).")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--companion", action="append", default=[], metavar="MODULE:FACTORY", help="also run FACTORY(app)"
    )
    args = parser.parse_args(argv)
    asyncio.run(_serve_until_stopped(args.port, args.companion))


if __name__ == "__main__":
    # Run as the importable module, not as `__main__`: companions import `indexed_functions` from
    # local_azure.funchost, and its cache must be the one the host uses (the SDK indexes an app once).
    from local_azure import funchost

    funchost.main()
