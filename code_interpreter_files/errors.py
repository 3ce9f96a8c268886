"""Errors that become a JSON answer: `{"error": {"code", "message"}}` with an HTTP status."""

from __future__ import annotations


class ApiError(Exception):
    """An error the caller can act on. `message` is shown to the caller: never put a secret in it."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **details: object
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details

    def body(self, **context: object) -> dict[str, dict[str, object]]:
        return {"error": {"code": self.code, "message": self.message, **self.details, **context}}


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


def run_deleted() -> ApiError:
    return ApiError(409, "run_deleted", "the run was deleted (DELETE /api/runs/{id}) while its files were being copied")
