"""Structured, secret-free logs and traces an operator can follow one request by: steps, timings, a file table.

Each step is a log line when it starts and ends, and an OpenTelemetry span (telemetry.py) whose
fields are its attributes; the Azure SDK and httpx2 spans of the step's calls nest under it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.propagate import extract

from . import telemetry

logger = logging.getLogger("code_interpreter_files")

STEPS = 5
RESPONSE_ID_ATTRIBUTE = "response_id"


class RunLog:
    """Every line carries the invocation id and, once known, the response id (also as `extra`).

    Creating one sets up telemetry (once per worker) and makes its invocation id the one every span
    of this task carries.
    """

    def __init__(self, invocation_id: str, operation: str) -> None:
        telemetry.setup()
        telemetry.set_invocation_id(invocation_id)
        self.invocation_id = invocation_id
        self.operation = operation
        self._response_id: str | None = None
        self._root: trace.Span | None = None

    @property
    def response_id(self) -> str | None:
        return self._response_id

    @response_id.setter
    def response_id(self, value: str | None) -> None:
        """Known once the run started (or from the route): on the invocation's span from then on."""
        self._response_id = value
        if value is not None and self._root is not None:
            self._root.set_attribute(RESPONSE_ID_ATTRIBUTE, value)

    @contextmanager
    def invocation(self, trace_context: Any = None) -> Iterator[trace.Span]:
        """The invocation's root span, named after the operation; a child of the Functions host's
        request when the worker passes its trace context (`context.trace_context`)."""
        carrier = _carrier(trace_context)
        parent = extract(carrier) if carrier else None
        attributes = telemetry.span_attributes({"operation": self.operation, RESPONSE_ID_ATTRIBUTE: self.response_id})
        with telemetry.tracer.start_as_current_span(self.operation, context=parent, attributes=attributes) as span:
            self._root = span
            try:
                yield span
            finally:
                self._root = None

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[trace.Span]:
        """A span for one piece of a step (a file's copy): its attributes, plus the response id."""
        fields = {RESPONSE_ID_ATTRIBUTE: self.response_id, **attributes}
        with telemetry.tracer.start_as_current_span(name, attributes=telemetry.span_attributes(fields)) as span:
            yield span

    def _fields(self, **fields: Any) -> tuple[str, dict[str, Any]]:
        context = {"invocation_id": self.invocation_id, "response_id": self.response_id or "-", **fields}
        return " ".join(f"{k}={v}" for k, v in context.items()), context

    def info(self, message: str, **fields: Any) -> None:
        text, context = self._fields(**fields)
        logger.info("%s %s | %s", self.operation, message, text, extra=context)

    def warning(self, message: str, **fields: Any) -> None:
        """Also an event on the current span, so the trace shows what went wrong where."""
        text, context = self._fields(**fields)
        logger.warning("%s %s | %s", self.operation, message, text, extra=context)
        trace.get_current_span().add_event(message, telemetry.span_attributes(fields))

    @contextmanager
    def step(self, number: int, name: str, **fields: Any) -> Iterator[None]:
        """`[n/5] name` when it starts and when it ends, with its duration; a span named `name` with
        the fields as attributes (and the response id, also when the step is what learns it)."""
        self.info(f"[{number}/{STEPS}] {name}", **fields)
        started = time.perf_counter()
        outcome = "failed"
        with self.span(name, step=number, **fields) as span:
            try:
                yield
                outcome = "done"
            finally:
                elapsed = round((time.perf_counter() - started) * 1000)
                if self.response_id is not None:
                    span.set_attribute(RESPONSE_ID_ATTRIBUTE, self.response_id)
                span.set_attribute("outcome", outcome)
                self.info(f"[{number}/{STEPS}] {name} {outcome}", elapsed_ms=elapsed)

    def table(self, title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A fixed-width table in one log record, like the old script's console table."""
        cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        text, context = self._fields(count=len(rows))
        logger.info("%s %s | %s\n%s", self.operation, title, text, "\n".join(lines), extra=context)


def _carrier(trace_context: Any) -> Mapping[str, str]:
    """W3C headers from the worker's TraceContext (trace_parent, trace_state), when it has them."""
    parent = getattr(trace_context, "trace_parent", None)
    if not isinstance(parent, str) or not parent:
        return {}
    state = getattr(trace_context, "trace_state", None)
    return {"traceparent": parent, **({"tracestate": state} if isinstance(state, str) and state else {})}
