"""No file lost when nobody waits (issue 10): the queue finishes every run, copies resume, one copy per
run across instances, DELETE wins, the caller is called back; all against the rig, with the tests playing
the Functions host's part for the queue (local_azure/queue_host.py) the way Azure does."""

from __future__ import annotations

import asyncio
import json
import os
import time

from code_interpreter_files.services import get_services
from local_azure.queue_host import QueueHost
from local_azure.queue_instances import QueueHostProcess
from tests import figures
from tests.appclient import FUNCTIONS, AppClient
from tests.helpers import (
    SECRET,
    Receiver,
    app_settings,
    manifest,
    manifest_exists,
    peek_queue,
    storage_names,
    until,
)
from tests.helpers import signed_webhook as _signed


async def test_no_get_at_all_the_queue_copies_the_files_and_calls_back_signed(
    app: AppClient, rig, host: QueueHost, receiver: Receiver
) -> None:
    info = app.script(
        latency=0.3, files=[{"path": "/mnt/data/a.csv", "content": "a,b"}, {"path": "/mnt/data/b.bin", "size": 300000}]
    )
    started = await app.post_run(prompt=info["prompt"], wait=False, collect="all", callback_url=receiver.url)
    assert started.status == 202, started.body
    response_id = started.json["response_id"]
    await host.drain(within=60)
    saved = manifest(rig, response_id)
    assert sorted(f["filename"] for f in saved["files"]) == ["a.csv", "b.bin"]
    await asyncio.wait_for(receiver.arrived.wait(), 30)
    [payload] = receiver.verified()  # signed with CALLBACK_SIGNING_SECRET; a forged one would raise
    headers, _ = receiver.deliveries[0]
    assert headers["webhook-id"].startswith("msg_") and headers["webhook-timestamp"].isdigit()
    assert payload["response_id"] == response_id and payload["warnings"] == []
    app.verify_answer(payload)  # the links in the callback serve the bytes
    app.assert_nothing_lost(payload, set(app.expected_files(response_id)), copied=True)


async def test_a_callback_to_a_host_outside_the_list_is_refused_and_nothing_starts(
    app: AppClient, rig, queue_env
) -> None:
    info = app.script()
    for url in ("https://evil.example/hook", "http://127.0.0.1.evil.example/x", "https://127.0.0.1@evil.example/"):
        reply = await app.post_run(prompt=info["prompt"], callback_url=url)
        assert reply.status == 400 and reply.error_code() == "callback_not_allowed", url
    assert rig.emulator.stats()["runs_started"]["by_script"].get(info["script_id"], 0) == 0


async def test_a_container_that_expires_after_the_first_of_three_files_leaves_that_file(
    app: AppClient, rig, host: QueueHost, configure, queue_env
) -> None:
    configure(**{**app_settings(queue_env), "COPY_CONCURRENCY": "1"})
    info = app.script(
        latency=0.2,
        container_expires="after_first_download",
        files=[{"path": f"/mnt/data/f{i}.txt", "content": f"file {i}"} for i in range(3)],
    )
    response_id = (await app.post_run(prompt=info["prompt"], wait=False, collect="all")).json["response_id"]
    await host.drain(within=60)
    answer = (await app.get_run(response_id)).json
    assert len(answer["files"]) == 1 and [f["code"] for f in answer["failed_files"]] == ["container_expired"] * 2
    app.verify_answer(answer)
    app.assert_nothing_lost(answer, set(app.expected_files(response_id)))


async def test_an_interrupted_copy_resumes_and_copies_only_the_rest(
    app: AppClient, rig, host: QueueHost, configure, queue_env
) -> None:
    configure(**{**app_settings(queue_env), "COPY_CONCURRENCY": "1"})
    size = 24 * 1024 * 1024
    info = app.script(latency=0.2, files=[{"path": f"/mnt/data/big{i}.bin", "size": size} for i in range(3)])
    response_id = (await app.post_run(prompt=info["prompt"], wait=False, collect="all")).json["response_id"]
    await asyncio.sleep(0.3)
    crashed = asyncio.create_task(host.run_once())
    await until(lambda: len(storage_names(rig, response_id)) >= 1, within=120)
    crashed.cancel()  # the worker dies mid-run: its message comes back when its lease ends
    await asyncio.gather(crashed, return_exceptions=True)
    figures.count("crashes_injected")
    first = storage_names(rig, response_id)[0].split("/")[1]
    await host.drain(within=120)
    answer = (await app.get_run(response_id)).json
    assert len(answer["files"]) == 3
    app.verify_answer(answer)
    assert rig.emulator.stats()["downloads"][first] == 1  # the committed file was not downloaded again


async def test_two_instances_finishing_one_run_download_each_file_once(app: AppClient, rig, queue_env) -> None:
    info = app.script(
        latency=0.2, files=[{"path": f"/mnt/data/part{i}.bin", "size": 8 * 1024 * 1024} for i in range(3)]
    )
    response_id = (await app.post_run(prompt=info["prompt"], wait=False, collect="all")).json["response_id"]
    rig.emulator.reset()  # downloads are counted from here
    services = await get_services()
    await services.queue.enqueue_finish(response_id)  # a second message for the same run
    env = dict(os.environ)
    with QueueHostProcess(env, lease_seconds=30) as one, QueueHostProcess(env, lease_seconds=30) as two:
        await until(lambda: manifest_exists(rig, response_id), within=120, step=0.2)
        await until(lambda: len(one.outcomes) + len(two.outcomes) >= 2, within=60, step=0.2)
    assert {o.outcome for o in one.outcomes + two.outcomes} == {"succeeded"}
    downloads = rig.emulator.stats()["downloads"]
    assert sorted(downloads[f] for f in app.expected_files(response_id)) == [1, 1, 1]
    figures.count("duplicate_downloads", sum(downloads[f] - 1 for f in app.expected_files(response_id)))
    app.verify_answer((await app.get_run(response_id)).json)


async def test_delete_during_a_copy_on_another_instance_leaves_no_manifest_and_no_blob(
    app: AppClient, rig, queue_env
) -> None:
    info = app.script(
        latency=0.2, files=[{"path": f"/mnt/data/slow{i}.bin", "size": 24 * 1024 * 1024} for i in range(3)]
    )
    response_id = (await app.post_run(prompt=info["prompt"], wait=False, collect="all")).json["response_id"]
    rig.emulator.reset()  # downloads are counted from here
    env = {**os.environ, "COPY_CONCURRENCY": "1"}
    with QueueHostProcess(env, lease_seconds=30) as other:
        await until(lambda: rig.emulator.stats()["downloads"], within=60, step=0.05)
        reply = await app.delete_run(response_id)
        assert reply.status == 204, reply.body
        await until(lambda: len(other.outcomes) >= 1, within=120, step=0.2)
    assert storage_names(rig, response_id, bookkeeping=True) == []
    services = await get_services()
    tombstone = await services.table.locate(response_id)
    assert tombstone is not None and tombstone.deleted  # the one thing left of the run, for good
    assert await services.table.read(tombstone) is None
    assert (await app.get_run(response_id)).status == 404


async def test_a_request_waiting_on_a_copy_that_delete_cancels_answers_409(app: AppClient, rig) -> None:
    info = app.script(files=[{"path": f"/mnt/data/w{i}.bin", "size": 24 * 1024 * 1024} for i in range(3)])
    rig.emulator.reset()  # downloads are counted from here
    posting = asyncio.create_task(app.post_run(prompt=info["prompt"], collect="all"))
    await until(lambda: rig.emulator.stats()["downloads"], within=60)
    [response_id] = rig.emulator.runs_for(info["script_id"])
    assert (await app.delete_run(response_id)).status == 204
    reply = await posting
    assert reply.status == 409 and reply.error_code() == "run_deleted", reply.body
    assert storage_names(rig, response_id) == []


async def test_a_file_that_fails_every_try_is_retried_while_the_container_lives_then_recorded(
    app: AppClient, rig, configure, queue_env
) -> None:
    """A file whose every download breaks off is a transient fault: retried through delayed messages (the
    host's dequeue count is never used up), until the container's lifetime is over; then the run is
    committed with what could be copied, and the broken file in failed_files."""
    configure(**{**app_settings(queue_env), "CONTAINER_LIFETIME_MINUTES": "1"})
    info = app.script(
        latency=0.2,
        files=[
            {"path": "/mnt/data/fine.txt", "content": "fine"},
            {"path": "/mnt/data/cut.bin", "size": 200000, "cut_after": 1000},  # every download breaks off
        ],
    )
    response_id = (await app.post_run(prompt=info["prompt"], wait=False, collect="all")).json["response_id"]
    async with QueueHost(FUNCTIONS.values(), environ=os.environ, lease_seconds=3, poll_seconds=0.05) as host:
        invocations = await host.drain(within=150)
    finishes = [i for i in invocations if i.function == "finish_run"]
    assert {i.dequeue_count for i in finishes} == {1} and len(finishes) >= 4  # retried, never by the host
    assert not any(i.function == "record_poison" for i in invocations)
    answer = (await app.get_run(response_id)).json
    assert [f["filename"] for f in answer["files"]] == ["fine.txt"]
    assert [(f["filename"], f["code"]) for f in answer["failed_files"]] == [("cut.bin", "download_interrupted")]
    app.verify_answer(answer)


async def test_a_failed_run_is_recorded_and_get_answers_its_error(app: AppClient, rig, host: QueueHost) -> None:
    info = app.script(latency=0.2, status="failed", error={"code": "server_error", "message": "the sandbox crashed"})
    response_id = (await app.post_run(prompt=info["prompt"], wait=False)).json["response_id"]
    await host.drain(within=60)
    assert manifest(rig, response_id)["error"]["code"] == "run_failed"
    reply = await app.get_run(response_id)
    assert (
        reply.status == 502
        and reply.error_code() == "run_failed"
        and "sandbox crashed" in reply.json["error"]["message"]
    )


async def test_webhooks_speed_a_run_up_and_never_slow_it_down(app: AppClient, rig, configure, queue_env) -> None:
    """With AZURE_OPENAI_WEBHOOK_SECRET set and no webhook coming, the queue still follows the run and
    finishes it as soon as it ends; a webhook that does come queues a finish at once (verified, once)."""
    configure(**{**app_settings(queue_env), "AZURE_OPENAI_WEBHOOK_SECRET": SECRET})
    quiet = app.script(latency=1.5, files=[{"path": "/mnt/data/followed.txt", "content": "followed"}])
    response_id = (await app.post_run(prompt=quiet["prompt"], wait=False)).json["response_id"]
    async with QueueHost(FUNCTIONS.values(), environ=os.environ, lease_seconds=3, poll_seconds=0.05) as host:
        await host.drain(within=60)  # no webhook at all: finished all the same, within the drain
        assert [f["filename"] for f in manifest(rig, response_id)["files"]] == ["followed.txt"]

        pushed = app.script(latency=0.5, files=[{"path": "/mnt/data/pushed.txt", "content": "pushed"}])
        response_id = (await app.post_run(prompt=pushed["prompt"], wait=False)).json["response_id"]
        await asyncio.sleep(0.6)
        body = json.dumps(
            {"id": "evt_1", "type": "response.completed", "created_at": int(time.time()), "data": {"id": response_id}}
        )
        headers = _signed(body, "wh_1")
        reply = await app.call("openai_webhook", "POST", "/api/openai-webhook", body.encode(), headers=headers)
        assert reply.status == 200 and reply.json == {"status": "acted"}, reply.body
        replay = await app.call("openai_webhook", "POST", "/api/openai-webhook", body.encode(), headers=headers)
        assert replay.json == {"status": "replay"}
        forged = await app.call(
            "openai_webhook", "POST", "/api/openai-webhook", body.encode(), headers={**headers, "webhook-id": "wh_2"}
        )
        assert forged.status == 401 and forged.error_code() == "invalid_webhook_signature"
        queued = [m["response_id"] for m in await peek_queue(rig, queue_env["RUNS_QUEUE"]) if m["kind"] == "finish"]
        assert queued.count(response_id) == 2  # the start's and the webhook's, both visible now
        await host.drain(within=60)
    assert [f["filename"] for f in manifest(rig, response_id)["files"]] == ["pushed.txt"]


async def test_an_instance_killed_mid_copy_is_picked_up_after_its_leases(app: AppClient, rig, queue_env) -> None:
    """SIGKILL releases nothing: the message comes back after its invisibility, the blob lease ends
    within LEASE_SECONDS, and another instance copies only what the dead one had not committed."""
    info = app.script(latency=0.2, files=[{"path": f"/mnt/data/k{i}.bin", "size": 24 * 1024 * 1024} for i in range(3)])
    response_id = (await app.post_run(prompt=info["prompt"], wait=False, collect="all")).json["response_id"]
    env = {**os.environ, "COPY_CONCURRENCY": "1"}
    dead = QueueHostProcess(env, lease_seconds=5)
    try:
        await until(lambda: len(storage_names(rig, response_id)) >= 1, within=120, step=0.05)
    finally:
        dead.kill()
    figures.count("crashes_injected")
    first = storage_names(rig, response_id)[0].split("/")[1]
    with QueueHostProcess(env, lease_seconds=5):
        await until(lambda: manifest_exists(rig, response_id), within=240, step=0.5)
    answer = (await app.get_run(response_id)).json
    assert len(answer["files"]) == 3
    app.verify_answer(answer)
    assert rig.emulator.stats()["downloads"][first] == 1
