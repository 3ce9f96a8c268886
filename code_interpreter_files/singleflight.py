"""Run one piece of work per key at a time; concurrent callers share its result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class WorkCancelled(Exception):
    """The shared work was stopped from outside (`SingleFlight.cancel`: its run is being deleted)."""


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
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or current.cancelling() == 0):
                raise WorkCancelled() from None  # stopped by `cancel`, not this caller's own cancellation
            raise
        finally:
            waiters[0] -= 1
            if waiters[0] == 0 and not task.done():
                await self._cancel(key, flight)

    async def cancel(self, key: str) -> None:
        """Stop the work for `key`, if any (its run is being deleted)."""
        flight = self._flights.get(key)
        if flight is not None:
            await self._cancel(key, flight)

    async def _cancel(self, key: str, flight: tuple[asyncio.Task[Any], list[int]]) -> None:
        # Forget the flight first: a caller arriving while it winds down starts a new one instead
        # of joining a cancelled task (and getting CancelledError, which no JSON answer catches).
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight[0].cancel()
        await asyncio.gather(flight[0], return_exceptions=True)
