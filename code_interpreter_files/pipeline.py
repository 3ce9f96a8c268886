"""The HTTP operations on runs, top to bottom: start one, get one, delete one, answer with fresh links.

Finishing a run (copying its files and committing how it ended) is finishing.py's, whoever asks.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
from azure.core.exceptions import AzureError

from . import callbacks, conversations, deleting, finishing, inputs, ownership, responses_api, runs
from .citations import link_files
from .claims import Claim, ClaimHeld, ClaimLost, new_claim_id
from .errors import (
    ContainerGone,
    InvalidRequest,
    RunCancelled,
    RunDeleted,
    RunFailed,
    RunNotFound,
    ServiceError,
    TimedOut,
    UpstreamFailed,
)
from .models import RunRequest
from .records import Outcome, RunRecord, preview
from .run_table import Row
from .runlog import RunLog
from .services import Services
from .singleflight import WorkCancelled

RETRY_AFTER_SECONDS = 5
# A synchronous POST also queues its run's finish, visible this long after its answer was due: if the
# worker dies mid-copy, the queue still finishes the run (and calls back) even though nobody polls.
SAFETY_FINISH_MARGIN_SECONDS = 10
# The claim a synchronous POST creates its row with ends this long after its answer is due: before the
# safety-net message becomes visible, so that message can take it at once.
_ANSWER_CLAIM_MARGIN_SECONDS = 5
# The errors an outcome can keep, as the exception GET answers with.
_OUTCOME_ERRORS: dict[str, type[ServiceError]] = {
    "run_failed": RunFailed,
    "run_cancelled": RunCancelled,
    "container_expired": ContainerGone,
}


@dataclass(frozen=True)
class Accepted:
    """The run goes on: answer 202 and let the caller come back to `Location`."""

    response_id: str
    status: str


def sas_ttl(services: Services, minutes: int | None) -> timedelta:
    limit = services.settings.sas_ttl_max_minutes
    if minutes is not None and not 1 <= minutes <= limit:
        raise InvalidRequest(f"sas_ttl_minutes must be between 1 and {limit} (SAS_TTL_MAX_MINUTES)")
    return timedelta(minutes=minutes or services.settings.sas_ttl_minutes)


def _deadline(services: Services) -> float:
    """The whole answer must come within RUN_WAIT_SECONDS, well inside Azure's 230-second limit."""
    return asyncio.get_running_loop().time() + services.settings.run_wait_seconds


async def create_run(
    services: Services, request: RunRequest, log: RunLog, principal: str | None = None
) -> dict[str, Any] | Accepted:
    """POST /api/runs: upload its inputs, start the run, record it, queue its finish; with `wait`, see it
    through within the time budget (the queue finishes it otherwise, even if nobody polls)."""
    ttl = sas_ttl(services, request.sas_ttl_minutes)
    callback_url = (
        callbacks.validate_callback_url(request.callback_url, services.settings) if request.callback_url else None
    )
    deadline = _deadline(services)
    with responses_api.deadline_of_answer(deadline):
        try:
            async with asyncio.timeout_at(deadline):
                with log.step(1, "start response", deployment=services.settings.deployment, collect=request.collect):
                    setup = await conversations.prepare_run(
                        services, request.input_files, request.previous_response_id, log, principal
                    )
                    try:
                        started = await responses_api.start_response(
                            services.openai,
                            services.settings,
                            prompt=request.prompt,
                            instructions=request.instructions,
                            metadata=ownership.run_metadata(
                                services.settings, collect=request.collect, principal=principal
                            ),
                            container=setup.container,
                            previous_response_id=setup.previous_response_id,
                            listen=request.wait,
                        )
                    except BaseException:
                        await inputs.delete_uploaded(services, setup.file_ids, log)
                        raise
                    log.response_id = started.response.id
                    record = RunRecord(
                        response_id=started.response.id,
                        owner=services.settings.owner_tag,
                        principal=principal,
                        created_at=datetime.fromtimestamp(started.response.created_at, UTC),
                        collect=request.collect,
                        prompt=preview(request.prompt),
                        callback_url=callback_url,
                        **setup.record_fields(),
                        **_claimed_until_answered(services, request.wait),
                    )
                    row = await _record_start(services, record, started, log)
        except TimeoutError:
            raise TimedOut("Azure OpenAI did not accept the run within RUN_WAIT_SECONDS") from None
        if not request.wait:
            return Accepted(started.response.id, started.response.status or "queued")
        claim = Claim(services.table, row)  # the row was created claimed by this request
        return await _see_through(services, row, started, ttl, deadline, log, claim=claim)


def _claimed_until_answered(services: Services, wait: bool) -> dict[str, Any]:
    """A synchronous POST finishes its run itself: its row is created claimed until the answer is due."""
    if not wait:
        return {}
    until = datetime.now(UTC) + timedelta(seconds=services.settings.run_wait_seconds + _ANSWER_CLAIM_MARGIN_SECONDS)
    return {"finisher": new_claim_id(), "finishing_until": until}


async def _record_start(services: Services, record: RunRecord, started: responses_api.StartedRun, log: RunLog) -> Row:
    """The run's record first (its row and id row), then its finish on the queue: at once for `wait: false`,
    as a safety net past the answer otherwise. A run that cannot be recorded is cancelled: nobody could
    find it again, so it must not go on costing money."""
    try:
        row = await services.table.start(record)
    except BaseException:
        await started.stop_listening()
        log.warning("the run could not be recorded; cancelling it")
        try:
            await services.openai.responses.cancel(record.response_id)
        except openai.APIError as error:
            log.warning("the unrecorded run could not be cancelled", error=type(error).__name__)
        await inputs.delete_uploaded(services, record.uploaded_file_ids, log)
        raise
    delay = 0 if record.finisher is None else services.settings.run_wait_seconds + SAFETY_FINISH_MARGIN_SECONDS
    try:
        await services.queue.enqueue_finish(record.response_id, delay_seconds=delay)
    except AzureError as error:  # recorded: a GET, or the retention sweep's look at unfinished runs, finishes it
        log.warning("could not queue the run's finish", error=type(error).__name__)
    return row


async def get_run(
    services: Services, response_id: str, ttl_minutes: int | None, log: RunLog, principal: str | None = None
) -> dict[str, Any] | Accepted:
    """GET /api/runs/{id}: fresh links from the manifest; or the run's state; or finish it now.
    Only this deployment's runs, and only the caller's when Easy Auth names callers (else 404)."""
    ttl = sas_ttl(services, ttl_minutes)
    log.response_id = response_id
    manifest = await services.store.read_manifest(response_id)
    if manifest is not None:
        outcome = Outcome.from_manifest(manifest)
        ownership.check(outcome.owner or services.settings.owner_tag, outcome.principal, response_id,
                        services.settings, principal)  # fmt: skip
        ref = await services.table.locate(response_id)
        if ref is not None and ref.deleted:  # a DELETE failed half way, or a finish wrote after it: finish it
            await deleting.finish_removal(services, ref, log)
            raise RunNotFound(response_id)
        return await answer(services, outcome, ttl, log)
    deadline = _deadline(services)
    with responses_api.deadline_of_answer(deadline):
        try:
            async with asyncio.timeout_at(deadline):
                row = await runs.find_run(services, response_id, principal)
                with log.step(1, "retrieve response"):
                    response = await runs.retrieve(services, response_id)
        except TimeoutError:
            raise TimedOut("Azure OpenAI did not answer within RUN_WAIT_SECONDS") from None
        if response.status in responses_api.RUNNING:
            return Accepted(response.id, response.status or "queued")
        return await _see_through(services, row, responses_api.StartedRun(response=response), ttl, deadline, log)


async def delete_run(services: Services, response_id: str, log: RunLog, principal: str | None = None) -> None:
    """DELETE /api/runs/{id}: the caller's run (404 otherwise), cancelled if it still runs, then removed
    everywhere (deleting.py). Azure may refuse to delete a response that still runs (cancel is best
    effort): that is retried briefly and logged, never the caller's error once the files are gone."""
    log.response_id = response_id
    ref = await services.table.locate(response_id)
    if ref is not None and ref.deleted:  # deleted before: finish what a DELETE that failed half way left
        ownership.check(ref.owner, ref.principal, response_id, services.settings, principal)
        await deleting.finish_removal(services, ref, log)
        raise RunNotFound(response_id)
    row = await runs.find_run(services, response_id, principal)
    try:
        response = await runs.retrieve(services, response_id)
    except RunNotFound:  # the stored response is gone (deleted, or older than its 30 days)
        response = None
    if response is not None and response.status in responses_api.RUNNING:
        log.info("cancelling the running response")
        try:
            await services.openai.responses.cancel(response_id)
        except (openai.BadRequestError, openai.NotFoundError, openai.ConflictError):
            log.info("the response could not be cancelled (it finished, or the service refused)")
    await deleting.delete_run(services, row, log, response_exists=response is not None)


async def _see_through(
    services: Services,
    row: Row,
    started: responses_api.StartedRun,
    ttl: timedelta,
    deadline: float,
    log: RunLog,
    *,
    claim: Claim | None = None,
) -> dict[str, Any] | Accepted:
    """Wait for the model, finish the run; past the deadline, answer 202 and lose nothing."""
    response = started.response
    stage: str = response.status or "queued"
    rid = response.id
    try:
        async with asyncio.timeout_at(deadline):
            if response.status in responses_api.RUNNING or started.events is not None:
                with log.step(2, "wait for the model", status=response.status):
                    response = await responses_api.wait_for_response(
                        services.openai, started, services.settings.run_events_idle_seconds
                    )
            stage = "copying"
            done = response
            outcome = await services.finishing.run(rid, lambda: finishing.finish(services, row, done, log, claim=claim))
    except (ClaimHeld, ClaimLost):
        log.info("another request or instance is finishing this run", stage=stage)
        return Accepted(rid, "copying")
    except WorkCancelled:  # the shared finish was stopped in this worker: by a DELETE?
        ref = await services.table.locate(rid)
        if ref is None or ref.deleted:
            raise RunDeleted() from None
        return Accepted(rid, "copying")
    except TimeoutError:
        log.warning("time budget spent, answering 202", stage=stage, budget_s=services.settings.run_wait_seconds)
        if claim is not None:  # nobody finishes it here any more: the next GET or the queue may at once
            await finishing.let_go(claim, log)
        return Accepted(rid, stage)
    return await answer(services, outcome, ttl, log)


def raise_outcome_error(outcome: Outcome) -> None:
    """A run that ended without its files answers the error its outcome keeps."""
    if outcome.error is not None:
        kind = _OUTCOME_ERRORS.get(outcome.error["code"], UpstreamFailed)
        raise kind(outcome.error["message"])


async def answer(services: Services, outcome: Outcome, ttl: timedelta, log: RunLog) -> dict[str, Any]:
    """Sign a fresh read-only link per file and put the links into the model's text."""
    warnings = [w.to_answer() for w in outcome.warnings]
    if outcome.error is not None:
        if not outcome.files:
            raise_outcome_error(outcome)
        warnings.append(dict(outcome.error))
    with log.step(5, "sign links", files=len(outcome.files), ttl_minutes=int(ttl.total_seconds() // 60)):
        files, urls = [], {}
        for file in outcome.files:
            url, expiry = await services.store.links.sign(file.blob, file.filename, ttl)
            files.append(file.to_answer(url, expiry.isoformat().replace("+00:00", "Z")))
            if file.sandbox_path:
                urls[file.sandbox_path] = url
    return {
        "response_id": outcome.response_id,
        "status": outcome.status,
        "incomplete_reason": outcome.incomplete_reason,
        "text": link_files(outcome.text, urls),
        "files": files,
        "failed_files": [f.to_answer() for f in outcome.failed_files],
        "warnings": warnings,
        "inputs": outcome.inputs,
        "continued_in": outcome.continued_in,
    }
