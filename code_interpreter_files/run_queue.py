"""The runs queue: the sender (one QueueClient per worker) and the typed messages the queue trigger reads.

Messages are JSON, base64-encoded on the wire: the Functions host decodes queue messages as base64 by
default (host.json `extensions.queues.messageEncoding`), and a message it cannot decode goes to the
poison queue without the function ever running. A message carries the run's id and an attempt
number, nothing else: whatever finishing or calling back needs (the callback URL with its token
among it) is read from the run's record, which only the app reads.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from .naming import RESPONSE_ID
from .settings import Settings

# A queue message stays invisible for at most 7 days (the service's limit for visibility_timeout).
MAX_DELAY_SECONDS = 7 * 24 * 60 * 60

ResponseId = Annotated[str, StringConstraints(pattern=f"^{RESPONSE_ID.pattern}$")]
Attempt = Annotated[int, Field(ge=0, le=10_000)]


class _Message(BaseModel):
    # Strict types (no "1" for 1); unknown fields are ignored so that a message written by a newer
    # version during a rolling deployment is still read by an older worker instead of being poisoned.
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class FinishMessage(_Message):
    """Follow run `response_id` to its end and finish it; `attempt` counts the tries after a transient fault."""

    kind: Literal["finish"] = "finish"
    response_id: ResponseId
    attempt: Attempt = 0


class CallbackMessage(_Message):
    """Deliver (again) the finished run's answer to its callback URL; `attempt` counts from 1."""

    kind: Literal["callback"] = "callback"
    response_id: ResponseId
    attempt: Annotated[int, Field(ge=1, le=1000)]


RunMessage = Annotated[FinishMessage | CallbackMessage, Field(discriminator="kind")]
_RUN_MESSAGE: TypeAdapter[FinishMessage | CallbackMessage] = TypeAdapter(RunMessage)


class QueueMessageError(ValueError):
    """A queue message that is not one of ours. The message says what is wrong, never echoes the content."""


def parse_message(text: str | bytes) -> FinishMessage | CallbackMessage:
    """The typed message in `text` (the host has already base64-decoded it); QueueMessageError if garbage."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise QueueMessageError("queue message is not JSON") from None
    try:
        return _RUN_MESSAGE.validate_python(data)
    except ValidationError as error:
        # Field locations and error kinds only: pydantic's own text would repeat the input values.
        problems = "; ".join(_problem(e["loc"], e["type"]) for e in error.errors())
        raise QueueMessageError(f"queue message is not a finish or callback message ({problems})") from None


def _problem(loc: tuple[int | str, ...], kind: str) -> str:
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return "kind: must be 'finish' or 'callback'"
    if kind == "model_attributes_type":
        return "message: must be a JSON object"
    return f"{'.'.join(str(p) for p in loc[1:]) or 'message'}: {kind}"  # loc[0] is the kind's tag


def encode_message(message: FinishMessage | CallbackMessage) -> str:
    """The JSON text of `message` (the QueueClient base64-encodes it on the wire)."""
    return message.model_dump_json()


class RunQueueNotConfigured(RuntimeError):
    """Neither RUNS_QUEUE_STORAGE nor RUNS_QUEUE_STORAGE__queueServiceUri is set."""


# The same short schedule as the blob client (storage.py): a dead account fails in ~20 s. Passed as
# keywords: the async QueueClient builds its own (async) ExponentialRetry from them; the package
# exports only the sync policy class.
_RETRY: dict[str, Any] = {"retry_total": 3, "initial_backoff": 1, "increment_base": 2, "random_jitter_range": 1}


def build_queue_client(settings: Settings, credential: AsyncTokenCredential | None, queue_name: str) -> QueueClient:
    """A QueueClient for `queue_name` that base64-encodes what it sends and decodes what it receives."""
    encode, decode = TextBase64EncodePolicy(), TextBase64DecodePolicy()
    if settings.queue_service_url:
        if credential is None:
            raise RunQueueNotConfigured("RUNS_QUEUE_STORAGE__queueServiceUri needs the app's Entra ID credential")
        return QueueClient(
            settings.queue_service_url,
            queue_name,
            credential=credential,
            message_encode_policy=encode,
            message_decode_policy=decode,
            **_RETRY,
        )
    if settings.queue_connection_string is not None:
        return QueueClient.from_connection_string(
            settings.queue_connection_string.get_secret_value(),
            queue_name,
            message_encode_policy=encode,
            message_decode_policy=decode,
            **_RETRY,
        )
    raise RunQueueNotConfigured("set RUNS_QUEUE_STORAGE or RUNS_QUEUE_STORAGE__queueServiceUri")


class RunQueue:
    """One per worker: sends finish and callback messages to RUNS_QUEUE, creating the queue on first use."""

    def __init__(self, settings: Settings, credential: AsyncTokenCredential | None) -> None:
        self.name = settings.runs_queue
        self._settings = settings
        self._credential = credential
        self._client: QueueClient | None = None
        self._ready = False
        self._lock = asyncio.Lock()

    async def enqueue_finish(self, response_id: str, *, attempt: int = 0, delay_seconds: int = 0) -> str:
        """Queue the finish of a run, visible after `delay_seconds`; the message id. ValueError for a bad id/delay."""
        return await self._send(FinishMessage(response_id=response_id, attempt=attempt), delay_seconds)

    async def enqueue_callback(self, response_id: str, *, attempt: int, delay_seconds: int) -> str:
        """Queue delivery `attempt` (1 = first) of a finished run's callback, visible after `delay_seconds`."""
        return await self._send(CallbackMessage(response_id=response_id, attempt=attempt), delay_seconds)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _send(self, message: FinishMessage | CallbackMessage, delay_seconds: int) -> str:
        if not 0 <= delay_seconds <= MAX_DELAY_SECONDS:
            raise ValueError(f"delay_seconds must be between 0 and {MAX_DELAY_SECONDS}")
        client = await self._ready_client()
        text = encode_message(message)
        try:
            sent = await client.send_message(text, visibility_timeout=delay_seconds or None)
        except ResourceNotFoundError:  # the queue was deleted since: create it again, once
            self._ready = False
            client = await self._ready_client()
            sent = await client.send_message(text, visibility_timeout=delay_seconds or None)
        return str(sent.id)

    async def _ready_client(self) -> QueueClient:
        async with self._lock:
            if self._client is None:
                self._client = build_queue_client(self._settings, self._credential, self.name)
            if not self._ready:
                try:
                    await self._client.create_queue()
                except ResourceExistsError:
                    pass
                self._ready = True
            return self._client
