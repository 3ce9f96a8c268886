"""Check `az` command lines with the Azure CLI's own command loader and argument parser, offline.

Runs INSIDE the azure-cli virtual environment (.azcli-venv, requirements-azcli.txt), never the app's:
tests/deploy/test_az_commands.py starts it once as a subprocess and sends every command line at once.

stdin: a JSON list of argument lists, each without the leading "az".
stdout: a JSON list, one {"status", "command", "reason"} each; status is "ok" (parsed and validated),
"parsed" (parsed; its validators read the signed-in account, so they did not run), "unchecked"
(a CLI extension's command) or "error".

For each command line this does what `AzCliCommandInvoker.execute` does up to (not including) the
call of the command: load the command table the way `az` does for these arguments, pick the command,
load its arguments, raise the same invoker events (they add `--ids`, `--output`, `--query`...), build
the argparse parser, parse, and run the argument validators. Stricter than `az` on purpose:
abbreviated long options are refused (argparse's `allow_abbrev` is turned off, while `az` accepts any
unique prefix). Nothing is sent: there is no login, and the command function itself never runs.
Kept as our own code because azure-cli has no public "parse only" entry point; everything it calls
is azure-cli's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from typing import Any

# Command groups of CLI extensions: not installable offline, so reported as unchecked (never passed).
EXTENSION_GROUPS = {
    "monitor app-insights": "application-insights",
    "monitor log-analytics query": "log-analytics",
}


class ParseFailure(Exception):
    """argparse refused the command line (the message is argparse's, as `az` would print it)."""


def _install_strict_parser_hooks() -> None:
    """Turn argparse errors into exceptions, without the network-backed recommender of `az`."""
    from azure.cli.core.parser import AzCliCommandParser

    def error(self: argparse.ArgumentParser, message: str) -> None:
        raise ParseFailure(f"{self.prog}: error: {message}")

    def check_value(self: argparse.ArgumentParser, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            name = action.option_strings[0] if action.option_strings else action.dest
            allowed = ", ".join(str(c) for c in action.choices)
            if action.option_strings:
                raise ParseFailure(f"{self.prog}: '{value}' is not a valid value for '{name}'. Allowed: {allowed}.")
            raise ParseFailure(f"{self.prog}: '{value}' is not a command of this group")

    AzCliCommandParser.error = error  # type: ignore[method-assign,assignment]
    AzCliCommandParser._check_value = check_value  # type: ignore[method-assign,assignment]
    AzCliCommandParser.validation_error = error  # type: ignore[method-assign,assignment]


def _extension_of(words: list[str]) -> str | None:
    joined = " ".join(words).lower()
    for group, extension in EXTENSION_GROUPS.items():
        if joined == group or joined.startswith(group + " "):
            return extension
    return None


def check(cli: Any, argv: list[str]) -> dict[str, Any]:
    from azure.cli.core.commands.events import (
        EVENT_INVOKER_POST_LOAD_ARGUMENTS,
        EVENT_INVOKER_PRE_CMD_TBL_TRUNCATE,
        EVENT_INVOKER_PRE_LOAD_ARGUMENTS,
    )
    from knack.events import (
        EVENT_INVOKER_CMD_TBL_LOADED,
        EVENT_INVOKER_POST_CMD_TBL_CREATE,
        EVENT_INVOKER_POST_PARSE_ARGS,
        EVENT_INVOKER_PRE_CMD_TBL_CREATE,
        EVENT_INVOKER_PRE_PARSE_ARGS,
    )

    args = list(argv)
    words = []
    for arg in args:
        if arg.startswith("-"):
            break
        words.append(arg)
    extension = _extension_of(words)
    if extension:  # before loading: an unknown command makes `az` reload every module (seconds)
        return {"status": "unchecked", "command": " ".join(words), "reason": f"needs the CLI extension {extension}"}
    invocation = cli.invocation_cls(
        cli_ctx=cli,
        parser_cls=cli.parser_cls,
        commands_loader_cls=cli.commands_loader_cls,
        help_cls=cli.help_cls,
        initial_data={},
    )
    cli.invocation = invocation
    loader = invocation.commands_loader
    cli.raise_event(EVENT_INVOKER_PRE_CMD_TBL_CREATE, args=args)
    loader.load_command_table(args)
    cli.raise_event(EVENT_INVOKER_PRE_CMD_TBL_TRUNCATE, load_cmd_tbl_func=loader.load_command_table, args=args)
    command = invocation._rudimentary_get_command(args)
    invocation.data["command_string"] = command
    if command not in loader.command_table:
        return {"status": "error", "command": command, "reason": f"unknown command: az {' '.join(words)}"}
    loader.command_table = {command: loader.command_table[command]}
    loader.command_name = command
    cli.raise_event(EVENT_INVOKER_PRE_LOAD_ARGUMENTS, commands_loader=loader)
    loader.load_arguments(command)
    cli.raise_event(EVENT_INVOKER_POST_LOAD_ARGUMENTS, commands_loader=loader)
    cli.raise_event(EVENT_INVOKER_POST_CMD_TBL_CREATE, commands_loader=loader)
    parser = invocation.parser
    parser.cli_ctx = cli
    parser.load_command_table(loader)
    cli.raise_event(EVENT_INVOKER_CMD_TBL_LOADED, cmd_tbl=loader.command_table, parser=parser)
    # Exact option names only: `az` (argparse's default) takes any unique prefix of a long option.
    parser.allow_abbrev = False
    for sub in parser.subparser_map.values():
        sub.allow_abbrev = False
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            cli.raise_event(EVENT_INVOKER_PRE_PARSE_ARGS, args=args)
            parsed = parser.parse_args(args)
            cli.raise_event(EVENT_INVOKER_POST_PARSE_ARGS, command=parsed.command, args=parsed)
    except ParseFailure as failure:
        return {"status": "error", "command": command, "reason": str(failure)}
    except SystemExit:
        return {"status": "error", "command": command, "reason": stderr.getvalue().strip() or "argparse exit"}
    except Exception as failure:  # noqa: BLE001 - azure-cli's own CLIError etc.: report, do not crash the batch
        return {"status": "error", "command": command, "reason": f"{type(failure).__name__}: {failure}"}
    # The command's argument validators, as `az` runs them right before the command. A few read
    # the signed-in account (no login here): the arguments were parsed, the validators not run.
    try:
        with contextlib.redirect_stderr(stderr):
            invocation._validation(parsed)
    except ParseFailure as failure:
        return {"status": "error", "command": command, "reason": str(failure)}
    except SystemExit:
        return {"status": "error", "command": command, "reason": stderr.getvalue().strip() or "validation exit"}
    except Exception as failure:  # noqa: BLE001
        if "az login" in str(failure):
            return {"status": "parsed", "command": command, "reason": "its validators need a login"}
        return {"status": "error", "command": command, "reason": f"{type(failure).__name__}: {failure}"}
    return {"status": "ok", "command": command, "reason": ""}


def main() -> int:
    commands = json.load(sys.stdin)
    from azure.cli.core import get_default_cli

    _install_strict_parser_hooks()
    cli = get_default_cli()
    results = []
    for argv in commands:
        try:
            results.append(check(cli, argv))
        except Exception as failure:  # noqa: BLE001 - one broken line must not hide the others
            reason = f"{type(failure).__name__}: {failure}"
            results.append({"status": "error", "command": " ".join(argv[:3]), "reason": reason})
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("AZURE_CORE_COLLECT_TELEMETRY", "no")
    sys.exit(main())
