"""The queue's side of a run: follow it to its end on any instance, have it finished, call back.

Every run has a message on RUNS_QUEUE (pipeline._record_start; the webhook and the retention sweep
add more). A transient fault on any step (a 5xx, 429, timeout or dropped connection of Azure OpenAI
or Storage) is not the host's to retry: the message completes and a delayed copy of it comes back
with backoff and jitter, for as long as the run's container can still hold its files
(CONTAINER_LIFETIME_MINUTES after the run started), so an outage never uses up the host's dequeue
count. The dequeue count and the poison queue are for crashes and bugs; `record_poison` then keeps
the run's true state and `finish_failed` in its row, and a GET tries to finish it again.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from openai.types.responses import Response

from . import callbacks, finishing, pipeline, responses_api, runs
from .claims import CLAIM_SECONDS, ClaimHeld, ClaimLost
from .errors import FinishFailed, RunDeleted, RunNotFound, ServiceError
from .invocation import invoke
from .records import Outcome, RunRecord
from .run_queue import CallbackMessage, FinishMessage, parse_message
from .run_table import Row, RowChanged, RowGone
from .runlog import RunLog
from .services import Services, get_services
from .singleflight import WorkCancelled
from .transient import is_transient

# One invocation follows a running model this long, then hands over to a delayed message: a slot of
# the queue is not held for an hour-long run, and functionTimeout is never reached.
FOLLOW_MODEL_SECONDS = 300
RECHECK_SECONDS = 30
# Retries after a transient fault: 2, 4, 8 ... seconds, at most a minute apart, +-25% jitter so that
# the runs an outage touched do not all come back at once.
RETRY_FIRST_SECONDS = 2
RETRY_MAX_SECONDS = 60
CALLBACK_LINK_MINUTES = 60


async def on_message(body: bytes, context: Any, operation: str) -> None:
    """A RUNS_QUEUE (or poison) message. What raises is a crash or a bug: logged, and the host retries it."""

    async def work(log: RunLog) -> None:
        log.info("queue message")
        services = await get_services()
        if operation == "record_poison":
            await record_poison(services, body, log)
        else:
            await handle_message(services, body, log)

    def failed(error: Exception, log: RunLog) -> None:
        log.warning("queue message failed; the host retries it", error=type(error).__name__, detail=str(error)[:200])
        raise error

    await invoke(context, operation, work, failed)


async def handle_message(services: Services, body: bytes | str, log: RunLog) -> None:
    message = parse_message(body)
    log.response_id = message.response_id
    if isinstance(message, FinishMessage):
        await finish_run(services, message, log)
    else:
        await deliver_callback(services, message, log)


def retry_delay(attempt: int) -> int:
    """Seconds before try `attempt + 1` after a transient fault at try `attempt` (0-based)."""
    base = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** min(attempt, 10))
    return max(1, round(base * random.uniform(0.75, 1.25)))


def _window_end(record: RunRecord, services: Services) -> datetime:
    return record.created_at + timedelta(minutes=services.settings.container_lifetime_minutes)


async def finish_run(services: Services, message: FinishMessage, log: RunLog) -> None:
    rid = message.response_id
    try:
        row = await runs.find_run(services, rid, None, any_caller=True)
    except RunNotFound:
        log.warning("the queued run is unknown, deleted or not this deployment's; dropping the message")
        return
    if row.record.ended:
        log.info("nothing to finish: the run is finished")
        return
    final = datetime.now(UTC) >= _window_end(row.record, services)
    try:
        try:
            response = await runs.retrieve(services, rid)
        except RunNotFound:  # the stored response is gone before the run was finished: say so, once
            log.warning("the run's stored response is gone before it was finished; recording finish_failed")
            await note_finish_failed(services, row, log)
            return
        if response.status in responses_api.RUNNING:
            response = await _follow(services, response, log)
            if response.status in responses_api.RUNNING:
                log.info("the model is still running; looking again later", delay_s=RECHECK_SECONDS)
                await services.queue.enqueue_finish(rid, attempt=message.attempt, delay_seconds=RECHECK_SECONDS)
                return
        outcome: Outcome = await services.finishing.run(
            rid, lambda: finishing.finish(services, row, response, log, final=final)
        )
    except (RunDeleted, RunNotFound):
        log.info("nothing to finish: the run was deleted")
        return
    except ClaimHeld as held:
        delay = _seconds_until(held.until) + 1
        log.info("another request or instance is finishing this run; looking again after its claim", delay_s=delay)
        await services.queue.enqueue_finish(rid, attempt=message.attempt, delay_seconds=delay)
        return
    except (ClaimLost, WorkCancelled):
        await services.queue.enqueue_finish(rid, attempt=message.attempt, delay_seconds=CLAIM_SECONDS)
        return
    except Exception as error:
        if not is_transient(error):
            raise
        await _again_later(services, row, message, log, reason=type(error).__name__, final=final)
        return
    if not outcome.complete and not final:  # uncommitted: the files worth retrying are tried again
        await _again_later(services, row, message, log, reason="files failed in a way worth retrying", final=final)


def _seconds_until(moment: datetime | None) -> int:
    if moment is None:
        return 1
    return max(1, int((moment - datetime.now(UTC)).total_seconds()) + 1)


async def _again_later(
    services: Services, row: Row, message: FinishMessage, log: RunLog, *, reason: str, final: bool
) -> None:
    """A transient fault: the same message again after the backoff while the run's container can still
    hold its files; after that, one last try commits whatever it can (`final`), and if even that fails
    for a transient reason the row records `finish_failed` (GET tries again)."""
    if not final:
        delay = retry_delay(message.attempt)
        log.warning("transient fault; trying again later", reason=reason, attempt=message.attempt, delay_s=delay)
        await services.queue.enqueue_finish(message.response_id, attempt=message.attempt + 1, delay_seconds=delay)
        return
    log.warning("transient faults outlasted the run's container; recording finish_failed", reason=reason)
    await note_finish_failed(services, row, log)


async def note_finish_failed(services: Services, row: Row, log: RunLog) -> None:
    """The honest record of a run the queue could not finish: its status stays what it is (running, or
    the model's own end once committed), `error` says finish_failed; the caller is told."""
    for _ in range(3):
        try:
            row = await services.table.update(row, error="finish_failed")
            break
        except RowGone:
            return  # deleted meanwhile
        except RowChanged:
            fresh = await services.table.reread(row)
            if fresh is None:
                return
            row = fresh
            if row.record.ended:
                return  # someone finished it meanwhile
    if row.record.callback_url:
        await services.queue.enqueue_callback(row.record.response_id, attempt=1, delay_seconds=0)


async def _follow(services: Services, response: Response, log: RunLog) -> Response:
    """Wait for the model for a while; if it still runs, return it as it is (the caller looks later).
    Azure OpenAI webhooks, when they come, only bring the finish forward (they queue one at once)."""
    try:
        async with asyncio.timeout(FOLLOW_MODEL_SECONDS):
            with log.step(2, "wait for the model", status=response.status):
                return await responses_api.wait_for_response(
                    services.openai,
                    responses_api.StartedRun(response=response),
                    services.settings.run_events_idle_seconds,
                )
    except TimeoutError:
        return response


async def record_poison(services: Services, body: bytes | str, log: RunLog) -> None:
    """A message that failed maxDequeueCount times (a crash or a bug): the row keeps finish_failed."""
    message = parse_message(body)
    log.response_id = message.response_id
    if not isinstance(message, FinishMessage):
        log.warning("a callback could not be delivered after every retry; dropping it")
        return
    try:
        row = await runs.find_run(services, message.response_id, None, any_caller=True)
    except RunNotFound:
        return
    if row.record.ended:
        return
    log.warning("the run's finish failed on every try of the queue; recording finish_failed")
    await note_finish_failed(services, row, log)


async def callback_payload(services: Services, row: Row, log: RunLog) -> dict[str, Any] | None:
    """The JSON a GET answers for a finished run (fresh links), or its error body; None if unfinished."""
    rid = row.record.response_id
    manifest = await services.store.read_manifest(rid)
    if manifest is None:
        if row.record.error != "finish_failed":
            return None
        return _error_payload(rid, FinishFailed(
            f"the run {rid} could not be finished yet (the queue gave up on every retry); files copied before "
            "are kept, and GET /api/runs/{id} tries once more"))  # fmt: skip
    try:
        ttl = timedelta(minutes=_link_minutes(services))
        return await pipeline.answer(services, Outcome.from_manifest(manifest), ttl, log)
    except ServiceError as error:
        return _error_payload(rid, error)


def _error_payload(response_id: str, error: ServiceError) -> dict[str, Any]:
    return {"response_id": response_id, **error.body()}


def _link_minutes(services: Services) -> int:
    return min(services.settings.sas_ttl_max_minutes, max(services.settings.sas_ttl_minutes, CALLBACK_LINK_MINUTES))


async def deliver_callback(services: Services, message: CallbackMessage, log: RunLog) -> None:
    """One delivery attempt; a failure worth retrying is queued again with backoff, never blocking a copy."""
    try:
        row = await runs.find_run(services, message.response_id, None, any_caller=True)
    except RunNotFound:
        log.info("callback for a deleted or unknown run; dropping it")
        return
    url = row.record.callback_url
    payload = await callback_payload(services, row, log)
    if url is None or payload is None:
        log.warning("callback for a run without a callback or not finished; dropping it")
        return
    result = await callbacks.deliver_and_schedule_retry(
        services.queue,
        response_id=message.response_id,
        url=url,
        attempt=message.attempt,
        payload=payload,
        settings=services.settings,
    )
    log.info("callback attempt", attempt=message.attempt, delivered=result.delivered, reason=result.reason)
