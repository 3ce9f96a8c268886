"""Traces an operator can follow: OpenTelemetry spans per run step, with the invocation id on each.

`setup()` runs once per worker (RunLog calls it before the first span):
- With APPLICATIONINSIGHTS_CONNECTION_STRING (a platform setting), `configure_azure_monitor` installs
  the tracer provider and exports to Application Insights (Entra ID auth when
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING says `Authorization=AAD`). Logs are not exported by it:
  the Functions host already ships the worker's log records, and twice would be noise.
- Otherwise spans go through the OpenTelemetry API to whatever provider the process has: none (no-op)
  unless an operator or a test installs one, e.g. with an in-memory or OTLP exporter; adding
  `InvocationIdSpanProcessor()` to that provider puts the invocation id on every span (setup adds it
  to a provider that is already installed when it runs, and then leaves that provider alone).
In both cases the clients' own spans nest under ours: the Azure SDKs through azure-core's
OpenTelemetry plugin (azure-core-tracing-opentelemetry, what the distro's `azure_sdk` option sets),
and the openai SDK's HTTP client, httpx2 (a fork of httpx under its own module name), through
`HTTPX2ClientInstrumentor` of opentelemetry-instrumentation-httpx (>= 0.66 instruments httpx2 as well as
httpx; the distro enables it by its `httpx2` entry point). So no hand-made span around openai calls.

Quiet by default: azure-core's per-request HTTP logging and the HTTP clients' loggers go to WARNING,
unless someone already chose a level for them or a parent (an operator's logging config, the tests).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider

INVOCATION_ID_ATTRIBUTE = "faas.invocation_id"  # OpenTelemetry's FaaS semantic convention
TRACER_NAME = "code_interpreter_files"
QUIET_LOGGERS = (
    "azure.core.pipeline.policies.http_logging_policy",  # every request's URL and headers, at INFO
    "httpx2",  # "HTTP Request: GET ..." for every openai call, at INFO
    "httpcore2",
    "aiohttp",
)

_invocation_id: ContextVar[str | None] = ContextVar("invocation_id", default=None)
_setup_lock = threading.Lock()
_set_up = False

tracer = trace.get_tracer(TRACER_NAME)  # a proxy: it uses the provider installed later, if any


def set_invocation_id(invocation_id: str) -> None:
    """This task's (and its child tasks') invocation id, for every span they start."""
    _invocation_id.set(invocation_id)


def current_invocation_id() -> str | None:
    return _invocation_id.get()


class InvocationIdSpanProcessor(SpanProcessor):
    """Copies the invocation id onto every span as it starts: ours, the Azure SDK's, httpx2's."""

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        invocation_id = _invocation_id.get()
        if invocation_id is not None:
            span.set_attribute(INVOCATION_ID_ATTRIBUTE, invocation_id)

    def on_end(self, span: ReadableSpan) -> None:
        pass


def span_attributes(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Fields as OpenTelemetry attribute values: numbers, booleans and text as they are, the rest as text."""
    return {
        name: value if isinstance(value, bool | int | float | str) else str(value)
        for name, value in fields.items()
        if value is not None
    }


def quiet_http_logs() -> None:
    """WARNING for the per-request loggers, where nobody chose a level for them or a parent."""
    for name in QUIET_LOGGERS:
        if not _level_chosen(name):
            logging.getLogger(name).setLevel(logging.WARNING)


def _level_chosen(name: str) -> bool:
    parts = name.split(".")
    return any(logging.getLogger(".".join(parts[:n])).level != logging.NOTSET for n in range(len(parts), 0, -1))


def setup(env: Mapping[str, str] | None = None) -> None:
    """Once per worker: quiet loggers, client instrumentation, and Azure Monitor when configured."""
    global _set_up
    with _setup_lock:
        if _set_up:
            return
        _set_up = True
        env = os.environ if env is None else env
        quiet_http_logs()
        provider = trace.get_tracer_provider()
        connection_string = env.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "").strip()
        if isinstance(provider, TracerProvider):
            # Already configured (the Functions worker with PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY,
            # or an operator's exporter): a second configure_azure_monitor would only be refused.
            provider.add_span_processor(InvocationIdSpanProcessor())
            _instrument_clients()
        elif connection_string:
            _configure_azure_monitor(connection_string, env.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", ""))
        else:
            _instrument_clients()


def _instrument_clients() -> None:
    """What configure_azure_monitor does for these two, for a provider someone else installed."""
    from azure.core.settings import settings as azure_settings
    from azure.core.tracing.ext.opentelemetry_span import OpenTelemetrySpan
    from opentelemetry.instrumentation.httpx import HTTPX2ClientInstrumentor

    azure_settings.tracing_implementation = OpenTelemetrySpan
    instrumentor = HTTPX2ClientInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def _configure_azure_monitor(connection_string: str, authentication: str) -> None:
    from azure.monitor.opentelemetry import configure_azure_monitor

    options: dict[str, Any] = {}
    auth = dict(p.split("=", 1) for p in authentication.split(";") if "=" in p)
    if auth.get("Authorization", "").upper() == "AAD":  # local auth off on the resource: Entra ID
        from azure.identity import ManagedIdentityCredential

        options["credential"] = ManagedIdentityCredential(client_id=auth.get("ClientId") or None)
    configure_azure_monitor(
        connection_string=connection_string,
        span_processors=[InvocationIdSpanProcessor()],
        disable_logging=True,
        **options,
    )
