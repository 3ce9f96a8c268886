"""Continue a run: check the previous response is ours, and carry its files into the next turn.

When the previous run's container is alive, the new run works in it (the tool's `container` is its
id), so the model finds its files under the same paths. When it has expired, the previous run's
outputs, already copied to Blob Storage, are streamed into a new container as input files under
their original names. New input files with a live container also take the new-container way:
`file_ids` on an auto container is the documented way to give Code Interpreter files on Azure,
while adding files to a running container (`POST /containers/{id}/files`) is not documented there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import openai
from openai.types.responses import Response

from . import ownership, responses_api
from .citations import container_ids
from .errors import RunInProgress, RunNotFound
from .input_blobs import InvalidBlobName
from .inputs import MAX_FILE_IDS, InputSpec, PreparedInput, UploadedInput, code_interpreter_container, upload_inputs
from .naming import is_plain_id, is_valid_response_id, safe_filename, valid_unicode
from .records import CarriedRecord, ContinuedIn, InputRecord, SetupWarning
from .runlog import RunLog
from .services import Services

GONE_STATUSES = frozenset({"expired", "deleted"})
MAX_TURNS_CARRIED = 20  # how far back a conversation's files are looked for


@dataclass(frozen=True)
class Previous:
    """The run being continued, as far as the next one needs it."""

    response: Response
    container_id: str | None  # the last container its Code Interpreter used
    container_alive: bool
    warnings: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class RunSetup:
    """What `responses.create` needs for a run's files; pass it to `responses_api.start_response`."""

    container: str | dict[str, Any]  # the code_interpreter tool's `container`
    inputs: list[UploadedInput]  # uploaded copies: delete them when the run is finished
    previous_response_id: str | None = None
    continued_in: ContinuedIn | None = None
    warnings: list[dict[str, str]] = field(default_factory=list)

    @property
    def file_ids(self) -> list[str]:
        return [i.file_id for i in self.inputs]

    def tool(self) -> dict[str, Any]:
        return {"type": "code_interpreter", "container": self.container}

    def answer_inputs(self) -> list[dict[str, Any]]:
        """The answer's `inputs`: the caller's files (carried ones are the previous run's outputs)."""
        return [i.to_answer() for i in self.inputs if not i.carried]

    def record_fields(self) -> dict[str, Any]:
        """What the run record keeps of the set-up, for whoever finishes the run in any worker."""
        return {
            "previous_response_id": self.previous_response_id,
            "continued_in": self.continued_in,
            "inputs": tuple(InputRecord.model_validate(i) for i in self.answer_inputs()),
            "carried": tuple(CarriedRecord(name=i.name, sha256=i.sha256) for i in self.inputs if i.carried),
            "uploaded_file_ids": tuple(self.file_ids),
            "warnings": tuple(SetupWarning.model_validate(w) for w in self.warnings),
        }


async def resolve_previous(services: Services, response_id: str, principal: str | None = None) -> Previous:
    """The previous run, if it is a finished run of this app, and whether its container lives."""
    if not is_valid_response_id(response_id):
        raise RunNotFound(valid_unicode(response_id[:130]))
    ref = await services.table.locate(response_id)
    if ref is not None and ref.deleted:  # its stored response may outlive DELETE (refused while it ran)
        raise RunNotFound(response_id)
    try:
        response = await services.openai.responses.retrieve(response_id)
    except openai.NotFoundError:
        raise RunNotFound(response_id) from None
    ownership.check_metadata(response.metadata, response_id, services.settings, principal)
    if response.status in responses_api.RUNNING:
        raise RunInProgress(f"the run {response_id} has not finished: continue it once it has")
    used = container_ids(response)
    if not used:
        return Previous(response=response, container_id=None, container_alive=False)
    container_id = used[-1]
    alive, warning = await container_alive(services, container_id)
    warnings = [warning] if warning else []
    return Previous(response=response, container_id=container_id, container_alive=alive, warnings=warnings)


async def container_alive(services: Services, container_id: str) -> tuple[bool, dict[str, str] | None]:
    """Whether the container still runs: `containers.retrieve` (status not expired); when that lookup
    itself is refused (an RBAC check failing on get-container is a known Azure failure), listing one
    of its files (documented on Azure) answers instead. If neither can tell: not alive, and the files
    are carried into a new container, which works either way."""
    try:
        container = await services.openai.containers.retrieve(container_id)
        return (container.status or "").lower() not in GONE_STATUSES, None
    except openai.APIStatusError as error:
        if error.status_code == 404 or responses_api.is_container_gone(error):
            return False, None
        refused = error.status_code
    try:
        await services.openai.containers.files.list(container_id=container_id, limit=1)
        return True, None
    except openai.APIStatusError as error:
        if error.status_code == 404 or responses_api.is_container_gone(error):
            return False, None
    return False, {
        "code": "container_check_failed",
        "message": f"could not check the previous container (Azure OpenAI answered {refused}): "
        "the files were carried into a new one",
    }


async def _carried_version(services: Services, blob: object) -> tuple[int, str] | None:
    """Size and ETag of a manifest's file blob in OUTPUT_CONTAINER; None if gone or not a plain name."""
    if not isinstance(blob, str):
        return None
    try:
        return await services.store.output_blobs.version(blob)
    except InvalidBlobName:  # the app writes plain names only (naming.blob_name): never followed otherwise
        return None


async def carried_outputs(
    services: Services, previous: Response, room: int
) -> tuple[list[PreparedInput], list[dict[str, str]]]:
    """The conversation's copied outputs (manifests), newest turn first, one file per name, at most
    `room`: a file made two turns ago and not touched since is still carried."""
    carried: list[PreparedInput] = []
    names: set[str] = set()
    skipped: list[str] = []
    warnings: list[dict[str, str]] = []
    response: Response | None = previous
    for turn in range(MAX_TURNS_CARRIED):
        if response is None:
            break
        manifest = await services.store.read_manifest(response.id)
        if manifest is None:
            warnings.append(
                {
                    "code": "previous_files_not_copied",
                    "message": f"the files of {response.id} were never copied (GET that run first); "
                    "they were not carried",
                }
            )
        for entry in (manifest or {}).get("files", []):
            name = safe_filename(str(entry.get("filename") or ""))
            blob = entry.get("blob")
            if name in names:
                continue
            if len(carried) >= room:
                skipped.append(name)
                continue
            version = await _carried_version(services, blob)
            if version is None:
                warnings.append({"code": "carried_file_missing", "message": f"'{name}' is no longer in Blob Storage"})
                continue
            names.add(name)
            size, etag = version
            carried.append(PreparedInput(name=name, size=size, blob=blob, etag=etag, carried=True))
        earlier = response.previous_response_id
        response = None
        if earlier and is_valid_response_id(earlier) and turn + 1 < MAX_TURNS_CARRIED:
            with contextlib.suppress(openai.NotFoundError):
                response = await services.openai.responses.retrieve(earlier)
    if skipped:
        warnings.append(
            {
                "code": "too_many_files_to_carry",
                "message": f"a container takes {MAX_FILE_IDS} files: not carried: " + ", ".join(skipped[:20]),
            }
        )
    return carried, warnings


async def prepare_run(
    services: Services,
    input_files: Sequence[InputSpec],
    previous_response_id: str | None,
    log: RunLog,
    principal: str | None = None,
) -> RunSetup:
    """Everything about a run's files, before it starts: resolve the previous run (404 for a foreign
    one), check the inputs, upload them (and carried files). Nothing is uploaded if a check fails;
    if an upload fails, the others are deleted."""
    if previous_response_id is None:
        uploaded = await upload_inputs(services, input_files, log)
        return RunSetup(container=code_interpreter_container([u.file_id for u in uploaded]), inputs=uploaded)
    previous = await resolve_previous(services, previous_response_id, principal)
    if previous.container_alive and not input_files:
        assert previous.container_id is not None and is_plain_id(previous.container_id)
        log.info("continuing in the previous container", container_id=previous.container_id)
        return RunSetup(
            container=previous.container_id,
            inputs=[],
            previous_response_id=previous_response_id,
            continued_in="same_container",
            warnings=previous.warnings,
        )
    carried, warnings = await carried_outputs(services, previous.response, MAX_FILE_IDS - len(input_files))
    uploaded = await upload_inputs(services, input_files, log, carried=carried)
    log.info("continuing in a new container", carried=len(carried), inputs=len(uploaded) - len(carried))
    return RunSetup(
        container=code_interpreter_container([u.file_id for u in uploaded]),
        inputs=uploaded,
        previous_response_id=previous_response_id,
        continued_in="new_container",
        warnings=previous.warnings + warnings,
    )


def uploaded_file_ids(response: Response) -> list[str]:
    """The input files a run was started with (the tool's `container.file_ids`, which the response
    echoes): what to delete after the run and on DELETE, in any worker, with no state kept."""
    ids: list[str] = []
    for tool in response.tools or []:
        data = tool.model_dump() if hasattr(tool, "model_dump") else dict(tool)
        container = data.get("container")
        if data.get("type") == "code_interpreter" and isinstance(container, dict):
            ids += [f for f in container.get("file_ids") or [] if isinstance(f, str)]
    return ids


async def carried_sha256(services: Services, response: Response) -> dict[str, str]:
    """sha256 of each file the previous run left, by sandbox path (`/mnt/data/<name>`) and by file id:
    an output of this run with the same path or id and the same sha256 was only carried in, not made."""
    previous_id = response.previous_response_id
    if not previous_id or not is_valid_response_id(previous_id):
        return {}
    manifest = await services.store.read_manifest(previous_id)
    known: dict[str, str] = {}
    for entry in (manifest or {}).get("files", []):
        digest = entry.get("sha256")
        if not isinstance(digest, str):
            continue
        if isinstance(entry.get("file_id"), str):
            known[entry["file_id"]] = digest
        known[entry.get("sandbox_path") or f"/mnt/data/{safe_filename(str(entry.get('filename') or ''))}"] = digest
        known[f"/mnt/data/{safe_filename(str(entry.get('filename') or ''))}"] = digest
    return known
