"""The service's HTTP API as the client uses it: every non-success answer raises a `CliError`.

Synchronous httpx: a command does one thing at a time and waits on it, and rich's live displays are
driven from the same thread; there is nothing to overlap.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from ci_files_client.errors import CliError, without_service_advice

# A GET may finish a run before it answers, within RUN_WAIT_SECONDS (at most 210 s); leave room above it.
READ_TIMEOUT_SECONDS = 240.0
MAX_POLL_SECONDS = 30.0
TICK_SECONDS = 0.25  # how often the waiting line's elapsed time moves


# How an https request to a plain-http server fails in the TLS handshake (OpenSSL's words).
_TLS_FAILURE = re.compile(r"SSL|TLS|wrong version number|record layer", re.IGNORECASE)


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    location: str | None
    retry_after: float


class Service:
    """One service at `base_url` (`http://localhost:7071`), with its function key if it needs one."""

    def __init__(self, base_url: str, key: str | None) -> None:
        headers = {"x-functions-key": key} if key else {}
        self.has_key = bool(key)
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(READ_TIMEOUT_SECONDS, connect=10.0),
        )

    def close(self) -> None:
        self.http.close()

    def health(self) -> dict[str, Any]:
        """`GET /api/health` (anonymous); a not-configured service is an error naming the settings."""
        response = self._send("GET", "/api/health")
        body = _json(response)
        if response.status_code == 503 and isinstance(body, dict) and "missing" in body:
            names = [*body.get("missing", []), *body.get("invalid", [])]
            raise CliError("not_configured", "the service lacks settings: " + ", ".join(names), status=503, body=body)
        if response.status_code != 200:
            raise self._error(response)
        return body if isinstance(body, dict) else {}

    def start_run(self, payload: dict[str, Any]) -> Answer:
        return self._answer(self._send("POST", "/api/runs", json=payload))

    def get_run(self, response_id: str, ttl: int | None = None, location: str | None = None) -> Answer:
        path = location or f"/api/runs/{quote(response_id, safe='')}"
        params = {"sas_ttl_minutes": str(ttl)} if ttl else None
        return self._answer(self._send("GET", path, params=params))

    def list_runs(self, *, limit: int | None, cursor: str | None, status: str | None) -> dict[str, Any]:
        """`GET /api/runs`: one page, `{"runs": [...], "next_cursor": str | None}`; parameters left out
        take the service's defaults."""
        given = {"limit": limit, "cursor": cursor, "status": status}
        params = {name: str(value) for name, value in given.items() if value is not None}
        response = self._send("GET", "/api/runs", params=params)
        if response.status_code != 200:
            raise self._error(response)
        body = _json(response)
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("runs"), list)
            or not all(isinstance(run, dict) for run in body["runs"])
            or not isinstance(body.get("next_cursor"), str | None)
        ):
            raise CliError("bad_answer", "HTTP 200 without a page of runs in its body")
        return body

    def delete_run(self, response_id: str) -> None:
        response = self._send("DELETE", f"/api/runs/{quote(response_id, safe='')}")
        if response.status_code != 204:
            raise self._error(response)

    def wait(
        self,
        answer: Answer,
        ttl: int | None,
        on_tick: Callable[[str], None],
        sleep: Callable[[float], None] = time.sleep,
    ) -> Answer:
        """Poll `Location` after each `Retry-After` until the run is finished (200); `on_tick(status)`
        every TICK_SECONDS meanwhile (the caller shows the time waited)."""
        while answer.status == 202:
            status = str(answer.body.get("status", "in_progress"))
            deadline = time.monotonic() + answer.retry_after
            while (left := deadline - time.monotonic()) > 0:
                on_tick(status)
                sleep(min(TICK_SECONDS, left))
            answer = self.get_run(str(answer.body["response_id"]), ttl, answer.location)
        return answer

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise CliError("timeout", f"{self.base_url} did not answer in time") from None
        except httpx.ConnectError as error:
            if _TLS_FAILURE.search(str(error)) and self.base_url.startswith("https://"):
                raise CliError(
                    "tls_mismatch", f"something answers at {self.base_url}, but not over https (TLS)"
                ) from None
            raise CliError("unreachable", f"nothing answered at {self.base_url} ({type(error).__name__})") from None
        except httpx.RemoteProtocolError:
            raise CliError(
                "tls_mismatch", f"{self.base_url} closed the connection without an HTTP answer (does it speak https?)"
            ) from None
        except httpx.TransportError as error:
            raise CliError("unreachable", f"nothing answered at {self.base_url} ({type(error).__name__})") from None

    def _error(self, response: httpx.Response) -> CliError:
        """A 401 without a body: no key was sent, or the one sent was refused (two different fixes)."""
        if response.status_code == 401 and not self.has_key and _error_body(response) is None:
            return CliError("key_missing", "the service wants a function key and none was given", status=401)
        return _error(response)

    def _answer(self, response: httpx.Response) -> Answer:
        if response.status_code not in (200, 202):
            raise self._error(response)
        body = _json(response)
        if not isinstance(body, dict) or "response_id" not in body:
            raise CliError("bad_answer", f"HTTP {response.status_code} without a run in its body")
        return Answer(
            status=response.status_code,
            body=body,
            location=response.headers.get("location"),
            retry_after=_retry_after(response.headers.get("retry-after")),
        )


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _retry_after(value: str | None) -> float:
    try:
        seconds = float(value) if value is not None else 2.0
    except ValueError:
        seconds = 2.0
    return min(max(seconds, 0.5), MAX_POLL_SECONDS)


def _error_body(response: httpx.Response) -> dict[str, Any] | None:
    body = _json(response)
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) and isinstance(error.get("code"), str) else None


def _error(response: httpx.Response) -> CliError:
    """The service's `{"error": {"code", "message"}}`, or what an empty or foreign answer means."""
    body = _json(response)
    error = _error_body(response)
    if error is not None:
        message = without_service_advice(str(error.get("message") or "no message"))
        retry = response.headers.get("retry-after")
        if error.get("code") == "rate_limited" and retry and "retry after" not in message.lower():
            message += f" (retry after {retry} s)"
        if error.get("invocation_id"):
            message += f" [invocation {error['invocation_id']}]"
        return CliError(error["code"], message, status=response.status_code, body=body)
    if response.status_code == 401:
        return CliError("unauthorized", "the service refused the function key it was given", status=401)
    where = response.request.url.copy_with(query=None)  # never echo a `code=` key
    if response.status_code == 404:
        return CliError("route_not_found", f"no such route at {where}", status=404)
    return CliError("bad_answer", f"an answer without an error body from {where}", status=response.status_code)
