"""Azure OpenAI (v1 API): the Responses run with Code Interpreter, and its container's files.

What production Azure does, and how this module survives it (sources in the README):
- a retried `POST /responses` is a second, billed run: the create is retried only when the service
  certainly did not start it (429, 503 with `retry-after`); every other call keeps the SDK's retries;
- no retry sleeps past the answer's deadline (the SDK honours `retry-after` up to 120 s per attempt);
- the event stream of a background run can break, end early or go silent: polling takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
from azure.core.credentials_async import AsyncTokenCredential
from azure.identity.aio import get_bearer_token_provider
from openai import AsyncOpenAI, AsyncStream
from openai.types.responses import Response, ResponseIncludable, ResponseStreamEvent

from .errors import TimedOut, UpstreamFailed
from .models import ContainerFile
from .settings import Settings

RUNNING = frozenset({"queued", "in_progress"})
INCLUDE: list[ResponseIncludable] = ["code_interpreter_call.outputs"]  # plt.show() charts come only with this
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
DEFAULT_RETRY_AFTER_SECONDS = 10  # Azure sometimes answers 429 with no retry-after at all
# Inside an HTTP answer, a wait longer than this is the caller's to make (429 + Retry-After), not ours.
MAX_RETRY_WAIT_IN_ANSWER_SECONDS = 20
CREATE_RETRIES = 2
_CREATE_BACKOFF_SECONDS = (1.0, 4.0)
_POLL_FIRST_SECONDS = 0.1
# Polling a run (the queue's follower, or a stream that broke off) backs off from 0.1 s to this. At 2 s
# a run finished by the queue alone was called back p95 2.06 s after the model's end (bench stage 11,
# 50 runs of 1-7 s: the last poll's wait was 1.7 s of it), over the 2 s goal. A poll is a GET of the
# response (no tokens): 1 s costs one a second while a run is followed.
_POLL_MAX_SECONDS = 1.0
_STREAM_END_SECONDS = 1.0
_RETRYABLE = frozenset({408, 409, 429}) | frozenset(range(500, 600))
_RETRY_AFTER_TEXT = re.compile(r"retry after (\d{1,5}) second", re.IGNORECASE)

# When the current answer is due (event-loop time), for the retry veto below; None: no deadline (queue).
answer_deadline: ContextVar[float | None] = ContextVar("answer_deadline", default=None)


@contextlib.contextmanager
def deadline_of_answer(deadline: float | None) -> Iterator[None]:
    token = answer_deadline.set(deadline)
    try:
        yield
    finally:
        answer_deadline.reset(token)


def retry_after_seconds(headers: Any, message: str = "") -> float | None:
    """The delay the service asked for: `retry-after-ms`, `retry-after` (seconds), or Azure's 429 text
    "... retry after N seconds ..."; None when it gave none."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name) if headers is not None else None
        if value is not None:
            try:
                delay = float(value) / divisor
            except ValueError:
                continue
            if 0 <= delay < 86400:
                return delay
    match = _RETRY_AFTER_TEXT.search(message or "")
    return float(match.group(1)) if match else None


async def _veto_late_retries(response: httpx2.Response) -> None:
    """The SDK obeys `x-should-retry`: a retry whose wait would end after the answer's deadline, or
    that asks for a long wait, is refused here, so the caller gets the error (e.g. a 429 with its
    Retry-After) in time instead of a timeout. The wait the SDK would take is at least what the
    service asked for. Outside an answer (the queue function) the SDK's own retries apply."""
    deadline = answer_deadline.get()
    if deadline is None or response.status_code not in _RETRYABLE:
        return
    wait = retry_after_seconds(response.headers) or 0.0
    if wait > MAX_RETRY_WAIT_IN_ANSWER_SECONDS or asyncio.get_running_loop().time() + wait >= deadline:
        response.headers["x-should-retry"] = "false"


def build_client(settings: Settings, credential: AsyncTokenCredential | None) -> AsyncOpenAI:
    """The API key when one is configured, otherwise Entra ID tokens for AZURE_OPENAI_TOKEN_SCOPE."""
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
        http_client=openai.DefaultAsyncHttpxClient(event_hooks={"response": [_veto_late_retries]}),
    )


@dataclass(kw_only=True)
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


def _create_retry_delay(error: openai.APIStatusError, attempt: int) -> float | None:
    """How long to wait before creating again, or None when the service may have started the run."""
    asked = retry_after_seconds(error.response.headers, _error_message(error))
    if error.status_code == 429:
        return asked if asked is not None else _CREATE_BACKOFF_SECONDS[min(attempt, len(_CREATE_BACKOFF_SECONDS) - 1)]
    if error.status_code == 503 and asked is not None:  # "come back later": the service did not take it
        return asked
    return None


async def _create(client: AsyncOpenAI, params: dict[str, Any]) -> Any:
    """`responses.create` with retries only where a second run cannot result (see module docstring)."""
    once = client.with_options(max_retries=0)
    for attempt in range(CREATE_RETRIES + 1):
        try:
            return await once.responses.create(**params)
        except openai.APIStatusError as error:
            delay = _create_retry_delay(error, attempt)
            deadline = answer_deadline.get()
            late = deadline is not None and (
                (delay or 0) > MAX_RETRY_WAIT_IN_ANSWER_SECONDS
                or asyncio.get_running_loop().time() + (delay or 0) >= deadline
            )
            if delay is None or attempt == CREATE_RETRIES or late:
                raise
            await asyncio.sleep(delay)
        except openai.APITimeoutError:
            raise TimedOut(
                "Azure OpenAI did not confirm the run in time; it may have started it anyway, so it was not "
                "retried (a retry would be a second, billed run)",
            ) from None
    raise AssertionError("unreachable")


async def start_response(
    client: AsyncOpenAI,
    settings: Settings,
    *,
    prompt: str,
    instructions: str | None,
    metadata: dict[str, str],
    container: str | dict[str, Any] | None = None,
    previous_response_id: str | None = None,
    listen: bool,
) -> StartedRun:
    """Start the run in background mode: it outlives any one HTTP request, and its id comes at once.

    With `listen` (and RUN_EVENTS=stream), also stream its events (`background` + `stream`), so the
    end of the run is seen the moment it happens; closing the stream does not stop the run.
    """
    stream = listen and settings.run_events == "stream"
    params: dict[str, Any] = {
        "model": settings.deployment,
        "input": prompt,
        "tools": [{"type": "code_interpreter", "container": container or {"type": "auto"}}],
        "include": INCLUDE,
        "background": True,
        "store": True,
        "stream": stream,
        "metadata": metadata,
    }
    if instructions is not None:
        params["instructions"] = instructions
    if previous_response_id is not None:
        params["previous_response_id"] = previous_response_id
    created = await _create(client, params)
    if isinstance(created, Response):
        return StartedRun(response=created)
    try:
        while (event := await _next_event(created)) is not None:  # response.created carries the id
            if (response := _response_of(event)) is not None:
                return StartedRun(response=response, events=created)
    except openai.APIConnectionError:
        pass  # broke off before the id: the same answer as an early end
    except BaseException:
        await created.close()
        raise
    await created.close()
    raise UpstreamFailed(
        "the Responses API event stream ended before the run was created, so its id is unknown; it was not "
        "retried (a retry could start a second, billed run). Set RUN_EVENTS=poll if this persists",
    )


async def wait_for_response(client: AsyncOpenAI, started: StartedRun, idle_seconds: float) -> Response:
    """Follow the run's events until it ends; poll when there is no stream, when it breaks or ends
    early, or when it stays silent for `idle_seconds`. The caller bounds the wait; the stream is
    closed however the wait ends."""
    response = started.response
    if started.events is not None:
        try:
            while True:
                async with asyncio.timeout(idle_seconds):
                    event = await _next_event(started.events)
                if event is None:
                    break
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
        except (openai.APIConnectionError, TimeoutError):  # broke off, timed out or went silent
            pass
        finally:
            await started.stop_listening()
    delay = _POLL_FIRST_SECONDS
    while True:
        response = await retrieve(client, response.id)
        if response.status not in RUNNING:
            return response
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, _POLL_MAX_SECONDS)


async def retrieve(client: AsyncOpenAI, response_id: str) -> Response:
    return await client.responses.retrieve(response_id, include=INCLUDE)


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


def _error_message(error: openai.APIStatusError) -> str:
    body: dict[str, Any] = error.body if isinstance(error.body, dict) else {}
    inner: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else body
    return f"{inner.get('code') or ''} {inner.get('message') or ''}".strip() or str(error.message)


def is_container_gone(error: openai.APIStatusError) -> bool:
    """The container this run used has expired or was deleted: its files are gone for good.

    OpenAI answers `400 "Container is expired."`; Azure's body is undocumented and may be a
    `404 "Container <id> not found"`; 410 means gone by definition. A 404 about a *file* is not this.
    """
    text = _error_message(error).lower()
    if error.status_code == 410:
        return True
    if error.status_code in (400, 404) and "expired" in text:
        return True
    return error.status_code == 404 and "container" in text and "file" not in text


def is_file_missing(error: openai.APIStatusError) -> bool:
    return error.status_code == 404 and not is_container_gone(error)


def describe(error: openai.APIStatusError) -> str:
    """`<status> <first words of the upstream message>` for warnings and logs (no secrets in bodies)."""
    return f"{error.status_code} {_error_message(error)[:120]}".strip()
