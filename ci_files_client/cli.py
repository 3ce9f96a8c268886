"""`ci-files run|get|delete`: the old demo script's experience on top of the service."""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import httpx
from rich.progress import TaskID

from ci_files_client import __version__
from ci_files_client.api import Answer, Service
from ci_files_client.download import download, target_for
from ci_files_client.errors import CliError, Exit, exit_codes_help
from ci_files_client.render import Screen, clean, error_line

DEFAULT_URL = "http://localhost:7071"
# The service takes bodies up to 1 MiB; base64 grows a file by a third and the prompt needs room.
INLINE_INPUT_LIMIT = 512 * 1024
MARKDOWN_LINK = re.compile(r"\[([^\]]*)\]\([^)\s]*\)")

EPILOG = f"""\
environment:
  CI_FILES_URL   the service's address (default {DEFAULT_URL})
  CI_FILES_KEY   its function key (not needed locally with `func start`)

exit codes:
{exit_codes_help()}

examples:
  ci-files run "Create test.txt containing hello world"
  ci-files run --input data.csv "Plot column B of data.csv as chart.png"
  ci-files run --no-wait "..."   then   ci-files get resp_...
  ci-files delete resp_...
"""


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("CI_FILES_URL", DEFAULT_URL), help="service address")
    common.add_argument("--key", default=os.environ.get("CI_FILES_KEY"), help="function key (or CI_FILES_KEY)")
    common.add_argument("--json", action="store_true", help="print the service's raw answer instead, for scripts")

    files = argparse.ArgumentParser(add_help=False)
    files.add_argument("--out", type=Path, default=Path("downloads"), help="download folder (default ./downloads)")
    files.add_argument("--overwrite", action="store_true", help="replace files that already exist in --out")
    files.add_argument("--ttl", type=int, metavar="MINUTES", help="lifetime of the links (SAS_TTL_MAX_MINUTES at most)")
    files.add_argument("--no-download", action="store_true", help="list the files, do not download them")

    top = argparse.ArgumentParser(
        prog="ci-files",
        description="Run Code Interpreter prompts through the Code Interpreter Files service and download the files.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = top.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        parents=[common, files],
        help="start a run, wait for it, download its files",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("prompt", help="what Code Interpreter should do")
    run.add_argument("--no-wait", action="store_true", help="start the run and print its id; fetch it with `get`")
    run.add_argument("--all", action="store_true", help="collect every file of the run, not only the cited ones")
    run.add_argument(
        "--input",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help=f"a file for Code Interpreter to read, sent inline (up to {INLINE_INPUT_LIMIT // 1024} KiB in all); "
        "larger files need the service's input container: upload them there and use --input-blob",
    )
    run.add_argument(
        "--input-blob",
        action="append",
        default=[],
        metavar="NAME",
        help="a blob already in the service's input container (INPUT_CONTAINER)",
    )
    run.add_argument("--continue", dest="continue_id", metavar="RUN_ID", help="continue the conversation of a run")

    get = commands.add_parser(
        "get", parents=[common, files], help="a run's files with fresh links, downloaded (waits while it runs)"
    )
    get.add_argument("run_id")
    get.add_argument("--no-wait", action="store_true", help="do not wait for a run that is still going")

    delete = commands.add_parser("delete", parents=[common], help="cancel a run if it runs, delete its files")
    delete.add_argument("run_id")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "ttl", None) is not None and args.ttl < 1:
        error_line("error invalid_request: --ttl must be at least 1 minute. What to do: pass --ttl 60, for example.")
        return int(Exit.BAD_REQUEST)
    service = Service(args.url, args.key)
    try:
        if args.command == "run":
            return command_run(service, args)
        if args.command == "get":
            return command_get(service, args)
        return command_delete(service, args)
    except CliError as error:
        if args.json:
            body = error.body or {"error": {"code": error.code, "message": error.message}}
            print(json.dumps(body, indent=2))
        error_line(error.line())
        return int(error.hint.exit)
    except KeyboardInterrupt:
        error_line("interrupted: a started run goes on in the service; `ci-files get RUN_ID` fetches it")
        return 130
    finally:
        service.close()


def command_run(service: Service, args: argparse.Namespace) -> int:
    screen = Screen(3 if args.no_wait else 5, quiet=args.json)
    payload = run_payload(args)
    screen.step(f"Checking the service at {clean(service.base_url)}")
    service.health()
    screen.info("configured")
    screen.step(f"Starting the run: {clean(_short(args.prompt))}")
    with screen.spinner("asking the service (it waits for the run up to its RUN_WAIT_SECONDS)"):
        answer = service.start_run(payload)
    screen.info(f"run id [bold]{clean(answer.body['response_id'])}[/bold]")
    if args.no_wait:
        return _print_started(screen, answer, args)
    screen.step("Waiting for the run to finish")
    answer = _wait(screen, service, answer, args.ttl)
    return _finish(screen, service, answer.body, args)


def command_get(service: Service, args: argparse.Namespace) -> int:
    screen = Screen(3, quiet=args.json)
    screen.step(f"Fetching run {clean(args.run_id)} from {clean(service.base_url)}")
    answer = service.get_run(args.run_id, args.ttl)
    if answer.status == 202 and args.no_wait:
        return _print_started(screen, answer, args)
    answer = _wait(screen, service, answer, args.ttl)
    return _finish(screen, service, answer.body, args)


def command_delete(service: Service, args: argparse.Namespace) -> int:
    screen = Screen(1, quiet=args.json)
    screen.step(f"Deleting run {clean(args.run_id)} and its files")
    service.delete_run(args.run_id)
    if args.json:
        print(json.dumps({"response_id": args.run_id, "deleted": True}))
    screen.info("deleted")
    return int(Exit.OK)


def run_payload(args: argparse.Namespace) -> dict[str, Any]:
    """The POST body; fields the service added later are sent only when used, so an older one still works."""
    payload: dict[str, Any] = {"prompt": args.prompt, "wait": not args.no_wait}
    if args.all:
        payload["collect"] = "all"
    if args.ttl is not None:
        payload["sas_ttl_minutes"] = args.ttl
    if args.continue_id:
        payload["previous_response_id"] = args.continue_id
    inputs = inline_inputs(args.input) + [{"blob": name} for name in args.input_blob]
    if inputs:
        payload["input_files"] = inputs
    return payload


def inline_inputs(paths: list[Path]) -> list[dict[str, str]]:
    """Small files travel in the request body as base64 (read whole: they are at most 512 KiB in all)."""
    total = 0
    items = []
    for path in paths:
        try:
            size = path.stat().st_size
        except OSError as error:
            raise CliError("input_unreadable", f"cannot read {path}: {error.strerror}") from None
        total += size
        if total > INLINE_INPUT_LIMIT:
            raise CliError(
                "input_too_large_inline",
                f"--input files add up to more than {INLINE_INPUT_LIMIT // 1024} KiB (at {path})",
            )
        data = path.read_bytes()
        items.append({"name": path.name, "content_base64": base64.b64encode(data).decode("ascii")})
    return items


def _short(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return f'"{text}"' if len(text) <= limit else f'"{text[: limit - 3]}..."'


def _print_started(screen: Screen, answer: Answer, args: argparse.Namespace) -> int:
    run_id = clean(answer.body["response_id"])
    if args.json:
        print(json.dumps(answer.body, indent=2))
    screen.step(f"The run is {clean(answer.body.get('status', 'queued'))}; fetch it later with:")
    screen.info(f"ci-files get {run_id}")
    return int(Exit.OK)


def _wait(screen: Screen, service: Service, answer: Answer, ttl: int | None) -> Answer:
    if answer.status == 200:
        screen.info(f"status: {clean(answer.body.get('status', 'completed'))}")
        return answer
    with screen.spinner("the run is starting") as status:
        answer = service.wait(answer, ttl, lambda state: status.update(f"the run is {clean(state)}"))
    screen.info(f"status: {clean(answer.body.get('status', 'completed'))}")
    return answer


def _finish(screen: Screen, service: Service, body: dict[str, Any], args: argparse.Namespace) -> int:
    """The answer, the files table, then each download with its local path and checked sha256."""
    if args.json:
        print(json.dumps(body, indent=2))
        return int(Exit.OK)
    _describe(screen, body)
    files = body.get("files") or []
    failed_files = body.get("failed_files") or []
    screen.step(f"Files found: {len(files)}" + (f", {len(failed_files)} not copied" if failed_files else ""))
    screen.files_table(body)
    for failed in failed_files:
        name, code = clean(failed.get("filename")), clean(failed.get("code"))
        screen.info(f"not copied: {name}: {code}: {clean(failed.get('message'))}")
    if args.no_download or not files:
        screen.step("Nothing to download" if not files else "Not downloading (--no-download)")
        return _next_steps(screen, body)
    screen.step(f"Downloading {len(files)} file{'s' if len(files) != 1 else ''} to {clean(args.out)}")
    failures = _download_all(screen, service, files, args)
    for error in failures:
        error_line(error.line())
    _next_steps(screen, body)
    return int(failures[0].hint.exit) if failures else int(Exit.OK)


def _describe(screen: Screen, body: dict[str, Any]) -> None:
    # Markdown links keep their words only: their targets are long SAS URLs, listed in the table below.
    text = MARKDOWN_LINK.sub(r"\1", str(body.get("text") or "")).strip()
    if text:
        screen.info("answer: " + clean(_short(text, 300).strip('"')))
    if body.get("incomplete_reason"):
        screen.info(f"[yellow]incomplete:[/yellow] {clean(body['incomplete_reason'])}")
    if body.get("continued_in"):
        screen.info(f"continued in the {clean(str(body['continued_in']).replace('_', ' '))}")
    for item in body.get("inputs") or []:
        screen.info(f"input: {clean(item.get('name'))} ({int(item.get('bytes') or 0)} bytes)")
    for warning in body.get("warnings") or []:
        screen.info(f"[yellow]warning {clean(warning.get('code'))}:[/yellow] {clean(warning.get('message'))}")


def _download_all(
    screen: Screen, service: Service, files: list[dict[str, Any]], args: argparse.Namespace
) -> list[CliError]:
    failures: list[CliError] = []
    taken: set[str] = set()
    saved_lines: list[str] = []
    # SAS links go straight to Blob Storage: no function key on those requests.
    with httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0)) as http, screen.progress() as progress:
        for file in files:
            target = target_for(args.out, file, taken)
            task = progress.add_task(clean(target.name), total=int(file.get("bytes") or 0))

            def advance(n: int, task: TaskID = task) -> None:
                progress.advance(task, n)

            try:
                saved = download(http, file, target, overwrite=args.overwrite, on_bytes=advance)
            except CliError as error:
                failures.append(error)
                progress.update(task, description=f"{clean(target.name)} [red]not saved[/red]")
                continue
            where = clean(saved.path.resolve())
            saved_lines.append(f"{where}  ({saved.bytes} bytes, sha256 {saved.sha256[:16]}... verified)")
    for line in saved_lines:
        screen.info(f"[green]saved[/green] {line}")
    return failures


def _next_steps(screen: Screen, body: dict[str, Any]) -> int:
    run_id = clean(body.get("response_id", ""))
    screen.console.print(
        f"Done. Fresh links: [bold]ci-files get {run_id}[/bold]; "
        f"delete the files: [bold]ci-files delete {run_id}[/bold]"
    )
    return int(Exit.OK)


if __name__ == "__main__":
    sys.exit(main())
