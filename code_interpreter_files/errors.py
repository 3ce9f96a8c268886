"""The outcomes a caller can act on, as exception types: code catches types, never status codes or strings.

Each class names the error codes it can carry (`codes`, the first is its default); `http_api.STATUS`
maps each class to its HTTP status, in one place. A `message` is shown to callers: never put a secret in it.
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """Something the caller can act on, answered `{"error": {"code", "message", ...details}}`."""

    codes: ClassVar[tuple[str, ...]] = ("internal_error",)

    def __init__(
        self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None, **details: object
    ) -> None:
        super().__init__(message)
        if code is not None and code not in self.codes:
            raise ValueError(f"{type(self).__name__} carries no code {code!r}")
        self.code = code or self.codes[0]
        self.message = message
        self.headers = headers or {}
        self.details = details

    def body(self, **context: object) -> dict[str, dict[str, object]]:
        return {"error": {"code": self.code, "message": self.message, **self.details, **context}}


# -- the caller's request ---------------------------------------------------------------------------


class InvalidRequest(ServiceError):
    """The request itself is wrong: fix it and send it again."""

    codes = (
        "invalid_request",
        "invalid_json",
        "invalid_run_id",
        "invalid_input_name",
        "input_not_found",
        "too_many_inputs",
        "callback_not_allowed",
        "invalid_webhook_payload",
    )


class InvalidSignature(ServiceError):
    codes = ("invalid_webhook_signature",)


class TooLarge(ServiceError):
    codes = ("payload_too_large", "input_too_large", "webhook_too_large")


class NotConfiguredHere(ServiceError):
    """A route that this deployment does not serve (its setting is unset)."""

    codes = ("webhook_not_configured",)


# -- a run's outcomes -------------------------------------------------------------------------------


class RunNotFound(ServiceError):
    """One answer for an unknown run, another application's, another caller's, and a deleted one."""

    codes = ("run_not_found",)

    def __init__(self, response_id: str) -> None:
        super().__init__(f"Azure OpenAI knows no response {response_id}")


class RunDeleted(ServiceError):
    """DELETE won while this request was copying the run's files."""

    codes = ("run_deleted",)

    def __init__(self) -> None:
        super().__init__("the run was deleted (DELETE /api/runs/{id}) while its files were being copied")


class RunFailed(ServiceError):
    codes = ("run_failed",)


class RunCancelled(ServiceError):
    codes = ("run_cancelled",)


class RunInProgress(ServiceError):
    codes = ("run_in_progress",)


class ContainerGone(ServiceError):
    """The run's Code Interpreter container expired (or was deleted) before its files were copied."""

    codes = ("container_expired",)


class FinishFailed(ServiceError):
    """The queue could not finish the run for good; files copied before are kept."""

    codes = ("finish_failed",)


class InputChanged(ServiceError):
    codes = ("input_changed",)


# -- the services the app depends on -----------------------------------------------------------------


class RateLimited(ServiceError):
    codes = ("rate_limited",)


class UpstreamFailed(ServiceError):
    """Azure OpenAI or Blob Storage failed in a way the caller can only retry or report."""

    codes = ("upstream_error", "input_upload_failed", "storage_error", "storage_auth_error")


class Unavailable(ServiceError):
    codes = ("not_configured", "identity_error")


class TimedOut(ServiceError):
    codes = ("timeout",)


class InternalError(ServiceError):
    codes = ("internal_error", "unsupported_manifest")


class FileCopyError(Exception):
    """One file could not be copied; it goes to `failed_files` and never stops the others."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


CONTAINER_GONE = (
    "the Code Interpreter container expired or was deleted (containers end after 20 idle minutes, and on Azure "
    "after one hour however busy)"
)
