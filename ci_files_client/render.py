"""What the user sees: numbered steps, a spinner, the files and runs tables, links, download bars (rich).

Everything the service or the model wrote is shown as plain text: markup is escaped and control
characters (terminal escape sequences included) are dropped. The tables fit 100 columns; each link and
run id is printed whole on a line of its own below its table (never folded), so it can be copied.
"""

from __future__ import annotations

import re
import sys
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.status import Status
from rich.table import Column, Table

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")

ORIGIN_LABELS = {"cited": "cited", "listed": "listed", "image_output": "image"}
STATUS_STYLES = {
    "completed": "green",
    "running": "cyan",
    "failed": "red",
    "incomplete": "yellow",
    "cancelled": "yellow",
}


def clean(value: object, *, newlines: bool = False) -> str:
    """A service-provided string made safe to print: no control characters, no rich markup."""
    text = _CONTROL.sub("", str(value))
    if not newlines:
        text = text.replace("\n", " ").replace("\t", " ")
    return escape(text)


def origin_of(file: dict[str, Any]) -> str:
    """cited / listed / image: the contract's `origin`, or `cited` alone from an older service."""
    origin = file.get("origin")
    if isinstance(origin, str):
        return ORIGIN_LABELS.get(origin, origin)
    return "cited" if file.get("cited") else "listed"


class Screen:
    """The numbered steps of one command on stdout; quiet (for --json) prints nothing."""

    def __init__(self, total: int, *, quiet: bool = False) -> None:
        self.console = Console(soft_wrap=True, highlight=False, quiet=quiet)
        self.total = total
        self.done = 0

    def step(self, text: str) -> None:
        self.done += 1
        self.console.print(f"[bold][{self.done}/{self.total}][/bold] {text}")

    def info(self, text: str) -> None:
        self.console.print(f"      {text}")

    def spinner(self, text: str) -> AbstractContextManager[Status]:
        return self.console.status(text, spinner="dots")

    def files_table(self, answer: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        table = Table(show_lines=False, header_style="bold", width=min(100, self.console.width))
        table.add_column("#", justify="right")
        table.add_column("name", overflow="fold", ratio=3)
        table.add_column("size", justify="right", no_wrap=True)
        table.add_column("type", no_wrap=True)
        table.add_column("origin", no_wrap=True)
        table.add_column("link expires", no_wrap=True)
        for n, file in enumerate(answer.get("files") or [], 1):
            table.add_row(
                str(n),
                clean(file.get("filename", "")),
                decimal(int(file.get("bytes") or 0)),
                clean(file.get("content_type", "")),
                clean(origin_of(file)),
                clean(expiry(file.get("expires_at"), now, relative=False)),
            )
        for file in answer.get("failed_files") or []:
            name = clean(file.get("filename", ""))
            table.add_row("-", name, "-", "-", f"failed: {clean(file.get('code', ''))}", "-")
        self.console.print(table)

    def runs_table(self, runs: list[dict[str, Any]], first: int) -> None:
        """One page of runs, numbered from `first`, then each run id whole on its own line: `#1 resp_...`.

        A run id (55 characters from Azure OpenAI) and a readable prompt do not both fit 100 columns, so the
        ids go below the table, as the links do; the prompt is cut to the room left, on one line."""
        now = datetime.now().astimezone()
        table = Table(show_lines=False, header_style="bold", width=min(100, self.console.width))
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column(f"when ({now.tzname()})", no_wrap=True, min_width=12)
        table.add_column("status", no_wrap=True, min_width=10)
        table.add_column("files", justify="right", no_wrap=True)
        table.add_column("size", justify="right", no_wrap=True, min_width=9)
        table.add_column("prompt", no_wrap=True, overflow="ellipsis", ratio=1)
        for n, run in enumerate(runs, first):
            status = clean(run.get("status", ""))
            style = STATUS_STYLES.get(status, "default")
            going = status == "running"  # its files are counted when it ends
            table.add_row(
                str(n),
                clean(when(run.get("created_at"), now)),
                f"[{style}]{status}[/{style}]",
                "-" if going else str(_count(run.get("files"))),
                "-" if going else decimal(_count(run.get("bytes"))),
                _prompt_cell(run),
            )
        self.console.print(table)
        self.info("run ids (`ci-files get ID` downloads a run's files again, with fresh links):")
        for n, run in enumerate(runs, first):
            self.console.print(f"      #{n} {clean(run.get('response_id', ''))}", overflow="ignore", crop=False)

    def links(self, answer: dict[str, Any]) -> None:
        """Each file's link, whole, on its own line: `#1 <url>`."""
        files = answer.get("files") or []
        if files:
            until = clean(expiry(files[0].get("expires_at"), datetime.now(UTC)))
            self.info(f"links (read-only; anyone holding one can read the file until {until}):")
        for n, file in enumerate(files, 1):
            self.console.print(f"      #{n} {clean(file.get('url', ''))}", overflow="ignore", crop=False)

    def progress(self) -> Progress:
        return Progress(
            TextColumn(
                "      {task.description}", table_column=Column(max_width=46, overflow="ellipsis", no_wrap=True)
            ),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )


def expiry(value: object, now: datetime, *, relative: bool = True) -> str:
    """`14:05 UTC (in 59 min)` from the answer's `expires_at`; the date too when it is not today."""
    try:
        at = datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return str(value)
    minutes = max(0, round((at - now).total_seconds() / 60))
    left = (
        f"{minutes} min" if minutes < 120 else f"{minutes / 60:.0f} h" if minutes < 2880 else f"{minutes / 1440:.0f} d"
    )
    when = at.strftime("%H:%M UTC") if at.date() == now.date() else at.strftime("%Y-%m-%d %H:%M UTC")
    return f"{when} (in {left})" if relative else when


def when(value: object, now: datetime) -> str:
    """A run's `created_at` in local time, short: `today 09:12`, `Dec 07 09:12`, or `2025-12-07` (another year)."""
    try:
        at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)[:16]
    at = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(now.tzinfo)
    if at.date() == now.date():
        return at.strftime("today %H:%M")
    return at.strftime("%b %d %H:%M") if at.year == now.year else at.strftime("%Y-%m-%d")


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _prompt_cell(run: dict[str, Any]) -> str:
    """The prompt on one line; how the run ended without its files first (`container_expired: ...`), unless
    the status says it already (`failed` and `run_failed`)."""
    prompt = clean(" ".join(str(run.get("prompt") or "").split()))
    error = run.get("error")
    if not error or error == f"run_{run.get('status')}":
        return prompt
    return f"[yellow]{clean(error)}:[/yellow] {prompt}"


def error_line(text: str) -> None:
    """One line on stderr, never wrapped (scripts and people grep it)."""
    sys.stderr.write(_CONTROL.sub("", text).replace("\n", " ") + "\n")
    sys.stderr.flush()
