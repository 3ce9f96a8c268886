"""`ci-files run|get|delete` (and `list`, in listing.py): the old demo script's experience on top of the
service, links first.

A run starts without holding the request open (`wait: false`): its id is on screen at once, then the client
follows it (GET, honouring `Retry-After` and `Location`) with the time waited; Ctrl-C leaves it running and
prints the exact `ci-files get <id>` to come back. Files land in `<--out>/<run id>/`.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.progress import TaskID

from ci_files_client.api import Answer, Service
from ci_files_client.download import download, target_for
from ci_files_client.errors import CliError, Exit
from ci_files_client.listing import command_list
from ci_files_client.options import INLINE_INPUT_LIMIT, parse, url_option
from ci_files_client.render import Screen, clean, error_line
from ci_files_client.viewer import open_paths

MARKDOWN_LINK = re.compile(r"\[([^\]]*)\]\([^)\s]*\)")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
MAX_OPENED = 5
# The API's field names in the service's messages, as the user's options.
FIELD_OPTIONS = {
    "sas_ttl_minutes": "--ttl",
    "previous_response_id": "--continue",
    "input_files": "--input/--input-blob",
    "collect": "--all",
}
# GET /api/runs's query parameters in its messages ("cursor is not one this service gave out ..."),
# as `ci-files list`'s options.
LIST_PARAMETERS = ("limit", "cursor", "status")


class Progress:
    """What the command knows so far (Ctrl-C reports it)."""

    run_id: str | None = None


def main(argv: list[str] | None = None) -> int:
    progress = Progress()
    try:
        args = parse(argv)
    except CliError as error:
        error_line(error.line())
        return int(error.hint.exit)
    service = Service(args.url, args.key)
    try:
        if args.command == "run":
            return command_run(service, args, progress)
        if args.command == "get":
            progress.run_id = args.run_id
            return command_get(service, args)
        if args.command == "list":
            return command_list(service, args)
        return command_delete(service, args)
    except CliError as error:
        error = for_user(error, args)
        if args.json and not error.streamed:
            body = error.body or {"error": {"code": error.code, "message": error.message}}
            print(json.dumps(body, indent=2))
        error_line(error.line())
        return int(error.hint.exit)
    except KeyboardInterrupt:
        if args.command == "list":
            error_line("interrupted: nothing was changed")
        elif progress.run_id is None:
            error_line("interrupted before the service named a run: nothing to come back to")
        else:
            again = f" --url {args.url}" if args.url_source == "--url" else ""
            error_line(
                f"interrupted: the run goes on in the service; come back to it with: "
                f"ci-files get {progress.run_id}{again}"
            )
        return 130
    finally:
        service.close()


def for_user(error: CliError, args: argparse.Namespace) -> CliError:
    """The error in the user's words: the options they typed, and the fix that fits them."""
    option = url_option(args.url_source)
    if args.command == "list" and error.code in ("invalid_request", "route_not_found", "bad_answer"):
        for_list(error, args)
    elif error.code == "invalid_request":
        message = error.message
        for field, flag in FIELD_OPTIONS.items():
            message = message.replace(field, flag)
        if args.ttl is not None and "--ttl" in message:
            message = f"--ttl {args.ttl}: {message}"
            error.todo = error.todo or "pass a smaller --ttl"
        error.message = message
    elif error.code == "unreachable":
        fix = "export CI_FILES_URL=..." if option == "CI_FILES_URL" else f"{option} ..."
        error.todo = f"start the service (scripts/start.sh --offline runs one here), or fix {option} ({fix})"
    elif error.code == "tls_mismatch":
        other = "http://" + args.url.split("://", 1)[1] if args.url.startswith("https://") else None
        if other is None:
            other = "https://" + args.url.split("://", 1)[1]
        error.todo = f"use {option} {other}" if option == "--url" else f"export CI_FILES_URL={other}"
    elif error.code == "unauthorized":
        source = args.key_source or "--key"
        error.message = f"the service refused the function key given with {source}"
    return error


def for_list(error: CliError, args: argparse.Namespace) -> None:
    """`ci-files list`'s errors: the service's message names the option the user typed, with its value."""
    parameter = error.message.split(" ", 1)[0]
    if error.code == "invalid_request" and parameter in LIST_PARAMETERS:
        value = getattr(args, parameter)
        typed = f"--{parameter} {str(value)[:40]}" if value is not None else f"--{parameter}"
        error.message = f"{typed}: the service says {error.message}"
        if parameter == "cursor":
            error.todo = (
                "copy the cursor whole from the `more runs:` line of the last `ci-files list`, "
                "or leave --cursor out to start from the newest run"
            )
    elif error.code == "route_not_found" or (error.code == "bad_answer" and error.status == 405):
        error.todo = (
            f"check {url_option(args.url_source)} (the function app's address, without /api); a service "
            "deployed before `GET /api/runs` cannot list runs: deploy the current version"
        )


def command_run(service: Service, args: argparse.Namespace, progress: Progress) -> int:
    quiet = args.json or args.links_only
    screen = Screen(3 if args.no_wait else 5, quiet=quiet)
    payload = run_payload(args)
    screen.step(f"Checking the service at {clean(service.base_url)}")
    health = service.health()
    if health.get("offline_stand_in"):
        screen.info(f"configured; [bold]{clean(health.get('notice') or 'the model is an offline stand-in')}[/bold]")
    else:
        screen.info("configured")
    screen.step(f"Starting the run: {clean(_short(args.prompt))}")
    started = time.monotonic()
    answer = service.start_run(payload)
    progress.run_id = str(answer.body["response_id"])
    screen.info(f"run id [bold]{clean(progress.run_id)}[/bold]")
    if args.no_wait:
        return _print_started(screen, answer, args)
    screen.step(f"Waiting for the run (Ctrl-C leaves it running: `ci-files get {clean(progress.run_id)}`)")
    answer = _wait(screen, service, answer, args.ttl, started)
    return _finish(screen, service, answer.body, args)


def command_get(service: Service, args: argparse.Namespace) -> int:
    screen = Screen(3, quiet=args.json or args.links_only)
    screen.step(f"Fetching run {clean(args.run_id)} with fresh links from {clean(service.base_url)}")
    started = time.monotonic()
    answer = service.get_run(args.run_id, args.ttl)
    if answer.status == 202 and args.no_wait:
        return _print_started(screen, answer, args)
    answer = _wait(screen, service, answer, args.ttl, started)
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
    """The POST body: never waits in the request (the client follows the run); fields the service added
    later are sent only when used, so an older one still works."""
    payload: dict[str, Any] = {"prompt": args.prompt, "wait": False}
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
            raise CliError("input_unreadable", f"--input {path}: {error.strerror}") from None
        total += size
        if total > INLINE_INPUT_LIMIT:
            raise CliError(
                "input_too_large_inline",
                f"--input {path} ({size:,} bytes) makes the inline inputs more than {INLINE_INPUT_LIMIT // 1024} KiB",
                todo=(
                    "upload it to the service's input container, then name it with --input-blob: az storage blob "
                    f"upload --auth-mode login --account-name <storage account> --container-name "
                    f"code-interpreter-inputs --name {path.name} --file {path} && ci-files run --input-blob "
                    f"{path.name} ..."
                ),
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


def _wait(screen: Screen, service: Service, answer: Answer, ttl: int | None, started: float) -> Answer:
    if answer.status == 202:
        with screen.spinner("the run is starting") as status:

            def tick(state: str) -> None:
                status.update(f"the run is {clean(state)} · {time.monotonic() - started:.0f} s")

            answer = service.wait(answer, ttl, tick)
    elapsed = time.monotonic() - started
    screen.info(f"status: {clean(answer.body.get('status', 'completed'))} after {elapsed:.1f} s")
    return answer


def _finish(screen: Screen, service: Service, body: dict[str, Any], args: argparse.Namespace) -> int:
    """The answer, the files with their links, then each download with its local path and checked sha256."""
    files = body.get("files") or []
    if args.json:
        print(json.dumps(body, indent=2))
        return int(Exit.OK)
    if args.links_only:
        for file in files:
            print(clean(file.get("url", "")))
        return int(Exit.OK)
    _describe(screen, body)
    failed_files = body.get("failed_files") or []
    screen.step(f"Files found: {len(files)}" + (f", {len(failed_files)} not copied" if failed_files else ""))
    if files or failed_files:
        screen.files_table(body)
        screen.links(body)
    for failed in failed_files:
        name, code = clean(failed.get("filename")), clean(failed.get("code"))
        screen.info(f"not copied: {name}: {code}: {clean(failed.get('message'))}")
    if not files:
        screen.info(
            'The run made no file. What to do: ask for one by name (e.g. "... and save it as result.csv"), '
            "or pass --all to collect the files the answer does not cite."
        )
        screen.step("Nothing to download")
        return _next_steps(screen, body)
    if args.no_download:
        screen.step("Not downloading (--no-download)")
        return _next_steps(screen, body)
    folder = args.out / safe_run_folder(str(body.get("response_id", "run")))
    screen.step(f"Downloading {len(files)} file{'s' if len(files) != 1 else ''} to {clean(folder)}")
    saved, failures = _download_all(screen, files, folder, args.overwrite)
    for error in failures:
        error_line(error.line())
    _show_images(screen, saved, folder, args.open)
    _next_steps(screen, body)
    return int(failures[0].hint.exit) if failures else int(Exit.OK)


def safe_run_folder(run_id: str) -> str:
    """The run id as a folder name (it comes from the service: nothing but its id characters)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", run_id)[:200] or "run"


def _describe(screen: Screen, body: dict[str, Any]) -> None:
    # Markdown links keep their words only: their targets are long SAS URLs, listed with the files below.
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
    screen: Screen, files: list[dict[str, Any]], folder: Path, overwrite: bool
) -> tuple[list[Path], list[CliError]]:
    failures: list[CliError] = []
    taken: set[str] = set()
    saved: list[tuple[Path, str]] = []
    # SAS links go straight to Blob Storage: no function key on those requests.
    with httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0)) as http, screen.progress() as progress:
        for file in files:
            target = target_for(folder, file, taken)
            task = progress.add_task(clean(target.name), total=int(file.get("bytes") or 0))

            def advance(n: int, task: TaskID = task) -> None:
                progress.advance(task, n)

            try:
                done = download(http, file, target, overwrite=overwrite, on_bytes=advance)
            except CliError as error:
                failures.append(error)
                progress.update(task, description=f"{clean(target.name)} [red]not saved[/red]")
                continue
            line = f"{clean(done.path.resolve())}  ({done.bytes} bytes, sha256 {done.sha256[:16]}... verified)"
            saved.append((done.path, line))
    for _, line in saved:
        screen.info(f"[green]saved[/green] {line}")
    return [path for path, _ in saved], failures


def _show_images(screen: Screen, saved: list[Path], folder: Path, want_open: bool) -> None:
    """Where each picture is; with --open, the pictures (or the folder) in the system's viewer."""
    images = [path for path in saved if path.suffix.lower() in IMAGE_SUFFIXES]
    for image in images:
        screen.info(f"[bold]image:[/bold] {clean(image.resolve())}")
    if not want_open:
        if images:
            screen.info("see them with --open (the system's image viewer), or open the paths above")
        return
    targets = images[:MAX_OPENED] or [folder]
    why_not = open_paths([path.resolve() for path in targets])
    if why_not is None:
        screen.info("opened " + ", ".join(clean(path.name) for path in targets) + " in the system's viewer")
    else:
        screen.info(f"not opened: {clean(why_not)}; the files are in {clean(folder.resolve())}")


def _next_steps(screen: Screen, body: dict[str, Any]) -> int:
    run_id = clean(body.get("response_id", ""))
    screen.console.print(
        f"Done. Fresh links: [bold]ci-files get {run_id}[/bold]; "
        f"delete the files: [bold]ci-files delete {run_id}[/bold]"
    )
    return int(Exit.OK)


if __name__ == "__main__":
    sys.exit(main())
