"""Finishing a run: the one place that copies a run's files and commits how it ended.

A synchronous POST, GET, the queue (and through it the Azure OpenAI webhook) all finish runs with
`finish`: under the run's claim (claims.py), find the files (finding.py), copy what an earlier attempt
did not commit (copying.py), and `commit` the outcome: the manifest (create-only), then the callback,
then the run row (If-Match on the claim). A run whose row DELETE removed is taken back at that
write, whichever path was finishing it; a run that ended without files (failed, cancelled, its
container gone) is committed the same way, so GET answers its error and the caller is called back.
"""

from __future__ import annotations

from datetime import UTC, datetime

from openai.types.responses import Response

from . import conversations, inputs
from .citations import answer_text
from .claims import Claim
from .copying import copy_files
from .errors import CONTAINER_GONE, RunDeleted
from .finding import find_files
from .models import CopiedFile, RunWarning
from .records import ENDED_STATUSES, Outcome, RunRecord
from .run_table import Row, RowChanged, RowGone
from .runlog import RunLog
from .services import Services

# How a run the model did not complete ends: the error its outcome keeps (code, message).
_ENDED_WITHOUT_FILES = {"failed": "run_failed", "cancelled": "run_cancelled"}


async def finish(services: Services, row: Row, response: Response, log: RunLog, *, claim: Claim | None = None,
                 final: bool = False) -> Outcome:  # fmt: skip
    """Finish the run of `row`, whose model has ended (`response`), once across instances.

    `claim`: the claim this request already holds (a synchronous POST creates its row claimed);
    otherwise one is taken (ClaimHeld if someone else holds it). An outcome another attempt committed
    is returned as it is. An outcome with files that failed in a way worth retrying is returned
    uncommitted (nothing in the manifest, so a later attempt copies only what is missing) unless
    `final` (the run's container can no longer hold them). RunDeleted when DELETE won.
    """
    rid = row.record.response_id
    if claim is None:
        committed = await _committed(services, row)
        if committed is not None:
            return committed
        try:
            claim = await Claim.take(services.table, row)
        except RowGone:
            raise RunDeleted() from None
        resume = True
    else:
        resume = False  # the row was created claimed: no earlier attempt copied anything
    try:
        outcome = await claim.keep(_produce(services, claim.row.record, response, log, resume=resume))
    except RowGone:  # DELETE removed the row while the files were copied: take back what was written
        await services.store.delete_run_blobs(rid)
        raise RunDeleted() from None
    except BaseException:  # a failure, a lost claim or a cancellation: whoever comes next may finish it
        await let_go(claim, log)
        raise
    if not outcome.complete and not final:
        log.info("files failed in a way worth retrying; nothing committed yet")
        await let_go(claim, log)
        return outcome
    try:
        return await commit(services, claim, outcome, log)
    except RunDeleted:
        raise
    except BaseException:  # a storage or queue fault at the commit: the next try may take the claim at once
        await let_go(claim, log)
        raise


async def _committed(services: Services, row: Row) -> Outcome | None:
    """The outcome an earlier attempt committed; its row is repaired if a crash came between the two."""
    manifest = await services.store.read_manifest(row.record.response_id)
    if manifest is None:
        return None
    outcome = Outcome.from_manifest(manifest)
    if not row.record.ended:
        try:
            await services.table.update(row, **_ending(outcome))
        except (RowChanged, RowGone):
            pass  # someone else repaired it, or DELETE removed it (and takes the manifest too)
        else:  # the commit stopped before its row: its callback may never have been queued (at least once)
            if row.record.callback_url:
                await services.queue.enqueue_callback(row.record.response_id, attempt=1, delay_seconds=0)
    return outcome


async def let_go(claim: Claim, log: RunLog) -> None:
    """Give the claim back without an outcome: a retry (any instance) may take it at once."""
    if claim.released:
        return
    try:
        await claim.release()
    except (RowChanged, RowGone):
        log.info("the claim was lost or the run deleted meanwhile: nothing of ours to give back")


def _ending(outcome: Outcome) -> dict[str, object]:
    """The run row's columns for `outcome` (a status Azure might add one day is recorded as `completed`:
    the row must stay readable, and the manifest keeps the status as it came)."""
    return {
        "status": outcome.status if outcome.status in ENDED_STATUSES else "completed",
        "files": len(outcome.files),
        "bytes": outcome.total_bytes,
        "ended_at": datetime.now(UTC),
        "error": outcome.error["code"] if outcome.error else None,
    }


async def commit(services: Services, claim: Claim, outcome: Outcome, log: RunLog) -> Outcome:
    """The one place a run's outcome is committed: manifest (create-only: the first outcome wins), callback,
    run row (If-Match: a DELETE in between makes this fail, and what was written is taken back).
    The callback is queued before the row says the run ended: if queueing it fails (or the worker dies)
    the row is not ended, and the next finish, finding the manifest, queues it (`_committed`)."""
    rid = outcome.response_id
    written = await services.store.write_manifest(rid, outcome.to_manifest())
    if not written:
        log.info("another attempt committed this run first; using its outcome")
        outcome = Outcome.from_manifest(await services.store.read_manifest(rid) or outcome.to_manifest())
    if written and claim.row.record.callback_url:  # the one who wrote the manifest calls back, through the queue
        await services.queue.enqueue_callback(rid, attempt=1, delay_seconds=0)
    try:
        await claim.release(**_ending(outcome))
    except RowGone:
        await services.store.delete_run_blobs(rid)
        log.info("the run was deleted while it was finished; what was written is taken back")
        raise RunDeleted() from None
    except RowChanged:  # our claim ran out and another finisher took it: it finds this manifest
        log.info("the claim ran out before the commit; the manifest stands for the next finisher")
        return outcome
    return outcome


async def _produce(services: Services, record: RunRecord, response: Response, log: RunLog, *,
                   resume: bool) -> Outcome:  # fmt: skip
    """The run's outcome: its files copied (what is missing only, when `resume`), or how it ended."""
    await inputs.delete_uploaded(services, record.uploaded_file_ids or conversations.uploaded_file_ids(response), log)
    base = Outcome(
        response_id=response.id,
        status=response.status or "completed",
        text=answer_text(response),
        incomplete_reason=_incomplete_reason(response),
        inputs=[i.model_dump() for i in record.inputs],
        continued_in=record.continued_in,
        owner=record.owner,
        principal=record.principal,
    )
    if response.status in _ENDED_WITHOUT_FILES:
        reason = f"{response.error.code}: {response.error.message}" if response.error is not None else "no reason given"
        base.error = {
            "code": _ENDED_WITHOUT_FILES[response.status],
            "message": f"the run ended with status {response.status} ({reason})",
        }
        return base
    with log.step(3, "find files", collect=record.collect):
        findings = await find_files(services, response, record.collect)
    log.table(
        "files found",
        ("filename", "file_id", "bytes", "origin"),
        [(f.filename, f.file_id, f.bytes if f.bytes is not None else "?", f.origin) for f in findings.found],
    )
    for warning in findings.warnings:
        log.warning("warning for the caller", code=warning.code, detail=warning.message)
    if findings.gone:
        base.error = {
            "code": "container_expired",
            "message": f"{CONTAINER_GONE} before its files could be listed: run the prompt again",
        }
        return base
    if not findings.found and not findings.failed:
        log.warning("no files: the answer cites none and the container holds none the model wrote")
    await services.store.ensure_container()  # once per worker
    existing = await services.store.copied_files(response.id) if resume else {}
    with log.step(4, "copy files", count=len(findings.found), concurrency=services.settings.copy_concurrency):
        copied, copy_failures = await copy_files(services, response.id, findings.found, log, existing)
    base.files = await _without_inputs(services, record, response, copied)
    base.failed_files = findings.failed + copy_failures
    base.warnings = findings.warnings + [RunWarning(code=w.code, message=w.message) for w in record.warnings]
    if not base.files and base.failed_files and all(f.code == "container_expired" for f in base.failed_files):
        base.error = {
            "code": "container_expired",
            "message": f"{CONTAINER_GONE} before its files could be copied: run the prompt again",
        }
    return base


def _incomplete_reason(response: Response) -> str | None:
    if response.status != "incomplete":
        return None
    details = response.incomplete_details
    return str(details.reason) if details is not None and details.reason else "unknown"


async def _without_inputs(
    services: Services, record: RunRecord, response: Response, copied: list[CopiedFile]
) -> list[CopiedFile]:
    """Drop what is only a copy of an input or of a carried file (same name or id, same bytes): those
    are the caller's files, not the run's outputs. Their blobs are deleted again."""
    known = await conversations.carried_sha256(services, response)
    known.update({f"/mnt/data/{i.name}": i.sha256 for i in record.inputs})
    kept = []
    for file in copied:
        path = file.sandbox_path or f"/mnt/data/{file.filename}"
        if file.sha256 in (known.get(file.file_id), known.get(path)):
            await services.store.delete_blob(file.blob)
        else:
            kept.append(file)
    return kept
