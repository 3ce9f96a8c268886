"""Find a finished run's files: what it cites, the images it only showed, what its container lists.

Everything the model wrote is untrusted (citations, names, ids, URLs). On Azure the container's file
list and metadata can be unavailable while downloads by id work, so a failing listing is a warning,
never a failed run.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import mimetypes
import re
from dataclasses import dataclass, field
from typing import Any

import openai
from openai.types.responses import Response

from . import responses_api
from .citations import container_ids, file_citations, image_outputs, is_id_like
from .copying import download_failure
from .models import Citation, Collect, ContainerFile, FailedFile, FoundFile, Origin, RunWarning
from .naming import is_plain_id, safe_filename, valid_unicode
from .services import Services

_DATA_IMAGE = re.compile(r"data:(image/[a-z0-9.+-]{1,40});base64,", re.IGNORECASE)


@dataclass(kw_only=True)
class Findings:
    """What find_files learnt: the files to copy, those already lost, and what the caller should know."""

    found: list[FoundFile] = field(default_factory=list)
    failed: list[FailedFile] = field(default_factory=list)
    warnings: list[RunWarning] = field(default_factory=list)
    gone: bool = False  # the run's containers expired before anything could be found


async def _list_containers(
    services: Services, run_containers: list[str]
) -> tuple[dict[str, ContainerFile], dict[str, openai.APIStatusError]]:
    """The files of each container by id, and the containers whose listing failed (never fatal:
    on Azure the listing can fail with 403/404/500 while downloads by id still work)."""
    listed: dict[str, ContainerFile] = {}
    unlisted: dict[str, openai.APIStatusError] = {}
    for container_id in run_containers:
        try:
            for entry in await responses_api.list_container_files(services.openai, container_id):
                listed.setdefault(entry.file_id, entry)
        except openai.APIStatusError as error:
            unlisted[container_id] = error
    return listed, unlisted


async def find_files(services: Services, response: Response, collect: Collect) -> Findings:
    """The cited files (by file id), the images the run only showed, and the container's own
    assistant files when asked for or when nothing is cited. Citations are untrusted: they must
    point into this run's containers. A file whose metadata cannot be read is downloaded by id."""
    limits = services.settings
    citations = file_citations(response)
    run_containers = container_ids(response)
    listed, unlisted = await _list_containers(services, run_containers)
    findings = Findings()
    for container_id, error in unlisted.items():
        fallback = "the cited files are downloaded by id" + (
            ", and collect=all could not add the uncited ones" if collect == "all" else ""
        )
        findings.warnings.append(
            RunWarning(
                code="container_listing_failed",
                message=f"Azure OpenAI answered {responses_api.describe(error)} when listing the files of "
                f"container {container_id}; {fallback}",
            )
        )
    images = image_outputs(response)
    if unlisted and not citations and not images and not listed:
        if all(responses_api.is_container_gone(e) for e in unlisted.values()):
            findings.gone = True
            return findings

    lookups = 0
    for citation in citations:
        shown = safe_filename(_citation_name(citation))
        if not is_plain_id(citation.file_id):  # `..`, `x/content`, `%2F`: never part of a URL path
            findings.failed.append(
                FailedFile(
                    filename=shown,
                    file_id=valid_unicode(citation.file_id[:128]),
                    code="invalid_citation",
                    message="the citation's file id is not an Azure OpenAI file id",
                )
            )
            continue
        if citation.container_id not in run_containers:
            findings.failed.append(
                FailedFile(
                    filename=shown,
                    file_id=citation.file_id,
                    code="unknown_container",
                    message="the citation points at a container this run did not use",
                )
            )
            continue
        item: ContainerFile | None = listed.get(citation.file_id)
        if item is None and citation.container_id not in unlisted:
            # The model can cite thousands of ids that do not exist: look up a bounded number of them.
            if lookups >= limits.max_files_per_run:
                findings.failed.append(
                    FailedFile(
                        filename=shown,
                        file_id=citation.file_id,
                        code="too_many_files",
                        message=f"the answer cites more than MAX_FILES_PER_RUN ({limits.max_files_per_run}) "
                        "files the container does not list; this one was not looked up",
                    )
                )
                continue
            lookups += 1
            try:
                item = await responses_api.retrieve_container_file(
                    services.openai, citation.container_id, citation.file_id
                )
            except openai.APIStatusError as error:
                if responses_api.is_container_gone(error) or responses_api.is_file_missing(error):
                    findings.failed.append(download_failure(shown, citation.file_id, error))
                    continue
                # Metadata unavailable (403, 5xx): the content endpoint may still work.
        if item is not None and item.source == "user":
            continue  # the caller's own input, cited by the model: not an output
        if item is not None:
            name = item.path if is_id_like(citation.filename, citation.file_id) else citation.filename
            findings.found.append(_found(item, name, origin="cited"))
        else:
            findings.found.append(
                FoundFile(
                    container_id=citation.container_id,
                    file_id=citation.file_id,
                    filename=shown,
                    sandbox_path=citation.sandbox_path,
                    bytes=None,
                    origin="cited",
                )
            )

    for call_id, container_id, n, url in images:
        image = _image_output(call_id, container_id, n, url, limits.max_file_bytes)
        (findings.found if isinstance(image, FoundFile) else findings.failed).append(image)  # type: ignore[arg-type]

    # Citations of other containers (or with invalid ids) are not citations of this run's files.
    cited_ids = {c.file_id for c in citations if c.container_id in run_containers and is_plain_id(c.file_id)}
    if collect == "all" or not cited_ids:
        findings.found += [
            _found(item, item.path, origin="listed")
            for item in listed.values()
            if item.file_id not in cited_ids and item.source in (None, "assistant")
        ]

    over = findings.found[limits.max_files_per_run :]
    findings.failed += [
        FailedFile(
            filename=f.filename,
            file_id=f.file_id,
            code="too_many_files",
            message=f"the run has more than MAX_FILES_PER_RUN ({limits.max_files_per_run}) files",
        )
        for f in over
    ]
    findings.found = findings.found[: limits.max_files_per_run]
    return findings


def _citation_name(citation: Citation) -> str:
    """The citation's file name, unless it is only the id: then the `sandbox:` link's, else the id."""
    if not is_id_like(citation.filename, citation.file_id):
        return citation.filename or citation.file_id
    if citation.sandbox_path:
        return citation.sandbox_path.rsplit("/", 1)[-1]
    return citation.file_id


def _image_output(call_id: str, container_id: str, n: int, url: Any, limit: int) -> FoundFile | FailedFile:
    """An image the run only showed: a `data:image/...;base64,` URL inside the response. Any other URL
    is refused, never fetched: it came from the model."""
    file_id = f"{call_id}-{n}"
    match = _DATA_IMAGE.match(url) if isinstance(url, str) else None
    data: bytes | None = None
    if match is not None and (len(url) - match.end()) * 3 // 4 <= limit:
        with contextlib.suppress(binascii.Error, ValueError):
            data = base64.b64decode(url[match.end() :], validate=True)
    if match is None or data is None:
        return FailedFile(
            filename=f"{file_id}.png",
            file_id=file_id,
            code="invalid_image_output",
            message="the image output is not a base64 data URL of an image within MAX_FILE_BYTES",
        )
    media_type = match.group(1).lower()
    extension = {"image/jpeg": ".jpg", "image/png": ".png"}.get(media_type) or (
        mimetypes.guess_extension(media_type) or ".png"
    )
    return FoundFile(
        container_id=container_id,
        file_id=file_id,
        filename=safe_filename(file_id + extension),
        sandbox_path=None,
        bytes=len(data),
        origin="image_output",
        data=data,
    )


def _found(item: ContainerFile, name: str | None, *, origin: Origin) -> FoundFile:
    return FoundFile(
        container_id=item.container_id,
        file_id=item.file_id,
        filename=safe_filename(name or item.path or item.file_id),
        sandbox_path=item.path or None,
        bytes=item.bytes,
        origin=origin,
    )
