"""Every way a command can fail, as one readable line that says what to do, and an exit code.

The codes are the service's error codes (openapi.yaml and the contract's additions) plus the client's
own (`unreachable`, `unauthorized`, ...). An unknown code still gets a line and exit code 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

_SERVICE_ADVICE = re.compile(r"[:;,]\s*run the prompt again\.?\s*$", re.IGNORECASE)


class Exit(IntEnum):
    """Exit codes, grouped by what the user does next (listed in `ci-files --help`)."""

    OK = 0
    UNEXPECTED = 1  # an answer the client does not know; look at the message
    USAGE = 2  # argparse's own code for bad command-line arguments
    BAD_REQUEST = 3  # change the command (prompt, options, inputs)
    RUN_GONE = 4  # the run or its files no longer exist: run the prompt again
    RUN_FAILED = 5  # the model run did not complete
    AUTH = 6  # wrong or missing function key
    SERVICE_CONFIG = 7  # the service's settings or permissions need fixing (by its operator)
    TRY_AGAIN = 8  # a transient failure: try again later
    UNREACHABLE = 9  # no service answered at the URL
    DOWNLOAD = 10  # a download could not be saved or verified


@dataclass(frozen=True)
class Hint:
    exit: Exit
    todo: str  # what to do, appended to the service's message


HINTS: dict[str, Hint] = {
    # openapi.yaml
    "invalid_json": Hint(Exit.BAD_REQUEST, "the client sent a body the service could not parse; report it"),
    "invalid_request": Hint(Exit.BAD_REQUEST, "fix the option named in the message and run the command again"),
    "payload_too_large": Hint(Exit.BAD_REQUEST, "use a shorter prompt or smaller --input files (or --input-blob)"),
    "not_configured": Hint(
        Exit.SERVICE_CONFIG, "the service is missing settings: set them in local.settings.json or the app settings"
    ),
    "upstream_error": Hint(
        Exit.TRY_AGAIN, "Azure OpenAI refused or failed the call: check its endpoint, deployment and quota, then retry"
    ),
    "identity_error": Hint(
        Exit.SERVICE_CONFIG, "the service got no token for its identity: run `az login` locally, or check the identity"
    ),
    "container_expired": Hint(Exit.RUN_GONE, "`ci-files run` the same prompt again to make the files anew"),
    "timeout": Hint(Exit.TRY_AGAIN, "an upstream call timed out: try again, or use --no-wait and `ci-files get`"),
    "run_not_found": Hint(Exit.RUN_GONE, "check the run id (resp_...); a deleted run cannot be fetched"),
    "invalid_run_id": Hint(Exit.BAD_REQUEST, "a run id looks like resp_...: copy it from the `run` output"),
    "run_failed": Hint(Exit.RUN_FAILED, "the model run failed: rephrase the prompt or run it again"),
    "run_cancelled": Hint(Exit.RUN_GONE, "the run was cancelled: run the prompt again"),
    "run_incomplete": Hint(Exit.RUN_FAILED, "the model stopped early: ask for less, or run the prompt again"),
    "storage_error": Hint(Exit.TRY_AGAIN, "Blob Storage failed: try again (locally, check that Azurite is running)"),
    "storage_auth_error": Hint(
        Exit.SERVICE_CONFIG,
        "the service's identity needs Storage Blob Data Contributor on the account (or a valid connection string)",
    ),
    "internal_error": Hint(
        Exit.TRY_AGAIN, "the service failed unexpectedly: try again; the logs hold the details under the invocation id"
    ),
    "unsupported_manifest": Hint(
        Exit.SERVICE_CONFIG, "the run was stored by another version of the service: update the service, then retry"
    ),
    # the contract's additions
    "rate_limited": Hint(Exit.TRY_AGAIN, "too many runs at once: wait and try again"),
    "run_deleted": Hint(Exit.RUN_GONE, "the run was deleted with its files: run the prompt again"),
    "input_not_found": Hint(Exit.BAD_REQUEST, "upload the --input-blob file to the service's input container first"),
    "invalid_input_name": Hint(
        Exit.BAD_REQUEST, "name --input-blob by its plain path in the input container (e.g. team/2026/q3.csv)"
    ),
    "input_too_large": Hint(Exit.BAD_REQUEST, "use smaller --input files (the service's MAX_INPUT_BYTES)"),
    "too_many_inputs": Hint(Exit.BAD_REQUEST, "pass fewer --input files (the service's MAX_INPUT_FILES)"),
    "input_upload_failed": Hint(Exit.TRY_AGAIN, "the inputs could not be handed to Azure OpenAI: try again"),
    "callback_not_allowed": Hint(
        Exit.BAD_REQUEST, "use a callback host listed in the service's CALLBACK_ALLOWED_HOSTS"
    ),
    "invalid_webhook_signature": Hint(Exit.AUTH, "the webhook secret does not match AZURE_OPENAI_WEBHOOK_SECRET"),
    "webhook_not_configured": Hint(Exit.SERVICE_CONFIG, "set AZURE_OPENAI_WEBHOOK_SECRET on the service"),
    "finish_failed": Hint(
        Exit.TRY_AGAIN, "the service gave up finishing the run after its retries: run the prompt again"
    ),
    "input_changed": Hint(Exit.TRY_AGAIN, "an input blob changed while the service read it: run the command again"),
    "run_in_progress": Hint(
        Exit.TRY_AGAIN, "the run to continue has not finished: wait for it (`ci-files get RUN_ID`), then --continue"
    ),
    "invalid_webhook_payload": Hint(Exit.BAD_REQUEST, "the webhook body is not an Azure OpenAI event"),
    "webhook_too_large": Hint(Exit.BAD_REQUEST, "the webhook body is larger than the service accepts"),
    # the client's own
    "unauthorized": Hint(
        Exit.AUTH,
        "use the app's key: --key \"$(az functionapp keys list --resource-group <group> --name <app> "
        '--query functionKeys.default --output tsv)" (or export CI_FILES_KEY=...)',
    ),
    "key_missing": Hint(
        Exit.AUTH,
        'pass it: export CI_FILES_KEY="$(az functionapp keys list --resource-group <group> --name <app> '
        '--query functionKeys.default --output tsv)" (or --key)',
    ),
    "route_not_found": Hint(Exit.UNEXPECTED, "check --url: it is the function app's address, without /api"),
    "unreachable": Hint(Exit.UNREACHABLE, "start the service (scripts/start.sh --offline runs one here) or fix --url"),
    "tls_mismatch": Hint(Exit.UNREACHABLE, "use the address the service really has"),
    "invalid_url": Hint(Exit.USAGE, "pass the service's address, e.g. --url http://localhost:7071"),
    "bad_answer": Hint(Exit.UNEXPECTED, "the answer was not the service's JSON: check --url"),
    "file_exists": Hint(Exit.DOWNLOAD, "pass --overwrite, or choose another --out folder"),
    "checksum_mismatch": Hint(Exit.DOWNLOAD, "the download was damaged and removed: run `ci-files get` again"),
    "link_expired": Hint(Exit.DOWNLOAD, "the link expired or was refused: run `ci-files get RUN_ID` for fresh links"),
    "download_failed": Hint(Exit.DOWNLOAD, "the download broke off: run `ci-files get RUN_ID` to try again"),
    "input_unreadable": Hint(Exit.BAD_REQUEST, "check the --input path"),
    "input_too_large_inline": Hint(
        Exit.BAD_REQUEST,
        "upload larger files to the service's input container (INPUT_CONTAINER), then pass their names with "
        "--input-blob NAME",
    ),
    "option_not_for_command": Hint(Exit.USAGE, "leave that option out (`ci-files COMMAND --help` lists its options)"),
}

UNKNOWN = Hint(Exit.UNEXPECTED, "an error this client does not know: see the message, or update the client")


class CliError(Exception):
    """A failure to report as one line and an exit code."""

    def __init__(
        self, code: str, message: str, *, status: int | None = None, body: object = None, todo: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.body = body  # the service's error body, printed as it is with --json
        self.todo = todo  # what to do, when it depends on what the user typed (else the hint's)
        self.streamed = False  # stdout already holds part of the answer (--json --all): no error body after it

    @property
    def hint(self) -> Hint:
        return HINTS.get(self.code, UNKNOWN)

    def line(self) -> str:
        status = f" (HTTP {self.status})" if self.status else ""
        message = self.message.rstrip(". ")
        return f"error {self.code}{status}: {message}. What to do: {self.todo or self.hint.todo}."


def without_service_advice(message: str) -> str:
    """The service's message without its closing advice ("...: run the prompt again"): the client gives
    its own, once, in the user's terms."""
    return _SERVICE_ADVICE.sub("", message)


def exit_codes_help() -> str:
    """The exit code table for `--help`."""
    return "\n".join(f"  {int(code):>2}  {code.name.lower().replace('_', ' ')}" for code in Exit)
