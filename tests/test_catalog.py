"""The run catalog (issue 20): GET /api/runs lists the caller's runs from the runs table, newest first, a page
at a time; the index never disagrees with the runs for long; retention deletes old runs the way DELETE does."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

from code_interpreter_files import finishing, retention
from code_interpreter_files.run_table import Row, partition_of, row_key_of
from code_interpreter_files.runlog import RunLog
from code_interpreter_files.services import get_services
from local_azure.queue_host import QueueHost
from tests import figures
from tests.appclient import AppClient, Context
from tests.helpers import app_settings, manifest_exists, peek_queue, storage_names, until
from tests.rig.faultproxy import FaultProxy

LOG = RunLog("test-catalog", "test")


def _deployment(configure, **settings: str) -> dict[str, str]:
    """A deployment of its own on the shared storage (its OWNER_TAG): other tests' runs are not its."""
    return configure(OWNER_TAG=f"t-{uuid.uuid4().hex[:12]}", **settings)


async def _row(services, response_id: str) -> Row:
    """The run's row as stored now (through its id row)."""
    ref = await services.table.locate(response_id)
    assert ref is not None
    row = await services.table.read(ref)
    assert row is not None
    return row


def _table(rig) -> TableClient:
    return TableClient.from_connection_string(rig.azurite.connection_string, "codeinterpreterruns")


async def _listed(app: AppClient, caller: str | None = None, **params: str) -> list[dict[str, Any]]:
    reply = await app.list_runs(caller=caller, **params)
    assert reply.status == 200, reply.body
    return reply.json["runs"]


async def _every_page(app: AppClient, limit: int, caller: str | None = None) -> list[str]:
    ids, cursor = [], None
    while True:
        page = await app.list_runs(caller=caller, limit=str(limit), **({"cursor": cursor} if cursor else {}))
        assert page.status == 200, page.body
        ids += [r["response_id"] for r in page.json["runs"]]
        cursor = page.json["next_cursor"]
        if cursor is None:
            return ids


async def test_the_list_shows_each_kind_of_run_newest_first_and_never_a_deleted_one(app: AppClient, configure) -> None:
    _deployment(configure)
    made: dict[str, str] = {}
    for kind, script, wait in (
        ("completed", {"files": [{"path": "/mnt/data/done.csv", "content": "a,b\n1,2\n"}]}, True),
        ("failed", {"status": "failed", "error": {"code": "server_error", "message": "x"}}, True),
        ("incomplete", {"status": "incomplete", "files": [{"path": "/mnt/data/half.txt", "content": "half"}]}, True),
        ("deleted", {"files": [{"path": "/mnt/data/gone.txt", "content": "gone"}]}, True),
        ("running", {"latency": 120, "files": []}, False),
    ):
        info = app.script(**script)
        reply = await app.post_run(prompt=f"{kind} run {info['prompt']}", wait=wait)
        made[kind] = reply.json.get("response_id") or (await _ids_of(app, info))[0]
        await asyncio.sleep(1.05)  # row keys are ordered by the second a run started
    assert (await app.delete_run(made["deleted"])).status == 204
    runs = await _listed(app)
    assert [r["response_id"] for r in runs] == [made[k] for k in ("running", "incomplete", "failed", "completed")]
    by_id = {r["response_id"]: r for r in runs}
    assert by_id[made["completed"]] | {"created_at": None} == {
        "response_id": made["completed"], "created_at": None, "status": "completed",
        "prompt": by_id[made["completed"]]["prompt"], "files": 1, "bytes": 8, "previous_response_id": None,
        "error": None,
    }  # fmt: skip
    assert by_id[made["completed"]]["prompt"].startswith("completed run ")
    assert (by_id[made["failed"]]["status"], by_id[made["failed"]]["error"]) == ("failed", "run_failed")
    assert (by_id[made["incomplete"]]["status"], by_id[made["incomplete"]]["files"]) == ("incomplete", 1)
    assert (by_id[made["running"]]["status"], by_id[made["running"]]["files"]) == ("running", 0)
    for status in ("completed", "failed", "incomplete", "running", "cancelled"):
        expected = [made[status]] if status in made else []
        assert [r["response_id"] for r in await _listed(app, status=status)] == expected
    continued = await app.post_run(prompt="again", previous_response_id=made["completed"])
    assert continued.status == 200, continued.body
    [newest] = await _listed(app, limit="1")
    assert (newest["response_id"], newest["previous_response_id"]) == (continued.json["response_id"], made["completed"])


async def _ids_of(app: AppClient, info: dict[str, Any]) -> list[str]:
    return app.rig.emulator.runs_for(info["script_id"])


async def test_a_long_prompt_is_listed_by_its_first_200_characters(app: AppClient, configure) -> None:
    _deployment(configure)
    prompt = "Plot " + "x" * 300
    await app.post_run(prompt=prompt, wait=False)
    [run] = await _listed(app)
    assert run["prompt"] == prompt[:200]


async def test_paging_misses_and_repeats_nothing_while_runs_are_added(app: AppClient, configure) -> None:
    _deployment(configure)
    first = [(await app.post_run(prompt=f"run {i}", wait=False)).json["response_id"] for i in range(7)]
    seen: list[str] = []
    page = await app.list_runs(limit="3")
    seen += [r["response_id"] for r in page.json["runs"]]
    added = []
    while (cursor := page.json["next_cursor"]) is not None:
        added.append((await app.post_run(prompt="added meanwhile", wait=False)).json["response_id"])
        page = await app.list_runs(limit="3", cursor=cursor)
        assert page.status == 200, page.body
        seen += [r["response_id"] for r in page.json["runs"]]
    assert len(seen) == len(set(seen)) and set(first) <= set(seen)
    assert set(seen) - set(first) <= set(added)  # a run added meanwhile is listed on a fresh listing
    assert set(await _every_page(app, limit=4)) == set(first) | set(added)


async def test_behind_easy_auth_each_caller_lists_only_their_own_whatever_the_cursor(app: AppClient, configure) -> None:
    _deployment(configure, WEBSITE_AUTH_ENABLED="true")
    alice, bob = str(uuid.uuid4()), f"auth0|{uuid.uuid4().hex}/#?"  # a subject with what keys may not hold
    mine = [(await app.post_run(prompt="alice", wait=False, caller=alice)).json["response_id"] for _ in range(3)]
    theirs = [(await app.post_run(prompt="bob", wait=False, caller=bob)).json["response_id"] for _ in range(2)]
    keyed = (await app.post_run(prompt="a function key alone", wait=False)).json["response_id"]
    assert set(await _every_page(app, limit=2, caller=alice)) == set(mine)
    assert set(await _every_page(app, limit=2, caller=bob)) == set(theirs)
    assert await _every_page(app, limit=5) == [keyed]
    alices_cursor = (await app.list_runs(caller=alice, limit="1")).json["next_cursor"]
    with_it = await app.list_runs(caller=bob, cursor=alices_cursor)  # a cursor is a position, not a key
    assert with_it.status == 200 and {r["response_id"] for r in with_it.json["runs"]} <= set(theirs)
    figures.count("foreign_reads_refused", 4)  # three listings of one's own, and a foreign cursor
    for bad in ("garbage", "x" * 300, "MDAwMF9yZXNwX2E%3D", "bm90IGEgcm93IGtleQ"):
        reply = await app.list_runs(caller=bob, cursor=bad)
        assert reply.status == 400 and reply.error_code() == "invalid_request", bad
    for params in ({"limit": "0"}, {"limit": "101"}, {"limit": "ten"}, {"status": "deleted"}):
        reply = await app.list_runs(caller=alice, **params)
        assert reply.status == 400 and reply.error_code() == "invalid_request", params


async def test_a_principal_of_any_allowed_length_and_characters_has_a_list_of_its_own(
    app: AppClient, configure
) -> None:
    """Principal ids are any visible ASCII up to 255 characters (ownership.py). Before: one full of characters
    that partition keys may not hold (each percent-encoded to three) made a partition key longer than the
    512 characters Table Storage keys may have, so every POST of that caller answered 502 storage_error
    ("try again") and its run was cancelled. Now such a caller's partition is named by a digest."""
    _deployment(configure, WEBSITE_AUTH_ENABLED="true")
    long, near = "!" * 255, "!" * 254 + "?"
    mine = await app.post_run(prompt="a long principal", wait=False, caller=long)
    assert mine.status == 202, mine.body
    theirs = await app.post_run(prompt="a near one", wait=False, caller=near)
    assert theirs.status == 202, theirs.body
    assert [r["response_id"] for r in await _listed(app, caller=long)] == [mine.json["response_id"]]
    assert [r["response_id"] for r in await _listed(app, caller=near)] == [theirs.json["response_id"]]
    assert (await app.get_run(mine.json["response_id"], caller=near)).status == 404
    figures.count("foreign_reads_refused")


async def test_another_deployments_runs_on_the_same_storage_never_appear(app: AppClient, configure) -> None:
    _deployment(configure)
    ours = [(await app.post_run(prompt="ours", wait=False)).json["response_id"] for _ in range(2)]
    _deployment(configure)
    other = (await app.post_run(prompt="another app's", wait=False)).json["response_id"]
    assert await _every_page(app, limit=10) == [other]
    assert (await app.get_run(ours[0])).status == 404  # and GET draws the same line
    for run in ours:
        assert (await app.delete_run(run)).status == 404
    figures.count("foreign_reads_refused", 4)


async def test_a_crash_between_a_runs_record_and_its_id_row_is_repaired_by_the_next_get(
    app: AppClient, rig, configure
) -> None:
    _deployment(configure)
    info = app.script(latency=0.3, files=[{"path": "/mnt/data/kept.txt", "content": "kept"}])
    response_id = (await app.post_run(prompt=info["prompt"], wait=False)).json["response_id"]
    table = _table(rig)
    table.delete_entity(f"id|{response_id}", "")  # as if the worker died between the two writes
    assert [r["response_id"] for r in await _listed(app)] == [response_id]  # the record is the catalog's
    await asyncio.sleep(0.4)
    answer = await app.get_run(response_id)
    assert answer.status == 200 and [f["filename"] for f in answer.json["files"]] == ["kept.txt"], answer.body
    repaired = table.get_entity(f"id|{response_id}", "")
    assert repaired["run_partition"].startswith("runs|") and repaired["deleted"] is False
    [listed] = await _listed(app)
    assert (listed["status"], listed["files"]) == ("completed", 1)
    assert (await app.delete_run(response_id)).status == 204
    assert await _listed(app) == []


async def test_a_crash_between_the_manifest_and_the_row_is_repaired_by_the_next_finish(
    app: AppClient, rig, configure, queue_env, host: QueueHost
) -> None:
    _deployment(configure, **app_settings(queue_env))
    info = app.script(latency=0.2, files=[{"path": "/mnt/data/kept.txt", "content": "kept"}])
    response_id = (await app.post_run(prompt=info["prompt"], wait=False)).json["response_id"]
    await host.drain(within=60)
    services = await get_services()
    row = await _row(services, response_id)
    assert row.record.status == "completed"
    await services.table.update(row, status="running", files=0, bytes=0, ended_at=None)  # the crash's state
    assert [r["status"] for r in await _listed(app)] == ["running"]
    await services.queue.enqueue_finish(response_id)  # the safety net every run has
    await host.drain(within=60)
    [listed] = await _listed(app)
    assert (listed["status"], listed["files"], listed["bytes"]) == ("completed", 1, 4)


async def test_retention_deletes_exactly_the_expired_runs_and_a_late_copy_commits_nothing(
    app: AppClient, rig, configure, queue_env, host: QueueHost
) -> None:
    """Runs older than RUN_RETENTION_DAYS go the way DELETE takes: files, manifest, records, index rows;
    a tombstone stays. A copy of an expired run still going on commits nothing. Younger runs stay.
    (The sweep is given the time to sweep at: a day later than the young run started, less a moment.)"""
    _deployment(configure, **app_settings(queue_env), RUN_RETENTION_DAYS="1")
    slow = app.script(latency=0.2, files=[{"path": "/mnt/data/slow.bin", "size": 1_000_000, "download_seconds": 8}])
    copying = (await app.post_run(prompt=slow["prompt"], wait=False)).json["response_id"]
    old = (await app.post_run(prompt="an old run", wait=False)).json["response_id"]
    services = await get_services()
    await services.store.create_marker("_webhooks/" + "0" * 64)  # a replay marker of that time
    await asyncio.sleep(1.1)
    young = (await app.post_run(prompt="a young run", wait=False)).json["response_id"]
    young_row = await _row(services, young)
    finishing = asyncio.ensure_future(host.drain(within=120))
    await until(
        lambda: (
            manifest_exists(rig, old)
            and manifest_exists(rig, young)
            and rig.emulator.stats()["downloads"].get(_file_id(app, copying), 0) >= 1
        ),
        within=30,
    )
    at = young_row.record.created_at + timedelta(days=1) - timedelta(seconds=0.5)
    report = await retention.sweep(services, LOG, now=at)  # while `copying` is still being copied
    await finishing
    assert (report.runs_deleted, report.markers_deleted, report.more) == (2, 1, False)
    for gone in (old, copying):
        assert (await app.get_run(gone)).status == 404
        assert storage_names(rig, gone, bookkeeping=True) == []
        tombstone = await services.table.locate(gone)
        assert tombstone is not None and tombstone.deleted
    kept = await app.get_run(young)
    assert kept.status == 200 and manifest_exists(rig, young)
    assert [r["response_id"] for r in await _listed(app)] == [young]
    assert partition_of(services.settings.owner_tag, None) == young_row.partition
    assert row_key_of(young_row.record.created_at, young) == young_row.row_key


def _file_id(app: AppClient, response_id: str) -> str:
    [file] = app.rig.emulator.run(response_id)["files"]
    return str(file["file_id"])


async def test_the_sweep_queues_a_run_whose_finish_was_lost(
    app: AppClient, rig, configure, queue_env, host: QueueHost
) -> None:
    _deployment(configure, **app_settings(queue_env))
    info = app.script(latency=0.2, files=[{"path": "/mnt/data/found.txt", "content": "found"}])
    response_id = (await app.post_run(prompt=info["prompt"], wait=False)).json["response_id"]
    with QueueClient.from_connection_string(rig.azurite.queue_connection_string, queue_env["RUNS_QUEUE"]) as queue:
        queue.clear_messages()  # the message is lost
    services = await get_services()
    row = await _row(services, response_id)
    await until(lambda: app.rig.emulator.run(response_id)["status"] == "completed", within=10)  # the model ended
    report = await retention.sweep(services, LOG, now=row.record.created_at + retention.UNFINISHED_AFTER * 2)
    assert report.finishes_queued == 1 and report.runs_deleted == 0
    await host.drain(within=60)
    assert manifest_exists(rig, response_id)
    [listed] = await _listed(app)
    assert listed["status"] == "completed"


async def test_the_timer_function_runs_a_sweep(app: AppClient, configure, caplog) -> None:
    _deployment(configure)
    sweep = app.functions["sweep_runs"].get_user_function()
    await sweep(None, Context(function_name="sweep_runs"))
    assert any("retention sweep" in r.getMessage() and "runs_deleted=0" in r.getMessage() for r in caplog.records)


async def test_the_sweep_leaves_a_running_model_to_its_follower_and_ends_a_run_whose_response_is_gone(
    app: AppClient, rig, configure, queue_env, host: QueueHost
) -> None:
    """A model still running after the sweep's delay is not queued again (its follower exists, or a later
    sweep finds it ended): no second follower per sweep. A run whose stored response vanished before it
    was finished is recorded once as finish_failed and is then left alone."""
    _deployment(configure, **app_settings(queue_env))
    slow = app.script(latency=300, files=[])
    running = (await app.post_run(prompt=slow["prompt"], wait=False)).json["response_id"]
    vanished = (await app.post_run(prompt="its response goes", wait=False)).json["response_id"]
    with QueueClient.from_connection_string(rig.azurite.queue_connection_string, queue_env["RUNS_QUEUE"]) as queue:
        queue.clear_messages()
    services = await get_services()
    await services.openai.responses.delete(vanished)
    later = (await _row(services, vanished)).record.created_at
    at = later + retention.UNFINISHED_AFTER * 2
    first = await retention.sweep(services, LOG, now=at)
    assert first.finishes_queued == 1  # the vanished one; the running model is left to its follower
    await host.drain(within=60)
    row = await _row(services, vanished)
    assert (row.record.status, row.record.error) == ("running", "finish_failed")
    again = await retention.sweep(services, LOG, now=at)
    assert again.finishes_queued == 0
    assert {r["response_id"]: r["error"] for r in await _listed(app)} == {running: None, vanished: "finish_failed"}


async def test_a_sweep_whose_blob_deletes_fail_leaves_the_next_sweep_a_way_to_finish(
    app: AppClient, rig, configure, queue_env, host: QueueHost
) -> None:
    """Blob Storage fails the sweep's deletes of an expired run's blobs (past the SDK's retries). Before:
    the run's row was deleted first, so the next sweep (which finds expired runs by their rows) never saw
    the run again, and its manifest and files stayed for good; and the fault ended the sweep, so the runs
    after it waited for the next one. Now the row goes only after the blobs, so the next sweep finishes
    the job, and one run that fails does not stop the sweep for the others."""
    async with FaultProxy(rig.azurite.account_url, rig.tls) as proxy:
        configure(**app_settings(queue_env), OUTPUT_STORAGE_ACCOUNT_URL=proxy.url,
                  RUNS_TABLE_SERVICE_URL=rig.azurite.table_url, OWNER_TAG=f"t-{uuid.uuid4().hex[:12]}",
                  RUN_RETENTION_DAYS="1")  # fmt: skip
        made = []
        for name in ("other", "stuck"):  # the stuck one is newer: the sweep meets it first
            info = app.script(latency=0.2, files=[{"path": f"/mnt/data/{name}.txt", "content": name}])
            made.append((await app.post_run(prompt=info["prompt"], wait=False)).json["response_id"])
            await asyncio.sleep(1.05)
        other, stuck = made
        await host.drain(within=60)
        assert manifest_exists(rig, other) and manifest_exists(rig, stuck)
        services = await get_services()
        at = (await _row(services, stuck)).record.created_at + timedelta(days=1, seconds=5)
        rule = proxy.fail(
            500, times=None, when=lambda request, body: request.method == "DELETE" and stuck in request.path
        )
        first = await retention.sweep(services, LOG, now=at)
        rule.times = rule.served  # the outage ends
        figures.count("faults_injected", rule.served)
        assert (first.runs_deleted, first.more) == (1, True), first  # the other run went; the stuck one waits
        assert storage_names(rig, other, bookkeeping=True) == []
        assert manifest_exists(rig, stuck)
        tombstone = await services.table.locate(stuck)
        assert tombstone is not None and tombstone.deleted
        second = await retention.sweep(services, LOG, now=at)
        assert (second.runs_deleted, second.more) == (1, False), second
        assert storage_names(rig, stuck, bookkeeping=True) == []
        assert await services.table.read(tombstone) is None
        assert await _listed(app) == [] and (await app.get_run(stuck)).status == 404


async def test_a_run_azure_openai_fails_to_answer_for_does_not_stop_the_sweep_queueing_the_others(
    app: AppClient, rig, configure, queue_env
) -> None:
    """Azure OpenAI answers 500 for one lost run's response, every time. Before: the sweep's look at that
    run raised, the sweep ended there, and since every sweep meets that run first, no lost run after it was
    ever queued again (their files were lost when their containers expired). Now that run is left for a
    later sweep and the others are queued."""
    _deployment(configure, **app_settings(queue_env))
    good = app.script(latency=0.2, files=[{"path": "/mnt/data/found.txt", "content": "found"}])
    good_id = (await app.post_run(prompt=good["prompt"], wait=False)).json["response_id"]
    await asyncio.sleep(1.05)  # the failing one is newer: the sweep meets it first
    bad = app.script(latency=0.2, files=[], fail_first=[{"status": 500, "on": "get_response", "times": None}])
    bad_id = (await app.post_run(prompt=bad["prompt"], wait=False)).json["response_id"]
    with QueueClient.from_connection_string(rig.azurite.queue_connection_string, queue_env["RUNS_QUEUE"]) as queue:
        queue.clear_messages()  # both messages are lost
    await until(lambda: app.rig.emulator.run(good_id)["status"] == "completed", within=10)
    services = await get_services()
    at = (await _row(services, bad_id)).record.created_at + retention.UNFINISHED_AFTER * 2
    report = await retention.sweep(services, LOG, now=at)
    figures.count("faults_injected")
    assert report.finishes_queued == 1, report
    assert await peek_queue(rig, queue_env["RUNS_QUEUE"]) == [{"kind": "finish", "response_id": good_id, "attempt": 0}]


async def test_a_finish_that_commits_while_the_sweep_deletes_the_run_leaves_nothing_behind(
    app: AppClient, rig, configure, queue_env
) -> None:
    """A finisher that read the run's row before the sweep's tombstone copies its files and commits (its
    If-Match write lands: the row is still there) after the sweep deleted the run's blobs and before it
    deleted the row. The sweep deletes the blobs again once the row is gone, so nothing of the run stays."""
    async with FaultProxy(rig.azurite.table_url, rig.tls) as proxy:
        _deployment(configure, **app_settings(queue_env), RUNS_TABLE_SERVICE_URL=proxy.url, RUN_RETENTION_DAYS="1")
        info = app.script(latency=0.2, files=[{"path": "/mnt/data/late.txt", "content": "late"}])
        rid = (await app.post_run(prompt=info["prompt"], wait=False)).json["response_id"]
        await until(lambda: rig.emulator.run(rid)["status"] == "completed", within=30)
        services = await get_services()
        row = await _row(services, rid)  # the finisher's read, before the sweep
        held = proxy.hold(lambda request, body: request.method == "DELETE" and rid in request.path)
        sweeping = asyncio.ensure_future(retention.sweep(services, LOG, now=row.record.created_at + timedelta(days=2)))
        await asyncio.wait_for(held.reached.wait(), 30)  # tombstone written, blobs deleted, the row's delete held
        response = await services.openai.responses.retrieve(rid)
        outcome = await finishing.finish(services, row, response, LOG)
        assert [f.filename for f in outcome.files] == ["late.txt"] and manifest_exists(rig, rid)
        held.release()
        report = await asyncio.wait_for(sweeping, 60)
        figures.count("faults_injected")
        assert await _listed(app) == []
    assert report.runs_deleted == 1, report
    assert storage_names(rig, rid, bookkeeping=True) == []


async def test_a_sweep_out_of_time_leaves_the_unfinished_runs_to_the_next_one(
    app: AppClient, rig, configure, queue_env, monkeypatch
) -> None:
    """The sweep's time (SWEEP_SECONDS) bounds its look at unfinished runs too, each of which asks Azure
    OpenAI (up to three tries of two minutes when it hangs). Before: only the deletions looked at the
    clock; a sweep out of time still asked about up to 100 unfinished runs. (The time is set to none.)"""
    _deployment(configure, **app_settings(queue_env))
    rid = (await app.post_run(prompt="lost", wait=False)).json["response_id"]
    with QueueClient.from_connection_string(rig.azurite.queue_connection_string, queue_env["RUNS_QUEUE"]) as queue:
        queue.clear_messages()
    await until(lambda: app.rig.emulator.run(rid)["status"] == "completed", within=10)
    services = await get_services()
    at = (await _row(services, rid)).record.created_at + retention.UNFINISHED_AFTER * 2
    seconds = retention.SWEEP_SECONDS
    monkeypatch.setattr(retention, "SWEEP_SECONDS", 0)
    report = await retention.sweep(services, LOG, now=at)
    assert (report.finishes_queued, report.more) == (0, True), report
    monkeypatch.setattr(retention, "SWEEP_SECONDS", seconds)
    assert (await retention.sweep(services, LOG, now=at)).finishes_queued == 1
