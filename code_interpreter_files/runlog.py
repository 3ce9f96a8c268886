"""Structured, secret-free logs an operator can follow one request by: steps, timings, a file table."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger("code_interpreter_files")

STEPS = 5


class RunLog:
    """Every line carries the invocation id and, once known, the response id (also as `extra`)."""

    def __init__(self, invocation_id: str, operation: str) -> None:
        self.invocation_id = invocation_id
        self.operation = operation
        self.response_id: str | None = None

    def _fields(self, **fields: Any) -> tuple[str, dict[str, Any]]:
        context = {"invocation_id": self.invocation_id, "response_id": self.response_id or "-", **fields}
        return " ".join(f"{k}={v}" for k, v in context.items()), context

    def info(self, message: str, **fields: Any) -> None:
        text, context = self._fields(**fields)
        logger.info("%s %s | %s", self.operation, message, text, extra=context)

    def warning(self, message: str, **fields: Any) -> None:
        text, context = self._fields(**fields)
        logger.warning("%s %s | %s", self.operation, message, text, extra=context)

    @contextmanager
    def step(self, number: int, name: str, **fields: Any) -> Iterator[None]:
        """`[n/5] name` when it starts and when it ends, with its duration."""
        self.info(f"[{number}/{STEPS}] {name}", **fields)
        started = time.perf_counter()
        outcome = "failed"
        try:
            yield
            outcome = "done"
        finally:
            elapsed = round((time.perf_counter() - started) * 1000)
            self.info(f"[{number}/{STEPS}] {name} {outcome}", elapsed_ms=elapsed)

    def table(self, title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A fixed-width table in one log record, like the old script's console table."""
        cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        text, context = self._fields(count=len(rows))
        logger.info("%s %s | %s\n%s", self.operation, title, text, "\n".join(lines), extra=context)
