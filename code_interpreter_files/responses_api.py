"""Azure OpenAI (v1 API): the Responses run with Code Interpreter, and its container's files."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import openai
from azure.core.credentials_async import AsyncTokenCredential
from azure.identity.aio import get_bearer_token_provider
from openai import AsyncOpenAI, AsyncStream
from openai.types.responses import Response, ResponseStreamEvent

from .models import ContainerFile, RunRequest
from .settings import Settings

CODE_INTERPRETER_TOOL = {"type": "code_interpreter", "container": {"type": "auto"}}
RUNNING = frozenset({"queued", "in_progress"})
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
_POLL_FIRST_SECONDS = 0.1
_POLL_MAX_SECONDS = 2.0
_STREAM_END_SECONDS = 1.0


def build_client(settings: Settings, credential: AsyncTokenCredential | None) -> AsyncOpenAI:
    """The API key when one is configured, otherwise Entra ID tokens (AZURE_OPENAI_TOKEN_SCOPE) from the identity."""
    if settings.api_key is not None:
        api_key: Any = settings.api_key.get_secret_value()
    else:
        assert credential is not None
        api_key = get_bearer_token_provider(credential, settings.token_scope)
    return AsyncOpenAI(
        base_url=settings.openai_base_url,
        api_key=api_key,
        default_query={"api-version": settings.api_version} if settings.api_version else None,
        timeout=openai.Timeout(120.0, connect=10.0),
        max_retries=2,
    )


@dataclass
class StartedRun:
    """A run started in background mode, with its event stream while the caller listens."""

    response: Response
    events: AsyncStream[ResponseStreamEvent] | None = None

    async def stop_listening(self) -> None:
        """Close the event stream; the run goes on in Azure OpenAI (background mode)."""
        if self.events is not None:
            await self.events.close()


async def _next_event(events: AsyncStream[ResponseStreamEvent]) -> ResponseStreamEvent | None:
    """The next event, or None at the end of the stream (read with __anext__: no wrapper generator
    is left suspended behind a stream that is closed early)."""
    try:
        return await events.__anext__()
    except StopAsyncIteration:
        return None


def _response_of(event: ResponseStreamEvent) -> Response | None:
    update = getattr(event, "response", None)
    return update if isinstance(update, Response) else None


async def start_response(client: AsyncOpenAI, settings: Settings, request: RunRequest, *, listen: bool) -> StartedRun:
    """Start the run in background mode: it outlives any one HTTP request, and its id comes at once.

    With `listen`, also stream its events (`background` + `stream`), so the end of the run is seen
    the moment it happens, with no polling; closing the stream does not stop the run.
    """
    options: dict[str, Any] = {"instructions": request.instructions} if request.instructions is not None else {}
    created = await client.responses.create(
        model=settings.deployment,
        input=request.prompt,
        tools=[CODE_INTERPRETER_TOOL],  # type: ignore[list-item]
        background=True,
        store=True,
        stream=listen,
        metadata={"collect": request.collect},
        **options,
    )
    if isinstance(created, Response):
        return StartedRun(created)
    try:
        while (event := await _next_event(created)) is not None:  # response.created carries the id
            if (response := _response_of(event)) is not None:
                return StartedRun(response, created)
        raise RuntimeError("the Responses API event stream ended before the response was created")
    except BaseException:
        await created.close()
        raise


async def wait_for_response(client: AsyncOpenAI, started: StartedRun) -> Response:
    """Follow the run's events until it ends; poll when there is no stream or it ended early.
    The caller bounds the wait with a timeout; the stream is closed however the wait ends."""
    response = started.response
    if started.events is not None:
        try:
            while (event := await _next_event(started.events)) is not None:
                update = _response_of(event)
                if update is not None and update.id == response.id:
                    response = update
                    if response.status not in RUNNING:
                        # The service ends the stream right after the final event: read to its end,
                        # so that the SDK's generators finish instead of waiting for the collector.
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(_STREAM_END_SECONDS):
                                while await _next_event(started.events) is not None:
                                    pass
                        return response
        except openai.APIConnectionError:  # the stream broke off (or timed out): the run goes on
            pass
        finally:
            await started.stop_listening()
    delay = _POLL_FIRST_SECONDS
    while response.status in RUNNING:
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, _POLL_MAX_SECONDS)
        response = await client.responses.retrieve(response.id)
    return response


def _container_file(item: Any, container_id: str) -> ContainerFile:
    return ContainerFile(
        container_id=container_id,
        file_id=item.id,
        path=item.path or "",
        bytes=item.bytes,
        source=getattr(item, "source", None),
    )


async def list_container_files(client: AsyncOpenAI, container_id: str) -> list[ContainerFile]:
    """Every file of the container, following the cursor pages (100 a page)."""
    return [
        _container_file(item, container_id)
        async for item in client.containers.files.list(container_id=container_id, limit=100, order="asc")
    ]


async def retrieve_container_file(client: AsyncOpenAI, container_id: str, file_id: str) -> ContainerFile:
    item = await client.containers.files.retrieve(file_id, container_id=container_id)
    return _container_file(item, container_id)


@asynccontextmanager
async def open_file_content(
    client: AsyncOpenAI, container_id: str, file_id: str
) -> AsyncIterator[AsyncIterator[bytes]]:
    """The file's bytes as a stream: never the whole file in memory."""
    async with client.containers.files.content.with_streaming_response.retrieve(
        file_id, container_id=container_id
    ) as response:
        yield response.iter_bytes(DOWNLOAD_CHUNK_BYTES)


def is_container_expired(error: openai.APIStatusError) -> bool:
    """Expired containers answer 404 (or 400) saying so; their files are gone for good."""
    if error.status_code not in (400, 404, 410):
        return False
    body = error.body if isinstance(error.body, dict) else {}
    text = f"{body.get('code', '')} {body.get('message', '')} {error.message}".lower()
    return "expired" in text
