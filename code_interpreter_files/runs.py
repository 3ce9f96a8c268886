"""Find a run's record for a caller, and repair what a crash at a run's start (or an earlier version) left out.

GET, DELETE and the queue find runs here: through the id row when it exists; otherwise from the
response Azure OpenAI keeps (its metadata says whose run it is, its created_at where its row is), and
the row and id row are written again. A deleted run is the same RunNotFound as an unknown one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import openai
from openai.types.responses import Response

from . import conversations, ownership, responses_api
from .errors import RunNotFound
from .records import CarriedRecord, InputRecord, RunRecord, SetupWarning
from .run_table import Row, RowGone
from .services import Services


async def retrieve(services: Services, response_id: str) -> Response:
    """The response, or RunNotFound when Azure OpenAI does not know it (deleted, or older than 30 days)."""
    try:
        return await responses_api.retrieve(services.openai, response_id)
    except openai.NotFoundError:
        raise RunNotFound(response_id) from None


async def find_run(services: Services, response_id: str, caller: str | None, *, any_caller: bool = False) -> Row:
    """The run's row, if the run is this deployment's and (unless `any_caller`: the queue) the caller's."""
    ref = await services.table.locate(response_id)
    if ref is not None:
        if ref.deleted:
            raise RunNotFound(response_id)
        ownership.check(
            ref.owner, ref.principal, response_id, services.settings, ref.principal if any_caller else caller
        )
        row = await services.table.read(ref)
        if row is not None:
            return row
    return await _repair(services, response_id, caller, any_caller=any_caller)


async def _repair(services: Services, response_id: str, caller: str | None, *, any_caller: bool) -> Row:
    if await services.store.legacy_tombstone(response_id):  # deleted by an earlier version
        raise RunNotFound(response_id)
    response = await retrieve(services, response_id)
    metadata = response.metadata or {}
    principal = metadata.get("principal")
    ownership.check_metadata(metadata, response_id, services.settings, principal if any_caller else caller)
    record = record_from_response(response, await services.store.legacy_run_info(response_id))
    try:
        return await services.table.repair(record)  # writes what is missing: the row, the id row, or both
    except RowGone:  # DELETE came meanwhile: its tombstone stands, nothing is brought back
        raise RunNotFound(response_id) from None


def record_from_response(response: Response, legacy: dict[str, Any]) -> RunRecord:
    """The run record as far as the response (and an earlier version's run.json) tell it."""
    metadata = response.metadata or {}
    return RunRecord(
        response_id=response.id,
        owner=str(metadata.get("owner")),
        principal=metadata.get("principal"),
        created_at=datetime.fromtimestamp(response.created_at, UTC),
        collect="all" if metadata.get("collect") == "all" else "cited",
        previous_response_id=response.previous_response_id,
        continued_in=legacy.get("continued_in"),
        inputs=tuple(InputRecord.model_validate(i) for i in legacy.get("inputs") or []),
        carried=tuple(CarriedRecord.model_validate(c) for c in legacy.get("carried") or []),
        uploaded_file_ids=tuple(conversations.uploaded_file_ids(response)),
        warnings=tuple(SetupWarning.model_validate(w) for w in legacy.get("warnings") or []),
        callback_url=legacy.get("callback_url"),
    )  # status "running" until the finish commits how it ended
