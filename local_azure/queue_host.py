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

In-process: `QueueHost(functions, environ=...)` then `await host.drain()`. As a separate instance:
`python -m local_azure.queue_host --app function_app:app` (see `start_queue_host`), which prints
`READY` and then one `OUTCOME {json}` line per message handled.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import importlib
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import azure.functions as func
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.functions.queue import QueueMessage as WorkerQueueMessage
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.queue import QueueMessage
from azure.storage.queue.aio import QueueClient

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST_JSON = REPO_ROOT / "host.json"
DEFAULT_CONNECTION = "AzureWebJobsStorage"
# The host leases a message for 10 minutes and renews it while the function runs.
DEFAULT_LEASE_SECONDS = 600
_SETTING_REFERENCE = re.compile(r"%([^%]+)%")

Outcome = Literal["succeeded", "failed", "poisoned", "undecodable", "expired_lease"]


@dataclass(frozen=True)
class QueueSettings:
    """host.json `extensions.queues` (the parts that change what a test sees), with the host's defaults."""

    max_dequeue_count: int = 5
    visibility_timeout_seconds: float = 0.0
    batch_size: int = 16
    message_encoding: Literal["base64", "none"] = "base64"
    new_batch_threshold: int = 8  # the host's default: batchSize / 2 (per core; one here)
    max_polling_interval_seconds: float = 60.0

    @classmethod
    def from_host_json(cls, path: Path = HOST_JSON) -> QueueSettings:
        queues = json.loads(Path(path).read_text()).get("extensions", {}).get("queues", {})
        encoding = str(queues.get("messageEncoding", "base64")).lower()
        if encoding not in ("base64", "none"):
            raise ValueError(f"host.json messageEncoding must be base64 or none, not {encoding!r}")
        return cls(
            max_dequeue_count=int(queues.get("maxDequeueCount", 5)),
            visibility_timeout_seconds=parse_timespan(str(queues.get("visibilityTimeout", "00:00:00"))),
            batch_size=int(queues.get("batchSize", 16)),
            message_encoding="base64" if encoding == "base64" else "none",
            new_batch_threshold=int(queues.get("newBatchThreshold", int(queues.get("batchSize", 16)) // 2)),
            max_polling_interval_seconds=parse_timespan(str(queues.get("maxPollingInterval", "00:01:00"))),
        )


def parse_timespan(value: str) -> float:
    """Seconds in a .NET TimeSpan string: `hh:mm:ss`, `hh:mm:ss.fff` or `d.hh:mm:ss`."""
    match = re.fullmatch(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2}(?:\.\d+)?)", value.strip())
    if match is None:
        raise ValueError(f"not a TimeSpan (hh:mm:ss): {value!r}")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@dataclass(frozen=True)
class QueueFunction:
    """A queue-triggered function of the app, with its queue name resolved from the settings."""

    name: str
    queue_name: str
    connection: str
    arg_name: str
    user_function: Callable[..., Any]
    wants_context: bool


@dataclass(frozen=True)
class Invocation:
    """One message handled: which function, which attempt (dequeue count), what happened."""

    function: str
    queue: str
    message_id: str
    dequeue_count: int
    outcome: Outcome
    error: str | None = None


@dataclass
class _Context(func.Context):
    """The `context` argument the Python worker passes."""

    _function_name: str
    _invocation_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> type[threading.local]:
        return threading.local  # type: ignore[return-value]

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return str(REPO_ROOT)

    @property
    def trace_context(self) -> Any:
        return None

    @property
    def retry_context(self) -> Any:
        return None


def resolve_setting_references(value: str, environ: Mapping[str, str]) -> str:
    """`%RUNS_QUEUE%-poison` -> `runs-poison`, as the host resolves binding expressions from app settings."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise KeyError(f"the binding refers to app setting {name!r}, which is not set")
        return environ[name]

    return _SETTING_REFERENCE.sub(lookup, value)


def queue_functions(functions: Iterable[func.Function], environ: Mapping[str, str]) -> list[QueueFunction]:
    """The functions with a `queueTrigger` binding, queue names resolved.

    Pass the list of the app's one `get_functions()` call (the SDK refuses to index an app twice).
    """
    found = []
    for function in functions:
        trigger = function.get_trigger()
        binding = trigger.get_dict_repr() if trigger is not None else {}
        if binding.get("type") != "queueTrigger":
            continue
        user_function = function.get_user_function()
        parameters = inspect.signature(user_function).parameters
        arg_name = str(binding["name"])
        extra = set(parameters) - {arg_name, "context"}
        if extra:
            raise NotImplementedError(f"{function.get_function_name()}: bindings other than the trigger: {extra}")
        found.append(
            QueueFunction(
                name=str(function.get_function_name()),
                queue_name=resolve_setting_references(str(binding["queueName"]), environ),
                connection=str(binding.get("connection") or DEFAULT_CONNECTION),
                arg_name=arg_name,
                user_function=user_function,
                wants_context="context" in parameters,
            )
        )
    return found


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
            renewing.cancel()
            await _quietly(renewing)
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
        renewing.cancel()
        await _quietly(renewing)
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
            kwargs["context"] = _Context(_function_name=function.name)
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

    async def keep(self) -> None:
        while True:
            await asyncio.sleep(self._seconds / 2)
            updated = await self._client.update_message(
                self._message_id, self.pop_receipt, visibility_timeout=self._seconds
            )
            self.pop_receipt = str(updated.pop_receipt)


def _lease_lost(error: HttpResponseError) -> bool:
    """The message is gone or leased by someone else (its pop receipt changed)."""
    code = getattr(error, "error_code", None)  # set by the storage SDK on its errors
    return isinstance(error, ResourceNotFoundError) or code in ("PopReceiptMismatch", "MessageNotFound")


async def _quietly(task: asyncio.Task[Any]) -> None:
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass


# -- next to the minimal HTTP host -------------------------------------------------------------------


class QueueCompanion:
    """The app's queue triggers, polled beside local_azure/funchost.py's HTTP server (one process, like one
    Functions instance): `python -m local_azure.funchost --companion local_azure.queue_host:companion`.
    A poll that fails (storage not reachable a moment) is reported in one line and tried again."""

    def __init__(self, app: func.FunctionApp, poll_seconds: float = 0.5) -> None:
        self.app = app
        self.poll_seconds = poll_seconds
        self.host: QueueHost | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from local_azure.funchost import indexed_functions  # the app is indexed once per process

        functions = list(indexed_functions(self.app).values())
        if not queue_functions(functions, os.environ):
            return
        self.host = QueueHost(functions, poll_seconds=self.poll_seconds, on_outcome=_report_trouble)
        self._task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        assert self.host is not None
        while not self._stop.is_set():
            try:
                await self.host.run_forever(self._stop)
            except Exception as error:  # noqa: BLE001 - the host keeps polling, as the Functions host does
                print(f"      queue poll failed ({type(error).__name__}); trying again", file=sys.stderr, flush=True)
                try:
                    await asyncio.wait_for(self._stop.wait(), 2.0)
                except TimeoutError:
                    pass

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        if self.host is not None:
            await self.host.close()


def _report_trouble(invocation: Invocation) -> None:
    if invocation.outcome != "succeeded":
        attempt = f"attempt {invocation.dequeue_count}"
        print(
            f"      queue {invocation.function} {invocation.outcome} ({attempt}): {invocation.error or ''}".rstrip(),
            file=sys.stderr,
            flush=True,
        )


def companion(app: func.FunctionApp) -> QueueCompanion:
    """The `--companion` factory of local_azure/funchost.py."""
    return QueueCompanion(app)


# -- a separate instance ----------------------------------------------------------------------------


def load_app(spec: str) -> func.FunctionApp:
    """`module:attribute`, e.g. `function_app:app`."""
    module_name, _, attribute = spec.partition(":")
    app = getattr(importlib.import_module(module_name), attribute or "app")
    if not isinstance(app, func.FunctionApp):
        raise TypeError(f"{spec} is not a FunctionApp")
    return app


async def serve(app_spec: str, host_json: Path, lease_seconds: int, poll_seconds: float) -> None:
    """Run the queue host for the app until SIGTERM/SIGINT; print READY, then one OUTCOME line per message."""

    def report(invocation: Invocation) -> None:
        print("OUTCOME " + json.dumps(asdict(invocation)), flush=True)

    app = load_app(app_spec)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with QueueHost(
        app.get_functions(),
        settings=QueueSettings.from_host_json(host_json),
        lease_seconds=lease_seconds,
        poll_seconds=poll_seconds,
        on_outcome=report,
    ) as host:
        print("READY " + ",".join(f.queue_name for f in host.functions), flush=True)
        await host.run_forever(stop)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Queue triggers of a Functions app, played against Azure Storage.")
    parser.add_argument("--app", default="function_app:app", help="module:attribute of the FunctionApp")
    parser.add_argument("--host-json", type=Path, default=HOST_JSON)
    parser.add_argument("--lease-seconds", type=int, default=DEFAULT_LEASE_SECONDS)
    parser.add_argument("--poll-seconds", type=float, default=0.2)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.app, args.host_json, args.lease_seconds, args.poll_seconds))


class QueueHostProcess:
    """A queue host in a child process (another instance of the app); collects its OUTCOME lines."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        app: str = "function_app:app",
        host_json: Path = HOST_JSON,
        lease_seconds: int = DEFAULT_LEASE_SECONDS,
        poll_seconds: float = 0.2,
        timeout: float = 60.0,
    ) -> None:
        cmd = [sys.executable, "-m", "local_azure.queue_host", "--app", app, "--host-json", str(host_json)]
        cmd += ["--lease-seconds", str(lease_seconds), "--poll-seconds", str(poll_seconds)]
        child_env = dict(env, PYTHONUNBUFFERED="1")
        child_env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO_ROOT), child_env.get("PYTHONPATH"))))
        self.outcomes: list[Invocation] = []
        self._ready = threading.Event()
        self.queues: list[str] = []
        self.proc = subprocess.Popen(
            cmd, cwd=str(REPO_ROOT), env=child_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"queue host did not print READY within {timeout:.0f}s")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("READY "):
                self.queues = line.split(" ", 1)[1].strip().split(",")
                self._ready.set()
            elif line.startswith("OUTCOME "):
                self.outcomes.append(Invocation(**json.loads(line.split(" ", 1)[1])))
        self._ready.set()  # exited: stop waiting

    def kill(self) -> None:
        """SIGKILL: a crashed instance; its leased messages come back when their leases run out."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the host stops polling), then SIGKILL after `timeout`."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> QueueHostProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    main()
