"""One finisher per run across instances: a claim on the run's row, renewed while the run is finished.

The claim is two columns of the run row (`finisher`, `finishing_until`) written with If-Match, so taking
it, renewing it and committing the run's outcome are the same conditional write on the same row:
whoever lost the claim (or whose run DELETE removed) finds out at its next write (412 / 404).
What decided it over a blob lease on a lock blob: a lease costs three requests a run (create the lock
blob, acquire, release) on top of the row's own write, and cannot make the final row update
conditional on still holding it; the claim costs one write (none for a synchronous POST, which
creates its row already claimed) and the commit is its release.

Renewal: every ~20 s a claim of 60 s is extended. A renewal that fails for a transient reason (5xx,
429, timeout, dropped connection) is tried again while the claim still runs; only a claim that is
really lost (another finisher took it after it ran out, or the row is gone) stops the work, and the
caller then looks at the row to tell a DELETE from a takeover.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from .run_table import Row, RowChanged, RowGone, RunTable
from .transient import is_transient

T = TypeVar("T")

CLAIM_SECONDS = 60
RENEW_WHEN_LEFT_SECONDS = 40  # so renewals come every ~20 s
_GIVE_UP_LEFT_SECONDS = 5  # stop trying to renew this long before the claim runs out
_RENEW_RETRY_SECONDS = (0.5, 1.0, 2.0, 4.0)


class ClaimHeld(Exception):
    """Someone else is finishing this run right now (until `until`)."""

    def __init__(self, until: datetime | None) -> None:
        super().__init__("another request or instance is finishing this run")
        self.until = until


class ClaimLost(Exception):
    """The claim ran out while finishing, and someone else took it, or it could not be renewed in time."""


def _now() -> datetime:
    return datetime.now(UTC)


def new_claim_id() -> str:
    return uuid.uuid4().hex


class Claim:
    """The right to finish one run, held by this worker until `row.record.finishing_until`."""

    def __init__(self, table: RunTable, row: Row) -> None:
        self._table = table
        self.row = row
        self._lost: BaseException | None = None
        self.released = False

    @classmethod
    async def take(cls, table: RunTable, row: Row) -> Claim:
        """Claim `row`'s run, or raise ClaimHeld (someone holds it), RowGone (the row is gone)."""
        for _ in range(2):
            if row.record.claimed():
                raise ClaimHeld(row.record.finishing_until)
            try:
                claimed = await table.update(
                    row, finisher=new_claim_id(), finishing_until=_now() + timedelta(seconds=CLAIM_SECONDS)
                )
                return cls(table, claimed)
            except RowChanged:  # written since it was read: look again once
                fresh = await table.reread(row)
                if fresh is None:
                    raise RowGone() from None
                row = fresh
        raise ClaimHeld(row.record.finishing_until)

    async def keep(self, work: Awaitable[T]) -> T:
        """Run `work` while the claim is renewed. If the claim is lost for good, `work` is stopped and
        RowGone (the run row was deleted) or ClaimLost is raised instead of a cancellation."""
        task = asyncio.ensure_future(work)
        renewer = asyncio.ensure_future(self._renew(task))
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._lost is not None and (current is None or current.cancelling() == 0):
                raise self._lost from None
            raise
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)

    async def _renew(self, task: asyncio.Future[Any]) -> None:
        while True:
            until = self.row.record.finishing_until or _now()
            await asyncio.sleep(max(0.0, (until - _now()).total_seconds() - RENEW_WHEN_LEFT_SECONDS))
            try:
                self.row = await self._renew_once(until)
            except (RowGone, ClaimLost) as lost:
                self._lost = lost
                task.cancel()
                return

    async def _renew_once(self, until: datetime) -> Row:
        for delay in (*_RENEW_RETRY_SECONDS, None):
            try:
                return await self._renewal()
            except RowChanged:
                raise ClaimLost() from None
            except Exception as error:
                if not is_transient(error) or delay is None:
                    raise ClaimLost() from error
                if (until - _now()).total_seconds() - delay < _GIVE_UP_LEFT_SECONDS:
                    raise ClaimLost() from error
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _renewal(self) -> Row:
        """One renewal. If the claim stops renewing while it is under way, its answer is still awaited and
        kept: the row may already carry its new etag, which the commit must write with (cancelled with its
        answer, the commit failed If-Match as if another instance had taken the claim)."""
        sent = asyncio.ensure_future(
            self._table.update(self.row, finishing_until=_now() + timedelta(seconds=CLAIM_SECONDS))
        )
        try:
            return await asyncio.shield(sent)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                self.row = await sent
            raise

    async def release(self, **changes: object) -> Row:
        """The last write of the claim: `changes` (the run's outcome) and the claim cleared, If-Match.
        RowGone: DELETE removed the run; RowChanged: someone took the claim after it ran out."""
        self.released = True  # tried once: whatever the answer, this claim is not ours to write again
        self.row = await self._table.update(self.row, finisher=None, finishing_until=None, **changes)
        return self.row
