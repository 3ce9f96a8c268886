"""The retention sweep (a timer-triggered function): runs older than RUN_RETENTION_DAYS are deleted the
way DELETE deletes them, webhook replay markers past their use are removed, and runs whose finish was
never queued (a crash at their start) or whose messages were lost are queued again.

Bounded work per invocation (at most SWEEP_BATCH runs, and never past SWEEP_SECONDS): the timer comes
back every few minutes, so a backlog is worked off in slices and no invocation nears its timeout.
What removes what: this sweep removes each run's blobs, records and index rows after RUN_RETENTION_DAYS;
the storage lifecycle rule (infra) is only a backstop for anything it missed, with a longer period.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from . import deleting, responses_api, runs
from .errors import RunNotFound
from .invocation import invoke
from .runlog import RunLog
from .services import Services, get_services
from .webhooks import MARKER_PREFIX, TOLERANCE_SECONDS

SWEEP_BATCH = 100
SWEEP_SECONDS = 240
# A run still `running` this long after it started, with nobody finishing it, has lost its messages.
UNFINISHED_AFTER = timedelta(minutes=15)
# Replay markers guard a webhook for the SDK's tolerance (5 minutes); kept a day for the logs' sake.
MARKER_LIFETIME = timedelta(days=1)


@dataclass(frozen=True)
class SweepReport:
    runs_deleted: int
    markers_deleted: int
    finishes_queued: int
    more: bool  # the batch or the time ran out: the next sweep goes on


async def sweep(services: Services, log: RunLog, *, now: datetime | None = None) -> SweepReport:
    now = now or datetime.now(UTC)
    deadline = asyncio.get_running_loop().time() + SWEEP_SECONDS
    owner = services.settings.owner_tag
    deleted = 0
    more = False
    if services.settings.run_retention_days > 0:
        cutoff = now - timedelta(days=services.settings.run_retention_days)
        expired = await services.table.older_than(owner, cutoff, SWEEP_BATCH)
        for row in expired:
            if asyncio.get_running_loop().time() >= deadline:
                more = True
                break
            log.response_id = row.record.response_id
            try:
                await deleting.delete_run(services, row, log, response_exists=True)
            except Exception as error:  # its row stays (deleting.py): the next sweep tries it again
                log.warning("could not delete an expired run; the next sweep tries again", error=type(error).__name__)
                more = True
                continue
            deleted += 1
        log.response_id = None
        more = more or len(expired) >= SWEEP_BATCH
    markers = await services.store.markers_older_than(MARKER_PREFIX, now - max(MARKER_LIFETIME,
                                                      timedelta(seconds=TOLERANCE_SECONDS)), SWEEP_BATCH)  # fmt: skip
    for name in markers:
        await services.store.delete_blob(name)
    queued = 0
    for row in await services.table.unfinished(owner, now - UNFINISHED_AFTER, SWEEP_BATCH):
        if asyncio.get_running_loop().time() >= deadline:  # each look may wait on Azure OpenAI
            more = True
            break
        try:
            ended = await _model_ended(services, row.record.response_id)
        except Exception as error:  # Azure OpenAI failed for this run: the next sweep looks again
            log.warning("could not look at an unfinished run", response_id=row.record.response_id,
                        error=type(error).__name__)  # fmt: skip
            continue
        if ended:
            await services.queue.enqueue_finish(row.record.response_id)
            queued += 1
    report = SweepReport(runs_deleted=deleted, markers_deleted=len(markers), finishes_queued=queued, more=more)
    log.info("retention sweep", **report.__dict__)
    return report


async def _model_ended(services: Services, response_id: str) -> bool:
    """Whether to queue a finish for an unfinished run: only once its model has ended (or its response is
    gone, which the finish records). A model still running has a follower already, or gets one when a
    later sweep finds it ended: queueing now would add a second follower every sweep."""
    try:
        response = await runs.retrieve(services, response_id)
    except RunNotFound:
        return True
    return response.status not in responses_api.RUNNING


async def on_timer(context: Any) -> None:
    """The timer's invocation: one sweep; a failure is logged and left to the next tick."""

    async def work(log: RunLog) -> None:
        await sweep(await get_services(), log)

    def failed(error: Exception, log: RunLog) -> None:
        log.warning("retention sweep failed; the next one tries again", error=type(error).__name__)

    await invoke(context, "sweep_runs", work, failed)
