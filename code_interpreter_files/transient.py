"""Which failures are worth trying again later, and which are answers.

A 5xx, 429, 408, a timeout or a dropped connection from Azure OpenAI, Blob, Table or Queue Storage, or
the identity endpoint is transient: the queue tries the run again later (finishing.py, queue_work.py),
never turning it into a final failure. Everything else (a 4xx, a run that failed, a container that
expired) is an answer that ends the run.
"""

from __future__ import annotations

import aiohttp
import httpx2
import openai
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

from .errors import RateLimited, TimedOut, UpstreamFailed
from .identity import IdentityError

_RETRYABLE_STATUS = frozenset({408, 409, 429})


def _retryable_status(status: int | None) -> bool:
    return status is not None and (status in _RETRYABLE_STATUS or status >= 500)


def is_transient(error: BaseException) -> bool:
    if isinstance(error, openai.APIStatusError):
        return _retryable_status(error.status_code)
    if isinstance(error, HttpResponseError) and not isinstance(error, ServiceRequestError | ServiceResponseError):
        return _retryable_status(error.status_code)
    if isinstance(error, UpstreamFailed):
        status = error.details.get("upstream_status")
        return error.code != "storage_auth_error" and (status is None or _retryable_status(int(str(status))))
    return isinstance(
        error,
        openai.APIConnectionError  # and its APITimeoutError
        | ServiceRequestError
        | ServiceResponseError
        | aiohttp.ClientError
        | httpx2.HTTPError
        | ConnectionError
        | TimeoutError
        | IdentityError
        | RateLimited
        | TimedOut,
    )
