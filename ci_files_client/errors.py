"""Every way a command can fail, as one readable line that says what to do, and an exit code.

The codes are the service's error codes (openapi.yaml and the contract's additions) plus the client's
own (`unreachable`, `unauthorized`, ...). An unknown code still gets a line and exit code 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


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
    "container_expired": Hint(Exit.RUN_GONE, "the run's sandbox expired with its files: run the prompt again"),
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
    "unauthorized": Hint(Exit.AUTH, "pass the function key with --key or CI_FILES_KEY (`func keys list` / the portal)"),
    "route_not_found": Hint(Exit.UNEXPECTED, "check --url: it is the function app's address, without /api"),
    "unreachable": Hint(Exit.UNREACHABLE, "start the service (scripts/start.sh) or check --url / CI_FILES_URL"),
    "bad_answer": Hint(Exit.UNEXPECTED, "the answer was not the service's JSON: check --url"),
    "file_exists": Hint(Exit.DOWNLOAD, "pass --overwrite, or choose another --out folder"),
    "checksum_mismatch": Hint(Exit.DOWNLOAD, "the download was damaged and removed: run `ci-files get` again"),
    "link_expired": Hint(Exit.DOWNLOAD, "the link expired or was refused: run `ci-files get RUN_ID` for fresh links"),
    "download_failed": Hint(Exit.DOWNLOAD, "the download broke off: run `ci-files get RUN_ID` to try again"),
    "input_unreadable": Hint(Exit.BAD_REQUEST, "check the --input path"),
    "input_too_large_inline": Hint(
        Exit.BAD_REQUEST,
        "larger files go through the service's input container: upload them there and pass --input-blob NAME",
    ),
}

UNKNOWN = Hint(Exit.UNEXPECTED, "an error this client does not know: see the message, or update the client")


class CliError(Exception):
    """A failure to report as one line and an exit code."""

    def __init__(self, code: str, message: str, *, status: int | None = None, body: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.body = body  # the service's error body, printed as it is with --json

    @property
    def hint(self) -> Hint:
        return HINTS.get(self.code, UNKNOWN)

    def line(self) -> str:
        status = f" (HTTP {self.status})" if self.status else ""
        message = self.message.rstrip(". ")
        return f"error {self.code}{status}: {message}. What to do: {self.hint.todo}."


def exit_codes_help() -> str:
    """The exit code table for `--help`."""
    return "\n".join(f"  {int(code):>2}  {code.name.lower().replace('_', ' ')}" for code in Exit)
