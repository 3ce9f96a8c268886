"""12. The run catalog and the retention sweep (issue 20): a page costs O(page) storage requests, not
O(all runs); the sweep deletes expired runs in bounded invocations and leaves the fresh ones.

Catalog: one caller's runs stored (`catalog_sizes`, grown in place: 10, then 1,000, then 10,000),
beside as many rows of another caller and another deployment (other partitions of the same table).
The rows are the app's own (RunRecord, `run_table.to_entity`, its partition and row keys), written
in entity group transactions of 100 (one partition each) to be quick; the id rows are left out (no
page reads them). At each size GET /api/runs (the app's function, as the worker calls it) answers
the first page and the page after its cursor, `PAGE_REPS` times each: table requests per page
(counted on the app's table transport) and time per page.

Retention: `retention_expired` runs older than RUN_RETENTION_DAYS and `retention_fresh` young ones,
each with its run row, id row, one file blob and its manifest, as a finished run has. The timer
function (`sweep_runs`, as the worker calls it) runs until no expired row remains: invocations, runs
deleted per invocation, time per invocation, storage requests per deleted run (every service). The
stage fails unless every fresh run is left whole and nothing of an expired run remains.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.app import BenchError, Context, StorageCounter, app_settings, base_settings, call, functions, warm
from bench.plan import Plan
from code_interpreter_files.models import CopiedFile
from code_interpreter_files.naming import blob_name
from code_interpreter_files.records import Outcome, RunRecord
from code_interpreter_files.run_table import partition_of, row_key_of, to_entity
from code_interpreter_files.services import Services
from tests.rig.rig import Rig

PAGE_REPS = 5
BATCH = 100  # the most operations of one entity group transaction
MAX_SWEEPS = 50


def _record(owner: str, principal: str | None, created_at: datetime, status: str = "completed") -> RunRecord:
    return RunRecord(
        response_id=f"resp_bench{uuid.uuid4().hex}",
        owner=owner,
        principal=principal,
        created_at=created_at,
        prompt="Make a chart of the quarterly figures, please. " * 4,
        status=status,  # type: ignore[arg-type]
        files=1,
        bytes=12,
        ended_at=created_at + timedelta(seconds=20),
    )


async def _insert(services: Services, records: list[RunRecord]) -> None:
    """Run rows, one transaction per partition and 100 rows (the app writes them one by one)."""
    by_partition: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        entity = {"PartitionKey": partition_of(r.owner, r.principal), "RowKey": row_key_of(r.created_at, r.response_id)}
        by_partition.setdefault(entity["PartitionKey"], []).append({**entity, **to_entity(r)})
    table = services.table._table  # the app's TableClient (private attribute)
    for entities in by_partition.values():
        for i in range(0, len(entities), BATCH):
            await table.submit_transaction([("create", e) for e in entities[i : i + BATCH]])


async def _page(params: dict[str, str]) -> dict[str, Any]:
    status, answer = await call("list_runs", "GET", "/api/runs", params=params)
    if status != 200:
        raise BenchError(f"GET /api/runs answered {status}: {answer}")
    return dict(answer)


async def _list_pages(services: Services, counter: StorageCounter, size: int) -> dict[str, Any]:
    """The first page and the one after its cursor: requests and median time of each."""
    figures: dict[str, Any] = {"runs_stored": size}
    first = await _page({})
    if first["next_cursor"] is None and size > len(first["runs"]):
        raise BenchError(f"the first page of {size} runs gave no cursor")
    pages = {"first_page": {}, "cursor_page": {"cursor": first["next_cursor"]} if first["next_cursor"] else None}
    for name, params in pages.items():
        if params is None:
            continue
        times = []
        counter.take()
        for _ in range(PAGE_REPS):
            started = time.perf_counter()
            page = await _page(params)
            times.append(time.perf_counter() - started)
            if not page["runs"]:
                raise BenchError(f"{name} of {size} runs was empty")
        counts = counter.take()
        figures[name] = {
            "requests": sum(counts.values()) / PAGE_REPS,
            "requests_by_kind": {k: v / PAGE_REPS for k, v in sorted(counts.items())},
            "median_ms": statistics.median(times) * 1000,
            "runs_on_page": len(page["runs"]),
        }
    return figures


async def _listing(services: Services, plan: Plan) -> dict[str, Any]:
    owner = services.settings.owner_tag
    now = datetime.now(UTC)
    counter = StorageCounter(services)
    sizes: list[dict[str, Any]] = []
    stored = 0
    try:
        for size in plan.catalog_sizes:
            add = size - stored
            mine = [_record(owner, None, now - timedelta(seconds=stored + i + 60)) for i in range(add)]
            # as many rows of others: another caller of this deployment, and another deployment
            others = [_record(owner, "someone-else", now - timedelta(seconds=stored + i)) for i in range(add // 2)]
            others += [
                _record("cif-0000000000000000", None, now - timedelta(seconds=stored + i))
                for i in range(add - add // 2)
            ]
            started = time.perf_counter()
            await _insert(services, mine + others)
            insert_s = time.perf_counter() - started
            stored = size
            figures = await _list_pages(services, counter, size)
            figures["insert_s"] = insert_s
            sizes.append(figures)
    finally:
        counter.remove()
    smallest, largest = sizes[0], sizes[-1]
    largest_requests = max(largest[p]["requests"] for p in ("first_page", "cursor_page") if p in largest)
    return {
        "sizes": sizes,
        "page_reps": PAGE_REPS,
        "requests_per_page_smallest": smallest["first_page"]["requests"],
        "requests_per_page_largest": largest_requests,
        # the goal: flat (1.0), whichever page of the largest catalog against the first of the smallest
        "requests_largest_vs_smallest": largest_requests / smallest["first_page"]["requests"],
        "page_ms_smallest": smallest["first_page"]["median_ms"],
        "page_ms_largest": largest["first_page"]["median_ms"],
    }


async def _stored_run(services: Services, record: RunRecord) -> None:
    """A finished run as the app leaves it: its row and id row, its file, its manifest."""
    await services.table.start(record)
    rid = record.response_id
    blob = blob_name(rid, "cfile_bench0001", "result.csv")
    await services.store.file_client(blob).upload_blob(b"a,b\n1,2\n3,4\n", overwrite=True)
    outcome = Outcome(response_id=rid, status="completed", text="Here it is.", owner=record.owner)
    outcome.files = [
        CopiedFile(
            filename="result.csv",
            file_id="cfile_bench0001",
            container_id="cntr_bench",
            blob=blob,
            bytes=12,
            content_type="text/csv",
            sha256="0" * 64,
            cited=True,
            origin="cited",
        )  # fmt: skip
    ]
    if not await services.store.write_manifest(rid, outcome.to_manifest()):
        raise BenchError("a manifest of the retention runs existed already")


async def _remaining(services: Services, records: list[RunRecord]) -> tuple[int, int]:
    """How many of `records` still have their row, and their manifest."""
    rows = manifests = 0
    for r in records:
        ref = await services.table.locate(r.response_id)
        if ref is not None and not ref.deleted and await services.table.read(ref) is not None:
            rows += 1
        if await services.store.read_manifest(r.response_id) is not None:
            manifests += 1
    return rows, manifests


async def _retention(services: Services, plan: Plan) -> dict[str, Any]:
    owner = services.settings.owner_tag
    now = datetime.now(UTC)
    old = now - timedelta(days=services.settings.run_retention_days + 1)
    expired = [_record(owner, None, old - timedelta(seconds=i)) for i in range(plan.retention_expired)]
    fresh = [_record(owner, None, now - timedelta(hours=1, seconds=i)) for i in range(plan.retention_fresh)]
    for record in expired + fresh:
        await _stored_run(services, record)
    sweep = functions()["sweep_runs"].get_user_function()
    counter = StorageCounter(services)
    invocations: list[dict[str, Any]] = []
    requests: Counter[str] = Counter()
    left = len(expired)
    try:
        while left:
            if len(invocations) >= MAX_SWEEPS:
                raise BenchError(f"{left} expired runs remain after {MAX_SWEEPS} sweeps")
            counter.take()
            started = time.perf_counter()
            await sweep(None, Context(function_name="sweep_runs"))
            elapsed = time.perf_counter() - started
            requests.update(counter.take())
            now_left = len(await services.table.older_than(owner, old + timedelta(seconds=1), len(expired) + 1))
            counter.take()  # the bench's own look
            invocations.append({"s": elapsed, "runs_deleted": left - now_left})
            if now_left == left:
                raise BenchError(f"a sweep deleted nothing; {left} expired runs remain")
            left = now_left
    finally:
        counter.remove()
    expired_rows, expired_manifests = await _remaining(services, expired)
    fresh_rows, fresh_manifests = await _remaining(services, fresh)
    if (expired_rows, expired_manifests) != (0, 0):
        raise BenchError(f"expired runs left: {expired_rows} rows, {expired_manifests} manifests")
    if (fresh_rows, fresh_manifests) != (len(fresh), len(fresh)):
        raise BenchError(f"fresh runs lost: {len(fresh) - fresh_rows} rows, {len(fresh) - fresh_manifests} manifests")
    deleted = len(expired)
    return {
        "expired": deleted,
        "fresh": len(fresh),
        "fresh_kept": fresh_rows,
        "invocations": len(invocations),
        "runs_deleted_per_invocation": [i["runs_deleted"] for i in invocations],
        "invocation_s": [i["s"] for i in invocations],
        "invocation_s_max": max(i["s"] for i in invocations),
        "ms_per_deleted_run": sum(i["s"] for i in invocations) / deleted * 1000,
        "storage_requests_per_deleted_run": sum(requests.values()) / deleted,
        "storage_requests_by_kind_per_deleted_run": {k: v / deleted for k, v in sorted(requests.items())},
    }


async def catalog(rig: Rig, plan: Plan) -> dict[str, Any]:
    with app_settings(rig, **base_settings(plan)):
        services = await warm(rig)
        listing = await _listing(services, plan)
        retention = await _retention(services, plan)
    return {"listing": listing, "retention": retention}
