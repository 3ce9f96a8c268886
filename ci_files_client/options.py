"""The command line: `ci-files [options] run|get|list|delete [options] ...`, options before or after the command.

Every option is declared once per parser with `default=SUPPRESS`, so a value given before the command is
not overwritten by the command's parser; the defaults (and where `--url` / `--key` came from, for error
messages that name what the user typed) are filled in after parsing.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import httpx

from ci_files_client import __version__
from ci_files_client.errors import CliError, exit_codes_help

DEFAULT_URL = "http://localhost:7071"
# The service takes bodies up to 1 MiB; base64 grows a file by a third and the prompt needs room.
INLINE_INPUT_LIMIT = 512 * 1024
COMMANDS = ("run", "get", "list", "delete")
# GET /api/runs (openapi.yaml): `limit` 1-100, `status` one of RunSummary's statuses.
MAX_LIMIT = 100
STATUSES = ("running", "completed", "incomplete", "failed", "cancelled")

EPILOG = f"""\
environment:
  CI_FILES_URL   the service's address (default {DEFAULT_URL})
  CI_FILES_KEY   its function key (not needed locally)

exit codes:
{exit_codes_help()}

examples:
  ci-files run "Create test.txt containing hello world"
  ci-files run --input data.csv --open "Plot column B of data.csv as chart.png"
  ci-files get resp_...                 fresh links, downloaded again
  ci-files get resp_... --links-only    just the links, for scripts
  ci-files list                         your runs, newest first (find a run id again)
  ci-files list --status failed --all   every failed run, all pages
  ci-files --url https://<app>.azurewebsites.net run "..."
  ci-files delete resp_...
"""

DEFAULTS: dict[str, object] = {
    "json": False,
    "out": Path("downloads"),
    "overwrite": False,
    "ttl": None,
    "no_download": False,
    "links_only": False,
    "open": False,
    "no_wait": False,
    "all": False,
    "input": [],
    "input_blob": [],
    "continue_id": None,
    "limit": None,
    "status": None,
    "cursor": None,
}
FILE_OPTIONS = ("out", "overwrite", "ttl", "no_download", "links_only", "open")


def _common(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--url", default=argparse.SUPPRESS, help=f"the service's address (CI_FILES_URL, default {DEFAULT_URL})")
    add("--key", default=argparse.SUPPRESS, help="its function key (CI_FILES_KEY)")
    add("--json", action="store_true", default=argparse.SUPPRESS, help="print the service's raw answer, for scripts")


def _files(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--out",
        type=Path,
        default=argparse.SUPPRESS,
        help="download folder (default ./downloads); each run's files go to a subfolder named after its id",
    )
    add("--overwrite", action="store_true", default=argparse.SUPPRESS, help="replace this run's files already there")
    add(
        "--ttl",
        type=int,
        metavar="MINUTES",
        default=argparse.SUPPRESS,
        help="lifetime of the links (the service's SAS_TTL_MAX_MINUTES at most)",
    )
    add("--no-download", action="store_true", default=argparse.SUPPRESS, help="show the files and links only")
    add(
        "--links-only",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print only the links, one per line, and download nothing (for scripts)",
    )
    add("--open", action="store_true", default=argparse.SUPPRESS, help="open the downloaded images (or the folder)")


def parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    top = argparse.ArgumentParser(
        prog="ci-files",
        description="Run Code Interpreter prompts through the Code Interpreter Files service; get the files and links; "
        "find your runs again (`list`).",
        epilog=EPILOG,
        formatter_class=raw,
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _common(top)
    _files(top)
    commands = top.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")

    run = commands.add_parser(
        "run", help="start a run, follow it, show its links, download its files", epilog=EPILOG, formatter_class=raw
    )
    _common(run)
    _files(run)
    run.add_argument("prompt", help="what Code Interpreter should do")
    run.add_argument(
        "--no-wait", action="store_true", default=argparse.SUPPRESS, help="start the run, print its id, return"
    )
    run.add_argument(
        "--all", action="store_true", default=argparse.SUPPRESS, help="every file of the run, not only cited ones"
    )
    run.add_argument(
        "--input",
        action="append",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help=f"a file for Code Interpreter to read, sent inline ({INLINE_INPUT_LIMIT // 1024} KiB in all); "
        "larger ones go to the service's input container first (--input-blob)",
    )
    run.add_argument(
        "--input-blob",
        action="append",
        default=argparse.SUPPRESS,
        metavar="NAME",
        help="a blob already in the service's input container (INPUT_CONTAINER)",
    )
    run.add_argument(
        "--continue",
        dest="continue_id",
        metavar="RUN_ID",
        default=argparse.SUPPRESS,
        help="continue the conversation of a run",
    )

    get = commands.add_parser("get", help="a run's files with fresh links, downloaded (waits while it runs)")
    _common(get)
    _files(get)
    get.add_argument("run_id")
    get.add_argument(
        "--no-wait", action="store_true", default=argparse.SUPPRESS, help="do not wait for a run still going"
    )

    listing = commands.add_parser(
        "list",
        help="your runs, newest first: when, status, files, size, prompt and run id",
        epilog=EPILOG,
        formatter_class=raw,
    )
    _common(listing)
    listing.add_argument(
        "--limit", metavar="N", default=argparse.SUPPRESS, help=f"runs per page, 1 to {MAX_LIMIT} (default 20)"
    )
    listing.add_argument(
        "--status", metavar="STATUS", default=argparse.SUPPRESS, help="only runs with it: " + ", ".join(STATUSES)
    )
    listing.add_argument(
        "--cursor", default=argparse.SUPPRESS, help="the next page: the cursor a `more runs:` line printed, as it came"
    )
    listing.add_argument(
        "--all",
        action="store_true",
        default=argparse.SUPPRESS,
        help=f"follow every page to the last (pages of --limit, default {MAX_LIMIT}); with --json, one list",
    )

    delete = commands.add_parser("delete", help="cancel a run if it runs, delete its files")
    _common(delete)
    delete.add_argument("run_id")
    return top


def parse(argv: list[str] | None, environ: dict[str, str] | None = None) -> argparse.Namespace:
    """The arguments with their defaults; raises CliError for values that cannot work."""
    environ = dict(os.environ if environ is None else environ)
    args = parser().parse_args(argv)
    given = set(vars(args))
    if args.command in ("list", "delete"):
        wrong = [name for name in FILE_OPTIONS if name in given]
        if wrong:
            option = "--" + wrong[0].replace("_", "-")
            raise CliError("option_not_for_command", f"{option} applies to `run` and `get`, not `{args.command}`")
    for name, value in DEFAULTS.items():
        if name not in given:
            setattr(args, name, list(value) if isinstance(value, list) else value)
    args.url_source = "--url" if "url" in given else ("CI_FILES_URL" if environ.get("CI_FILES_URL") else None)
    if "url" not in given:
        args.url = environ.get("CI_FILES_URL") or DEFAULT_URL
    args.key_source = "--key" if "key" in given else ("CI_FILES_KEY" if environ.get("CI_FILES_KEY") else None)
    if "key" not in given:
        args.key = environ.get("CI_FILES_KEY") or None
    check_url(args.url, args.url_source)
    if args.ttl is not None and args.ttl < 1:
        raise CliError("invalid_request", f"--ttl {args.ttl}: links live at least 1 minute", todo="pass --ttl 60")
    args.limit = check_limit(args.limit)
    args.status = check_status(args.status)
    return args


def check_limit(value: str | None) -> int | None:
    """`--limit N`: a whole number from 1 to MAX_LIMIT (checked here, so the line names the option)."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_LIMIT):
        raise CliError(
            "invalid_request",
            f"--limit {value[:40]}: a page holds 1 to {MAX_LIMIT} runs",
            todo="pass e.g. --limit 20, or --all to follow every page",
        )
    return int(text)


def check_status(value: str | None) -> str | None:
    """`--status S`: one of the statuses a listed run can have (any case)."""
    if value is None:
        return None
    status = value.strip().lower()
    if status not in STATUSES:
        raise CliError(
            "invalid_request",
            f"--status {value[:40]}: a run's status is one of {', '.join(STATUSES)}",
            todo="pass one of them, e.g. --status failed, or leave --status out to list every run",
        )
    return status


def url_option(source: str | None) -> str:
    """How the user set the address: `--url`, `CI_FILES_URL`, or (default) `--url`."""
    return source or "--url"


def check_url(url: str, source: str | None) -> None:
    """The address must be http(s)://host[:port], without /api."""
    named = f"{url_option(source)} {url}" if source != "CI_FILES_URL" else f"CI_FILES_URL={url}"
    setter: Callable[[str], str] = (
        (lambda u: f"export CI_FILES_URL={u}") if source == "CI_FILES_URL" else (lambda u: f"--url {u}")
    )
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise CliError(
            "invalid_url",
            f"{named} is not the address of a service (it needs http:// or https:// and a host)",
            todo=f"pass the service's address, e.g. {setter(DEFAULT_URL)} or {setter('https://<app>.azurewebsites.net')}",
        )
    if parsed.path.rstrip("/").endswith(("/api", "/api/runs")):
        base = str(parsed.copy_with(path="/", query=None)).rstrip("/")
        raise CliError("invalid_url", f"{named} names a route, not the service", todo=f"use {setter(base)}")
