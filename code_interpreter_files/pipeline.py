"""A run, top to bottom: start the response -> wait -> find its files -> copy them -> sign links -> answer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import openai
from azure.core.exceptions import AzureError
from openai.types.responses import Response

from . import callbacks, conversations, inputs, ownership, responses_api
from .citations import answer_text, link_files
from .copying import copy_files
from .errors import CONTAINER_GONE, ApiError, run_deleted
from .finding import find_files
from .models import (
    Collect,
    CopiedFile,
    RunRecord,
    RunRequest,
    RunWarning,
)
from .naming import (
    is_valid_response_id,
    manifest_blob,
)
from .runlog import RunLog
from .services import Services
from .storage import LeaseHeld

RETRY_AFTER_SECONDS = 5
# A synchronous POST also queues its run's finish, visible this long after its answer was due: if the
# worker dies mid-copy, the queue still finishes the run (and calls back) even though nobody polls.
SAFETY_FINISH_MARGIN_SECONDS = 10
FAILED_STATUSES = {
    "failed": (502, "run_failed"),
    "cancelled": (409, "run_cancelled"),
}
_DELETE_RESPONSE_ATTEMPTS = 3


@dataclass(frozen=True)
class Accepted:
    """The run goes on: answer 202 and let the caller come back to `Location`."""

    response_id: str
    status: str


def sas_ttl(services: Services, minutes: int | None) -> timedelta:
    limit = services.settings.sas_ttl_max_minutes
    if minutes is not None and not 1 <= minutes <= limit:
        raise ApiError(400, "invalid_request", f"sas_ttl_minutes must be between 1 and {limit} (SAS_TTL_MAX_MINUTES)")
    return timedelta(minutes=minutes or services.settings.sas_ttl_minutes)


def _deadline(services: Services) -> float:
    """The whole answer must come within RUN_WAIT_SECONDS, well inside Azure's 230-second limit."""
    return asyncio.get_running_loop().time() + services.settings.run_wait_seconds


async def create_run(
    services: Services, request: RunRequest, log: RunLog, principal: str | None = None
) -> dict[str, Any] | Accepted:
    """POST /api/runs: upload its inputs, start the run and queue its finish; with `wait`, see it
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
                    if not is_valid_response_id(started.response.id):
                        await started.stop_listening()
                        raise ApiError(502, "upstream_error", "Azure OpenAI answered with an unexpected response id")
                    log.response_id = started.response.id
                    await _record_start(services, started.response.id, request, setup, callback_url, log)
        except TimeoutError:
            raise ApiError(504, "timeout", "Azure OpenAI did not accept the run within RUN_WAIT_SECONDS") from None
        if not request.wait:
            return Accepted(started.response.id, started.response.status or "queued")
        return await _see_through(services, started, request.collect, ttl, deadline, log)


async def _record_start(
    services: Services,
    response_id: str,
    request: RunRequest,
    setup: conversations.RunSetup,
    callback_url: str | None,
    log: RunLog,
) -> None:
    """Queue the run's finish (at once for `wait: false`, as a safety net past the answer otherwise),
    then keep what finishing it needs in any worker: inputs, continuation, callback."""
    delay = 0 if not request.wait else services.settings.run_wait_seconds + SAFETY_FINISH_MARGIN_SECONDS
    try:
        await services.queue.enqueue_finish(response_id, request.collect, callback_url, delay_seconds=int(delay))
    except AzureError as error:  # the run has started: answer anyway; a GET can still finish it
        log.warning("could not queue the run's finish", error=type(error).__name__)
    await conversations.save_setup(services, response_id, setup, callback_url=callback_url)


async def get_run(
    services: Services, response_id: str, ttl_minutes: int | None, log: RunLog, principal: str | None = None
) -> dict[str, Any] | Accepted:
    """GET /api/runs/{id}: fresh links from the manifest; or the run's state; or finish it now.
    Only this deployment's runs, and only the caller's when Easy Auth names callers (else 404)."""
    ttl = sas_ttl(services, ttl_minutes)
    log.response_id = response_id
    manifest = await services.store.read_manifest(response_id)
    if manifest is not None:
        record = RunRecord.from_manifest(manifest)
        _check_record(services, record, principal)
        return await answer(services, record, ttl, log)
    if await services.store.is_deleted(response_id):
        raise ownership.not_found(response_id)  # the same answer as for any run this caller cannot see
    deadline = _deadline(services)
    with responses_api.deadline_of_answer(deadline):
        try:
            async with asyncio.timeout_at(deadline):
                with log.step(1, "retrieve response"):
                    response = await retrieve(services, response_id)
                    ownership.check(response.metadata, response_id, services.settings, principal)
        except TimeoutError:
            raise ApiError(504, "timeout", "Azure OpenAI did not answer within RUN_WAIT_SECONDS") from None
        if response.status in responses_api.RUNNING:
            return Accepted(response.id, response.status or "queued")
        collect: Collect = "all" if (response.metadata or {}).get("collect") == "all" else "cited"
        return await _see_through(services, responses_api.StartedRun(response=response), collect, ttl, deadline, log)


async def delete_run(services: Services, response_id: str, log: RunLog, principal: str | None = None) -> None:
    """DELETE /api/runs/{id}: cancel it if it still runs, delete its blobs and the stored response.

    Once the blobs are gone the answer is 204 whatever the response delete says: Azure may refuse to
    delete a response that still runs (cancel is best effort), which is logged and retried briefly.
    """
    log.response_id = response_id
    if await services.store.is_deleted(response_id):
        raise ownership.not_found(response_id)
    try:
        response: Response | None = await retrieve(services, response_id)
    except ApiError as error:
        if error.status != 404:
            raise
        response = None
    if response is not None:
        ownership.check(response.metadata, response_id, services.settings, principal)
    else:  # the stored response is gone (deleted, or older than its 30 days): the manifest says whose it is
        manifest = await services.store.read_manifest(response_id)
        if manifest is None:
            raise ownership.not_found(response_id)
        _check_record(services, RunRecord.from_manifest(manifest), principal)
    if response is not None and response.status in responses_api.RUNNING:
        log.info("cancelling the running response")
        try:
            await services.openai.responses.cancel(response_id)
        except (openai.BadRequestError, openai.NotFoundError, openai.ConflictError):
            log.info("the response could not be cancelled (it finished, or the service refused)")
    await services.finishing.cancel(response_id)  # a copy of this run in this worker stops first
    if response is not None:
        uploaded = conversations.uploaded_file_ids(response)
    else:
        uploaded = (await conversations.load_setup(services, response_id))["file_ids"]
    await inputs.delete_uploaded(services, uploaded, log)
    deleted = await services.store.delete_run(response_id)
    if response is not None:
        await _delete_response(services, response_id, log)
    log.info("run deleted", blobs_deleted=deleted)


def _check_record(services: Services, record: RunRecord, principal: str | None) -> None:
    """A manifest's run: this deployment's (manifests written before owner tags are), and the caller's."""
    owner = {"owner": record.owner or services.settings.owner_tag, "principal": record.principal}
    ownership.check(owner, record.response_id, services.settings, principal)


async def _delete_response(services: Services, response_id: str, log: RunLog) -> None:
    """Delete the stored response; a refusal after the files are gone is logged, never the caller's error."""
    for attempt in range(_DELETE_RESPONSE_ATTEMPTS):
        try:
            await services.openai.responses.delete(response_id)
            return
        except openai.NotFoundError:  # a concurrent DELETE got there first
            return
        except (openai.BadRequestError, openai.ConflictError) as error:  # still running: refused for now
            if attempt + 1 == _DELETE_RESPONSE_ATTEMPTS:
                log.warning("Azure OpenAI refused to delete the response", upstream=responses_api.describe(error))
                return
            await asyncio.sleep(0.5 * 2**attempt)
        except (openai.APIStatusError, openai.APIConnectionError) as error:
            log.warning("could not delete the stored response", error=type(error).__name__)
            return


async def retrieve(services: Services, response_id: str) -> Response:
    try:
        return await responses_api.retrieve(services.openai, response_id)
    except openai.NotFoundError:
        raise ownership.not_found(response_id) from None


async def _see_through(
    services: Services,
    started: responses_api.StartedRun,
    collect: Collect,
    ttl: timedelta,
    deadline: float,
    log: RunLog,
) -> dict[str, Any] | Accepted:
    """Wait for the model, copy the files; past the deadline, answer 202 and lose nothing."""
    response = started.response
    stage: str = response.status or "queued"
    try:
        async with asyncio.timeout_at(deadline):
            if response.status in responses_api.RUNNING or started.events is not None:
                with log.step(2, "wait for the model", status=response.status):
                    response = await responses_api.wait_for_response(
                        services.openai, started, services.settings.run_events_idle_seconds
                    )
            await inputs.delete_uploaded(services, conversations.uploaded_file_ids(response), log)
            raise_for_status(response)
            stage = "copying"
            done = response
            try:
                record = await services.finishing.run(response.id, lambda: finish(services, done, collect, log))
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this request's own deadline or shutdown
                raise run_deleted() from None  # the shared copy was stopped by a DELETE
    except LeaseHeld:
        log.info("another request or instance is copying this run", stage=stage)
        return Accepted(response.id, "copying")
    except TimeoutError:
        log.warning("time budget spent, answering 202", stage=stage, budget_s=services.settings.run_wait_seconds)
        return Accepted(response.id, stage)
    return await answer(services, record, ttl, log)


def raise_for_status(response: Response) -> None:
    """A failed or cancelled run has nothing to copy; an incomplete one often wrote files first."""
    if response.status in FAILED_STATUSES:
        status, code = FAILED_STATUSES[response.status]
        reason = f"{response.error.code}: {response.error.message}" if response.error is not None else "no reason given"
        raise ApiError(status, code, f"the run ended with status {response.status} ({reason})")


def _incomplete_reason(response: Response) -> str | None:
    if response.status != "incomplete":
        return None
    details = response.incomplete_details
    return str(details.reason) if details is not None and details.reason else "unknown"


async def finish(services: Services, response: Response, collect: Collect, log: RunLog) -> RunRecord:
    """Find, copy and record the files once, across instances: under the run's lease, skipping what an
    earlier attempt committed; a manifest that exists already wins; a DELETE stops it (tombstone)."""
    store = services.store
    manifest = await store.read_manifest(response.id)
    if manifest is not None:
        return RunRecord.from_manifest(manifest)
    if await store.is_deleted(response.id):
        raise run_deleted()
    async with await store.lease_run(response.id):
        manifest = await store.read_manifest(response.id)  # the previous holder may have just finished
        if manifest is not None:
            return RunRecord.from_manifest(manifest)
        return await _copy_and_record(services, response, collect, log)


async def _copy_and_record(services: Services, response: Response, collect: Collect, log: RunLog) -> RunRecord:
    store = services.store
    with log.step(3, "find files", collect=collect):
        findings = await find_files(services, response, collect)
    log.table(
        "files found",
        ("filename", "file_id", "bytes", "origin"),
        [(f.filename, f.file_id, f.bytes if f.bytes is not None else "?", f.origin) for f in findings.found],
    )
    for warning in findings.warnings:
        log.warning("warning for the caller", code=warning.code, detail=warning.message)
    if not findings.found and not findings.failed:
        log.warning("no files: the answer cites none and the container holds none the model wrote")
    existing = await store.copied_files(response.id)
    with log.step(4, "copy files", count=len(findings.found), concurrency=services.settings.copy_concurrency):
        copied, copy_failures = await copy_files(services, response.id, findings.found, log, existing)
    info = await conversations.load_setup(services, response.id)
    copied = await _without_inputs(services, response, info, copied)
    findings.warnings += [RunWarning(**w) for w in info["warnings"]]
    record = RunRecord(
        response_id=response.id,
        status=response.status or "completed",
        text=answer_text(response),
        incomplete_reason=_incomplete_reason(response),
        files=copied,
        failed_files=findings.failed + copy_failures,
        warnings=findings.warnings,
        inputs=info["inputs"],
        continued_in=info["continued_in"],
        owner=(response.metadata or {}).get("owner"),
        principal=(response.metadata or {}).get("principal"),
    )
    if not copied and record.failed_files and all(f.code == "container_expired" for f in record.failed_files):
        raise ApiError(
            410, "container_expired", f"{CONTAINER_GONE} before its files could be copied: run the prompt again"
        )
    if not record.complete:
        return record  # a failure worth retrying: no manifest, so the next attempt copies what is missing
    written = await store.write_manifest(response.id, record.to_manifest())
    if await store.is_deleted(response.id):  # DELETE came while we wrote: take it back
        await store.delete_blob(manifest_blob(response.id))
        raise run_deleted()
    if not written:
        log.info("another request finished this run first; using its manifest")
        return RunRecord.from_manifest(await store.read_manifest(response.id) or record.to_manifest())
    if info["callback_url"]:  # the one who wrote the manifest calls back, through the queue
        await services.queue.enqueue_callback(response.id, info["callback_url"], attempt=1, delay_seconds=0)
    return record


async def _without_inputs(
    services: Services, response: Response, info: dict[str, Any], copied: list[CopiedFile]
) -> list[CopiedFile]:
    """Drop what is only a copy of an input or of a carried file (same name or id, same bytes): those
    are the caller's files, not the run's outputs. Their blobs are deleted again."""
    known = await conversations.carried_sha256(services, response)
    known.update({f"/mnt/data/{i['name']}": i["sha256"] for i in info["inputs"]})
    kept = []
    for file in copied:
        path = file.sandbox_path or f"/mnt/data/{file.filename}"
        if file.sha256 in (known.get(file.file_id), known.get(path)):
            await services.store.delete_blob(file.blob)
        else:
            kept.append(file)
    return kept


async def answer(services: Services, record: RunRecord, ttl: timedelta, log: RunLog) -> dict[str, Any]:
    """Sign a fresh read-only link per file and put the links into the model's text. A run that could
    not be finished (poison queue) with nothing copied answers its error."""
    warnings = [w.to_answer() for w in record.warnings]
    if record.error is not None:
        if not record.files:
            raise ApiError(int(record.error["status"]), str(record.error["code"]), str(record.error["message"]))
        warnings.append({"code": str(record.error["code"]), "message": str(record.error["message"])})
    with log.step(5, "sign links", files=len(record.files), ttl_minutes=int(ttl.total_seconds() // 60)):
        files, urls = [], {}
        for file in record.files:
            url, expiry = await services.store.sign_read_url(file.blob, file.filename, ttl)
            files.append(file.to_answer(url, expiry.isoformat().replace("+00:00", "Z")))
            if file.sandbox_path:
                urls[file.sandbox_path] = url
    return {
        "response_id": record.response_id,
        "status": record.status,
        "incomplete_reason": record.incomplete_reason,
        "text": link_files(record.text, urls),
        "files": files,
        "failed_files": [f.to_answer() for f in record.failed_files],
        "warnings": warnings,
        "inputs": record.inputs,
        "continued_in": record.continued_in,
    }
