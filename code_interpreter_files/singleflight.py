"""Run one piece of work per key at a time; concurrent callers share its result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class SingleFlight:
    """Concurrent requests for the same run copy its files once.

    The work runs in its own task so that one caller giving up (its time budget ran out) does not
    cancel it for the others; when the last caller has given up, the work is cancelled, so no
    task outlives every answer.
    """

    def __init__(self) -> None:
        self._flights: dict[str, tuple[asyncio.Task[Any], list[int]]] = {}

    async def run(self, key: str, work: Callable[[], Awaitable[Any]]) -> Any:
        flight = self._flights.get(key)
        if flight is None:
            task = asyncio.ensure_future(work())
            flight = (task, [0])
            self._flights[key] = flight
            task.add_done_callback(lambda _: self._flights.pop(key, None) if self._flights.get(key) is flight else None)
        task, waiters = flight
        waiters[0] += 1
        try:
            return await asyncio.shield(task)
        finally:
            waiters[0] -= 1
            if waiters[0] == 0 and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
