"""Attacks on the finishing core and the catalog (review of issues 19 and 20): DELETE must win on every path,
nothing may be lost, nobody may read another caller's run. Each test drives the app through the rig
(Azurite over HTTPS, the emulator, the queue host) with faults at one step, or two requests put in a
chosen order by a proxy in front of Azurite's table service."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from code_interpreter_files import finishing
from code_interpreter_files.claims import Claim
from code_interpreter_files.records import Outcome, RunRecord
from code_interpreter_files.runlog import RunLog
from code_interpreter_files.services import get_services
from local_azure.queue_host import QueueHost
from tests import figures
from tests.appclient import FUNCTIONS, AppClient
from tests.helpers import Receiver, app_settings, peek_queue, storage_names, until
from tests.rig.faultproxy import FaultProxy

LOG = RunLog("test-review", "test")


def _host() -> QueueHost:
    return QueueHost(FUNCTIONS.values(), environ=os.environ, lease_seconds=3, poll_seconds=0.05)


def _owner_tag() -> str:
    """A deployment of its own on the shared storage, so that its list holds this test's runs only."""
    return f"t-{uuid.uuid4().hex[:12]}"


async def _listed_ids(app: AppClient) -> list[str]:
    reply = await app.list_runs()
    assert reply.status == 200, reply.body
    return [r["response_id"] for r in reply.json["runs"]]


async def _nothing_left_but_the_tombstone(rig: Any, response_id: str) -> None:
    assert storage_names(rig, response_id, bookkeeping=True) == []
    services = await get_services()
    tombstone = await services.table.locate(response_id)
    assert tombstone is not None and tombstone.deleted
    assert await services.table.read(tombstone) is None


def _run_row(response_id: str, method: str):  # type: ignore[no-untyped-def]
    """A proxy predicate: a request of `method` for the run's row (not its id row, whose RowKey is '')."""
    return lambda request, body: (
        request.method == method and response_id in request.path and "RowKey=''" not in request.path
    )


# -- DELETE that fails half way ---------------------------------------------------------------------


async def test_a_delete_that_fails_after_its_tombstone_never_leaves_the_files_served(
    app: AppClient, rig, configure, queue_env
) -> None:
    """Storage fails DELETE's removal of the run row (past the SDK's retries): the caller gets a 502, the
    tombstone is written, the manifest and files are still there. Before: GET kept answering 200 with
    fresh links to them, and a retried DELETE answered 404 without removing anything, so the caller
    could never delete their files. Now GET answers 404 and the retry finishes the removal."""
    async with FaultProxy(rig.azurite.table_url, rig.tls) as proxy:
        configure(**app_settings(queue_env), RUNS_TABLE_SERVICE_URL=proxy.url, OWNER_TAG=_owner_tag())
        info = app.script(latency=0.2, files=[{"path": "/mnt/data/private.txt", "content": "private"}])
        reply = await app.post_run(prompt=info["prompt"])
        assert reply.status == 200, reply.body
        rid = reply.json["response_id"]
        rule = proxy.fail(503, times=None, when=_run_row(rid, "DELETE"))
        failed = await app.delete_run(rid)
        rule.times = rule.served  # the outage ends
        figures.count("faults_injected", rule.served)
        assert failed.status == 502 and failed.error_code() == "storage_error", failed.body
        after = await app.get_run(rid)
        assert after.status == 404, after.body  # before: 200, with links to the files the caller deletes
        assert (await app.delete_run(rid)).status == 404  # a retry: the run is gone, and now it really is
        assert rid not in await _listed_ids(app)
        await _nothing_left_but_the_tombstone(rig, rid)


# -- a repair racing DELETE ---------------------------------------------------------------------------


async def test_a_get_whose_read_lands_after_delete_does_not_bring_the_run_back(
    app: AppClient, rig, configure, queue_env
) -> None:
    """A GET reads the id row (no tombstone yet), then DELETE removes the run (tombstone, row, blobs; Azure
    fails to delete the stored response), then the GET's read of the run row finds nothing and 'repairs'
    it from the response. Before: the repair wrote the row again, the GET finished the run and answered
    200 with links after DELETE had answered 204; the deleted run was listed, and every later GET served
    its files (a second DELETE: 404). Now the repair sees the tombstone and brings nothing back."""
    async with FaultProxy(rig.azurite.table_url, rig.tls) as proxy:
        configure(**app_settings(queue_env), RUNS_TABLE_SERVICE_URL=proxy.url, OWNER_TAG=_owner_tag())
        info = app.script(
            latency=0.2,
            files=[{"path": "/mnt/data/private.txt", "content": "private"}],
            fail_first=[{"status": 500, "on": "delete", "times": 30}],
        )
        rid = (await app.post_run(prompt=info["prompt"], wait=False)).json["response_id"]
        await until(lambda: rig.emulator.run(rid)["status"] == "completed", within=30)
        held = proxy.hold(when=_run_row(rid, "GET"))
        getting = asyncio.ensure_future(app.get_run(rid))
        await asyncio.wait_for(held.reached.wait(), 30)  # the GET has read the id row: no tombstone yet
        assert (await app.delete_run(rid)).status == 204
        held.release()
        late = await asyncio.wait_for(getting, 60)
        figures.count("faults_injected")
        assert late.status == 404, late.body  # before: 200 with links, after DELETE's 204
        assert rid not in await _listed_ids(app)
        assert (await app.get_run(rid)).status == 404
        await _nothing_left_but_the_tombstone(rig, rid)


# -- the callback, at least once ---------------------------------------------------------------------


def _callback_queued(request, body: bytes) -> bool:  # type: ignore[no-untyped-def]
    """A proxy predicate: Put Message of a callback message (its text is base64 JSON inside XML)."""
    if request.method != "POST" or not request.path.endswith("/messages"):
        return False
    text = re.search(rb"<MessageText>(.*)</MessageText>", body)
    return text is not None and b'"kind":"callback"' in base64.b64decode(text.group(1))


async def test_a_queue_outage_when_the_callback_is_queued_does_not_lose_the_callback(
    app: AppClient, rig, configure, queue_env, receiver: Receiver
) -> None:
    """Queue Storage fails (past the SDK's retries) the one request that queues a finished run's callback.
    Before: the commit had already ended the run row, the finish was tried again later, found the run
    finished, and nobody was ever called back (the README promises at least once). Now the callback is
    queued before the row says the run ended, and a finish that finds the outcome committed but the row
    not ended queues it again."""
    async with FaultProxy(rig.azurite.queue_url, rig.tls) as proxy:
        rule = proxy.fail(503, times=4, when=_callback_queued)  # 1 + the SDK's 3 retries
        configure(**app_settings(queue_env), RUNS_QUEUE_STORAGE__queueServiceUri=proxy.url, OWNER_TAG=_owner_tag())
        info = app.script(latency=0.2, files=[{"path": "/mnt/data/done.txt", "content": "done"}])
        reply = await app.post_run(prompt=info["prompt"], wait=False, callback_url=receiver.url)
        rid = reply.json["response_id"]
        async with _host() as host:
            await host.drain(within=120)
        figures.count("faults_injected", rule.served)
    assert rule.served == 4
    assert [payload["response_id"] for payload in receiver.verified()] == [rid]
    assert [f["filename"] for f in receiver.verified()[0]["files"]] == ["done.txt"]


# -- continuing a deleted run -------------------------------------------------------------------------


async def test_a_deleted_run_cannot_be_continued(app: AppClient, rig, configure, queue_env) -> None:
    """DELETE of a running run whose cancel lands late: Azure refuses to delete the stored response while
    it runs, so it outlives the DELETE (logged, 204 as documented). Before: `previous_response_id` of that
    deleted run was accepted (only the response's metadata was checked, never the tombstone), and a new
    run went on in the deleted run's container, with its files. Now it is the same 404 as GET's."""
    configure(**app_settings(queue_env), OWNER_TAG=_owner_tag())
    info = app.script(latency=30, cancel_lands_after=5, delete_refused_while_running=400,
                      files=[{"path": "/mnt/data/secret.txt", "content": "deleted"}])  # fmt: skip
    rid = (await app.post_run(prompt=info["prompt"], wait=False)).json["response_id"]
    assert (await app.delete_run(rid)).status == 204
    await until(lambda: rig.emulator.run(rid)["status"] == "cancelled", within=30)
    assert (await app.get_run(rid)).status == 404
    again = app.script(latency=0.2, files=[])
    reply = await app.post_run(prompt=again["prompt"], previous_response_id=rid, wait=False)
    assert reply.status == 404 and reply.error_code() == "run_not_found", reply.body
    assert rig.emulator.runs_for(again["script_id"]) == []  # nothing started


async def test_a_commit_whose_claim_was_taken_over_still_calls_back_once(rig, queue_env) -> None:
    """A finisher's claim ran out mid-copy (a paused worker, a clock running ahead on another instance) and
    another took it over; the late one commits first. Before: the late one wrote the manifest but its row
    write failed (If-Match), so it queued no callback; the new holder found the manifest written and
    queued none either: the caller was never called back."""
    services = await get_services()
    row = await services.table.start(
        RunRecord(
            response_id="resp_" + uuid.uuid4().hex,
            owner=services.settings.owner_tag,
            created_at=datetime.now(UTC).replace(microsecond=0),
            callback_url="https://cb.example/hook?token=secret",
        )
    )
    rid = row.record.response_id
    late = await Claim.take(services.table, row)
    late.row = await services.table.update(late.row, finishing_until=datetime.now(UTC) - timedelta(seconds=1))
    fresh = await services.table.reread(row)
    assert fresh is not None
    taker = await Claim.take(services.table, fresh)  # the claim ran out: taken over
    outcome = Outcome(response_id=rid, status="completed", text="done", owner=row.record.owner)
    await finishing.commit(services, late, outcome, LOG)  # its If-Match fails: the manifest stands
    await finishing.commit(services, taker, outcome, LOG)
    assert await peek_queue(rig, queue_env["RUNS_QUEUE"]) == [{"kind": "callback", "response_id": rid, "attempt": 1}]
