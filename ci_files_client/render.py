"""What the user sees: numbered steps, a spinner, the files table, download bars (rich).

Everything the service or the model wrote is shown as plain text: markup is escaped and control
characters (terminal escape sequences included) are dropped.
"""

from __future__ import annotations

import re
import sys
from contextlib import AbstractContextManager
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
from rich.table import Table

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")

ORIGIN_LABELS = {"cited": "cited", "listed": "listed", "image_output": "image"}


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
        table = Table(show_lines=False, header_style="bold")
        table.add_column("#", justify="right")
        table.add_column("name", overflow="fold")
        table.add_column("size", justify="right")
        table.add_column("content type", overflow="fold")
        table.add_column("origin")
        for n, file in enumerate(answer.get("files") or [], 1):
            table.add_row(
                str(n),
                clean(file.get("filename", "")),
                decimal(int(file.get("bytes") or 0)),
                clean(file.get("content_type", "")),
                clean(origin_of(file)),
            )
        for file in answer.get("failed_files") or []:
            table.add_row("-", clean(file.get("filename", "")), "-", "-", f"failed: {clean(file.get('code', ''))}")
        self.console.print(table)

    def progress(self) -> Progress:
        return Progress(
            TextColumn("      {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )


def error_line(text: str) -> None:
    """One line on stderr, never wrapped (scripts and people grep it)."""
    sys.stderr.write(_CONTROL.sub("", text).replace("\n", " ") + "\n")
    sys.stderr.flush()
