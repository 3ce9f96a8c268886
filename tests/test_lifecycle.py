"""Runs that outlive the request: background start, polling, renewed links, concurrency, cancel, delete."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
from urllib.parse import parse_qs, urlsplit

from azure.storage.blob import BlobServiceClient

from tests.appclient import AppClient, Reply
from tests.helpers import manifest, storage_names


async def poll_until_done(app: AppClient, response_id: str, attempts: int = 100) -> Reply:
    for _ in range(attempts):
        reply = await app.get_run(response_id)
        if reply.status != 202:
            return reply
        assert reply.headers["Retry-After"].isdigit()
        await asyncio.sleep(0.1)
    raise AssertionError("the run never finished")


async def test_async_post_answers_202_then_get_returns_the_files(app: AppClient, rig) -> None:
    info = app.script(
        latency=2.5, files=[{"path": "/mnt/data/a.csv", "content": "a,b"}, {"path": "/mnt/data/b.bin", "size": 70000}]
    )
    started = await app.post_run(prompt=info["prompt"], wait=False)
    assert started.status == 202
    response_id = started.json["response_id"]
    assert started.json["status"] in ("queued", "in_progress")
    assert started.headers["Location"] == f"/api/runs/{response_id}"
    assert int(started.headers["Retry-After"]) > 0
    request = rig.emulator.run(response_id)["request"]
    assert request["background"] is True and request["store"] is True
    assert request["tools"] == [{"type": "code_interpreter", "container": {"type": "auto"}}]

    first = await app.get_run(response_id)
    assert first.status == 202 and first.json["status"] in ("queued", "in_progress")
    done = await poll_until_done(app, response_id)
    assert done.status == 200, done.body
    assert sorted(f["filename"] for f in done.json["files"]) == ["a.csv", "b.bin"]
    app.verify_answer(done.json)


async def test_a_sync_run_past_the_budget_answers_202_and_loses_nothing(app: AppClient, configure, rig) -> None:
    configure(RUN_WAIT_SECONDS=1)
    info = app.script(latency=2.5, files=[{"path": "/mnt/data/late.txt", "content": "worth the wait"}])
    tasks_before = len(asyncio.all_tasks())
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 202, reply.body
    assert len(asyncio.all_tasks()) == tasks_before  # nothing left running behind the answer
    response_id = reply.json["response_id"]
    assert reply.headers["Location"] == f"/api/runs/{response_id}"
    await asyncio.sleep(2.0)
    done = await poll_until_done(app, response_id)
    assert done.status == 200 and [f["filename"] for f in done.json["files"]] == ["late.txt"]
    app.verify_answer(done.json)


async def test_the_manifest_records_the_run_without_links(app: AppClient, rig) -> None:
    info = app.script(
        text="See [r](sandbox:/mnt/data/r.txt).",
        files=[{"path": "/mnt/data/r.txt", "content": "r"}, {"path": "/mnt/data/big.bin", "size": 5000}],
    )
    answer = (await app.post_run(prompt=info["prompt"], collect="all")).json
    saved = manifest(rig, answer["response_id"])
    assert saved["response_id"] == answer["response_id"] and saved["status"] == "completed"
    assert saved["text"] == "See [r](sandbox:/mnt/data/r.txt)."  # placeholders, never a SAS URL
    assert "sig=" not in json.dumps(saved)
    by_id = {f["file_id"]: f for f in answer["files"]}
    for file in saved["files"]:
        shown = by_id[file["file_id"]]
        assert {k: shown[k] for k in shown if k not in ("url", "expires_at")} == {
            k: file[k] for k in shown if k not in ("url", "expires_at")
        }


async def test_get_renews_links_even_after_the_container_expired(app: AppClient, rig) -> None:
    info = app.script(text="[x](sandbox:/mnt/data/x.txt)", files=[{"path": "/mnt/data/x.txt", "content": "keep me"}])
    answer = (await app.post_run(prompt=info["prompt"])).json
    rig.emulator.expire_container(rig.emulator.run(answer["response_id"])["container_id"])
    await asyncio.sleep(1.1)  # a new second: a new expiry, so a new signature
    renewed = await app.get_run(answer["response_id"], sas_ttl_minutes="3")
    assert renewed.status == 200
    old, new = answer["files"][0], renewed.json["files"][0]
    assert new["url"] != old["url"] and new["blob"] == old["blob"] and new["sha256"] == old["sha256"]
    assert parse_qs(urlsplit(new["url"]).query)["se"] != parse_qs(urlsplit(old["url"]).query)["se"]
    assert new["url"] in renewed.json["text"]
    app.verify_answer(renewed.json)


async def test_links_renewed_after_the_first_ones_expired(app: AppClient, rig) -> None:
    """The slowest test on purpose: a real one-minute link, expired, then renewed."""
    answer = (await app.post_run(prompt="Create test.txt containing hello world", sas_ttl_minutes=1)).json
    file = answer["files"][0]
    assert app.http.get(file["url"]).status_code == 200
    await asyncio.sleep(61)
    assert app.http.get(file["url"]).status_code == 403
    renewed = (await app.get_run(answer["response_id"])).json["files"][0]
    assert app.http.get(renewed["url"]).content == b"hello world"


async def test_concurrent_gets_copy_each_file_once(app: AppClient, rig) -> None:
    info = app.script(latency=0.3, files=[{"path": f"/mnt/data/f{i}.bin", "size": 300000 + i} for i in range(3)])
    response_id = (await app.post_run(prompt=info["prompt"], wait=False)).json["response_id"]
    await asyncio.sleep(0.6)
    before = rig.emulator.stats()["downloads"]
    replies = await asyncio.gather(*(app.get_run(response_id) for _ in range(10)))
    assert [r.status for r in replies] == [200] * 10
    blobs = {tuple(sorted(f["blob"] for f in r.json["files"])) for r in replies}
    assert len(blobs) == 1 and len(next(iter(blobs))) == 3
    downloads = rig.emulator.stats()["downloads"]
    for file_id in app.expected_files(response_id):
        assert downloads.get(file_id, 0) - before.get(file_id, 0) == 1
    app.verify_answer(replies[0].json)


async def test_a_lost_manifest_race_reads_the_winners_manifest(app: AppClient) -> None:
    from code_interpreter_files.services import get_services

    answer = (await app.post_run(prompt="race")).json
    store = (await get_services()).store
    assert await store.write_manifest(answer["response_id"], {"response_id": "overwritten?"}) is False
    assert (await store.read_manifest(answer["response_id"]))["response_id"] == answer["response_id"]


async def test_delete_cancels_a_running_run(app: AppClient, rig) -> None:
    info = app.script(latency=30, files=[{"path": "/mnt/data/never.txt", "content": "x"}])
    response_id = (await app.post_run(prompt=info["prompt"], wait=False)).json["response_id"]
    cancels = rig.emulator.stats()["requests"].get("POST /responses/{id}/cancel", 0)
    deleted = await app.delete_run(response_id)
    assert deleted.status == 204 and deleted.body == b""
    assert rig.emulator.stats()["requests"]["POST /responses/{id}/cancel"] == cancels + 1
    assert (await app.get_run(response_id)).status == 404
    again = await app.delete_run(response_id)
    assert again.status == 404 and again.error_code() == "run_not_found"


async def test_delete_removes_every_blob_of_a_finished_run(app: AppClient, rig) -> None:
    info = app.script(files=[{"path": "/mnt/data/a.txt", "content": "a"}, {"path": "/mnt/data/b.txt", "content": "b"}])
    answer = (await app.post_run(prompt=info["prompt"])).json
    assert len(storage_names(rig, answer["response_id"])) == 3
    assert (await app.delete_run(answer["response_id"])).status == 204
    assert storage_names(rig, answer["response_id"]) == []
    assert app.http.get(answer["files"][0]["url"]).status_code == 404
    assert (await app.delete_run(answer["response_id"])).status == 404
    assert (await app.get_run(answer["response_id"])).status == 404


async def test_failed_and_cancelled_runs_are_clear_errors_and_incomplete_ones_keep_their_files(
    app: AppClient, rig
) -> None:
    failed = app.script(status="failed", error={"code": "server_error", "message": "the sandbox crashed"})
    reply = await app.post_run(prompt=failed["prompt"])
    assert reply.status == 502 and reply.error_code() == "run_failed"
    assert "the sandbox crashed" in reply.json["error"]["message"]

    incomplete = app.script(status="incomplete", files=[{"path": "/mnt/data/partial.csv", "content": "a,b\n1,2"}])
    started = (await app.post_run(prompt=incomplete["prompt"], wait=False)).json
    reply = await poll_until_done(app, started["response_id"])
    assert reply.status == 200, reply.body
    assert (reply.json["status"], reply.json["incomplete_reason"]) == ("incomplete", "max_output_tokens")
    assert [f["filename"] for f in reply.json["files"]] == ["partial.csv"]
    app.verify_answer(reply.json)
    again = await app.get_run(started["response_id"])  # from the manifest: still incomplete, same reason
    assert (again.json["status"], again.json["incomplete_reason"]) == ("incomplete", "max_output_tokens")

    slow = app.script(latency=30)
    started = (await app.post_run(prompt=slow["prompt"], wait=False)).json
    import openai

    client = openai.OpenAI(base_url=rig.emulator_url + "/openai/v1/", api_key=rig.api_key)
    client.responses.cancel(started["response_id"])
    reply = await app.get_run(started["response_id"])
    assert reply.status == 409 and reply.error_code() == "run_cancelled"


async def test_unknown_and_malformed_run_ids(app: AppClient) -> None:
    unknown = await app.get_run("resp_doesnotexist")
    assert unknown.status == 404 and unknown.error_code() == "run_not_found"
    for bad in ("../etc", "resp_", "x" * 300, "resp_a/b", "resp_ä"):
        reply = await app.get_run(bad)
        assert reply.status == 400 and reply.error_code() == "invalid_run_id", bad
    reply = await app.get_run("resp_abc", sas_ttl_minutes="-1")
    assert reply.status == 400


def _suspended_sdk_generators() -> set[int]:
    """Async generators of the HTTP stack that were started and neither finished nor closed."""
    gc.collect()
    return {
        id(g)
        for g in gc.get_objects()
        if inspect.isasyncgen(g)
        and g.ag_frame is not None
        and any(part in g.ag_code.co_filename for part in ("openai", "httpx2", "httpcore2"))
    }


async def test_a_finished_run_leaves_no_stream_half_read(app: AppClient) -> None:
    """The event stream is read to its end: nothing is left for the garbage collector to close,
    possibly on another thread, which breaks with 'async generator already executing'."""
    before = _suspended_sdk_generators()
    for _ in range(3):
        assert (await app.post_run(prompt="hello")).status == 200
    assert _suspended_sdk_generators() - before == set()


async def test_a_broken_event_stream_falls_back_to_polling(app: AppClient, rig) -> None:
    info = app.script(latency=0.5, cut_events=True, files=[{"path": "/mnt/data/a.txt", "content": "a"}])
    polls = rig.emulator.stats()["requests"].get("GET /responses/{id}", 0)
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 200, reply.body
    assert [f["filename"] for f in reply.json["files"]] == ["a.txt"]
    assert rig.emulator.stats()["requests"]["GET /responses/{id}"] > polls


async def test_delete_before_any_output_container_exists_is_404(app: AppClient, configure) -> None:
    configure(OUTPUT_CONTAINER="never-created-yet")
    reply = await app.delete_run("resp_neverexisted")
    assert reply.status == 404 and reply.error_code() == "run_not_found"


async def test_concurrent_deletes_are_204_and_404_never_502(app: AppClient) -> None:
    answer = (await app.post_run(prompt="twice")).json
    replies = await asyncio.gather(*(app.delete_run(answer["response_id"]) for _ in range(2)))
    assert sorted(r.status for r in replies) in ([204, 204], [204, 404])


async def test_a_manifest_of_a_newer_version_is_a_clear_error(app: AppClient, rig) -> None:
    answer = (await app.post_run(prompt="hello")).json
    service = BlobServiceClient.from_connection_string(rig.azurite.connection_string)
    blob = service.get_blob_client(rig.OUTPUT_CONTAINER, f"{answer['response_id']}/manifest.json")
    saved = json.loads(blob.download_blob().readall())
    blob.upload_blob(json.dumps({**saved, "version": 99}), overwrite=True)
    reply = await app.get_run(answer["response_id"])
    assert reply.status == 500 and reply.error_code() == "unsupported_manifest"
    assert "newer" in reply.json["error"]["message"]
