"""GET /api/runs: the caller's runs, newest first, a page at a time, from the runs table's index.

"The caller's" is decided as GET and DELETE decide it: this deployment's runs (its OWNER_TAG), and
behind Easy Auth the principal's own; both are the partition the page is read from, so no cursor can
reach another caller's runs. The cursor is the last row key of the page (opaque to callers, checked
on the way in); new runs sort before it, so paging while runs are added misses and repeats nothing.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from .errors import InvalidRequest
from .records import RunRecord, RunStatus
from .run_table import partition_of
from .services import Services

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
STATUSES: tuple[RunStatus, ...] = ("running", "completed", "incomplete", "failed", "cancelled")
_ROW_KEY = re.compile(r"\d{10}_resp_[A-Za-z0-9_-]{1,120}")


def parse_limit(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    if not value.isascii() or not value.isdigit() or len(value) > 3 or not 1 <= int(value) <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(value)


def parse_status(value: str | None) -> RunStatus | None:
    if value is None or value == "":
        return None
    for status in STATUSES:
        if value == status:
            return status
    raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}")


def encode_cursor(row_key: str) -> str:
    return base64.urlsafe_b64encode(row_key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if cursor is None or cursor == "":
        return None
    try:
        row_key = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        row_key = ""
    if len(cursor) > 200 or not _ROW_KEY.fullmatch(row_key):
        raise InvalidRequest("cursor is not one this service gave out (use next_cursor as it came)")
    return row_key


def summary(record: RunRecord) -> dict[str, Any]:
    return {
        "response_id": record.response_id,
        "created_at": record.created_at.isoformat().replace("+00:00", "Z"),
        "status": record.status,
        "prompt": record.prompt,
        "files": record.files,
        "bytes": record.bytes,
        "previous_response_id": record.previous_response_id,
        "error": record.error,
    }


async def list_runs(
    services: Services, principal: str | None, *, limit: int, cursor: str | None, status: RunStatus | None
) -> dict[str, Any]:
    records, last = await services.table.page(
        partition_of(services.settings.owner_tag, principal), limit=limit, after=decode_cursor(cursor), status=status
    )
    return {"runs": [summary(r) for r in records], "next_cursor": encode_cursor(last) if last else None}
