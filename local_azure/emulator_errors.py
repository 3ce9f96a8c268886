"""The emulator's errors: OpenAI-shaped error bodies, and the error each scripted fault answers."""

from __future__ import annotations

import math

from aiohttp import web

from .emulator_model import FailSpec

RBAC_CHECK_ACCESS = (
    "Principal does not have access to API/Operation. OperationId get-container not supported for CheckAccess."
)


class ApiError(Exception):
    """An error answered with an OpenAI-shaped body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        self.headers = headers or {}

    def response(self) -> web.Response:
        return web.json_response(self.body, status=self.status, headers=self.headers)


def api_error(status: int, message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(status, message, param=param, code=code)


def not_found(message: str, code: str | None = None) -> ApiError:
    return ApiError(404, message, code=code)


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def server_error(status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> ApiError:
    return ApiError(status, message, type_="server_error", code=code, headers=headers)


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def fault_error(spec: FailSpec) -> ApiError:
    """The error a scripted fault answers, in the shape the service uses for that status."""
    headers: dict[str, str] = {}
    if spec.retry_after is not None:
        headers["retry-after"] = _seconds(spec.retry_after)
    if spec.retry_after_ms is not None:
        headers["retry-after-ms"] = _seconds(spec.retry_after_ms)
    if spec.status == 429:
        wait = spec.retry_after
        if wait is None and spec.retry_after_ms is not None:
            wait = math.ceil(spec.retry_after_ms / 1000)
        when = f"Please retry after {_seconds(wait)} seconds." if wait is not None else "Please retry later."
        message = (
            "Requests to the Responses API have exceeded the rate limit of your current deployment. "
            f"{when} To increase your default rate limit, visit: https://aka.ms/oai/quotaincrease."
        )
        return ApiError(429, spec.message or message, type_="requests", code=spec.code or "429", headers=headers)
    if spec.status >= 500:
        message = "The server had an error while processing your request. Sorry about that!"
        return server_error(spec.status, spec.message or message, spec.code, headers)
    if spec.status == 403:
        return ApiError(403, spec.message or RBAC_CHECK_ACCESS, code=spec.code or "PermissionDenied", headers=headers)
    if spec.status == 404 and spec.on in ("list", "retrieve", "content"):
        return ApiError(404, spec.message or "Container not found", code=spec.code, headers=headers)
    return ApiError(spec.status, spec.message or f"Emulated error {spec.status}.", code=spec.code, headers=headers)
