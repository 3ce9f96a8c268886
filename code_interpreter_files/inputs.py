"""A run's input files: checked before anything starts, streamed into Azure OpenAI, deleted after use.

Blob inputs are never held whole in memory: a blob that fits one part goes up in one Files API
request; a larger one goes through the Uploads API, a few MiB per part, read from Blob Storage by
ranges while the previous parts upload. What decided it: the openai SDK builds every multipart body
from bytes in memory (a path is read whole, `_files.py`), and a hand-made streamed multipart body
could not be retried by the SDK (its body is gone after the first attempt). The Uploads API is
documented on Azure's v1 API (`POST /openai/v1/uploads`, `/parts`, `/complete`; up to 8 GB, parts up
to 64 MB), each part is small bytes the SDK retries like any request, and `complete` checks the md5.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import posixpath
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import openai
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

from .errors import InputChanged, InvalidRequest, TooLarge, UpstreamFailed
from .input_blobs import InvalidBlobName
from .models import BlobInput, InputSpec
from .naming import MAX_FILENAME_CHARS, content_type_for, safe_filename, valid_unicode
from .runlog import RunLog
from .services import Services

MIB = 1024 * 1024
# Code Interpreter reads files uploaded for `assistants`: Azure's Files and Uploads APIs accept
# assistants, batch, fine-tune, evals/vision (no `user_data` on Azure's v1 spec).
PURPOSE: Final = "assistants"
PART_BYTES = 4 * MIB  # also the largest blob sent in one Files API request
PARTS_IN_FLIGHT = 2  # parts uploading while the next range is read: memory ~ (2 + 1) x PART_BYTES
# Uploaded copies expire by themselves a day later, in case a delete after the run is ever missed
# (documented range: 3600 s to 30 days, anchor created_at).
FILE_TTL_SECONDS = 24 * 3600
MAX_FILE_IDS = 50  # `container.file_ids` takes at most 50 files (AutoCodeInterpreterToolParam)


@dataclass(frozen=True)
class PreparedInput:
    """One checked input: its final (safe, unique) name and where its bytes come from."""

    name: str
    size: int
    blob: str | None = None  # in INPUT_CONTAINER, or in OUTPUT_CONTAINER for a carried file
    etag: str | None = None
    data: bytes | None = None  # inline content
    carried: bool = False  # a previous run's output, carried into a new container


@dataclass(frozen=True)
class UploadedInput:
    """An input as Azure OpenAI holds it (`file_id`), with what the answer shows about it."""

    name: str
    file_id: str
    bytes: int
    sha256: str
    carried: bool = False

    def to_answer(self) -> dict[str, Any]:
        return {"name": self.name, "bytes": self.bytes, "sha256": self.sha256}


def unique_name(name: str, taken: set[str]) -> str:
    """`name`, or `stem (2).ext`, `stem (3).ext` ... the first one not in `taken` (which it joins)."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        stem, dot, extension = name.rpartition(".")
        if not dot or not stem:
            stem, extension = name, ""
        suffix = f" ({n})" + (f".{extension}" if extension else "")
        candidate = stem[: MAX_FILENAME_CHARS - len(suffix)].rstrip(" .") + suffix
    taken.add(candidate)
    return candidate


def _shown(blob: str) -> str:
    """A caller's blob name as error messages show it: bounded, valid text."""
    text = valid_unicode(blob)
    return text if len(text) <= 200 else text[:200] + "..."


async def prepare_inputs(
    services: Services, specs: Sequence[InputSpec], *, carried: Sequence[PreparedInput] = ()
) -> list[PreparedInput]:
    """Check every input before anything is uploaded: count, existence, total size; final names.

    The caller's inputs are named first (made safe, then unique); a carried file (checked by the
    caller) whose name one of them took is left out: the caller's file is its newer version.
    """
    settings = services.settings
    if len(specs) > settings.max_input_files:
        raise InvalidRequest(
            f"{len(specs)} input files; the limit is MAX_INPUT_FILES ({settings.max_input_files})",
            code="too_many_inputs",
        )
    if len(specs) + len(carried) > MAX_FILE_IDS:
        raise InvalidRequest(f"a run takes at most {MAX_FILE_IDS} files in its container", code="too_many_inputs")
    taken: set[str] = set()
    prepared: list[PreparedInput] = []
    total = 0
    for index, spec in enumerate(specs):
        if isinstance(spec, BlobInput):
            try:
                version = await services.store.input_blobs.version(spec.blob)
            except InvalidBlobName as error:  # models.py refused it already; this is the reader's own check
                raise InvalidRequest(f"input_files[{index}].blob {error}", code="invalid_input_name") from None
            if version is None:
                raise InvalidRequest(
                    f"no blob '{_shown(spec.blob)}' in the input container '{settings.input_container}'",
                    blob=_shown(spec.blob),
                    code="input_not_found",
                )
            size, etag = version
            name = unique_name(safe_filename(spec.name or posixpath.basename(spec.blob)), taken)
            prepared.append(PreparedInput(name=name, size=size, blob=spec.blob, etag=etag))
        else:
            data = spec.data()
            name = unique_name(safe_filename(spec.name), taken)
            prepared.append(PreparedInput(name=name, size=len(data), data=data))
        total += prepared[-1].size
        if total > settings.max_input_bytes:
            raise TooLarge(
                f"the input files add up to more than MAX_INPUT_BYTES ({settings.max_input_bytes} bytes)",
                code="input_too_large",
            )
    for item in carried:
        if item.name in taken:  # the caller's file of that name is its newer version
            continue
        prepared.append(
            PreparedInput(
                name=unique_name(item.name, taken),
                size=item.size,
                blob=item.blob,
                etag=item.etag,
                data=item.data,
                carried=True,
            )
        )
    return prepared


async def upload_inputs(
    services: Services, specs: Sequence[InputSpec], log: RunLog, *, carried: Sequence[PreparedInput] = ()
) -> list[UploadedInput]:
    """Check, then upload every input (and carried file) to Azure OpenAI; all or nothing: when one
    fails, those already uploaded are deleted and the error (a ServiceError) goes on."""
    return await upload_prepared(services, await prepare_inputs(services, specs, carried=carried), log)


async def upload_prepared(services: Services, prepared: Sequence[PreparedInput], log: RunLog) -> list[UploadedInput]:
    """One file after the other: each is already streamed in parallel parts, and a run has few inputs."""
    uploaded: list[UploadedInput] = []
    try:
        for item in prepared:
            done = await _upload_one(services, item)
            uploaded.append(done)
            log.info("input uploaded", file_id=done.file_id, bytes=done.bytes, carried=done.carried)
    except BaseException:
        if uploaded:
            log.warning("an input failed: deleting the inputs already uploaded", count=len(uploaded))
            await delete_uploaded(services, [u.file_id for u in uploaded], log)
        raise
    if uploaded:
        log.table(
            "inputs",
            ("name", "file_id", "bytes", "carried"),
            [(u.name, u.file_id, u.bytes, "yes" if u.carried else "no") for u in uploaded],
        )
    return uploaded


async def delete_uploaded(services: Services, file_ids: Sequence[str], log: RunLog | None = None) -> list[str]:
    """Delete uploaded inputs from Azure OpenAI (after the run, on failure, on DELETE). Never raises
    for a file: one already gone counts as deleted. Returns the ids that could not be deleted."""

    async def one(file_id: str) -> str | None:
        try:
            await services.openai.files.delete(file_id)
        except openai.NotFoundError:
            pass
        except (openai.APIError, TimeoutError) as error:
            if log is not None:
                log.warning("input file not deleted", file_id=file_id, error=type(error).__name__)
            return file_id
        return None

    results = await asyncio.gather(*(one(f) for f in dict.fromkeys(file_ids)))
    return [f for f in results if f is not None]


def _refused(item: PreparedInput, error: openai.APIError) -> UpstreamFailed:
    if isinstance(error, openai.APIStatusError):
        detail = f"Azure OpenAI answered {error.status_code}"
        return UpstreamFailed(
            f"the input file '{item.name}' could not be uploaded: {detail}",
            file=item.name,
            upstream_status=error.status_code,
            code="input_upload_failed",
        )
    return UpstreamFailed(
        f"the input file '{item.name}' could not be uploaded: Azure OpenAI could not be reached "
        f"({type(error).__name__})",
        file=item.name,
        code="input_upload_failed",
    )


async def _upload_one(services: Services, item: PreparedInput) -> UploadedInput:
    try:
        if item.data is not None:
            return await _upload_whole(services, item, item.data)
        if item.size <= PART_BYTES:
            return await _upload_whole(services, item, b"".join([c async for c in _read(services, item)]))
        return await _upload_in_parts(services, item)
    except openai.APIError as error:
        raise _refused(item, error) from None
    except ResourceNotFoundError:
        raise InvalidRequest(
            f"the blob of input file '{item.name}' was deleted while it was read",
            code="input_not_found",
        ) from None
    except ResourceModifiedError:
        raise InputChanged(f"the blob of input file '{item.name}' changed while it was read; try again") from None


def _read(services: Services, item: PreparedInput) -> AsyncIterator[bytes]:
    """A caller's blob from INPUT_CONTAINER; a carried file (named by the app's manifest) from OUTPUT_CONTAINER."""
    assert item.blob is not None and item.etag is not None
    reader = services.store.output_blobs if item.carried else services.store.input_blobs
    return reader.read(item.blob, size=item.size, etag=item.etag, chunk_bytes=PART_BYTES)


def _check_size(item: PreparedInput, got: int) -> None:
    if got != item.size:
        raise InputChanged(f"input file '{item.name}': read {got} of {item.size} bytes; try again")


async def _upload_whole(services: Services, item: PreparedInput, data: bytes) -> UploadedInput:
    """One Files API request (multipart) for a file that fits one part."""
    _check_size(item, len(data))
    created = await services.openai.files.create(
        file=(item.name, data, content_type_for(item.name)),
        purpose=PURPOSE,
        expires_after={"anchor": "created_at", "seconds": FILE_TTL_SECONDS},
    )
    return UploadedInput(
        name=item.name,
        file_id=created.id,
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        carried=item.carried,
    )


async def _upload_in_parts(services: Services, item: PreparedInput) -> UploadedInput:
    """The Uploads API: parts of PART_BYTES, PARTS_IN_FLIGHT at a time, hashed as they stream."""
    client = services.openai
    upload = await client.uploads.create(
        bytes=item.size,
        filename=item.name,
        mime_type=content_type_for(item.name),
        purpose=PURPOSE,
        expires_after={"anchor": "created_at", "seconds": FILE_TTL_SECONDS},
    )
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    part_ids: list[str] = []
    pending: set[asyncio.Task[None]] = set()
    total = 0

    async def add_part(index: int, data: bytes) -> None:
        part = await client.uploads.parts.create(upload.id, data=data)
        part_ids[index] = part.id

    try:
        async for chunk in _read(services, item):
            total += len(chunk)
            sha256.update(chunk)
            md5.update(chunk)
            part_ids.append("")
            pending.add(asyncio.create_task(add_part(len(part_ids) - 1, chunk)))
            del chunk  # the task holds the part's bytes, and only until it is sent
            if len(pending) >= PARTS_IN_FLIGHT:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        _check_size(item, total)
        completed = await client.uploads.complete(upload.id, part_ids=part_ids, md5=md5.hexdigest())
    except BaseException:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(openai.APIError):
            await client.uploads.cancel(upload.id)
        raise
    if completed.file is None:
        raise UpstreamFailed(
            f"the input file '{item.name}' could not be uploaded: no file after completion",
            code="input_upload_failed",
        )
    return UploadedInput(
        name=item.name, file_id=completed.file.id, bytes=total, sha256=sha256.hexdigest(), carried=item.carried
    )


def code_interpreter_container(file_ids: Sequence[str]) -> dict[str, Any]:
    """The tool's `container` for a new container holding these files (the documented way on Azure)."""
    return {"type": "auto", "file_ids": list(file_ids)} if file_ids else {"type": "auto"}
