"""Removing a run everywhere: the one way DELETE and the retention sweep both take.

The tombstone first (the id row marked deleted, kept for good): from then on no finish on any
instance can commit anything for the run once its row is gone, since its commit is an If-Match write
of the run row; a finish in this worker is stopped at once. Then the uploaded inputs in Azure OpenAI,
every blob under the run's prefix, the run row, the blobs once more, and the stored response.
The row goes only after the blobs: it is how the retention sweep finds an expired run, so a blob
delete that fails leaves the row for the next sweep (before, the row went first and the files of a
sweep that failed there stayed for good). The second blob pass takes what a finish that committed
before the row was deleted wrote after the first pass; a finish committing later fails its If-Match
and takes back what it wrote itself.
"""

from __future__ import annotations

import asyncio

import openai

from . import inputs, responses_api
from .run_table import Row, RunRef
from .runlog import RunLog
from .services import Services

_DELETE_RESPONSE_ATTEMPTS = 3


async def delete_run(services: Services, row: Row, log: RunLog, *, response_exists: bool) -> int:
    """Delete the run of `row`; the number of blobs deleted."""
    rid = row.record.response_id
    await services.table.tombstone(row)
    await services.finishing.cancel(rid)  # a finish of this run in this worker stops first
    await inputs.delete_uploaded(services, row.record.uploaded_file_ids, log)
    deleted = await services.store.delete_run_blobs(rid)
    await services.table.delete_row(row.partition, row.row_key)
    deleted += await services.store.delete_run_blobs(rid)
    if response_exists:
        await _delete_response(services, rid, log)
    log.info("run deleted", blobs_deleted=deleted)
    return deleted


async def finish_removal(services: Services, ref: RunRef, log: RunLog) -> None:
    """A run whose tombstone is written: remove what a DELETE that failed half way (a storage or Azure
    OpenAI fault after its tombstone, a crash) or a finish that wrote after it left behind. The same
    steps as `delete_run`, each a no-op when already done: a retried DELETE and a GET that finds a
    manifest under a tombstone both come here, so no file of a deleted run stays served."""
    rid = ref.response_id
    await services.finishing.cancel(rid)
    row = await services.table.read(ref)
    if row is not None:
        await inputs.delete_uploaded(services, row.record.uploaded_file_ids, log)
        await services.table.delete_row(ref.partition, ref.row_key)
    deleted = await services.store.delete_run_blobs(rid)
    await _delete_response(services, rid, log)
    log.info("removal of a deleted run finished", blobs_deleted=deleted)


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
