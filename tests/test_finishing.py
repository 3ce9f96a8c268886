"""The finishing core (issue 19): one place commits a run's outcome, no transient fault loses a file, and
DELETE wins on every path. The commit is tested on its own against the rig's table and blobs; each defect
of the old two-path design is reproduced through the rig (the app over HTTP, the queue host, faults
from the emulator and from a proxy in front of Azurite's table service)."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from azure.storage.queue.aio import QueueClient

from code_interpreter_files import deleting, finishing
from code_interpreter_files.claims import Claim, ClaimHeld
from code_interpreter_files.errors import RunDeleted
from code_interpreter_files.invocation import StrayCancellation, invoke
from code_interpreter_files.records import Outcome, RunRecord
from code_interpreter_files.run_table import Row
from code_interpreter_files.runlog import RunLog
from code_interpreter_files.services import Services, get_services
from local_azure.queue_host import QueueHost
from tests import figures
from tests.appclient import FUNCTIONS, AppClient, Context
from tests.helpers import app_settings, manifest, manifest_exists, peek_queue, storage_names, until
from tests.rig.faultproxy import FaultProxy

LOG = RunLog("test-finishing", "test")


def _host() -> QueueHost:
    return QueueHost(FUNCTIONS.values(), environ=os.environ, lease_seconds=3, poll_seconds=0.05)


# -- the commit on its own ------------------------------------------------------------------------


async def _recorded_run(services: Services, *, callback_url: str | None = None) -> Row:
    """A run's row as a start records it (no Azure OpenAI run behind it: the commit needs none)."""
    record = RunRecord(
        response_id="resp_" + uuid.uuid4().hex,
        owner=services.settings.owner_tag,
        created_at=datetime.now(UTC).replace(microsecond=0),
        callback_url=callback_url,
    )
    return await services.table.start(record)


def _outcome(row: Row, text: str = "done") -> Outcome:
    return Outcome(response_id=row.record.response_id, status="completed", text=text, owner=row.record.owner)


async def test_commit_writes_the_manifest_then_the_row_then_queues_a_callback_of_ids_only(rig, queue_env) -> None:
    services = await get_services()
    row = await _recorded_run(services, callback_url="https://cb.example/hook?token=secret")
    claim = await Claim.take(services.table, row)
    outcome = await finishing.commit(services, claim, _outcome(row), LOG)
    rid = row.record.response_id
    assert manifest(rig, rid) == outcome.to_manifest()
    stored = await services.table.reread(row)
    assert stored is not None
    assert (stored.record.status, stored.record.files, stored.record.finisher, stored.record.finishing_until) == (
        "completed",
        0,
        None,
        None,
    )
    assert await peek_queue(rig, queue_env["RUNS_QUEUE"]) == [{"kind": "callback", "response_id": rid, "attempt": 1}]


async def test_a_commit_after_delete_takes_back_everything_it_wrote(rig, queue_env) -> None:
    services = await get_services()
    row = await _recorded_run(services)
    rid = row.record.response_id
    claim = await Claim.take(services.table, row)
    await deleting.delete_run(services, row, LOG, response_exists=False)  # DELETE wins while the files copy
    late = services.store.file_client(f"{rid}/cfile_late/late.txt")  # a file committed after DELETE's sweep
    await late.upload_blob(b"late", overwrite=True)
    with pytest.raises(RunDeleted):
        await finishing.commit(services, claim, _outcome(row), LOG)
    assert storage_names(rig, rid, bookkeeping=True) == []
    tombstone = await services.table.locate(rid)
    assert tombstone is not None and tombstone.deleted and await services.table.read(tombstone) is None
    assert await peek_queue(rig, queue_env["RUNS_QUEUE"]) == []


async def test_the_first_outcome_wins_and_is_called_back_once(rig, queue_env) -> None:
    services = await get_services()
    row = await _recorded_run(services, callback_url="https://cb.example/hook")
    first = await finishing.commit(services, await Claim.take(services.table, row), _outcome(row, "first"), LOG)
    again = await services.table.reread(row)
    assert again is not None
    second = await finishing.commit(services, await Claim.take(services.table, again), _outcome(row, "second"), LOG)
    assert second.text == first.text == "first"
    assert [m["kind"] for m in await peek_queue(rig, queue_env["RUNS_QUEUE"])] == ["callback"]


async def test_a_claim_that_ran_out_and_was_taken_over_leaves_its_manifest_to_the_new_holder(rig, configure) -> None:
    services = await get_services()
    row = await _recorded_run(services)
    late = await Claim.take(services.table, row)
    late.row = await services.table.update(late.row, finishing_until=datetime.now(UTC) - timedelta(seconds=1))
    taker = await Claim.take(services.table, await _fresh(services, row))  # the claim ran out: taken over
    with pytest.raises(ClaimHeld):  # a live claim is not
        await Claim.take(services.table, await _fresh(services, row))
    written = await finishing.commit(services, late, _outcome(row, "late"), LOG)  # its If-Match fails: no error
    assert written.text == "late" and manifest_exists(rig, row.record.response_id)
    assert (await _fresh(services, row)).record.status == "running"  # the holder's to commit
    committed = await finishing.commit(services, taker, _outcome(row, "taker"), LOG)
    assert committed.text == "late" and (await _fresh(services, row)).record.status == "completed"


async def _fresh(services: Services, row: Row) -> Row:
    fresh = await services.table.reread(row)
    assert fresh is not None
    return fresh


async def test_nothing_but_an_exception_escapes_an_invocation() -> None:
    """A cancellation from inside (a lost claim's, say) is an error to answer or retry, never a bare
    CancelledError; the host's own cancellation still goes through."""

    async def cancelled_inside(log: RunLog) -> str:
        raise asyncio.CancelledError()

    seen: list[Exception] = []

    def on_error(error: Exception, log: RunLog) -> str:
        seen.append(error)
        return "answered"

    assert await invoke(Context(), "test", cancelled_inside, on_error) == "answered"
    assert isinstance(seen[0], StrayCancellation)

    async def slow(log: RunLog) -> str:
        await asyncio.sleep(10)
        return "late"

    task = asyncio.ensure_future(invoke(Context(), "test", slow, on_error))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- the defects, through the rig ------------------------------------------------------------------


async def test_a_45_second_outage_of_retrieve_or_of_file_content_loses_no_file(app: AppClient, rig, queue_env) -> None:
    """Azure OpenAI answering 500 for 45 s, to retrieve (after the model ended, and while it runs) or to
    file content: the queue tries again later, never using up the host's retries; every file arrives
    with nobody calling GET. (Before: the message was poisoned after ~27 s and the run recorded with no
    files for good.)"""
    outage = {"status": 500, "for_seconds": 45}
    scripts = [
        app.script(latency=0.2, files=[{"path": "/mnt/data/a.txt", "content": "a"}],
                   fail_first=[{**outage, "on": "get_response"}]),
        app.script(latency=20, files=[{"path": "/mnt/data/b.txt", "content": "b"}],
                   fail_first=[{**outage, "on": "get_response"}]),
        app.script(latency=0.2, files=[{"path": "/mnt/data/c.bin", "size": 300_000}],
                   fail_first=[{**outage, "on": "content"}]),
    ]  # fmt: skip
    runs = [(await app.post_run(prompt=s["prompt"], wait=False)).json["response_id"] for s in scripts]
    figures.count("faults_injected", len(runs))
    async with _host() as host:
        invocations = await host.drain(within=180)
    assert not [i for i in invocations if i.function == "record_poison" or i.outcome != "succeeded"]
    assert {i.dequeue_count for i in invocations} == {1}
    for response_id in runs:
        assert manifest_exists(rig, response_id)
        answer = (await app.get_run(response_id)).json
        app.verify_answer(answer)
        app.assert_nothing_lost(answer, set(app.expected_files(response_id)), copied=True)


async def test_a_poisoned_run_keeps_its_caller_and_true_state_and_get_finishes_it(
    app: AppClient, rig, configure, queue_env
) -> None:
    """A finish the host gave up on (maxDequeueCount: a crash or a bug) is recorded honestly: the run's
    owner and caller kept, its status what it is, never a final manifest; another caller's GET is 404;
    its caller's GET finishes it while the container still answers. (Before: a manifest without owner
    or principal, `completed` with no files, readable by every caller.)"""
    configure(**app_settings(queue_env), WEBSITE_AUTH_ENABLED="true")
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    info = app.script(latency=0.2, files=[{"path": "/mnt/data/kept.txt", "content": "kept"}])
    response_id = (await app.post_run(prompt=info["prompt"], wait=False, caller=alice)).json["response_id"]
    queue = queue_env["RUNS_QUEUE"]
    async with QueueClient.from_connection_string(rig.azurite.queue_connection_string, queue) as main:
        [message] = [m async for m in main.receive_messages()]
        await main.delete_message(message)  # what the host does after the last retry:
    async with QueueClient.from_connection_string(rig.azurite.queue_connection_string, f"{queue}-poison") as poison:
        await poison.create_queue()
        await poison.send_message(message.content)  # the same (base64) text, on the poison queue
    async with _host() as host:
        [invocation] = await host.drain(within=60)
    assert (invocation.function, invocation.outcome) == ("record_poison", "succeeded")
    services = await get_services()
    ref = await services.table.locate(response_id)
    assert ref is not None
    row = await services.table.read(ref)
    assert row is not None
    assert (row.record.status, row.record.error, row.record.principal) == ("running", "finish_failed", alice)
    assert not manifest_exists(rig, response_id)
    assert (await app.get_run(response_id, caller=bob)).status == 404
    figures.count("foreign_reads_refused")
    # The owner's GET finishes a run whose model has ended: wait for that end (all of the above can take
    # less than the model's 0.2 s on an idle machine, and the GET then rightly answers 202 in_progress).
    await until(lambda: rig.emulator.run(response_id)["status"] == "completed", within=30)
    answer = await app.get_run(response_id, caller=alice)
    assert answer.status == 200 and [f["filename"] for f in answer.json["files"]] == ["kept.txt"], answer.body
    app.verify_answer(answer.json)


async def test_a_claim_renewal_that_fails_is_retried_and_the_copy_goes_on(
    app: AppClient, rig, configure, queue_env
) -> None:
    """Storage failing a claim's renewal (past the SDK's own retries) while a slow copy runs: the renewal
    is tried again while the claim is valid, the copy goes on, nothing says `run_deleted`. (Before: one
    failed lease renewal cancelled the copy and the caller was told the run was deleted.)"""
    renewals: list[str] = []

    def renewal(request, body: bytes) -> bool:
        if request.method != "PUT" or b'"finisher"' not in body:
            return False
        finisher = json.loads(body)["finisher"]
        renewals.append(finisher)
        return renewals.count(finisher) > 1  # the claim's own take goes through; what follows is a renewal

    async with FaultProxy(rig.azurite.table_url, rig.tls) as proxy:
        rule = proxy.fail(503, times=4, when=renewal)  # 1 + the SDK's 3 retries: the renewal call fails
        configure(**app_settings(queue_env), RUNS_TABLE_SERVICE_URL=proxy.url)
        info = app.script(
            latency=0.2, files=[{"path": "/mnt/data/slow.bin", "size": 2_000_000, "download_seconds": 30}]
        )
        response_id = (await app.post_run(prompt=info["prompt"], wait=False)).json["response_id"]
        async with _host() as host:
            invocations = await host.drain(within=120)
        figures.count("faults_injected", rule.served)
    assert rule.served == 4
    assert [i.function for i in invocations] == ["finish_run"] and invocations[0].outcome == "succeeded"
    configure(**app_settings(queue_env))  # the proxy is gone: the table directly (a GET reads the tombstone)
    answer = (await app.get_run(response_id)).json
    assert [f["filename"] for f in answer["files"]] == ["slow.bin"]
    app.verify_answer(answer)


async def test_delete_while_the_queue_follows_a_run_whose_cancel_lands_late_leaves_nothing(
    app: AppClient, rig, queue_env
) -> None:
    """Azure's cancel lands late and deleting a running response is refused: the queue, still following
    the run, sees `cancelled` after DELETE's cleanup. Nothing is written: GET after DELETE is 404, a second
    DELETE too, and only the tombstone is left. (Before: the failure record landed next to the tombstone,
    GET answered 409 run_cancelled and the run could never be removed.)"""
    info = app.script(latency=30, cancel_lands_after=3, delete_refused_while_running=400,
                      files=[{"path": "/mnt/data/never.txt", "content": "never"}])  # fmt: skip
    response_id = (await app.post_run(prompt=info["prompt"], wait=False)).json["response_id"]
    rig.emulator.reset()  # requests are counted from here
    async with _host() as host:
        following = asyncio.ensure_future(host.run_once())  # the finish follows the running model
        await until(lambda: rig.emulator.stats()["requests"].get("GET /responses/{id}", 0) >= 2, within=30)
        assert (await app.delete_run(response_id)).status == 204
        await asyncio.wait_for(following, 30)  # the cancel lands, the queue sees it: and writes nothing
        await host.drain(within=60)
    assert rig.emulator.run(response_id)["status"] == "cancelled"  # landed while the queue followed
    assert (await app.get_run(response_id)).status == 404
    assert (await app.delete_run(response_id)).status == 404
    assert storage_names(rig, response_id, bookkeeping=True) == []
    services = await get_services()
    tombstone = await services.table.locate(response_id)
    assert tombstone is not None and tombstone.deleted and await services.table.read(tombstone) is None


async def test_a_run_is_recorded_before_its_finish_is_queued(app: AppClient, rig, configure, queue_env) -> None:
    """The row (callback, inputs, caller) is written before the message that finishes the run: a run that
    cannot be recorded is never queued, and is cancelled rather than left running unbilled-for by nobody.
    (Before: the message went first, and a fast run finished in the gap lost its callback.)"""

    def insert(request, body: bytes) -> bool:
        return request.method == "POST" and request.path.endswith("/codeinterpreterruns")  # Insert Entity

    async with FaultProxy(rig.azurite.table_url, rig.tls) as proxy:
        proxy.fail(500, times=None, when=insert)
        configure(**app_settings(queue_env), RUNS_TABLE_SERVICE_URL=proxy.url)
        info = app.script(latency=5, files=[{"path": "/mnt/data/x.txt", "content": "x"}])
        reply = await app.post_run(prompt=info["prompt"], wait=False)
    assert reply.status == 502 and reply.error_code() == "storage_error", reply.body
    [response_id] = rig.emulator.runs_for(info["script_id"])
    assert rig.emulator.run(response_id)["status"] == "cancelled"
    assert await peek_queue(rig, queue_env["RUNS_QUEUE"]) == []


@pytest.mark.parametrize(
    ("nth", "after_forwarding"),
    [(1, False), (1, True), (2, False), (2, True)],
    ids=["row-lost-on-the-way", "row-landed-answer-lost", "id-row-lost-on-the-way", "id-row-landed-answer-lost"],
)
async def test_a_connection_dropped_on_a_runs_insert_is_retried_not_a_lost_start(
    app: AppClient, rig, configure, queue_env, nth: int, after_forwarding: bool
) -> None:
    """A connection dropped on one of the two inserts that record a run's start (its row, its id row) is a
    transient fault: the insert is tried again, the run starts and ends with its file. When the first try
    landed and only its answer was lost, the retry's 409 is recognised as this run's own row. (Before:
    azure-core never retries a POST that got no answer, so POST /api/runs answered 502 storage_error and
    cancelled the run; seen once in 200 runs of tests/test_load.py.)"""
    inserts = 0

    def insert(request, body: bytes) -> bool:
        nonlocal inserts
        if request.method == "POST" and request.path.endswith("/codeinterpreterruns"):  # Insert Entity
            inserts += 1
            return inserts == nth
        return False

    async with FaultProxy(rig.azurite.table_url, rig.tls) as proxy:
        rule = proxy.drop(times=1, when=insert, after_forwarding=after_forwarding)
        configure(**app_settings(queue_env), RUNS_TABLE_SERVICE_URL=proxy.url)
        info = app.script(latency=0.2, files=[{"path": "/mnt/data/kept.txt", "content": "kept"}])
        reply = await app.post_run(prompt=info["prompt"], wait=False)
        assert reply.status == 202, reply.body
        response_id = reply.json["response_id"]
        async with _host() as host:
            [invocation] = await host.drain(within=60)
        figures.count("faults_injected", rule.served)
    sent = [path for method, path in proxy.seen if method == "POST" and path.endswith("/codeinterpreterruns")]
    assert rule.served == 1 and len(sent) == 3  # the dropped insert, tried again, and the other one
    assert (invocation.function, invocation.outcome) == ("finish_run", "succeeded")
    assert rig.emulator.run(response_id)["status"] == "completed"
    configure(**app_settings(queue_env))
    answer = await app.get_run(response_id)
    assert answer.status == 200 and [f["filename"] for f in answer.json["files"]] == ["kept.txt"], answer.body
    app.verify_answer(answer.json)
