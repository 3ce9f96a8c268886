"""Claims (claims.py) on their own, against a small in-memory table with the runs table's If-Match rule.

The rig's tests walk claims through Azurite (tests/test_finishing.py); this one needs an answer held back
after the write landed, which only a stand-in table can time exactly.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from code_interpreter_files import claims
from code_interpreter_files.claims import CLAIM_SECONDS, Claim
from code_interpreter_files.records import RunRecord
from code_interpreter_files.run_table import Row, RowChanged


class _Table:
    """`update` as the runs table does it (If-Match on the etag, a new etag per write); a renewal's answer
    comes `answer_after` seconds after the write landed."""

    def __init__(self, row: Row, answer_after: float) -> None:
        self.row = row
        self.answer_after = answer_after
        self.renewal_landed = asyncio.Event()

    async def update(self, row: Row, **changes: Any) -> Row:
        if row.etag != self.row.etag:
            raise RowChanged()
        self.row = Row(
            record=row.record.model_copy(update=changes),
            partition=row.partition,
            row_key=row.row_key,
            etag=uuid.uuid4().hex,
        )
        if set(changes) == {"finishing_until"}:  # a renewal: it has landed, its answer is on the way
            self.renewal_landed.set()
            await asyncio.sleep(self.answer_after)
        return self.row


async def test_a_renewal_answered_after_the_work_ended_is_the_claim_the_commit_writes_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The work ends while a renewal has landed but its answer has not arrived: the commit must write with
    the renewal's etag. (Before: the renewal was cancelled with its answer, the commit used the old etag
    and failed with RowChanged, as if another instance had taken the claim.)"""
    monkeypatch.setattr(claims, "RENEW_WHEN_LEFT_SECONDS", CLAIM_SECONDS - 0.05)  # renew at once
    record = RunRecord(
        response_id="resp_" + uuid.uuid4().hex,
        owner="cif-test",
        created_at=datetime.now(UTC).replace(microsecond=0),
        finisher="claim-1",
        finishing_until=datetime.now(UTC) + timedelta(seconds=CLAIM_SECONDS),
    )
    table = _Table(Row(record=record, partition="p", row_key="r", etag="e0"), answer_after=0.3)
    claim = Claim(table, table.row)  # type: ignore[arg-type]

    async def work() -> str:
        await table.renewal_landed.wait()
        return "copied"

    assert await claim.keep(work()) == "copied"
    committed = await claim.release(status="completed")
    assert committed.record.status == "completed" and committed.record.finisher is None
    assert table.row == committed
