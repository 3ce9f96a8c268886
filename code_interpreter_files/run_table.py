"""The runs table (Azure Table Storage): each run's record, the catalog the list reads, and DELETE's tombstone.

What decided Table Storage: the catalog must answer "this caller's runs, newest first, a page at a
time" in O(page) requests whatever the number of runs; a blob listing is ordered by name only and
would scan. A table partition per caller (`runs|<owner>|<principal>`) with row keys that sort newest
first (`<inverted epoch seconds>_<response id>`) is exactly that query: one request per page,
measured flat from 10 to 10,000 runs (bench `catalog`). The same row is the run's record: start facts
and state in one entity, updated with If-Match (ETag) so that a finish that lost its claim, or
whose run DELETE removed, cannot write over it (412/404). Entity size limit: 1 MiB; a record is a
few KiB (50 inputs at most).

Two entities per run:
- the run row, in the caller's partition (the record; listed by the catalog);
- the id row, `id|<response id>`: where the run row is, whose it is, and whether DELETE removed it
  (the tombstone stays, so nothing can bring a deleted run back).
The run row is written first: a crash between the two leaves a row the catalog lists and the next
GET or finish repairs (the id row's keys can always be derived again from the response).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from .records import CarriedRecord, InputRecord, RunRecord, SetupWarning
from .settings import Settings

# Retries of each table request: 3, after about 0.5, 1 and 2 s. azure-core's default (10 retries, up to
# 120 s apart) would hold a claim renewal or a commit for minutes against a dead account; the callers
# retry what is transient at their own level (claims.py, the queue's delayed messages).
# A request that takes longer than the Table service's own 30 s limit per operation, or 10 s to connect,
# is timed out and retried (aiohttp's default, 300 s, held a claim's renewal or a commit for minutes
# against an account that stopped answering).
_RETRY: dict[str, Any] = {
    "retry_total": 3,
    "retry_backoff_factor": 0.5,
    "retry_backoff_max": 4,
    "connection_timeout": 10,
    "read_timeout": 30,
}
# azure-core retries no POST that got no answer (a dropped connection: did it land?), and every write of
# this table that is a POST is an insert (or Create Table) that knows its own landing: a retry's 409 is
# this run's own row. So the inserts are retried like every other request. (Seen: 1 of 200 runs of
# tests/test_load.py lost its start to a dropped connection: 502 storage_error, the run cancelled.)
_INSERT: dict[str, Any] = {"retry_on_methods": frozenset({"HEAD", "GET", "PUT", "DELETE", "OPTIONS", "TRACE", "POST"})}
# Row keys sort newest first: 10 digits of (this constant - the run's epoch seconds), then the id.
_LATEST_EPOCH = 9_999_999_999
# Room for the principal in a partition key of 512 characters: `runs|` + an owner tag of 64 + `|` take 70.
_MAX_PRINCIPAL_KEY = 512 - 70
_JSON_FIELDS = {"inputs": InputRecord, "carried": CarriedRecord, "warnings": SetupWarning}
_LIST_FIELDS = ("uploaded_file_ids",)
# The columns a catalog page needs: a page is small on the wire whatever the records hold.
CATALOG_COLUMNS = (
    "response_id",
    "created_at",
    "status",
    "prompt",
    "files",
    "bytes",
    "previous_response_id",
    "owner",
    "principal",
    "error",
)


class RowGone(Exception):
    """The run row is not there (DELETE removed it, or it was never written)."""


class RowChanged(Exception):
    """The run row changed since it was read (If-Match failed): someone else wrote it."""


@dataclass(frozen=True)
class Row:
    """A run record as stored, with the ETag its next conditional write needs."""

    record: RunRecord
    partition: str
    row_key: str
    etag: str


@dataclass(frozen=True)
class RunRef:
    """The id row: where a run's row is, whose run it is, and whether it was deleted."""

    response_id: str
    partition: str
    row_key: str
    owner: str
    principal: str | None
    deleted: bool


def partition_of(owner: str, principal: str | None) -> str:
    """The caller's partition. Principal ids are any visible ASCII (ownership.py), and keys may not hold
    / \\ # ?: the principal is percent-encoded (an owner tag is letters, digits, `_.-` only). Keys hold
    512 characters at most (1 KiB of UTF-16; Azurite refuses longer ones the same way), and a principal
    of 255 characters percent-encoded may take 765: one whose encoding is longer than
    _MAX_PRINCIPAL_KEY is named by its SHA-256 instead, after `sha256:` (a `:` is never left as it is
    by the encoding, so no encoded principal can be named the same)."""
    encoded = quote(principal or "", safe="")
    if len(encoded) > _MAX_PRINCIPAL_KEY:
        encoded = "sha256:" + hashlib.sha256(encoded.encode()).hexdigest()
    return f"runs|{owner}|{encoded}"


def row_key_of(created_at: datetime, response_id: str) -> str:
    return f"{_LATEST_EPOCH - int(created_at.timestamp()):010d}_{response_id}"


def _id_partition(response_id: str) -> str:
    return f"id|{response_id}"


def to_entity(record: RunRecord) -> dict[str, Any]:
    """The record as table columns: scalars as they are, lists as JSON text, None left out."""
    entity: dict[str, Any] = {}
    for name, value in record.model_dump(mode="python").items():
        if value is None:
            continue
        if name in _JSON_FIELDS:
            entity[name] = json.dumps(value, separators=(",", ":"))
        elif name in _LIST_FIELDS:
            entity[name] = json.dumps(list(value))
        else:
            entity[name] = value
    return entity


def from_entity(entity: Mapping[str, Any]) -> RunRecord:
    data: dict[str, Any] = {}
    for name, value in entity.items():
        if name in _JSON_FIELDS or name in _LIST_FIELDS:
            data[name] = json.loads(value)
        elif isinstance(value, datetime):
            data[name] = datetime.fromtimestamp(value.timestamp(), UTC)
        else:
            data[name] = value
    return RunRecord.model_validate(data)


def _etag(metadata: Mapping[str, Any]) -> str:
    return str(metadata["etag"])


class RunTable:
    """One per worker: the runs table of the output storage account."""

    def __init__(self, settings: Settings, credential: AsyncTokenCredential | None) -> None:
        if settings.table_service_url is not None:
            assert credential is not None
            self._table = TableClient(settings.table_service_url, settings.runs_table, credential=credential, **_RETRY)
        else:
            assert settings.storage_connection_string is not None
            self._table = TableClient.from_connection_string(
                settings.storage_connection_string.get_secret_value(), settings.runs_table, **_RETRY
            )
        self._ready = False
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        await self._table.close()

    async def ensure_table(self) -> None:
        """Create the table on first use; once per worker (roles scoped to the table may not allow it)."""
        if self._ready:
            return
        async with self._lock:
            if not self._ready:
                try:
                    await self._table.create_table(**_INSERT)
                except ResourceExistsError:
                    pass
                except HttpResponseError as error:
                    if error.status_code != 403:
                        raise
                self._ready = True

    # -- a run's life ------------------------------------------------------------------------------

    async def start(self, record: RunRecord) -> Row:
        """A new run: its row, then its id row (the order repairs rely on)."""
        await self.ensure_table()
        partition = partition_of(record.owner, record.principal)
        row_key = row_key_of(record.created_at, record.response_id)
        try:
            created = await self._table.create_entity(
                {"PartitionKey": partition, "RowKey": row_key, **to_entity(record)}, **_INSERT
            )
        except ResourceExistsError:  # a retried insert whose first try landed (its answer was lost)?
            row = await self._read(partition, row_key)
            if row is None or row.record != record:
                raise
            etag = row.etag
        else:
            etag = _etag(created)
        await self._write_id_row(record, partition, row_key)
        return Row(record=record, partition=partition, row_key=row_key, etag=etag)

    @staticmethod
    def _id_entity(record: RunRecord, partition: str, row_key: str) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": _id_partition(record.response_id),
            "RowKey": "",
            "run_partition": partition,
            "run_row": row_key,
            "owner": record.owner,
            "deleted": False,
        }
        if record.principal is not None:
            entity["principal"] = record.principal
        return entity

    async def _write_id_row(self, record: RunRecord, partition: str, row_key: str) -> None:
        try:
            await self._table.create_entity(self._id_entity(record, partition, row_key), **_INSERT)
        except ResourceExistsError:  # a repair racing another, or a retry that landed: the first one stands
            pass

    async def repair(self, record: RunRecord) -> Row:
        """A run whose row or id row is missing (a crash at its start, or a run of an earlier version):
        write what is missing. RowGone if the run was deleted, even by a DELETE that came after the
        caller's own look at the tombstone: the id row is read again after the row is written, so
        either that DELETE removes the row (its tombstone came later) or this repair does."""
        await self.ensure_table()
        partition = partition_of(record.owner, record.principal)
        row_key = row_key_of(record.created_at, record.response_id)
        try:
            await self._table.create_entity(
                {"PartitionKey": partition, "RowKey": row_key, **to_entity(record)}, **_INSERT
            )
        except ResourceExistsError:
            pass
        await self._write_id_row(record, partition, row_key)
        ref = await self.locate(record.response_id)
        if ref is not None and ref.deleted:
            await self.delete_row(partition, row_key)
            raise RowGone()
        row = await self._read(partition, row_key)
        if row is None:
            raise RowGone()
        return row

    async def locate(self, response_id: str) -> RunRef | None:
        """The id row of a run; None when there is none (unknown run, or a crash before it was written)."""
        try:
            entity = await self._table.get_entity(_id_partition(response_id), "")
        except ResourceNotFoundError:
            return None
        return RunRef(
            response_id=response_id,
            partition=str(entity["run_partition"]),
            row_key=str(entity["run_row"]),
            owner=str(entity["owner"]),
            principal=entity.get("principal"),
            deleted=bool(entity.get("deleted", False)),
        )

    async def read(self, ref: RunRef) -> Row | None:
        return await self._read(ref.partition, ref.row_key)

    async def reread(self, row: Row) -> Row | None:
        """`row` as it is stored now (None: deleted)."""
        return await self._read(row.partition, row.row_key)

    async def _read(self, partition: str, row_key: str) -> Row | None:
        try:
            entity = await self._table.get_entity(partition, row_key)
        except ResourceNotFoundError:
            return None
        return Row(record=from_entity(entity), partition=partition, row_key=row_key, etag=_etag(entity.metadata))

    async def update(self, row: Row, **changes: Any) -> Row:
        """The record of `row` with `changes`, written whole, only if nobody wrote it since it was read
        (If-Match). RowGone when the row was deleted (DELETE won), RowChanged when someone else wrote it.
        Whole (Replace, not Merge): a column set to None is removed, which a merge cannot do."""
        record = row.record.model_copy(update=changes)
        try:
            metadata = await self._table.update_entity(
                {"PartitionKey": row.partition, "RowKey": row.row_key, **to_entity(record)},
                mode=UpdateMode.REPLACE,
                etag=row.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceNotFoundError:
            raise RowGone() from None
        except ResourceModifiedError:
            raise RowChanged() from None
        return Row(record=record, partition=row.partition, row_key=row.row_key, etag=_etag(metadata))

    async def tombstone(self, row: Row) -> None:
        """DELETE's first write, kept for good: from now on no finish can commit anything for the run,
        and no repair can bring it back."""
        entity = {**self._id_entity(row.record, row.partition, row.row_key), "deleted": True}
        await self._table.upsert_entity({**entity, "deleted_at": datetime.now(UTC)}, mode=UpdateMode.REPLACE)

    async def delete_row(self, partition: str, row_key: str) -> None:
        try:
            await self._table.delete_entity(partition, row_key)
        except ResourceNotFoundError:
            pass

    # -- the catalog -------------------------------------------------------------------------------

    async def page(
        self, partition: str, *, limit: int, after: str | None, status: str | None
    ) -> tuple[list[RunRecord], str | None]:
        """Up to `limit` records of one partition, newest first, after row key `after`; and the row key to
        continue after when there may be more. One request per page (a status filter may need more:
        the service then scans further server-side and answers with a continuation)."""
        query = "PartitionKey eq @partition"
        parameters: dict[str, Any] = {"partition": partition}
        if after is not None:
            query += " and RowKey gt @after"
            parameters["after"] = after
        if status is not None:
            query += " and status eq @status"
            parameters["status"] = status
        found: list[tuple[str, RunRecord]] = []
        async for entity in self._rows(query, parameters, limit + 1):
            found.append((str(entity["RowKey"]), from_entity(entity)))
            if len(found) > limit:
                break
        more = len(found) > limit
        found = found[:limit]
        return [record for _, record in found], (found[-1][0] if more and found else None)

    async def _rows(self, query: str, parameters: dict[str, Any], per_page: int) -> AsyncIterator[Any]:
        await self.ensure_table()
        pages = self._table.query_entities(
            query, parameters=parameters, results_per_page=per_page, select=["RowKey", *CATALOG_COLUMNS]
        ).by_page()
        async for page in pages:
            async for entity in page:
                yield entity

    async def older_than(self, owner: str, before: datetime, limit: int) -> list[Row]:
        """Up to `limit` rows of this deployment (every caller) created before `before`, for retention.

        Served by a range scan over the deployment's partitions, filtered server-side."""
        query = "PartitionKey ge @low and PartitionKey lt @high and created_at lt @before"
        parameters = {"low": f"runs|{owner}|", "high": f"runs|{owner}}}", "before": before}
        return await self._full_rows(query, parameters, limit)

    async def unfinished(self, owner: str, before: datetime, limit: int) -> list[Row]:
        """Rows still `running`, created before `before`, with no claim and no recorded failure: runs whose
        finish was never queued (a crash at the start) or whose messages were lost."""
        query = "PartitionKey ge @low and PartitionKey lt @high and created_at lt @before and status eq 'running'"
        parameters = {"low": f"runs|{owner}|", "high": f"runs|{owner}}}", "before": before}
        rows = await self._full_rows(query, parameters, limit * 4)
        return [r for r in rows if not r.record.claimed() and r.record.error is None][:limit]

    async def _full_rows(self, query: str, parameters: dict[str, Any], limit: int) -> list[Row]:
        await self.ensure_table()
        rows: list[Row] = []
        async for entity in self._table.query_entities(query, parameters=parameters, results_per_page=min(limit, 1000)):
            rows.append(
                Row(
                    record=from_entity(entity),
                    partition=str(entity["PartitionKey"]),
                    row_key=str(entity["RowKey"]),
                    etag=_etag(entity.metadata),
                )
            )
            if len(rows) >= limit:
                break
        return rows
