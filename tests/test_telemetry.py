"""Traces: one run through the rig is one tree of spans, each with the invocation id.

The test installs a tracer provider with an in-memory exporter, the way an operator picks an exporter
(OTLP, console, ...) when Application Insights is not configured, and adds the app's
InvocationIdSpanProcessor to it, as telemetry.setup does for Azure Monitor.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from code_interpreter_files import telemetry
from code_interpreter_files.runlog import RunLog
from tests.appclient import AppClient

STEPS = ["start response", "wait for the model", "find files", "copy files", "sign links"]


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the global provider can be set once per process
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(telemetry.InvocationIdSpanProcessor())
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory
    memory.shutdown()  # the provider stays for the session; its spans go nowhere from now on


def _children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def _descendants(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    found = []
    for child in _children(spans, parent):
        found += [child, *_descendants(spans, child)]
    return found


async def test_one_run_is_one_tree_with_the_invocation_id_on_every_span(
    app: AppClient, exporter: InMemorySpanExporter
) -> None:
    exporter.clear()
    reply = await app.post_run(prompt="Create test.txt containing hello world")
    assert reply.status == 200, reply.body
    response_id = reply.json["response_id"]
    spans = [s for s in exporter.get_finished_spans()]
    roots = [s for s in spans if s.name == "create_run"]
    assert len(roots) == 1
    root = roots[0]
    trace_id = root.context.trace_id
    run = [s for s in spans if s.context.trace_id == trace_id]
    # Other tasks of the session may still finish something: only this invocation's spans are looked at.
    mine = [s for s in spans if (s.attributes or {}).get("faas.invocation_id") == reply.invocation_id]
    assert mine == run and len(run) > 10, sorted(s.name for s in set(mine) ^ set(run))
    assert all(s.attributes and s.attributes.get("faas.invocation_id") == reply.invocation_id for s in run), [
        s.name for s in run if (s.attributes or {}).get("faas.invocation_id") != reply.invocation_id
    ]
    assert root.parent is None and root.attributes is not None and root.attributes["response_id"] == response_id

    steps = {s.name: s for s in _children(spans, root) if s.name in STEPS}
    assert sorted(steps) == sorted(STEPS)
    for number, name in enumerate(STEPS, start=1):
        attributes = steps[name].attributes or {}
        assert attributes["step"] == number and attributes["outcome"] == "done"
        assert attributes["response_id"] == response_id
    assert (steps["copy files"].attributes or {})["count"] == 1

    [file_span] = [s for s in _children(spans, steps["copy files"]) if s.name == "copy file"]
    assert (file_span.attributes or {})["bytes"] == 11 and (file_span.attributes or {})["outcome"] == "copied"
    copy = _descendants(spans, steps["copy files"])
    assert all(s in _descendants(spans, file_span) for s in copy if s.kind == trace.SpanKind.CLIENT and s.name == "PUT")
    azure_sdk = [s for s in copy if s.instrumentation_scope and s.instrumentation_scope.name.startswith("azure.core")]
    assert any(s.name == "BlobClient.upload_blob" for s in azure_sdk), [(s.name, s.kind) for s in copy]
    blob_puts = [s for s in azure_sdk if s.kind == trace.SpanKind.CLIENT and s.name == "PUT"]
    assert any(response_id in str((s.attributes or {}).get("url.full")) for s in blob_puts), [s.name for s in copy]
    downloads = [s for s in copy if s.instrumentation_scope and "httpx" in s.instrumentation_scope.name]
    assert any(s.kind == trace.SpanKind.CLIENT for s in downloads), [(s.name, s.instrumentation_scope) for s in copy]
    start = _descendants(spans, steps["start response"])
    assert any(s.kind == trace.SpanKind.CLIENT and s.name.startswith("POST") for s in start), [s.name for s in start]


async def test_a_failed_answer_is_an_event_on_the_invocation_span(
    app: AppClient, exporter: InMemorySpanExporter
) -> None:
    exporter.clear()
    reply = await app.get_run("resp_doesnotexist")
    assert reply.status == 404
    root = next(s for s in exporter.get_finished_spans() if s.name == "get_run")
    assert (root.attributes or {})["faas.invocation_id"] == reply.invocation_id
    events = [e for e in root.events if e.name == "answered with an error"]
    assert events and (events[0].attributes or {})["code"] == "run_not_found"


def test_http_logs_are_quiet_unless_someone_chose_a_level() -> None:
    names = ("azure", "azure.core", *telemetry.QUIET_LOGGERS)
    saved = {name: logging.getLogger(name).level for name in names}
    try:
        for name in names:
            logging.getLogger(name).setLevel(logging.NOTSET)
        logging.getLogger("aiohttp").setLevel(logging.DEBUG)  # an operator's choice stays
        telemetry.quiet_http_logs()
        assert logging.getLogger("azure.core.pipeline.policies.http_logging_policy").level == logging.WARNING
        assert not logging.getLogger("azure.core.pipeline.policies.http_logging_policy").isEnabledFor(logging.INFO)
        assert logging.getLogger("httpx2").level == logging.WARNING
        assert logging.getLogger("aiohttp").level == logging.DEBUG
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def test_azure_monitor_gets_the_invocation_processor_and_entra_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit: what is handed to configure_azure_monitor (calling it for real would replace the
    process's tracer provider and try to reach Application Insights)."""
    import azure.monitor.opentelemetry as distro
    from azure.identity import ManagedIdentityCredential

    calls: list[dict[str, object]] = []
    monkeypatch.setattr(distro, "configure_azure_monitor", lambda **kwargs: calls.append(kwargs))
    connection = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://127.0.0.1:1/"
    telemetry._configure_azure_monitor(connection, "ClientId=11111111-2222-3333-4444-555555555555;Authorization=AAD")
    telemetry._configure_azure_monitor(connection, "")
    with_aad, plain = calls
    assert with_aad["connection_string"] == connection and with_aad["disable_logging"] is True
    processors = with_aad["span_processors"]
    assert isinstance(processors, list) and isinstance(processors[0], telemetry.InvocationIdSpanProcessor)
    assert isinstance(with_aad["credential"], ManagedIdentityCredential)
    assert "credential" not in plain


def test_the_invocation_span_continues_the_hosts_trace_and_a_file_span_nests_in_its_step(
    exporter: InMemorySpanExporter,
) -> None:
    """The worker's `context.trace_context` (W3C traceparent of the host's request) is the root's
    parent; `RunLog.span` (a file's copy) is a child of the step it runs in, with the ids on it."""
    exporter.clear()
    host_trace, host_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    log = RunLog("inv-123", "finish_run")
    host = SimpleNamespace(trace_parent=f"00-{host_trace}-{host_span}-01", trace_state="", attributes={})
    with log.invocation(host):
        log.response_id = "resp_abc"
        with log.step(4, "copy files", count=1), log.span("copy file", file_id="cfile_1") as span:
            span.set_attribute("bytes", 42)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root, step, file = spans["finish_run"], spans["copy files"], spans["copy file"]
    assert root.parent is not None and format(root.parent.span_id, "016x") == host_span
    assert format(root.context.trace_id, "032x") == host_trace
    assert step.parent is not None and step.parent.span_id == root.context.span_id
    assert file.parent is not None and file.parent.span_id == step.context.span_id
    assert dict(file.attributes or {}) == {
        "faas.invocation_id": "inv-123",
        "response_id": "resp_abc",
        "file_id": "cfile_1",
        "bytes": 42,
    }
    assert (root.attributes or {})["response_id"] == "resp_abc"
