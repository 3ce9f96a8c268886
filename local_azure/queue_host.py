"""Plays the Functions host's part for queue triggers, the way Azure does, against Azurite's queue service.

What the host does (Microsoft.Azure.WebJobs.Extensions.Storage.Queues) and this class copies:
- finds the queue-triggered functions of the app (`queueTrigger` bindings), resolves `%NAME%` in
  queue names from the app settings, and connects with the binding's `connection` the same way:
  `<connection>` is a connection string, `<connection>__queueServiceUri` an identity-based one;
- receives up to `batchSize` messages per queue, each leased (invisible) while the function runs,
  the lease renewed at half its length;
- decodes the body per `messageEncoding` (base64 by default); a message it cannot decode goes to
  `<queue>-poison` without the function ever running (Azure/azure-sdk-for-net#21449);
- passes `func.QueueMessage` with the trigger metadata (id, dequeue count, pop receipt, insertion,
  expiration and next-visible times) and a `context` if the function asks for one;
- success: deletes the message. Failure: at `maxDequeueCount` (host.json, default 5) copies it to
  `<queue>-poison` and deletes it; before that makes it visible again after `visibilityTimeout`
  (host.json, default 0). A message fetched with a dequeue count already above the limit (its
  earlier holders crashed) is poisoned without running;
- the poison queue is an ordinary queue: a function triggered on `<queue>-poison` gets its messages.
`run_once`, `drain` and `run_forever` poll every `poll_seconds` and wait for a whole batch before the
next poll (what tests want: every message handled, in a known order). `listen` copies the host's
listener instead (the bench's latency stage): a new batch whenever at most `newBatchThreshold`
messages are in flight, and polling that backs off while the queues are empty, doubling from
`poll_seconds` up to `maxPollingInterval` (the host adds jitter; this does not).

A host that is cancelled mid-invocation (a crash) neither deletes nor releases its messages: they
come back when their lease runs out, as after a worker crash in Azure.

In-process: `QueueHost(functions, environ=...)` then `await host.drain()`. What the host reads (host.json,
the app's queue-triggered functions) is in `queue_bindings.py`; the host as another instance or beside
the minimal HTTP host in `queue_instances.py`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import inspect
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import azure.functions as func
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.functions.queue import QueueMessage as WorkerQueueMessage
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.queue import QueueMessage
from azure.storage.queue.aio import QueueClient

from local_azure.queue_bindings import (
    DEFAULT_LEASE_SECONDS,
    Invocation,
    Outcome,
    QueueFunction,
    QueueSettings,
    WorkerContext,
    queue_functions,
)


class _Connection:
    """Queue clients for one `connection` setting, resolved as the host does."""

    def __init__(self, name: str, environ: Mapping[str, str]) -> None:
        self._credential: AsyncTokenCredential | None = None
        self._connection_string = environ.get(name)
        self._service_url = environ.get(f"{name}__queueServiceUri")
        if not self._connection_string and not self._service_url:
            raise KeyError(f"neither {name} nor {name}__queueServiceUri is set")
        if not self._connection_string:
            if environ.get(f"{name}__credential", "").lower() == "managedidentity":
                self._credential = ManagedIdentityCredential(client_id=environ.get(f"{name}__clientId"))
            else:
                self._credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
        self._clients: dict[str, QueueClient] = {}

    def client(self, queue_name: str) -> QueueClient:
        """A client that neither encodes nor decodes: the host decodes itself, to see what is on the wire."""
        if queue_name not in self._clients:
            if self._connection_string:
                client = QueueClient.from_connection_string(self._connection_string, queue_name)
            else:
                assert self._service_url is not None
                client = QueueClient(self._service_url, queue_name, credential=self._credential)
            self._clients[queue_name] = client
        return self._clients[queue_name]

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        if self._credential is not None:
            await self._credential.close()


class QueueHost:
    """The queue-trigger part of a Functions host for `functions` (see the module docstring)."""

    def __init__(
        self,
        functions: Iterable[func.Function],
        *,
        environ: Mapping[str, str] | None = None,
        settings: QueueSettings | None = None,
        lease_seconds: int = DEFAULT_LEASE_SECONDS,
        poll_seconds: float = 0.2,
        on_outcome: Callable[[Invocation], None] | None = None,
    ) -> None:
        environ = dict(os.environ if environ is None else environ)
        self.functions = queue_functions(functions, environ)
        if not self.functions:
            raise ValueError("the app has no queue-triggered function")
        self.settings = settings or QueueSettings.from_host_json()
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.invocations: list[Invocation] = []
        self._on_outcome = on_outcome
        self._connections = {f.connection: _Connection(f.connection, environ) for f in self.functions}
        self._created: set[tuple[str, str]] = set()

    async def close(self) -> None:
        for connection in self._connections.values():
            await connection.close()

    async def __aenter__(self) -> QueueHost:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- polling ------------------------------------------------------------------------------------
    async def run_once(self) -> int:
        """One poll of every function's queue; handles what it received; returns how many messages."""
        handled = 0
        for function in self.functions:
            client = await self._queue(function.connection, function.queue_name)
            received = [
                m
                async for m in client.receive_messages(
                    max_messages=self.settings.batch_size, visibility_timeout=self.lease_seconds
                )
            ]
            handled += len(received)
            await asyncio.gather(*(self._handle(function, client, message) for message in received))
        return handled

    async def drain(self, within: float = 60.0) -> list[Invocation]:
        """Poll until every watched queue is empty (invisible messages count as present); the invocations
        of this call. TimeoutError if they are not empty `within` seconds (a message delayed past it)."""
        start = len(self.invocations)
        deadline = time.monotonic() + within
        while True:
            if await self.run_once() == 0 and await self._all_empty():
                return self.invocations[start:]
            if time.monotonic() > deadline:
                raise TimeoutError(f"queues not empty after {within:.0f}s: {await self._counts()}")
            await asyncio.sleep(self.poll_seconds)

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set (the subprocess instance)."""
        while not stop.is_set():
            if await self.run_once() == 0:
                try:
                    await asyncio.wait_for(stop.wait(), self.poll_seconds)
                except TimeoutError:
                    pass

    async def listen(self, stop: asyncio.Event) -> None:
        """The host's listener until `stop` is set: messages handled as they come, a new batch while at
        most `newBatchThreshold` are in flight, polling backed off while the queues stay empty."""
        in_flight: set[asyncio.Task[None]] = set()
        delay = self.poll_seconds
        try:
            while not stop.is_set():
                if len(in_flight) > self.settings.new_batch_threshold:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                received = 0
                for function in self.functions:
                    client = await self._queue(function.connection, function.queue_name)
                    async for message in client.receive_messages(
                        max_messages=self.settings.batch_size, visibility_timeout=self.lease_seconds
                    ):
                        task = asyncio.create_task(self._handle(function, client, message))
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
                        received += 1
                wait, delay = (
                    (self.poll_seconds, self.poll_seconds)
                    if received
                    else (delay, min(delay * 2, self.settings.max_polling_interval_seconds))
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
        finally:
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def counts(self) -> dict[str, int]:
        """Approximate message counts of the watched queues (visible and invisible)."""
        return await self._counts()

    async def _counts(self) -> dict[str, int]:
        counts = {}
        for function in self.functions:
            client = await self._queue(function.connection, function.queue_name)
            counts[function.queue_name] = (await client.get_queue_properties()).approximate_message_count or 0
        return counts

    async def _all_empty(self) -> bool:
        return all(count == 0 for count in (await self._counts()).values())

    async def _queue(self, connection: str, queue_name: str) -> QueueClient:
        client = self._connections[connection].client(queue_name)
        if (connection, queue_name) not in self._created:  # the host creates the queues it listens to
            try:
                await client.create_queue()
            except ResourceExistsError:
                pass
            self._created.add((connection, queue_name))
        return client

    # -- one message --------------------------------------------------------------------------------
    async def _handle(self, function: QueueFunction, client: QueueClient, message: QueueMessage) -> None:
        count = int(message.dequeue_count or 0)
        body = self._decode(str(message.content or ""))
        if body is None:
            await self._poison(function, client, message)
            self._record(function, message, count, "undecodable", "the message is not valid base64/UTF-8")
            return
        if count > self.settings.max_dequeue_count:
            await self._poison(function, client, message)
            self._record(function, message, count, "poisoned", "dequeue count above maxDequeueCount")
            return
        lease = _Lease(client, message, self.lease_seconds)
        renewing = asyncio.create_task(lease.keep())
        try:
            await self._invoke(function, message, body)
        except Exception as error:  # the function failed (the host logs it and retries the message)
            await lease.end(renewing)
            reason = f"{type(error).__name__}: {error}"
            try:
                if count >= self.settings.max_dequeue_count:
                    await self._poison(function, client, message, pop_receipt=lease.pop_receipt)
                    self._record(function, message, count, "poisoned", reason)
                else:
                    await client.update_message(
                        message.id, lease.pop_receipt, visibility_timeout=int(self.settings.visibility_timeout_seconds)
                    )
                    self._record(function, message, count, "failed", reason)
            except HttpResponseError as lost:
                if not _lease_lost(lost):
                    raise
                self._record(function, message, count, "expired_lease", reason)
            return
        except BaseException:  # cancelled: a crash; the message comes back when its lease runs out
            renewing.cancel()
            await _quietly(renewing)
            raise
        await lease.end(renewing)
        try:
            await client.delete_message(message.id, lease.pop_receipt)
        except HttpResponseError as lost:  # the lease ran out and another instance took the message
            if not _lease_lost(lost):
                raise
            self._record(function, message, count, "expired_lease", "the message was leased again meanwhile")
            return
        self._record(function, message, count, "succeeded")

    def _decode(self, text: str) -> bytes | None:
        if self.settings.message_encoding == "none":
            return text.encode()
        try:
            data = base64.b64decode(text, validate=True)
            data.decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        return data

    async def _invoke(self, function: QueueFunction, message: QueueMessage, body: bytes) -> None:
        queue_message = WorkerQueueMessage(
            id=message.id,
            body=body,
            dequeue_count=message.dequeue_count,
            expiration_time=message.expires_on,
            insertion_time=message.inserted_on,
            time_next_visible=message.next_visible_on,
            pop_receipt=message.pop_receipt,
        )
        kwargs: dict[str, Any] = {function.arg_name: queue_message}
        if function.wants_context:
            kwargs["context"] = WorkerContext(_function_name=function.name)
        if inspect.iscoroutinefunction(function.user_function):
            await function.user_function(**kwargs)
        else:  # the worker runs sync functions in its thread pool
            await asyncio.to_thread(function.user_function, **kwargs)

    async def _poison(
        self, function: QueueFunction, client: QueueClient, message: QueueMessage, pop_receipt: str | None = None
    ) -> None:
        """Copy the message as it is on the wire to `<queue>-poison`, then delete the original."""
        poison = await self._queue(function.connection, f"{function.queue_name}-poison")
        await poison.send_message(message.content)
        await client.delete_message(message.id, pop_receipt or message.pop_receipt)

    def _record(
        self, function: QueueFunction, message: QueueMessage, count: int, outcome: Outcome, error: str | None = None
    ) -> None:
        invocation = Invocation(
            function=function.name,
            queue=function.queue_name,
            message_id=str(message.id),
            dequeue_count=count,
            outcome=outcome,
            error=error,
        )
        self.invocations.append(invocation)
        if self._on_outcome is not None:
            self._on_outcome(invocation)


class _Lease:
    """Keeps a message invisible while its function runs (the host renews at half the lease)."""

    def __init__(self, client: QueueClient, message: QueueMessage, seconds: int) -> None:
        self._client = client
        self._message_id = message.id
        self.pop_receipt: str = str(message.pop_receipt)
        self._seconds = seconds
        self._ended = asyncio.Event()

    async def keep(self) -> None:
        """Renew until `end()`. A renewal under way then completes first: the queue already holds its new
        pop receipt, so cancelling it would leave the host deleting with a receipt that no longer works."""
        while True:
            try:
                await asyncio.wait_for(self._ended.wait(), self._seconds / 2)
                return
            except TimeoutError:
                updated = await self._client.update_message(
                    self._message_id, self.pop_receipt, visibility_timeout=self._seconds
                )
                self.pop_receipt = str(updated.pop_receipt)

    async def end(self, renewing: asyncio.Task[None]) -> None:
        """Stop renewing once any renewal under way has its answer (a failed renewal is the host's to see
        when it deletes or releases the message). Waited for, not awaited: a host cancelled meanwhile (a
        crash) is cancelled at once and leaves the renewal alone, instead of cancelling it and going on."""
        self._ended.set()
        await asyncio.wait({renewing})
        if not renewing.cancelled():
            renewing.exception()  # retrieved: a renewal that failed is not an unhandled task error


def _lease_lost(error: HttpResponseError) -> bool:
    """The message is gone or leased by someone else (its pop receipt changed)."""
    code = getattr(error, "error_code", None)  # set by the storage SDK on its errors
    return isinstance(error, ResourceNotFoundError) or code in ("PopReceiptMismatch", "MessageNotFound")


async def _quietly(task: asyncio.Task[Any]) -> None:
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
