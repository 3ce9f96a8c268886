"""Callbacks: the one outbound URL a caller controls. Validated against CALLBACK_ALLOWED_HOSTS, signed the
Standard Webhooks way, delivered once per attempt without following redirects, retried through the queue.

One URL parser (yarl, the one aiohttp sends with) validates the URL and is the URL object the request
uses, so the host that was checked is the host that is called: no parser differential.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from standardwebhooks.webhooks import Webhook
from yarl import URL

from .errors import InvalidRequest
from .public_addresses import address_refused, guarded_connector
from .run_queue import RunQueue
from .setting_rules import is_ip_literal
from .settings import Settings

log = logging.getLogger(__name__)

MAX_URL_CHARS = 2048
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
# A receiver answers quickly or is retried later: a slow receiver must not hold a queue worker.
CONNECT_TIMEOUT_SECONDS = 5.0
TOTAL_TIMEOUT_SECONDS = 15.0
# Delay before attempt n+1 after attempt n failed (index n-1): about 3 h 40 min in all, 8 attempts.
BACKOFF_SECONDS: tuple[int, ...] = (10, 30, 120, 600, 1800, 3600, 7200)
MAX_ATTEMPTS = len(BACKOFF_SECONDS) + 1
MAX_RETRY_AFTER_SECONDS = 7200
_RETRYABLE_4XX = frozenset({408, 425, 429})
_LDH_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")


@dataclass(frozen=True)
class DeliveryResult:
    """What one delivery attempt did. `reason` is a short code for logs and manifests, never the URL."""

    delivered: bool
    status: int | None
    retryable: bool
    reason: str
    webhook_id: str
    retry_after_seconds: int | None = None


def normalize_host(host: str) -> str | None:
    """The comparable form of a host name or IP literal; None for anything that is neither.

    Lower case, one trailing dot dropped, IDN to punycode (yarl's IDNA), IP literals in canonical form.
    A name whose last label is numeric or hex (`127.1`, `2130706433`, `0x7f.1`) is an IPv4 address in
    some other spelling: it is refused rather than interpreted, so only a canonical literal can match.
    """
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    if not host:
        return None
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        pass
    try:
        ascii_host = URL.build(scheme="https", host=host).raw_host
    except (ValueError, TypeError, UnicodeError):
        return None
    if not ascii_host:
        return None
    ascii_host = ascii_host.lower()
    if _LDH_NAME.fullmatch(ascii_host) is None or len(ascii_host) > 253:
        return None
    if _NUMERIC_LABEL.fullmatch(ascii_host.rsplit(".", 1)[-1]):
        return None
    return ascii_host


def redacted(url: URL) -> str:
    """scheme://host:port only: paths and queries of callback URLs often carry the receiver's tokens."""
    return f"{url.scheme}://{url.raw_host}:{url.port}"


def _not_allowed(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="callback_not_allowed")


def parse_callback_url(url: str, settings: Settings) -> URL:
    """The yarl URL to call, after every check; raises InvalidRequest (callback_not_allowed)."""
    allowed = {h for h in (normalize_host(entry) for entry in settings.callback_allowed_hosts) if h is not None}
    if not allowed:
        raise _not_allowed("callbacks are off: the app's CALLBACK_ALLOWED_HOSTS is not set")
    if settings.callback_signing_secret is None:
        raise _not_allowed("callbacks are off: the app's CALLBACK_SIGNING_SECRET is not set")
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise _not_allowed(f"callback_url must be an absolute URL of at most {MAX_URL_CHARS} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F or c == "\\" for c in url):
        raise _not_allowed("callback_url must not contain spaces, control characters or backslashes")
    try:
        parsed = URL(url)
    except (ValueError, TypeError, UnicodeError):
        raise _not_allowed("callback_url is not a valid URL") from None
    if parsed.scheme not in ("https", "http") or not parsed.raw_host:
        raise _not_allowed("callback_url must be an absolute https URL")
    if parsed.user is not None or parsed.password is not None or "@" in (parsed.raw_authority or ""):
        raise _not_allowed("callback_url must not contain user information (user@ or user:password@)")
    if parsed.raw_fragment:
        raise _not_allowed("callback_url must not contain a fragment (#...)")
    host = normalize_host(parsed.raw_host)
    if host is None or host not in allowed:
        raise _not_allowed("callback_url's host is not in the app's CALLBACK_ALLOWED_HOSTS")
    if is_ip_literal(host) and address_refused(host, loopback_allowed=host in LOOPBACK_HOSTS):
        raise _not_allowed("callback_url's address is not a public internet address (public_addresses.py)")
    if parsed.scheme != "https" and host not in LOOPBACK_HOSTS:
        raise _not_allowed("callback_url must use https (http only for 127.0.0.1, ::1 or localhost)")
    return parsed


def validate_callback_url(url: str, settings: Settings) -> str:
    """Check a caller's callback_url at POST time; the URL to store (unchanged).
    InvalidRequest (callback_not_allowed) if not allowed."""
    parse_callback_url(url, settings)
    return url


def callback_id(response_id: str, news: str = "") -> str:
    """The webhook-id of a run's callback: the same on every retry, so a receiver can drop duplicates;
    a different one for different news of the run (`news`: "" for its outcome, `finish_failed` when the
    queue gave up for now and a later outcome may still follow)."""
    name = "code-interpreter-files:" + response_id + (f":{news}" if news else "")
    return f"msg_{uuid.uuid5(uuid.NAMESPACE_URL, name).hex}"


def sign(secret: str, webhook_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers for `body`."""
    signature = Webhook(secret).sign(msg_id=webhook_id, timestamp=timestamp, data=body)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature,
    }


async def deliver(url: str, payload: dict[str, Any], settings: Settings) -> DeliveryResult:
    """POST `payload` (the JSON a GET answers) to `url`, signed; one attempt, no redirects followed.

    The URL is checked again (settings may have changed since POST time). 2xx is delivered; a 3xx is a
    failure that is not retried (the receiver's address is wrong); 408/425/429/5xx and network errors
    are retryable; other 4xx are not (the receiver refused the callback).
    """
    response_id = str(payload.get("response_id", ""))
    error = payload.get("error")
    news = "finish_failed" if isinstance(error, dict) and error.get("code") == "finish_failed" else ""
    webhook_id = callback_id(response_id, news) if response_id else f"msg_{uuid.uuid4().hex}"
    try:
        target = parse_callback_url(url, settings)
    except InvalidRequest:
        return DeliveryResult(
            delivered=False, status=None, retryable=False, reason="callback_not_allowed", webhook_id=webhook_id
        )
    assert settings.callback_signing_secret is not None  # parse_callback_url checked it
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    headers = {
        "content-type": "application/json",
        "user-agent": "code-interpreter-files-callback/1",
        **sign(settings.callback_signing_secret.get_secret_value(), webhook_id, datetime.now(UTC), body),
    }
    timeout = aiohttp.ClientTimeout(total=TOTAL_TIMEOUT_SECONDS, sock_connect=CONNECT_TIMEOUT_SECONDS)
    where = redacted(target)
    try:
        # One session per delivery: callbacks are one per run, and a fresh session shares no cookies or
        # connections between receivers. trust_env=False: no proxy from the environment in between.
        loopback = normalize_host(target.raw_host or "") in LOOPBACK_HOSTS
        connector = guarded_connector(loopback_allowed=loopback)
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=timeout, trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
            ) as session,
            session.post(target, data=body.encode(), headers=headers, allow_redirects=False) as response,
        ):
            status = response.status
            retry_after = _retry_after(response.headers.get("retry-after"))
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        log.warning("callback to %s failed: %s", where, type(error).__name__)
        return DeliveryResult(
            delivered=False, status=None, retryable=True, reason=f"network_error:{type(error).__name__}",
            webhook_id=webhook_id,
        )  # fmt: skip
    if 200 <= status < 300:
        log.info("callback to %s delivered (%d)", where, status)
        return DeliveryResult(delivered=True, status=status, retryable=False, reason="delivered", webhook_id=webhook_id)
    if 300 <= status < 400:
        reason, retryable = "redirect_not_followed", False
    elif status in _RETRYABLE_4XX or status >= 500:
        reason, retryable = f"http_{status}", True
    else:
        reason, retryable = f"http_{status}", False
    log.warning("callback to %s failed: %s", where, reason)
    return DeliveryResult(
        delivered=False, status=status, retryable=retryable, reason=reason, webhook_id=webhook_id,
        retry_after_seconds=retry_after if retryable else None,
    )  # fmt: skip


def backoff(attempt: int) -> int:
    """Seconds to wait before attempt `attempt + 1` after attempt `attempt` (1-based) failed."""
    return BACKOFF_SECONDS[min(max(attempt, 1), len(BACKOFF_SECONDS)) - 1]


def retry_delay(result: DeliveryResult, attempt: int) -> int | None:
    """Delay before the next attempt, or None to give up (delivered, not retryable, or MAX_ATTEMPTS done).

    The queue function: `if (delay := retry_delay(result, attempt)) is not None:
    await queue.enqueue_callback(response_id, attempt=attempt + 1, delay_seconds=delay)`.
    """
    if result.delivered or not result.retryable or attempt >= MAX_ATTEMPTS:
        return None
    delay = backoff(attempt)
    if result.retry_after_seconds is not None:
        delay = max(delay, min(result.retry_after_seconds, MAX_RETRY_AFTER_SECONDS))
    return delay


async def deliver_and_schedule_retry(
    queue: RunQueue, *, response_id: str, url: str, attempt: int, payload: dict[str, Any], settings: Settings
) -> DeliveryResult:
    """Attempt `attempt` of a run's callback; on a retryable failure queue attempt + 1 after the backoff.

    For the queue function: it never raises for the receiver's failures, so the callback message
    itself completes; only a failure to queue the retry raises (and the host retries this message).
    """
    result = await deliver(url, payload, settings)
    delay = retry_delay(result, attempt)
    if delay is not None:
        await queue.enqueue_callback(response_id, attempt=attempt + 1, delay_seconds=delay)
        log.info("callback for %s: attempt %d failed (%s), next in %d s", response_id, attempt, result.reason, delay)
    elif not result.delivered:
        log.warning("callback for %s: given up after attempt %d (%s)", response_id, attempt, result.reason)
    return result


def _retry_after(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None  # the date form is rare for webhooks; the backoff schedule covers it
    return int(value.strip())
