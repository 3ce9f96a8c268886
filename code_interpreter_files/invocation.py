"""One invocation of a function (HTTP, queue or timer): its log and root span, and what may escape it.

Shared by http_api (which turns every failure into a JSON answer) and the queue and timer entries
(which log a failure and raise it for the host to retry). Nothing but an Exception escapes `work`:
a cancellation that did not come from the host (the invocation's own task is not being cancelled)
is a bug somewhere below, and is raised as StrayCancellation so it is answered or retried like any
failure instead of ending the invocation with a bare CancelledError (a BaseException).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .runlog import RunLog

T = TypeVar("T")


class StrayCancellation(Exception):
    """Work was cancelled from inside the invocation, not by the host."""


async def invoke(
    context: Any,
    operation: str,
    work: Callable[[RunLog], Awaitable[T]],
    on_error: Callable[[Exception, RunLog], T],
) -> T:
    """Run `work` under the invocation's root span (a child of the host's trace when it passes one);
    any failure, a stray cancellation included, goes to `on_error` (which answers it or raises)."""
    log = RunLog(context.invocation_id, operation)
    with log.invocation(getattr(context, "trace_context", None)):
        try:
            try:
                return await work(log)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the host (or a deadline above us) is stopping this invocation
                raise StrayCancellation(f"{operation} was cancelled from inside") from None
        except Exception as error:
            return on_error(error, log)
