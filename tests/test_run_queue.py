"""The runs queue sender against Azurite's queue service (identity and connection string) and the message parser."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable

import pytest
from azure.storage.queue.aio import QueueClient

from code_interpreter_files.identity import AppCredential
from code_interpreter_files.run_queue import (
    CallbackMessage,
    FinishMessage,
    QueueMessageError,
    RunQueue,
    parse_message,
)
from code_interpreter_files.settings import SettingsError, load_settings
from tests.rig.rig import Rig

pytestmark = pytest.mark.timeout(120)


def _queue_name() -> str:
    return f"q-{uuid.uuid4().hex[:20]}"


async def _raw_receive(rig: Rig, name: str) -> list[str]:
    """What is on the wire, read with a client that decodes nothing (shared key)."""
    async with QueueClient.from_connection_string(rig.azurite.queue_connection_string, name) as raw:
        return [str(m.content) async for m in raw.receive_messages(max_messages=32)]


# -- parse_message --------------------------------------------------------------------------------


def test_parse_finish_and_callback() -> None:
    finish = parse_message('{"kind": "finish", "response_id": "resp_abc", "attempt": 3}')
    assert finish == FinishMessage(response_id="resp_abc", attempt=3)
    assert parse_message('{"kind": "finish", "response_id": "resp_abc"}') == FinishMessage(response_id="resp_abc")
    callback = parse_message(b'{"kind": "callback", "response_id": "resp_abc", "attempt": 2}')
    assert callback == CallbackMessage(response_id="resp_abc", attempt=2)


def test_messages_of_the_previous_version_are_read_without_their_callback_url() -> None:
    """During a rolling deployment a message of the version that carried collect and callback_url is
    still read; the URL in it is ignored (the run record has it)."""
    old = parse_message(
        '{"kind": "finish", "response_id": "resp_a", "collect": "all", "callback_url": "https://a/x?t=1"}'
    )
    assert old == FinishMessage(response_id="resp_a") and "callback_url" not in old.model_dump()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        ("[]", "finish or callback"),
        ('{"kind": "other", "response_id": "resp_a"}', "kind"),
        ('{"kind": "finish", "response_id": "../etc"}', "response_id"),
        ('{"kind": "finish", "response_id": "resp_a", "attempt": -1}', "attempt"),
        ('{"kind": "finish", "response_id": "resp_a", "attempt": "2"}', "attempt"),
        ('{"kind": "callback", "response_id": "resp_a", "attempt": "1"}', "attempt"),
        ('{"kind": "callback", "response_id": "resp_a", "attempt": 0}', "attempt"),
        ('{"kind": "callback", "response_id": "resp_a"}', "attempt"),
    ],
)
def test_parse_garbage_is_a_clear_error(text: str | bytes, needle: str) -> None:
    with pytest.raises(QueueMessageError, match=needle) as raised:
        parse_message(text)
    assert "../etc" not in str(raised.value)  # the content is never echoed


def test_unknown_fields_from_a_newer_version_are_ignored() -> None:
    message = parse_message('{"kind": "finish", "response_id": "resp_a", "priority": 3}')
    assert isinstance(message, FinishMessage)


# -- the sender against Azurite -------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["identity", "connection_string"])
async def test_enqueue_base64_json_on_the_wire(
    rig: Rig, configure: Callable[..., dict[str, str]], storage: str
) -> None:
    name = _queue_name()
    configure(storage=storage, RUNS_QUEUE=name)
    rig.identity.reset()
    settings = load_settings()
    credential = AppCredential() if storage == "identity" else None
    queue = RunQueue(settings, credential)
    try:
        await queue.enqueue_finish("resp_one")  # creates the queue
        await queue.enqueue_callback("resp_one", attempt=2, delay_seconds=0)
        await queue.enqueue_finish("resp_later", attempt=4, delay_seconds=3600)  # invisible for an hour
    finally:
        await queue.close()
        if credential is not None:
            await credential.close()
    wire = await _raw_receive(rig, name)
    assert len(wire) == 2
    texts = [base64.b64decode(w, validate=True).decode() for w in wire]
    assert [json.loads(t) for t in texts] == [
        {"kind": "finish", "response_id": "resp_one", "attempt": 0},
        {"kind": "callback", "response_id": "resp_one", "attempt": 2},
    ]
    assert [type(parse_message(t)) for t in texts] == [FinishMessage, CallbackMessage]
    by_resource = rig.identity.stats()["by_resource"]
    if storage == "identity":  # Azurite's queue service accepted the bearer token (aud https://storage.azure.com)
        assert by_resource.get("https://storage.azure.com", 0) >= 1
    else:
        assert "https://storage.azure.com" not in by_resource


async def test_deleted_queue_is_created_again(rig: Rig, configure: Callable[..., dict[str, str]]) -> None:
    name = _queue_name()
    configure(storage="connection_string", RUNS_QUEUE=name)
    queue = RunQueue(load_settings(), None)
    try:
        await queue.enqueue_finish("resp_a")
        async with QueueClient.from_connection_string(rig.azurite.queue_connection_string, name) as raw:
            await raw.delete_queue()
        await queue.enqueue_finish("resp_b")
    finally:
        await queue.close()
    wire = await _raw_receive(rig, name)
    assert [json.loads(base64.b64decode(w))["response_id"] for w in wire] == ["resp_b"]


async def test_bad_arguments_and_missing_configuration(configure: Callable[..., dict[str, str]]) -> None:
    configure(storage="connection_string", RUNS_QUEUE=_queue_name())
    queue = RunQueue(load_settings(), None)
    try:
        with pytest.raises(ValueError):
            await queue.enqueue_finish("not-a-response-id")
        with pytest.raises(ValueError, match="delay_seconds"):
            await queue.enqueue_callback("resp_a", attempt=1, delay_seconds=-1)
    finally:
        await queue.close()
    env = configure(storage="connection_string")
    env.pop("RUNS_QUEUE_STORAGE")
    with pytest.raises(SettingsError) as missing:  # the queue connection is required: refused at start
        load_settings(env)
    assert missing.value.missing == ["RUNS_QUEUE_STORAGE or RUNS_QUEUE_STORAGE__queueServiceUri"]
