"""The rig's queue host (local_azure/queue_host.py) against Azurite, with a tiny test-only FunctionApp.

The app below is only for these tests (the real queue functions live in function_app.py): it parses
messages with run_queue.parse_message and behaves by response id, so retries, poisoning, leases and
crashes can be driven from the message alone.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.storage.queue import TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from code_interpreter_files.identity import AppCredential
from code_interpreter_files.run_queue import RunQueue, parse_message
from code_interpreter_files.settings import load_settings
from local_azure.queue_bindings import QueueSettings, parse_timespan, queue_functions, resolve_setting_references
from local_azure.queue_host import QueueHost
from local_azure.queue_instances import QueueHostProcess
from tests.helpers import until
from tests.rig.rig import Rig

pytestmark = pytest.mark.timeout(180)

app = func.FunctionApp()
#: (function, message id, dequeue count, response id, metadata present) of every invocation in this process.
SEEN: list[tuple[str, str, int, str, bool]] = []
#: Set when an invocation starts (in this process).
STARTED = asyncio.Event()
#: Set by a `resp_release*` message; a `resp_waitfor*` invocation waits for it.
RELEASED = asyncio.Event()
#: Set when a lease renewal has reached the queue (its answer still on the way); `resp_endsinrenewal*` waits for it.
RENEWAL_SENT = asyncio.Event()


@app.queue_trigger(arg_name="msg", queue_name="%RUNS_QUEUE%", connection="RUNS_QUEUE_STORAGE")
async def finish_run(msg: func.QueueMessage) -> None:
    message = parse_message(msg.get_body())
    count = msg.dequeue_count or 0
    metadata = all(
        v is not None for v in (msg.id, msg.pop_receipt, msg.insertion_time, msg.expiration_time, msg.time_next_visible)
    )
    SEEN.append(("finish_run", str(msg.id), count, message.response_id, metadata))
    STARTED.set()
    rid = message.response_id
    if rid.startswith("resp_failtwice") and count <= 2:
        raise RuntimeError("transient failure")
    if rid.startswith("resp_always"):
        raise RuntimeError("permanent failure")
    if rid.startswith("resp_slow"):
        await asyncio.sleep(6)
    if rid.startswith("resp_waitfor"):
        await asyncio.wait_for(RELEASED.wait(), 30)
    if rid.startswith("resp_release"):
        RELEASED.set()
    if rid.startswith("resp_endsinrenewal"):
        await asyncio.wait_for(RENEWAL_SENT.wait(), 30)


@app.queue_trigger(arg_name="msg", queue_name="%RUNS_QUEUE%-poison", connection="RUNS_QUEUE_STORAGE")
def record_poison(msg: func.QueueMessage, context: func.Context) -> None:
    """A sync function with a context, as the worker runs them (in its thread pool)."""
    assert context.function_name == "record_poison" and context.invocation_id
    rid = parse_message(msg.get_body()).response_id
    SEEN.append(("record_poison", str(msg.id), msg.dequeue_count or 0, rid, True))


@functools.cache
def functions() -> tuple[func.Function, ...]:
    """The app is indexed once per process (the SDK refuses a second get_functions())."""
    return tuple(app.get_functions())


@pytest.fixture
def queue_env(configure: Callable[..., dict[str, str]], request: pytest.FixtureRequest) -> dict[str, str]:
    storage = getattr(request, "param", "connection_string")
    SEEN.clear()
    STARTED.clear()
    RELEASED.clear()
    RENEWAL_SENT.clear()
    return configure(storage=storage, RUNS_QUEUE=f"runs-{uuid.uuid4().hex[:16]}")


async def _enqueue(*response_ids: str) -> None:
    """Through the app's real sender (base64 JSON), as the HTTP functions do."""
    settings = load_settings()
    credential = AppCredential() if settings.queue_service_url else None
    queue = RunQueue(settings, credential)
    try:
        for rid in response_ids:
            await queue.enqueue_finish(rid)
    finally:
        await queue.close()
        if credential is not None:
            await credential.close()


def _host(**kwargs: object) -> QueueHost:
    return QueueHost(functions(), **kwargs)  # type: ignore[arg-type]


def _outcomes(host: QueueHost) -> list[tuple[str, int, str]]:
    return [(i.function, i.dequeue_count, i.outcome) for i in host.invocations]


def _renewals_answered_late(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Lease renewals land at once (the queue holds the new pop receipt), sets RENEWAL_SENT, and answer 1 s
    later; returns the real `update_message`."""
    renew = QueueClient.update_message

    async def slow_answer(self: QueueClient, *args: Any, **kwargs: Any) -> Any:
        updated = await renew(self, *args, **kwargs)
        RENEWAL_SENT.set()
        await asyncio.sleep(1)  # the answer on its way
        return updated

    monkeypatch.setattr(QueueClient, "update_message", slow_answer)
    return renew


@pytest.mark.parametrize("queue_env", ["identity", "connection_string"], indirect=True)
async def test_success_deletes_the_message(rig: Rig, queue_env: dict[str, str]) -> None:
    await _enqueue("resp_ok1", "resp_ok2")
    async with _host() as host:
        await host.drain()
        assert sorted((f, c, r, m) for f, _, c, r, m in SEEN) == [
            ("finish_run", 1, "resp_ok1", True),
            ("finish_run", 1, "resp_ok2", True),
        ]
        assert _outcomes(host) == [("finish_run", 1, "succeeded")] * 2
        assert await host.counts() == {queue_env["RUNS_QUEUE"]: 0, queue_env["RUNS_QUEUE"] + "-poison": 0}


async def test_failure_is_retried_with_the_dequeue_count(queue_env: dict[str, str]) -> None:
    await _enqueue("resp_failtwice")
    async with _host() as host:
        await host.drain()
        assert _outcomes(host) == [
            ("finish_run", 1, "failed"),
            ("finish_run", 2, "failed"),
            ("finish_run", 3, "succeeded"),
        ]
    assert len({message_id for _, message_id, _, _, _ in SEEN}) == 1  # one message, three dequeues


async def test_poison_at_max_dequeue_count_reaches_the_poison_function(queue_env: dict[str, str]) -> None:
    await _enqueue("resp_always")
    async with _host() as host:
        await host.drain()
        assert _outcomes(host) == [("finish_run", n, "failed") for n in range(1, 5)] + [
            ("finish_run", 5, "poisoned"),
            ("record_poison", 1, "succeeded"),
        ]
    assert [(f, r) for f, _, _, r, _ in SEEN][-1] == ("record_poison", "resp_always")


async def test_host_json_max_dequeue_count_and_visibility_timeout(queue_env: dict[str, str], tmp_path: Path) -> None:
    host_json = tmp_path / "host.json"
    queues = {"maxDequeueCount": 2, "visibilityTimeout": "00:00:01", "batchSize": 6, "maxPollingInterval": "00:00:02"}
    host_json.write_text(json.dumps({"version": "2.0", "extensions": {"queues": queues}}))
    settings = QueueSettings.from_host_json(host_json)
    assert (settings.max_dequeue_count, settings.visibility_timeout_seconds) == (2, 1.0)
    assert (settings.new_batch_threshold, settings.max_polling_interval_seconds) == (3, 2.0)  # batchSize / 2
    await _enqueue("resp_always2")
    async with _host(settings=settings) as host:
        await host.drain()
        assert _outcomes(host) == [
            ("finish_run", 1, "failed"),
            ("finish_run", 2, "poisoned"),
            ("record_poison", 1, "succeeded"),
        ]


def test_repository_host_json_defaults() -> None:
    """The repository's host.json: whatever it sets, the values are valid and the encoding is base64."""
    settings = QueueSettings.from_host_json()
    assert settings.message_encoding == "base64"
    assert settings.max_dequeue_count >= 1


async def test_undecodable_message_is_poisoned_without_running(rig: Rig, queue_env: dict[str, str]) -> None:
    name = queue_env["RUNS_QUEUE"]
    async with _host() as host:
        await host.run_once()  # creates the queues, as the host does when it starts listening
        async with QueueClient.from_connection_string(rig.azurite.queue_connection_string, name) as raw:
            await raw.send_message('{"kind": "finish"} is not base64')  # sent without the encode policy
        await host.drain()
        assert [(i.function, i.outcome) for i in host.invocations] == [
            ("finish_run", "undecodable"),
            ("record_poison", "undecodable"),  # the copy in the poison queue is no more decodable
        ]
    assert SEEN == []
    async with QueueClient.from_connection_string(rig.azurite.queue_connection_string, f"{name}-poison-poison") as pp:
        assert [m.content async for m in pp.receive_messages()] == ['{"kind": "finish"} is not base64']


async def test_garbage_json_fails_in_the_function_and_ends_in_poison(rig: Rig, queue_env: dict[str, str]) -> None:
    name = queue_env["RUNS_QUEUE"]
    encode = TextBase64EncodePolicy()
    async with _host() as host:
        await host.run_once()
        async with QueueClient.from_connection_string(
            rig.azurite.queue_connection_string, name, message_encode_policy=encode
        ) as sender:
            await sender.send_message('{"kind": "nonsense"}')
        await host.drain()
        finish = [i for i in host.invocations if i.function == "finish_run"]
        assert [i.outcome for i in finish] == ["failed"] * 4 + ["poisoned"]
        assert finish[-1].error is not None and "QueueMessageError" in finish[-1].error


async def test_lease_is_renewed_while_a_slow_function_runs(queue_env: dict[str, str]) -> None:
    """A 6 s invocation under a 4 s lease (renewed every 2 s): another instance polling meanwhile never
    gets the message. Without the renewal it would (checked: the test then fails)."""
    await _enqueue("resp_slow1")
    async with _host(lease_seconds=4) as first, _host(lease_seconds=4) as second:
        draining = asyncio.create_task(first.drain())
        await STARTED.wait()
        while not draining.done():
            await second.run_once()
            await asyncio.sleep(0.2)
        await draining
        assert _outcomes(first) == [("finish_run", 1, "succeeded")]
        assert second.invocations == []
    assert len(SEEN) == 1


async def test_a_function_that_ends_while_its_lease_is_renewed_deletes_its_message(
    queue_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewal's new pop receipt is kept even when the function ends before its answer arrives: the
    host then deletes the message, instead of failing with the old receipt and running it again after the
    lease (before: `expired_lease` and a second invocation, seen once in a fresh clone's full run)."""
    _renewals_answered_late(monkeypatch)
    await _enqueue("resp_endsinrenewal1")
    async with _host(lease_seconds=2) as host:
        await host.drain(within=30)
        assert _outcomes(host) == [("finish_run", 1, "succeeded")]
    assert RENEWAL_SENT.is_set()


async def test_a_host_that_crashes_while_it_waits_for_a_renewal_neither_deletes_nor_releases(
    queue_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host dies (is cancelled) while it waits for the answer of a renewal under way: it stops there,
    as a crash does: no delete, nothing recorded; the message comes back after its lease."""
    renew = _renewals_answered_late(monkeypatch)
    await _enqueue("resp_endsinrenewal2")
    async with _host(lease_seconds=2) as crashing:
        draining = asyncio.create_task(crashing.drain())
        await RENEWAL_SENT.wait()
        await asyncio.sleep(0.2)  # the function has ended: the host waits for the renewal's answer
        draining.cancel()
        with pytest.raises(asyncio.CancelledError):
            await draining
        assert crashing.invocations == []
    monkeypatch.setattr(QueueClient, "update_message", renew)  # the survivor's renewals answer at once
    async with _host(lease_seconds=10) as survivor:
        await survivor.drain()
        assert _outcomes(survivor) == [("finish_run", 2, "succeeded")]


async def test_listen_takes_new_messages_while_one_runs(queue_env: dict[str, str]) -> None:
    """As the Functions host listens: a message sent while another runs is handled at once (here it is
    what lets the first one end), where `run_forever` would wait for its batch to end first."""
    settings = QueueSettings(batch_size=1, new_batch_threshold=1, max_polling_interval_seconds=0.5)
    await _enqueue("resp_waitfor1")
    stop = asyncio.Event()
    async with _host(settings=settings, poll_seconds=0.05) as host:
        listening = asyncio.create_task(host.listen(stop))
        await STARTED.wait()
        await _enqueue("resp_release1")
        await asyncio.wait_for(RELEASED.wait(), 60)
        await until(lambda: len(host.invocations) == 2)  # the waiting one ends once the release ran
        stop.set()
        await listening
        rid = {message_id: r for _, message_id, _, r, _ in SEEN}
        # Both succeeded: the waiting one could only end because the release ran meanwhile (waiting
        # for its batch, it fails after 30 s). Which is recorded first is a race (each is recorded
        # after its message is deleted), so the order is not asserted.
        assert sorted((rid[i.message_id], i.outcome) for i in host.invocations) == [
            ("resp_release1", "succeeded"),
            ("resp_waitfor1", "succeeded"),
        ]


async def test_crashed_invocation_comes_back_after_its_lease(queue_env: dict[str, str]) -> None:
    await _enqueue("resp_slow2")
    async with _host(lease_seconds=2) as crashing:
        draining = asyncio.create_task(crashing.drain())
        await STARTED.wait()
        draining.cancel()  # the instance dies mid-invocation: no delete, no release
        with pytest.raises(asyncio.CancelledError):
            await draining
        assert crashing.invocations == []
    async with _host(lease_seconds=10) as survivor:
        await survivor.drain()
        assert _outcomes(survivor) == [("finish_run", 2, "succeeded")]


async def test_separate_instance_in_a_subprocess(queue_env: dict[str, str]) -> None:
    with QueueHostProcess(queue_env, app="tests.test_queue_host:app", lease_seconds=30) as instance:
        assert instance.queues == [queue_env["RUNS_QUEUE"], queue_env["RUNS_QUEUE"] + "-poison"]
        await _enqueue("resp_sub1", "resp_failtwice_sub")
        deadline = time.monotonic() + 60
        # Another process's output, read by a thread: polled (bounded), nothing to await on.
        while sum(o.outcome == "succeeded" for o in instance.outcomes) < 2 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        outcomes = sorted((o.dequeue_count, o.outcome) for o in instance.outcomes)
    assert outcomes == [(1, "failed"), (1, "succeeded"), (2, "failed"), (3, "succeeded")]
    assert SEEN == []  # it ran in the other process


def test_setting_references_and_bindings() -> None:
    assert resolve_setting_references("%RUNS_QUEUE%-poison", {"RUNS_QUEUE": "runs"}) == "runs-poison"
    with pytest.raises(KeyError, match="RUNS_QUEUE"):
        resolve_setting_references("%RUNS_QUEUE%", {})
    found = queue_functions(functions(), {"RUNS_QUEUE": "q1"})
    assert [(f.name, f.queue_name, f.connection, f.wants_context) for f in found] == [
        ("finish_run", "q1", "RUNS_QUEUE_STORAGE", False),
        ("record_poison", "q1-poison", "RUNS_QUEUE_STORAGE", True),
    ]
    assert parse_timespan("00:00:30") == 30 and parse_timespan("1.00:00:00") == 86400
    with pytest.raises(ValueError):
        parse_timespan("30s")
