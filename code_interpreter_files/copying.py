"""Copy found files into Blob Storage: streamed, concurrently, resumable, stopped by a DELETE."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx2
import openai
from azure.core.exceptions import AzureError, HttpResponseError

from . import responses_api
from .blob_upload import upload_stream
from .errors import CONTAINER_GONE, FileCopyError
from .models import CopiedFile, FailedFile, FoundFile
from .naming import blob_name, content_type_for
from .runlog import RunLog
from .services import Services
from .storage import ExistingBlob


async def copy_files(
    services: Services,
    response_id: str,
    files: list[FoundFile],
    log: RunLog,
    existing: dict[str, ExistingBlob] | None = None,
) -> tuple[list[CopiedFile], list[FailedFile]]:
    """Copy concurrently, at most COPY_CONCURRENCY at a time; one failure never hides the others.
    A file an earlier attempt committed (same blob name, same size) is reused, not copied again."""
    gate = asyncio.Semaphore(services.settings.copy_concurrency)

    async def one(file: FoundFile) -> CopiedFile | FailedFile:
        done = _already_copied(response_id, file, (existing or {}).get(file.file_id))
        if done is not None:
            return done
        async with gate:
            with log.span("copy file", file_id=file.file_id, filename=file.filename, origin=file.origin) as span:
                result = await copy_file(services, response_id, file, log)
                span.set_attribute("bytes", result.bytes if isinstance(result, CopiedFile) else 0)
                span.set_attribute("outcome", "copied" if isinstance(result, CopiedFile) else result.code)
                return result

    # A task group, not gather: when one copy raises (an identity failure, a bug), the others are
    # cancelled instead of running on, unawaited, after the answer has gone out.
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(f)) for f in files]
    except BaseExceptionGroup as errors:
        raise errors.exceptions[0] from None
    results = [task.result() for task in tasks]
    return [r for r in results if isinstance(r, CopiedFile)], [r for r in results if isinstance(r, FailedFile)]


def _already_copied(response_id: str, file: FoundFile, blob: ExistingBlob | None) -> CopiedFile | None:
    if blob is None or blob.name != blob_name(response_id, file.file_id, file.filename):
        return None
    if file.bytes is not None and file.bytes != blob.bytes:
        return None
    return CopiedFile(
        filename=file.filename,
        file_id=file.file_id,
        container_id=file.container_id,
        blob=blob.name,
        bytes=blob.bytes,
        content_type=blob.content_type,
        sha256=blob.sha256,
        cited=file.cited,
        origin=file.origin,
        sandbox_path=file.sandbox_path,
    )


@contextlib.asynccontextmanager
async def _content(services: Services, file: FoundFile) -> AsyncIterator[AsyncIterator[bytes]]:
    """The file's bytes: streamed from the container, or the image output the response carried."""
    if file.data is not None:

        async def inline() -> AsyncIterator[bytes]:
            yield file.data or b""

        yield inline()
        return
    async with responses_api.open_file_content(services.openai, file.container_id, file.file_id) as chunks:
        yield chunks


async def copy_file(services: Services, response_id: str, file: FoundFile, log: RunLog) -> CopiedFile | FailedFile:
    """Stream one file into its blob. Nothing is written unless every byte arrived."""
    limit = services.settings.max_file_bytes

    def failed(code: str, message: str, retryable: bool = False) -> FailedFile:
        return FailedFile(filename=file.filename, file_id=file.file_id, code=code, message=message, retryable=retryable)

    if file.bytes is not None and file.bytes > limit:
        return failed("file_too_large", f"{file.bytes} bytes is more than MAX_FILE_BYTES ({limit})")
    blob = blob_name(response_id, file.file_id, file.filename)
    content_type = content_type_for(file.filename)
    try:
        async with _content(services, file) as chunks:
            stored = await upload_stream(
                services.store.file_client(blob),
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
        failure = failed(error.code, error.message, error.retryable)
    except openai.APIStatusError as error:
        failure = download_failure(file.filename, file.file_id, error)
    except (openai.APIConnectionError, httpx2.HTTPError) as error:
        failure = failed(
            "download_interrupted",
            f"the download from the container broke off ({type(error).__name__}); ask again to retry",
            True,
        )
    except AzureError as error:
        if isinstance(error, HttpResponseError) and error.status_code in (401, 403):
            raise  # a missing role or a refused token: the run's problem, not the file's
        failure = failed(
            "storage_error", f"Blob Storage refused the upload ({type(error).__name__}); ask again to retry", True
        )
    else:
        return CopiedFile(
            filename=file.filename,
            file_id=file.file_id,
            container_id=file.container_id,
            blob=blob,
            bytes=stored.bytes,
            content_type=content_type,
            sha256=stored.sha256,
            cited=file.cited,
            origin=file.origin,
            sandbox_path=file.sandbox_path,
        )
    log.warning("file not copied", file_id=file.file_id, code=failure.code)
    return failure


def download_failure(filename: str, file_id: str, error: openai.APIStatusError) -> FailedFile:
    if responses_api.is_container_gone(error):
        return FailedFile(
            filename=filename,
            file_id=file_id,
            code="container_expired",
            message=f"{CONTAINER_GONE}: run the prompt again",
        )
    if error.status_code == 404:
        return FailedFile(
            filename=filename, file_id=file_id, code="file_not_found", message="the container has no such file"
        )
    return FailedFile(
        filename=filename,
        file_id=file_id,
        code="upstream_error",
        message=f"Azure OpenAI answered {error.status_code} for this file; ask again to retry",
        retryable=True,
    )
