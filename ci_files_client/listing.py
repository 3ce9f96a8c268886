"""`ci-files list`: the caller's runs, newest first, a page at a time (`GET /api/runs`), to find a run again.

One page by default (the service's 20, or `--limit N`), ending with the exact command for the next page
(`--cursor`); `--all` follows every `next_cursor` to the last page. The table is printed page by page and
`--json --all` streams one JSON list, so memory stays one page whatever the number of runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from ci_files_client.api import Service
from ci_files_client.errors import CliError, Exit
from ci_files_client.options import MAX_LIMIT
from ci_files_client.render import Screen, clean


def command_list(service: Service, args: argparse.Namespace) -> int:
    screen = Screen(1, quiet=args.json)
    which = f"Your {args.status} runs" if args.status else "Your runs"
    pages = "every page" if args.all else "newest first"
    screen.step(f"{which} at {clean(service.base_url)}, {pages}")
    if args.json and not args.all:
        page = service.list_runs(limit=args.limit, cursor=args.cursor, status=args.status)
        print(json.dumps(page, indent=2))
        return int(Exit.OK)
    stream = JsonList() if args.json else None
    limit = args.limit or (MAX_LIMIT if args.all else None)
    cursor, shown = args.cursor, 0
    while True:
        try:
            page = service.list_runs(limit=limit, cursor=cursor, status=args.status)
        except CliError as error:
            error.streamed = stream is not None and stream.started
            raise
        runs, next_cursor = page["runs"], page["next_cursor"]
        if stream is not None:
            stream.add(runs)
        elif runs:
            screen.runs_table(runs, shown + 1)
        shown += len(runs)
        if not args.all or next_cursor is None:
            break
        if next_cursor == cursor:
            raise CliError("bad_answer", "the service answered the same next_cursor twice: the list would never end")
        cursor = next_cursor
    if stream is not None:
        stream.close()
    elif shown == 0:
        screen.info(_nothing(args))
    elif next_cursor is not None:
        screen.console.print(f"      more runs: {next_page(args, next_cursor)}", overflow="ignore", crop=False)
        screen.info("(or --all for every page)")
    elif args.all:
        screen.info(f"{shown} run{'s' if shown != 1 else ''} in all")
    return int(Exit.OK)


def next_page(args: argparse.Namespace, cursor: str) -> str:
    """The command that prints the next page: the user's own options, and the cursor as it came."""
    words = ["ci-files", "list"]
    if args.url_source == "--url":
        words += ["--url", args.url]
    if args.status:
        words += ["--status", args.status]
    if args.limit:
        words += ["--limit", str(args.limit)]
    words += ["--cursor", cursor]
    return clean(shlex.join(words))


def _nothing(args: argparse.Namespace) -> str:
    if args.cursor:
        return "No more runs after this cursor."
    if args.status:
        return f"No {args.status} runs. What to do: leave out --status to list every run."
    return 'No runs yet. What to do: start one: ci-files run "Create test.txt containing hello world"'


class JsonList:
    """`--json --all`: every run in one JSON list on stdout, written page by page (one run a line).

    A failure after the first page leaves the list open (not valid JSON, and a non-zero exit code): a
    script never mistakes part of the runs for all of them."""

    def __init__(self) -> None:
        self.started = False

    def add(self, runs: list[dict[str, Any]]) -> None:
        for run in runs:
            sys.stdout.write(("[\n  " if not self.started else ",\n  ") + json.dumps(run))
            self.started = True
        sys.stdout.flush()

    def close(self) -> None:
        sys.stdout.write("\n]\n" if self.started else "[]\n")
        sys.stdout.flush()
