"""Azure OpenAI webhooks (POST /api/openai-webhook): verified with the openai SDK, replays dropped.

The route is anonymous: the Standard Webhooks signature (AZURE_OPENAI_WEBHOOK_SECRET) is the only
thing that authenticates a request, so nothing is read, stored or queued before it is verified.

Replays: the SDK refuses a timestamp older than 5 minutes; inside that window a captured request
could be sent again. Each verified `webhook-id` is claimed with a create-only marker blob
(If-None-Match: *) in the output container, which every instance shares, before the event is acted
on; a second delivery of the same id is answered 200 and not acted on. The marker is released when
acting fails, so that Azure OpenAI's own retry of that delivery is not mistaken for a replay. Markers
are useless after the 5-minute window: the retention sweep (retention.py) deletes them after a day.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from openai import AsyncOpenAI, InvalidWebhookSignatureError
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import InvalidRequest, InvalidSignature, NotConfiguredHere, TooLarge
from .naming import is_valid_response_id
from .settings import Settings

log = logging.getLogger(__name__)

#: The events that end a background response (the ones worth finishing a run for).
RESPONSE_EVENTS = frozenset({"response.completed", "response.failed", "response.cancelled", "response.incomplete"})
#: The SDK's default tolerance, stated here so the replay window above is explicit.
TOLERANCE_SECONDS = 300
#: Azure OpenAI's event bodies are a few hundred bytes; a larger body is not worth an HMAC.
MAX_WEBHOOK_BYTES = 64 * 1024
MARKER_PREFIX = "_webhooks/"


class MarkerStore(Protocol):
    """Create-only markers shared by every instance (OutputStore implements it with blobs)."""

    async def create_marker(self, name: str) -> bool: ...

    async def delete_marker(self, name: str) -> None: ...


@dataclass(frozen=True)
class WebhookEvent:
    """A verified event. `response_id` is set for the four response.* events, None otherwise."""

    webhook_id: str
    type: str
    response_id: str | None


@dataclass(frozen=True)
class WebhookOutcome:
    """What the route did with a verified request (all are answered 200: Azure must not retry them)."""

    event: WebhookEvent
    action: Literal["acted", "replay", "ignored"]


class _Data(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    data: _Data | None = None


def marker_name(webhook_id: str) -> str:
    """The replay marker's blob name (hashed: a fixed-length, path-safe name for any header value)."""
    return MARKER_PREFIX + hashlib.sha256(webhook_id.encode()).hexdigest()


def verify_webhook(body: bytes, headers: Mapping[str, str], settings: Settings, openai: AsyncOpenAI) -> WebhookEvent:
    """The verified event in `body`; NotConfiguredHere (webhook_not_configured), InvalidSignature
    (unsigned, forged or stale), 413 webhook_too_large, 400 invalid_webhook_payload."""
    if settings.webhook_secret is None:
        raise NotConfiguredHere("this app has no AZURE_OPENAI_WEBHOOK_SECRET: webhooks are off")
    if len(body) > MAX_WEBHOOK_BYTES:
        raise TooLarge(f"a webhook body is at most {MAX_WEBHOOK_BYTES} bytes", code="webhook_too_large")
    try:
        openai.webhooks.verify_signature(
            body, dict(headers), secret=settings.webhook_secret.get_secret_value(), tolerance=TOLERANCE_SECONDS
        )
    except (InvalidWebhookSignatureError, ValueError) as error:  # ValueError: a header is missing
        log.warning("webhook refused: %s", type(error).__name__)
        raise InvalidSignature("the webhook signature is missing, wrong or too old") from None
    webhook_id = next(v for k, v in headers.items() if k.lower() == "webhook-id")
    try:
        event = _Event.model_validate(json.loads(body))
    except (ValueError, ValidationError):
        raise InvalidRequest("the signed webhook body is not an event", code="invalid_webhook_payload") from None
    response_id = None
    if event.type in RESPONSE_EVENTS:
        if event.data is None or not is_valid_response_id(event.data.id):
            raise InvalidRequest(f"a {event.type} event without a valid response id", code="invalid_webhook_payload")
        response_id = event.data.id
    return WebhookEvent(webhook_id=webhook_id, type=event.type, response_id=response_id)


async def handle_webhook(
    body: bytes,
    headers: Mapping[str, str],
    *,
    settings: Settings,
    openai: AsyncOpenAI,
    markers: MarkerStore,
    act: Callable[[WebhookEvent], Awaitable[object]],
) -> WebhookOutcome:
    """Verify, drop replays, and `act` (enqueue the finish) once per webhook-id for response events."""
    event = verify_webhook(body, headers, settings, openai)
    if event.response_id is None:
        log.info("webhook %s ignored", event.type)
        return WebhookOutcome(event=event, action="ignored")
    name = marker_name(event.webhook_id)
    if not await markers.create_marker(name):
        log.info("webhook %s for %s is a replay: not acted on", event.type, event.response_id)
        return WebhookOutcome(event=event, action="replay")
    try:
        await act(event)
    except BaseException:
        await markers.delete_marker(name)  # let Azure OpenAI's retry of this delivery through
        raise
    log.info("webhook %s for %s acted on", event.type, event.response_id)
    return WebhookOutcome(event=event, action="acted")
