"""Azure OpenAI webhooks: signed, forged, stale, unsigned and replayed requests, with markers in Azurite."""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from code_interpreter_files.callbacks import sign
from code_interpreter_files.errors import ServiceError
from code_interpreter_files.http_api import status_of
from code_interpreter_files.services import Services, get_services
from code_interpreter_files.webhooks import (
    MAX_WEBHOOK_BYTES,
    WebhookEvent,
    WebhookOutcome,
    handle_webhook,
    marker_name,
    verify_webhook,
)
from tests import figures

pytestmark = pytest.mark.timeout(120)

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
figures.SECRETS.add(SECRET.removeprefix("whsec_"))  # the session-wide log scan looks for it


def event_body(event_type: str = "response.completed", response_id: str = "resp_hook1") -> bytes:
    """An Azure OpenAI webhook body (the shape the SDK's event types describe)."""
    event = {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "created_at": int(time.time()),
        "type": event_type,
        "data": {"id": response_id},
    }
    return json.dumps(event).encode()


def signed(body: bytes, *, secret: str = SECRET, age: timedelta = timedelta(0), webhook_id: str | None = None) -> dict:
    return sign(secret, webhook_id or f"wh_{uuid.uuid4().hex}", datetime.now(UTC) - age, body.decode())


@pytest.fixture
async def services(configure: Callable[..., dict[str, str]]) -> Services:
    configure(storage="identity", AZURE_OPENAI_WEBHOOK_SECRET=SECRET)
    return await get_services()


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.events: list[WebhookEvent] = []
        self.fail = fail

    async def __call__(self, event: WebhookEvent) -> None:
        self.events.append(event)
        if self.fail:
            raise RuntimeError("queue down")


async def _handle(services: Services, body: bytes, headers: dict[str, str], act: Recorder) -> WebhookOutcome:
    return await handle_webhook(
        body, headers, settings=services.settings, openai=services.openai, markers=services.store, act=act
    )


async def test_signed_event_is_acted_on_once_and_replay_is_not(services: Services) -> None:
    body = event_body(response_id="resp_replayed")
    headers = signed(body)
    act = Recorder()
    first = await _handle(services, body, headers, act)
    replay = await _handle(services, body, headers, act)  # the same request, captured and sent again
    assert [e.response_id for e in act.events] == ["resp_replayed"]
    assert first.action == "acted" and replay.action == "replay"
    assert first.event == WebhookEvent(
        webhook_id=headers["webhook-id"], type="response.completed", response_id="resp_replayed"
    )
    # The marker is a blob every instance sees.
    assert await services.store.create_marker(marker_name(headers["webhook-id"])) is False


async def test_replay_with_a_fresh_signature_of_the_same_id_is_not_acted_on(services: Services) -> None:
    body = event_body()
    webhook_id = f"wh_{uuid.uuid4().hex}"
    act = Recorder()
    await _handle(services, body, signed(body, webhook_id=webhook_id, age=timedelta(seconds=30)), act)
    outcome = await _handle(services, body, signed(body, webhook_id=webhook_id), act)
    assert outcome.action == "replay"
    assert len(act.events) == 1


@pytest.mark.parametrize("event_type", ["response.failed", "response.cancelled", "response.incomplete"])
async def test_every_response_end_event_is_acted_on(services: Services, event_type: str) -> None:
    body = event_body(event_type, "resp_end")
    act = Recorder()
    outcome = await _handle(services, body, signed(body), act)
    assert outcome.action == "acted"
    assert [(e.type, e.response_id) for e in act.events] == [(event_type, "resp_end")]


async def test_other_events_are_ignored(services: Services) -> None:
    body = json.dumps({"id": "evt_1", "type": "batch.completed", "created_at": 1, "data": {"id": "batch_1"}}).encode()
    act = Recorder()
    outcome = await _handle(services, body, signed(body), act)
    assert outcome.action == "ignored" and act.events == []


def _refused(services: Services, body: bytes, headers: dict[str, str]) -> ServiceError:
    with pytest.raises(ServiceError) as raised:
        verify_webhook(body, headers, services.settings, services.openai)
    return raised.value


@pytest.mark.parametrize(
    "case",
    ["unsigned", "forged", "stale", "future", "tampered", "missing_id", "garbage_signature", "wrong_version"],
)
async def test_refused_requests(services: Services, case: str) -> None:
    body = event_body()
    headers = signed(body)
    other = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    if case == "unsigned":
        headers = {}
    elif case == "forged":
        headers = signed(body, secret=other)
    elif case == "stale":
        headers = signed(body, age=timedelta(minutes=6))
    elif case == "future":
        headers = signed(body, age=timedelta(minutes=-6))
    elif case == "tampered":
        body = body.replace(b"resp_hook1", b"resp_hook2")
    elif case == "missing_id":
        del headers["webhook-id"]
    elif case == "garbage_signature":
        headers["webhook-signature"] = "v1,not-base64!!"
    elif case == "wrong_version":
        headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,")
    error = _refused(services, body, headers)
    assert (status_of(error), error.code) == (401, "invalid_webhook_signature")
    assert SECRET not in error.message
    act = Recorder()
    with pytest.raises(ServiceError):
        await _handle(services, body, headers, act)
    assert act.events == []


async def test_stale_replay_of_a_once_valid_request_is_refused(services: Services) -> None:
    """A request captured long ago fails on its timestamp: the marker is not even consulted."""
    body = event_body()
    headers = signed(body, age=timedelta(hours=1))
    assert _refused(services, body, headers).code == "invalid_webhook_signature"
    assert await services.store.create_marker(marker_name(headers["webhook-id"])) is True


async def test_not_configured_is_404(configure: Callable[..., dict[str, str]]) -> None:
    configure(storage="identity")
    services = await get_services()
    body = event_body()
    error = _refused(services, body, signed(body))
    assert (status_of(error), error.code) == (404, "webhook_not_configured")


async def test_oversized_and_unparsable_bodies(services: Services) -> None:
    big = b"{" + b" " * MAX_WEBHOOK_BYTES + b"}"
    assert status_of(_refused(services, big, signed(big))) == 413
    not_json = b"not json"
    assert _refused(services, not_json, signed(not_json)).code == "invalid_webhook_payload"  # signed, but garbage
    bad_id = event_body(response_id="../../etc")
    assert _refused(services, bad_id, signed(bad_id)).code == "invalid_webhook_payload"


async def test_failed_action_releases_the_marker_so_azure_retry_is_acted_on(services: Services) -> None:
    body = event_body(response_id="resp_retry")
    headers = signed(body)
    with pytest.raises(RuntimeError, match="queue down"):
        await _handle(services, body, headers, Recorder(fail=True))
    act = Recorder()
    outcome = await _handle(services, body, headers, act)  # Azure OpenAI retries the same delivery
    assert outcome.action == "acted"
    assert [e.response_id for e in act.events] == ["resp_retry"]
