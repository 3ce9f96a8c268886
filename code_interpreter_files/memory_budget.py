"""A worker-wide budget of bytes in flight, shared by every run and file the worker copies.

Why: each copy holds a few blocks in memory, and nothing else bounds how many copies run at
once across runs (COPY_CONCURRENCY is per run). 20 runs of 4 large files would want ~4 GiB in one
worker; with a budget they wait for memory instead of running the worker out of it.

Use (one instance per worker, `Services.memory_budget`):

    async with budget.reserve(nbytes):      # waits until nbytes fit, then holds them
        ...                                 # fill / send the bytes
    grant = await budget.acquire(nbytes)    # the same, for a hold that ends in another task:
    grant.release()                         # idempotent; call it when the bytes are gone

No head-of-line blocking, by two rules:

- **No request is larger than one block.** Callers reserve per block (storage: one reservation per
  block, from the first byte read into it until its stage request completes), never a whole file.
  A small file asks for its size only. So whoever is first in line needs at most one block, which
  the next completed stage of any copy frees: nobody waits for a whole big file to finish.
- **First come, first served.** Waiters are granted strictly in arrival order, so a stream of
  small requests cannot starve a block-sized one, and a copy that wants its next block queues
  behind everyone already waiting: big copies interleave block by block with small files (in
  effect round-robin over copies), and a small file waits at most about one block per copy ahead
  of it.

A request larger than the whole budget is cut to the budget (it then waits until the budget is
free) rather than never granted. Nothing here allocates memory: it counts what callers say they
will hold; `peak` and `waits` are there to be observed (tests and the bench read them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from types import TracebackType


class Grant:
    """Bytes held from a budget until `release()` (idempotent)."""

    def __init__(self, budget: MemoryBudget, nbytes: int) -> None:
        self._budget: MemoryBudget | None = budget
        self.nbytes = nbytes

    def release(self) -> None:
        budget, self._budget = self._budget, None
        if budget is not None:
            budget._give_back(self.nbytes)


class _Reserve:
    def __init__(self, budget: MemoryBudget, nbytes: int) -> None:
        self._budget = budget
        self._nbytes = nbytes
        self._grant: Grant | None = None

    async def __aenter__(self) -> Grant:
        self._grant = await self._budget.acquire(self._nbytes)
        return self._grant

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._grant is not None:
            self._grant.release()


class MemoryBudget:
    """At most `limit` bytes reserved at any moment; waiters served first come, first served."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("the budget must be positive")
        self.limit = limit
        self.in_use = 0
        self.peak = 0  # the most ever reserved at once: never above `limit`
        self.waits = 0  # reservations that had to queue
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def reserve(self, nbytes: int) -> _Reserve:
        """`async with budget.reserve(n):` holds n bytes (at most `limit`) for the block."""
        return _Reserve(self, nbytes)

    async def acquire(self, nbytes: int) -> Grant:
        """Wait until `nbytes` (cut to `limit`) fit behind every earlier waiter; hold them."""
        nbytes = min(max(nbytes, 0), self.limit)
        if not self._waiters and self.in_use + nbytes <= self.limit:
            self._take(nbytes)
            return Grant(self, nbytes)
        entry = (nbytes, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        self.waits += 1
        try:
            await entry[1]
        except BaseException:
            if entry[1].done() and not entry[1].cancelled():
                self._give_back(nbytes)  # granted, then cancelled before it could be used
            else:
                with contextlib.suppress(ValueError):  # _wake() may have dropped it already
                    self._waiters.remove(entry)
                self._wake()  # the next one may fit now that this one left the head
            raise
        return Grant(self, nbytes)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _take(self, nbytes: int) -> None:
        self.in_use += nbytes
        self.peak = max(self.peak, self.in_use)

    def _give_back(self, nbytes: int) -> None:
        self.in_use -= nbytes
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            nbytes, future = self._waiters[0]
            if future.done():  # cancelled while waiting
                self._waiters.popleft()
                continue
            if self.in_use + nbytes > self.limit:
                return
            self._waiters.popleft()
            self._take(nbytes)
            future.set_result(None)
