"""A run, top to bottom: start the response -> wait -> find its files -> copy them -> sign links -> answer."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import httpx2
import openai
from azure.core.exceptions import AzureError, HttpResponseError
from openai.types.responses import Response

from . import responses_api
from .citations import answer_text, container_ids, file_citations, is_id_like, link_files
from .errors import ApiError, FileCopyError
from .models import Collect, ContainerFile, CopiedFile, FailedFile, FoundFile, RunRecord, RunRequest
from .naming import blob_name, content_type_for, is_plain_id, is_valid_response_id, safe_filename, valid_unicode
from .runlog import RunLog
from .services import Services

RETRY_AFTER_SECONDS = 5
FAILED_STATUSES = {
    "failed": (502, "run_failed"),
    "incomplete": (502, "run_incomplete"),
    "cancelled": (409, "run_cancelled"),
}


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


async def create_run(services: Services, request: RunRequest, log: RunLog) -> dict[str, Any] | Accepted:
    """POST /api/runs: start the run; with `wait`, see it through within the time budget."""
    ttl = sas_ttl(services, request.sas_ttl_minutes)
    deadline = _deadline(services)
    try:
        async with asyncio.timeout_at(deadline):
            with log.step(1, "start response", deployment=services.settings.deployment, collect=request.collect):
                started = await responses_api.start_response(
                    services.openai, services.settings, request, listen=request.wait
                )
                if not is_valid_response_id(started.response.id):
                    await started.stop_listening()
                    raise ApiError(502, "upstream_error", "Azure OpenAI answered with an unexpected response id")
                log.response_id = started.response.id
    except TimeoutError:
        raise ApiError(504, "timeout", "Azure OpenAI did not accept the run within RUN_WAIT_SECONDS") from None
    if not request.wait:
        return Accepted(started.response.id, started.response.status or "queued")
    return await _see_through(services, started, request.collect, ttl, deadline, log)


async def get_run(
    services: Services, response_id: str, ttl_minutes: int | None, log: RunLog
) -> dict[str, Any] | Accepted:
    """GET /api/runs/{id}: fresh links from the manifest; or the run's state; or finish it now."""
    ttl = sas_ttl(services, ttl_minutes)
    log.response_id = response_id
    manifest = await services.store.read_manifest(response_id)
    if manifest is not None:
        return await answer(services, RunRecord.from_manifest(manifest), ttl, log)
    deadline = _deadline(services)
    try:
        async with asyncio.timeout_at(deadline):
            with log.step(1, "retrieve response"):
                response = await _retrieve(services, response_id)
    except TimeoutError:
        raise ApiError(504, "timeout", "Azure OpenAI did not answer within RUN_WAIT_SECONDS") from None
    if response.status in responses_api.RUNNING:
        return Accepted(response.id, response.status or "queued")
    collect: Collect = "all" if (response.metadata or {}).get("collect") == "all" else "cited"
    return await _see_through(services, responses_api.StartedRun(response), collect, ttl, deadline, log)


async def delete_run(services: Services, response_id: str, log: RunLog) -> None:
    """DELETE /api/runs/{id}: cancel it if it still runs, delete its blobs and the stored response."""
    log.response_id = response_id
    try:
        response: Response | None = await _retrieve(services, response_id)
    except ApiError as error:
        if error.status != 404:
            raise
        response = None
    if response is not None and response.status in responses_api.RUNNING:
        log.info("cancelling the running response")
        try:
            await services.openai.responses.cancel(response_id)
        except openai.BadRequestError:
            log.info("the response finished before it could be cancelled")
    await services.finishing.cancel(response_id)  # a copy of this run in this worker stops first
    deleted = await services.store.delete_run(response_id)
    if response is not None:
        with contextlib.suppress(openai.NotFoundError):  # a concurrent DELETE got there first
            await services.openai.responses.delete(response_id)
    elif deleted == 0:
        raise ApiError(404, "run_not_found", f"no run {response_id}: neither Azure OpenAI nor the storage knows it")
    log.info("run deleted", blobs_deleted=deleted)


async def _retrieve(services: Services, response_id: str) -> Response:
    try:
        return await services.openai.responses.retrieve(response_id)
    except openai.NotFoundError:
        raise ApiError(404, "run_not_found", f"Azure OpenAI knows no response {response_id}") from None


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
                    response = await responses_api.wait_for_response(services.openai, started)
            _raise_for_status(response)
            stage = "copying"
            done = response
            record = await services.finishing.run(response.id, lambda: _finish(services, done, collect, log))
    except TimeoutError:
        log.warning("time budget spent, answering 202", stage=stage, budget_s=services.settings.run_wait_seconds)
        return Accepted(response.id, stage)
    return await answer(services, record, ttl, log)


def _raise_for_status(response: Response) -> None:
    if response.status in FAILED_STATUSES:
        status, code = FAILED_STATUSES[response.status]
        if response.error is not None:
            reason = f"{response.error.code}: {response.error.message}"
        elif response.incomplete_details is not None:
            reason = str(response.incomplete_details.reason)
        else:
            reason = "no reason given"
        raise ApiError(status, code, f"the run ended with status {response.status} ({reason})")


async def _finish(services: Services, response: Response, collect: Collect, log: RunLog) -> RunRecord:
    """Find, copy and record the files once; a manifest that exists already wins."""
    manifest = await services.store.read_manifest(response.id)
    if manifest is not None:
        return RunRecord.from_manifest(manifest)
    await services.store.ensure_container()
    with log.step(3, "find files", collect=collect):
        found, failed = await find_files(services, response, collect)
    log.table(
        "files found",
        ("filename", "file_id", "bytes", "cited"),
        [(f.filename, f.file_id, f.bytes if f.bytes is not None else "?", "yes" if f.cited else "no") for f in found],
    )
    if not found and not failed:
        log.warning("no files: the answer cites none and the container holds none the model wrote")
    with log.step(4, "copy files", count=len(found), concurrency=services.settings.copy_concurrency):
        copied, copy_failures = await copy_files(services, response.id, found, log)
    record = RunRecord(
        response.id, response.status or "completed", answer_text(response), copied, failed + copy_failures
    )
    if not copied and record.failed_files and all(f.code == "container_expired" for f in record.failed_files):
        raise ApiError(
            410,
            "container_expired",
            "the Code Interpreter container expired (20 idle minutes) before its files could be copied: "
            "run the prompt again",
        )
    if record.complete and not await services.store.write_manifest(response.id, record.to_manifest()):
        log.info("another request finished this run first; using its manifest")
        return RunRecord.from_manifest(await services.store.read_manifest(response.id) or record.to_manifest())
    return record


async def find_files(
    services: Services, response: Response, collect: Collect
) -> tuple[list[FoundFile], list[FailedFile]]:
    """The cited files (by file id), and the container's own assistant files when asked for or
    when nothing is cited. Citations are untrusted: they must point into this run's containers."""
    client, limits = services.openai, services.settings
    citations = file_citations(response)
    run_containers = container_ids(response)
    listed: dict[str, ContainerFile] = {}
    expired: set[str] = set()
    for container_id in run_containers:
        try:
            for entry in await responses_api.list_container_files(client, container_id):
                listed.setdefault(entry.file_id, entry)
        except openai.APIStatusError as error:
            if not responses_api.is_container_expired(error):
                raise
            expired.add(container_id)
    if expired and not citations and not listed:
        raise ApiError(
            410,
            "container_expired",
            "the Code Interpreter container expired before its files could be listed: run the prompt again",
        )

    found: list[FoundFile] = []
    failed: list[FailedFile] = []
    lookups = 0
    for citation in citations:
        shown = safe_filename(citation.filename or citation.file_id)
        if not is_plain_id(citation.file_id):  # `..`, `x/content`, `%2F`: never part of a URL path
            failed.append(
                FailedFile(
                    shown,
                    valid_unicode(citation.file_id[:128]),
                    "invalid_citation",
                    "the citation's file id is not an Azure OpenAI file id",
                )
            )
            continue
        if citation.container_id not in run_containers:
            failed.append(
                FailedFile(
                    shown,
                    citation.file_id,
                    "unknown_container",
                    "the citation points at a container this run did not use",
                )
            )
            continue
        item: ContainerFile | None = listed.get(citation.file_id)
        if item is None:
            # The model can cite thousands of ids that do not exist: look up a bounded number of them.
            if lookups >= limits.max_files_per_run:
                failed.append(
                    FailedFile(
                        shown,
                        citation.file_id,
                        "too_many_files",
                        f"the answer cites more than MAX_FILES_PER_RUN ({limits.max_files_per_run}) files "
                        "the container does not list; this one was not looked up",
                    )
                )
                continue
            lookups += 1
            try:
                item = await responses_api.retrieve_container_file(client, citation.container_id, citation.file_id)
            except openai.APIStatusError as error:
                failed.append(_download_failure(shown, citation.file_id, error))
                continue
        name = item.path if is_id_like(citation.filename, citation.file_id) else citation.filename
        found.append(_found(item, name, cited=True))
    # Citations of other containers (or with invalid ids) are not citations of this run's files.
    cited_ids = {c.file_id for c in citations if c.container_id in run_containers and is_plain_id(c.file_id)}
    if collect == "all" or not cited_ids:
        found += [
            _found(item, item.path, cited=False)
            for item in listed.values()
            if item.file_id not in cited_ids and item.source in (None, "assistant")
        ]

    over = found[limits.max_files_per_run :]
    failed += [
        FailedFile(
            f.filename,
            f.file_id,
            "too_many_files",
            f"the run has more than MAX_FILES_PER_RUN ({limits.max_files_per_run}) files",
        )
        for f in over
    ]
    return found[: limits.max_files_per_run], failed


def _found(item: ContainerFile, name: str | None, *, cited: bool) -> FoundFile:
    return FoundFile(
        container_id=item.container_id,
        file_id=item.file_id,
        filename=safe_filename(name or item.path or item.file_id),
        sandbox_path=item.path or None,
        bytes=item.bytes,
        cited=cited,
    )


async def copy_files(
    services: Services, response_id: str, files: list[FoundFile], log: RunLog
) -> tuple[list[CopiedFile], list[FailedFile]]:
    """Copy concurrently, at most COPY_CONCURRENCY at a time; one failure never hides the others."""
    gate = asyncio.Semaphore(services.settings.copy_concurrency)

    async def one(file: FoundFile) -> CopiedFile | FailedFile:
        async with gate:
            return await copy_file(services, response_id, file, log)

    # A task group, not gather: when one copy raises (an identity failure, a bug), the others are
    # cancelled instead of running on, unawaited, after the answer has gone out.
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(f)) for f in files]
    except BaseExceptionGroup as errors:
        raise errors.exceptions[0] from None
    results = [task.result() for task in tasks]
    return [r for r in results if isinstance(r, CopiedFile)], [r for r in results if isinstance(r, FailedFile)]


async def copy_file(services: Services, response_id: str, file: FoundFile, log: RunLog) -> CopiedFile | FailedFile:
    """Stream one container file into its blob. Nothing is written unless every byte arrived."""
    limit = services.settings.max_file_bytes
    if file.bytes is not None and file.bytes > limit:
        return FailedFile(
            file.filename, file.file_id, "file_too_large", f"{file.bytes} bytes is more than MAX_FILE_BYTES ({limit})"
        )
    blob = blob_name(response_id, file.file_id, file.filename)
    content_type = content_type_for(file.filename)
    try:
        async with responses_api.open_file_content(services.openai, file.container_id, file.file_id) as chunks:
            stored = await services.store.upload_stream(
                blob,
                chunks,
                max_bytes=limit,
                expected_bytes=file.bytes,
                filename=file.filename,
                content_type=content_type,
                metadata={
                    k: quote(v, safe="")
                    for k, v in (
                        ("response_id", response_id),
                        ("container_id", file.container_id),
                        ("file_id", file.file_id),
                    )
                },
                budget=services.memory_budget,
            )
    except FileCopyError as error:
        failure = FailedFile(file.filename, file.file_id, error.code, error.message, error.retryable)
    except openai.APIStatusError as error:
        failure = _download_failure(file.filename, file.file_id, error)
    except (openai.APIConnectionError, httpx2.HTTPError) as error:
        failure = FailedFile(
            file.filename,
            file.file_id,
            "download_interrupted",
            f"the download from the container broke off ({type(error).__name__}); ask again to retry",
            True,
        )
    except AzureError as error:
        if isinstance(error, HttpResponseError) and error.status_code in (401, 403):
            raise  # a missing role or a refused token: the run's problem, not the file's
        failure = FailedFile(
            file.filename,
            file.file_id,
            "storage_error",
            f"Blob Storage refused the upload ({type(error).__name__}); ask again to retry",
            True,
        )
    else:
        return CopiedFile(
            file.filename,
            file.file_id,
            file.container_id,
            blob,
            stored.bytes,
            content_type,
            stored.sha256,
            file.cited,
            file.sandbox_path,
        )
    log.warning("file not copied", file_id=file.file_id, code=failure.code)
    return failure


def _download_failure(filename: str, file_id: str, error: openai.APIStatusError) -> FailedFile:
    if responses_api.is_container_expired(error):
        return FailedFile(
            filename,
            file_id,
            "container_expired",
            "the Code Interpreter container expired (20 idle minutes): run the prompt again",
        )
    if error.status_code == 404:
        return FailedFile(filename, file_id, "file_not_found", "the container has no such file")
    return FailedFile(
        filename,
        file_id,
        "upstream_error",
        f"Azure OpenAI answered {error.status_code} for this file; ask again to retry",
        True,
    )


async def answer(services: Services, record: RunRecord, ttl: timedelta, log: RunLog) -> dict[str, Any]:
    """Sign a fresh read-only link per file and put the links into the model's text."""
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
        "text": link_files(record.text, urls),
        "files": files,
        "failed_files": [f.to_answer() for f in record.failed_files],
    }
