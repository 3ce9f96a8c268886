"""The queue's side of a run: follow it to its end on any instance, copy its files once, call back.

Every run that is not finished inside its HTTP answer has a message on RUNS_QUEUE (see
pipeline._record_start). The Functions host delivers it to `handle_message`, renews its invisibility
while the function runs, retries it on failure and moves it to `<queue>-poison` after
`maxDequeueCount` (host.json), where `record_poison` writes the failure into the run's manifest, so
a GET answers it instead of 202 for ever. Nothing here waits past functionTimeout: a model that is
still running is looked at again later through a delayed message.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from openai.types.responses import Response

from . import callbacks, conversations, inputs, ownership, pipeline, responses_api
from .errors import ApiError
from .models import Collect, CopiedFile, RunRecord
from .run_queue import CallbackMessage, FinishMessage, parse_message
from .runlog import RunLog
from .services import Services
from .storage import LEASE_SECONDS, LeaseHeld

# One invocation follows a running model this long, then hands over to a delayed message: a slot of
# the queue is not held for an hour-long run, and functionTimeout is never reached.
FOLLOW_MODEL_SECONDS = 300
RECHECK_SECONDS = 30
# With Azure OpenAI webhooks the model's end is pushed; this later look is only a backstop.
WEBHOOK_BACKSTOP_SECONDS = 900
CALLBACK_LINK_MINUTES = 60


class RetryFinish(Exception):
    """Some files failed in a way worth retrying: the host makes the message visible again."""


async def handle_message(services: Services, body: str, log: RunLog) -> None:
    """One message of RUNS_QUEUE. Raising lets the host retry it (and finally poison it)."""
    message = parse_message(body)
    log.response_id = message.response_id
    if isinstance(message, FinishMessage):
        await finish_run(services, message, log)
    else:
        await deliver_callback(services, message, log)


async def finish_run(services: Services, message: FinishMessage, log: RunLog) -> None:
    store, rid = services.store, message.response_id
    if await store.is_deleted(rid) or await store.read_manifest(rid) is not None:
        log.info("nothing to finish: the run is deleted or finished")
        return
    try:
        response = await pipeline.retrieve(services, rid)
        metadata = response.metadata or {}
        ownership.check(metadata, rid, services.settings, metadata.get("principal"))
    except ApiError as error:
        if error.status == 404:
            log.warning("the queued run is unknown or not this deployment's; dropping the message")
            return
        raise
    if response.status in responses_api.RUNNING:
        response = await _follow(services, response, message, log)
        if response.status in responses_api.RUNNING:
            return
    await inputs.delete_uploaded(services, conversations.uploaded_file_ids(response), log)
    collect: Collect = "all" if (response.metadata or {}).get("collect") == "all" else "cited"
    try:
        pipeline.raise_for_status(response)
        record = await services.finishing.run(rid, lambda: pipeline.finish(services, response, collect, log))
    except LeaseHeld:
        log.info("another instance is copying this run; looking again after its lease", delay_s=LEASE_SECONDS)
        await services.queue.enqueue_finish(rid, message.collect, message.callback_url, delay_seconds=LEASE_SECONDS)
        return
    except ApiError as error:
        if error.code == "run_deleted":
            return
        await _record_failure(services, response, error, log)  # run_failed, run_cancelled, container_expired
        return
    if not record.complete:
        raise RetryFinish(f"{sum(f.retryable for f in record.failed_files)} files failed in a way worth retrying")


async def _follow(services: Services, response: Response, message: FinishMessage, log: RunLog) -> Response:
    """Wait for the model for a while; if it still runs, queue a later look and return it as it is."""
    if services.settings.webhook_secret is not None:
        delay = WEBHOOK_BACKSTOP_SECONDS  # the webhook queues the finish when the run ends
    else:
        try:
            async with asyncio.timeout(FOLLOW_MODEL_SECONDS):
                with log.step(2, "wait for the model", status=response.status):
                    return await responses_api.wait_for_response(
                        services.openai,
                        responses_api.StartedRun(response=response),
                        services.settings.run_events_idle_seconds,
                    )
        except TimeoutError:
            delay = RECHECK_SECONDS
    log.info("the model is still running; looking again later", delay_s=delay)
    await services.queue.enqueue_finish(response.id, message.collect, message.callback_url, delay_seconds=delay)
    return response


async def _record_failure(services: Services, response: Response, error: ApiError, log: RunLog) -> None:
    """A run that ended without files: the manifest keeps its error for GET, and the caller is called back."""
    record = RunRecord(
        response_id=response.id,
        status=response.status or "failed",
        text="",
        error={"status": error.status, "code": error.code, "message": error.message},
        owner=(response.metadata or {}).get("owner"),
        principal=(response.metadata or {}).get("principal"),
    )
    await _commit(services, record, log)


async def record_poison(services: Services, body: str, log: RunLog) -> None:
    """A finish that failed maxDequeueCount times: record what was copied and why the rest was not."""
    message = parse_message(body)
    log.response_id = message.response_id
    if not isinstance(message, FinishMessage):
        log.warning("a callback could not be delivered after every retry; dropping it")
        return
    rid = message.response_id
    if await services.store.is_deleted(rid) or await services.store.read_manifest(rid) is not None:
        return
    existing = await services.store.copied_files(rid)
    record = RunRecord(
        response_id=rid,
        status="completed",
        text="",
        files=[
            CopiedFile(
                filename=blob.name.rsplit("/", 1)[-1],
                file_id=file_id,
                container_id=blob.container_id,
                blob=blob.name,
                bytes=blob.bytes,
                content_type=blob.content_type,
                sha256=blob.sha256,
                cited=False,
                origin="listed",
            )
            for file_id, blob in existing.items()
        ],
        error={
            "status": 502,
            "code": "finish_failed",
            "message": "the run could not be finished after every retry of the queue (host.json maxDequeueCount); "
            "the files copied before are listed, the logs under this response id say why",
        },
    )
    log.warning("the run's finish failed for good; recording it", files_kept=len(record.files))
    await _commit(services, record, log)


async def _commit(services: Services, record: RunRecord, log: RunLog) -> None:
    if await services.store.write_manifest(record.response_id, record.to_manifest()):
        callback_url = (await conversations.load_setup(services, record.response_id))["callback_url"]
        if callback_url:
            await services.queue.enqueue_callback(record.response_id, callback_url, attempt=1, delay_seconds=0)


async def callback_payload(services: Services, response_id: str, log: RunLog) -> dict[str, Any] | None:
    """The JSON a GET answers for a finished run (fresh links), or its error body; None if unfinished."""
    manifest = await services.store.read_manifest(response_id)
    if manifest is None:
        return None
    try:
        return await pipeline.answer(
            services, RunRecord.from_manifest(manifest), timedelta(minutes=_link_minutes(services)), log
        )
    except ApiError as error:
        return error.body(response_id=response_id, status=error.status)


def _link_minutes(services: Services) -> int:
    return min(services.settings.sas_ttl_max_minutes, max(services.settings.sas_ttl_minutes, CALLBACK_LINK_MINUTES))


async def deliver_callback(services: Services, message: CallbackMessage, log: RunLog) -> None:
    """One delivery attempt; a failure worth retrying is queued again with backoff, never blocking a copy."""
    payload = await callback_payload(services, message.response_id, log)
    if payload is None:
        log.warning("callback for an unfinished run; dropping it")
        return
    result = await callbacks.deliver_and_schedule_retry(
        services.queue,
        response_id=message.response_id,
        url=message.callback_url,
        attempt=message.attempt,
        payload=payload,
        settings=services.settings,
    )
    log.info("callback attempt", attempt=message.attempt, delivered=result.delivered, reason=result.reason)
