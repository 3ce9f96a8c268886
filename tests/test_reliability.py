"""Injected faults: cut downloads, rate limits, broken upstreams, slow models, expiring containers,
Blob Storage going away mid-run, a failing managed identity. Nothing lost, nothing half-written."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from code_interpreter_files import blob_upload, responses_api
from code_interpreter_files.identity import _identity_error as identity_error
from local_azure.azurite import Azurite
from tests import figures
from tests.appclient import AppClient, Reply
from tests.helpers import storage_names

MIB = 1024 * 1024


def fault(n: int = 1) -> None:
    figures.count("faults_injected", n)


async def served_bytes(rig) -> int:
    return (await asyncio.to_thread(rig.emulator.stats))["bytes_served"]


async def wait_for_stream(rig, start: int, at_least: int) -> None:
    """Until the emulator has served `at_least` bytes more than `start`: a download is under way."""
    for _ in range(3000):
        if await served_bytes(rig) - start >= at_least:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the download never started")


# ------------------------------------------------------------------------------------------------
# downloads cut short

B = blob_upload.BLOCK_BYTES
CUT_SIZE = 2 * B + 12345
_RANDOM = random.Random(5)  # fixed: the same offsets on every run
CUT_OFFSETS = sorted(
    {0, 1, B - 1, B, B + 1, 2 * B - 1, 2 * B, 2 * B + 1, CUT_SIZE - 1}
    | {_RANDOM.randrange(2, CUT_SIZE - 1) for _ in range(3)}
)


@pytest.mark.parametrize("offset", CUT_OFFSETS)
async def test_a_download_cut_at_any_offset_leaves_no_blob_and_a_retry_copies_it(
    app: AppClient, rig, offset: int
) -> None:
    fault()
    info = app.script(
        files=[
            {"path": "/mnt/data/cut.bin", "size": CUT_SIZE, "cut_after": offset, "cut_times": 1},
            {"path": "/mnt/data/fine.txt", "content": "fine"},
        ]
    )
    answer = (await app.post_run(prompt=info["prompt"])).json
    response_id = answer["response_id"]
    assert [f["filename"] for f in answer["files"]] == ["fine.txt"]
    [failed] = answer["failed_files"]
    assert (failed["filename"], failed["code"]) == ("cut.bin", "download_interrupted")
    assert "retry" in failed["message"]
    expected = app.expected_files(response_id)
    app.assert_nothing_lost(answer, set(expected))
    names = storage_names(rig, response_id)
    assert names == [answer["files"][0]["blob"]]  # neither the cut file nor a manifest
    app.verify_answer(answer)

    again = await app.get_run(response_id)  # the caller's retry: the second download is whole
    assert again.status == 200, again.body
    assert sorted(f["filename"] for f in again.json["files"]) == ["cut.bin", "fine.txt"]
    assert again.json["failed_files"] == []
    app.assert_nothing_lost(again.json, set(expected), copied=True)
    app.verify_answer(again.json)
    assert f"{response_id}/manifest.json" in storage_names(rig, response_id)


async def test_a_download_cut_every_time_stays_reported_and_is_never_half_written(app: AppClient, rig) -> None:
    fault(3)
    info = app.script(
        files=[
            {"path": "/mnt/data/cut.bin", "size": CUT_SIZE, "cut_after": B + 1},
            {"path": "/mnt/data/fine.txt", "content": "fine"},
        ]
    )
    answer = (await app.post_run(prompt=info["prompt"])).json
    for _ in range(2):
        again = await app.get_run(answer["response_id"])
        assert again.status == 200
        assert [(f["filename"], f["code"]) for f in again.json["failed_files"]] == [("cut.bin", "download_interrupted")]
        assert storage_names(rig, answer["response_id"]) == [answer["files"][0]["blob"]]
        app.assert_nothing_lost(again.json, set(app.expected_files(answer["response_id"])))


# ------------------------------------------------------------------------------------------------
# Azure OpenAI misbehaving


async def test_rate_limits_are_retried_after_the_time_they_ask_for(app: AppClient, rig) -> None:
    fault(2)
    info = app.script(
        files=[{"path": "/mnt/data/a.txt", "content": "a"}],
        fail_first=[{"status": 429, "retry_after": 1, "times": 2}],
    )
    before = rig.emulator.stats()["requests"]["POST /responses"]
    started = time.monotonic()
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 200, reply.body
    assert time.monotonic() - started >= 2.0  # retry-after: 1 s, honoured twice
    assert rig.emulator.stats()["requests"]["POST /responses"] - before == 3
    app.verify_answer(reply.json)


async def test_rate_limits_beyond_the_retries_are_a_clear_429(app: AppClient, rig) -> None:
    fault(3)
    info = app.script(files=[], fail_first=[{"status": 429, "retry_after": 0, "times": 3}])
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 429 and reply.error_code() == "rate_limited"
    assert reply.headers["Retry-After"] == "1" and "rate limiting" in reply.json["error"]["message"]


@pytest.mark.parametrize(("status", "tries"), [(500, 1), (502, 1), (503, 3)])
async def test_persistent_server_errors_are_502_upstream_error(app: AppClient, rig, status: int, tries: int) -> None:
    """A create is retried only when the service certainly did not start the run: a 503 that asks to
    come back (`retry-after`); a 500/502 may have started it, and a retry would bill a second run."""
    fault(tries)
    info = app.script(files=[], fail_first=[{"status": status, "times": 10, "retry_after": 0}])
    before = rig.emulator.stats()["requests"]["POST /responses"]
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 502 and reply.error_code() == "upstream_error"
    assert reply.json["error"]["upstream_status"] == status
    assert rig.emulator.stats()["requests"]["POST /responses"] - before == tries


async def test_a_model_slower_than_the_budget_is_202_with_nothing_left_running(app: AppClient, configure, rig) -> None:
    fault()
    configure(RUN_WAIT_SECONDS=1)
    info = app.script(latency=1.6, files=[{"path": "/mnt/data/late.txt", "content": "late"}])
    tasks = asyncio.all_tasks()
    reply = await app.post_run(prompt=info["prompt"])
    # answered while the model still ran (it takes 1.6 s; waiting for it would have answered 200)
    assert reply.status == 202 and reply.json["status"] in ("queued", "in_progress"), reply.body
    assert asyncio.all_tasks() == tasks
    await asyncio.sleep(1.0)
    done = await app.get_run(reply.json["response_id"])
    assert done.status == 200 and [f["filename"] for f in done.json["files"]] == ["late.txt"]
    app.verify_answer(done.json)


async def test_the_budget_running_out_mid_copy_is_202_and_leaves_no_partial_blob(
    app: AppClient, configure, rig
) -> None:
    """The model finishes just before the budget ends; the copy of a big file cannot. The answer is
    202 ("copying"), the copy is cancelled (no task, no blob), and the next GET copies it whole."""
    fault()
    configure(RUN_WAIT_SECONDS=1)
    size = 192 * MIB  # about 2 s of copying here, where the budget leaves about half a second
    info = app.script(latency=0.3, files=[{"path": "/mnt/data/big.bin", "size": size}])
    tasks = asyncio.all_tasks()
    start = await served_bytes(rig)
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 202 and reply.json["status"] == "copying", reply.body
    assert 0 < await served_bytes(rig) - start < size  # it was cut mid-copy
    assert asyncio.all_tasks() == tasks
    response_id = reply.json["response_id"]
    assert storage_names(rig, response_id) == []
    configure()
    done = await app.get_run(response_id)
    assert done.status == 200, done.body
    [file] = done.json["files"]
    assert file["bytes"] == size
    app.verify_answer(done.json)


# ------------------------------------------------------------------------------------------------
# the container expiring


async def test_a_container_expiring_mid_copy_reports_each_file_it_took(app: AppClient, configure, rig) -> None:
    """Listed, then expired while the first (big) file streams: that one is copied whole; the others
    are each reported as container_expired, and the record of it is kept."""
    fault()
    configure(COPY_CONCURRENCY=1)
    info = app.script(
        files=[
            {"path": "/mnt/data/big.bin", "size": 96 * MIB},
            {"path": "/mnt/data/one.txt", "content": "one"},
            {"path": "/mnt/data/two.txt", "content": "two"},
        ]
    )
    start = await served_bytes(rig)
    post = asyncio.ensure_future(app.post_run(prompt=info["prompt"]))
    await wait_for_stream(rig, start, 2 * MIB)
    [response_id] = await asyncio.to_thread(rig.emulator.runs_for, info["script_id"])
    run = await asyncio.to_thread(rig.emulator.run, response_id)
    await asyncio.to_thread(rig.emulator.expire_container, run["container_id"])
    reply = await post
    assert reply.status == 200, reply.body
    answer = reply.json
    assert [f["filename"] for f in answer["files"]] == ["big.bin"]
    assert {f["filename"]: f["code"] for f in answer["failed_files"]} == {
        "one.txt": "container_expired",
        "two.txt": "container_expired",
    }
    assert all("run the prompt again" in f["message"] for f in answer["failed_files"])
    app.assert_nothing_lost(answer, set(app.expected_files(answer["response_id"])))
    app.verify_answer(answer)
    again = await app.get_run(answer["response_id"])  # the manifest: the same files, no new attempt
    assert [f["file_id"] for f in again.json["files"]] == [f["file_id"] for f in answer["files"]]
    assert again.json["failed_files"] == answer["failed_files"]


async def test_a_container_expired_after_listing_is_410_every_time_and_writes_no_file(app: AppClient, rig) -> None:
    fault()
    info = app.script(
        files=[{"path": "/mnt/data/a.txt", "content": "a"}, {"path": "/mnt/data/b.txt", "content": "b"}],
        container_expires="after_list",
    )
    reply = await app.post_run(prompt=info["prompt"], wait=False)
    response_id = reply.json["response_id"]
    for _ in range(2):
        reply = await app.get_run(response_id)
        assert reply.status == 410 and reply.error_code() == "container_expired", reply.body
        assert "run the prompt again" in reply.json["error"]["message"]
        # the outcome is committed once (the queue and every GET answer it), and no file blob
        assert storage_names(rig, response_id) == [f"{response_id}/manifest.json"]


# ------------------------------------------------------------------------------------------------
# Blob Storage going away


@pytest.fixture
def own_azurite(rig, tmp_path) -> Iterator[Azurite]:
    """A separate Azurite that keeps its data on disk, so it can be stopped and started again."""
    azurite = Azurite(rig.tls, location=tmp_path / "azurite")
    azurite.start()
    try:
        yield azurite
    finally:
        azurite.stop()


def blob_names(azurite: Azurite, container: str, prefix: str) -> list[str]:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    try:
        return sorted(b.name for b in service.get_container_client(container).list_blobs(name_starts_with=prefix))
    finally:
        service.close()


async def test_storage_stopping_mid_stream_is_a_clear_error_then_a_retry_succeeds(
    app: AppClient, configure, rig, own_azurite: Azurite
) -> None:
    fault()
    configure(OUTPUT_STORAGE_ACCOUNT_URL=own_azurite.account_url, OUTPUT_CONTAINER="stopped")
    info = app.script(
        files=[{"path": "/mnt/data/big.bin", "size": 96 * MIB}, {"path": "/mnt/data/small.txt", "content": "s"}]
    )
    start = await served_bytes(rig)
    started = time.monotonic()
    post = asyncio.ensure_future(app.post_run(prompt=info["prompt"]))
    await wait_for_stream(rig, start, 8 * MIB)
    await asyncio.to_thread(own_azurite.stop)
    reply = await post
    elapsed = time.monotonic() - started
    [response_id] = rig.emulator.runs_for(info["script_id"])
    if reply.status == 200:
        failed = {f["filename"]: f for f in reply.json["failed_files"]}
        assert failed["big.bin"]["code"] == "storage_error" and "retry" in failed["big.bin"]["message"]
    else:
        assert reply.status == 502 and reply.error_code() == "storage_error", reply.body
        assert "try again" in reply.json["error"]["message"]
    assert elapsed < 60, f"a dead storage took {elapsed:.0f} s to report"
    await asyncio.to_thread(own_azurite.start)
    names = blob_names(own_azurite, "stopped", response_id)
    assert not any(n.endswith("/big.bin") or n.endswith("manifest.json") for n in names), names

    again = await app.get_run(response_id)
    assert again.status == 200, again.body
    assert sorted(f["filename"] for f in again.json["files"]) == ["big.bin", "small.txt"]
    app.assert_nothing_lost(again.json, set(app.expected_files(response_id)), copied=True)
    app.verify_answer(again.json)  # before the fixture stops this Azurite for good


async def test_storage_down_before_the_run_is_a_clear_502(app: AppClient, configure, rig, own_azurite) -> None:
    fault()
    configure(OUTPUT_STORAGE_ACCOUNT_URL=own_azurite.account_url, OUTPUT_CONTAINER="down")
    own_azurite.stop()
    started = time.monotonic()
    reply = await app.get_run("resp_doesnotmatter")
    assert reply.status == 502 and reply.error_code() == "storage_error", reply.body
    assert time.monotonic() - started < 60


# ------------------------------------------------------------------------------------------------
# the managed identity failing


@pytest.fixture
def identity_fault(rig) -> Iterator[Any]:
    yield rig.identity.config
    rig.identity.config("ok")


def assert_identity_error(reply: Reply) -> None:
    assert reply.status == 503 and reply.error_code() == "identity_error", reply.body
    message = reply.json["error"]["message"]
    assert "identity" in message.lower() and "token" in message.lower()
    assert not figures.JWT.search(reply.body.decode())


@pytest.mark.parametrize("mode", ["fail", "expired"])
@pytest.mark.parametrize("who", ["model", "storage"])
async def test_a_failing_identity_is_a_clear_503_and_recovers(
    app: AppClient, configure, rig, identity_fault, mode: str, who: str
) -> None:
    fault()
    # a configuration of its own: a fresh credential, with no token cached yet
    configure(model_auth="identity" if who == "model" else "key", OUTPUT_CONTAINER=f"id-{mode}-{who}")
    identity_fault(mode)
    reply = await app.post_run(prompt="hello")
    assert_identity_error(reply)
    if mode == "expired":
        assert "expired" in reply.json["error"]["message"]
    identity_fault("ok")
    recovered = await app.post_run(prompt="hello")  # the same credential: nothing bad was cached
    assert recovered.status == 200, recovered.body
    app.verify_answer(recovered.json)


async def test_an_identity_failure_mid_copy_cancels_the_other_copies(
    app: AppClient, configure, rig, monkeypatch
) -> None:
    """One copy fails with an error that ends the run (here: the token could not be renewed). The
    answer is a clear 503 and the copies still under way stop: no task outlives the answer."""
    fault()
    info = app.script(
        files=[{"path": "/mnt/data/big.bin", "size": 128 * MIB}, {"path": "/mnt/data/small.txt", "content": "s"}]
    )
    real_open = responses_api.open_file_content
    calls = 0

    def failing_open(client, container_id, file_id):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 2:

            class Failing:
                async def __aenter__(self) -> None:
                    await asyncio.sleep(0.3)
                    raise identity_error(("https://storage.azure.com/.default",), ClientAuthenticationError("x"))

                async def __aexit__(self, *exc: object) -> None:
                    return None

            return Failing()
        return real_open(client, container_id, file_id)

    monkeypatch.setattr(responses_api, "open_file_content", failing_open)
    tasks = asyncio.all_tasks()
    reply = await app.post_run(prompt=info["prompt"])
    assert_identity_error(reply)
    assert asyncio.all_tasks() == tasks, "a copy is still running after the answer"
    [response_id] = rig.emulator.runs_for(info["script_id"])
    served = await served_bytes(rig)
    await asyncio.sleep(0.3)
    assert await served_bytes(rig) == served  # the big download really stopped
    assert storage_names(rig, response_id) == []
    monkeypatch.setattr(responses_api, "open_file_content", real_open)
    again = await app.get_run(response_id)
    assert again.status == 200 and len(again.json["files"]) == 2
    app.verify_answer(again.json)


async def test_a_missing_blob_is_not_found_not_half_there(app: AppClient) -> None:
    """Uncommitted blocks of a broken upload are invisible: no reader can get a partial file."""
    from code_interpreter_files.services import get_services

    fault()
    store = (await get_services()).store
    await store.ensure_container()

    async def breaking():
        yield b"x" * (B + 10)
        raise ConnectionResetError("injected")

    with pytest.raises(ConnectionResetError):
        await blob_upload.upload_stream(
            store.file_client("resp_partial/f/p.bin"),
            breaking(),
            max_bytes=10 * B,
            expected_bytes=None,
            filename="p.bin",
            content_type="application/octet-stream",
            metadata={},
            budget=(await get_services()).memory_budget,
        )
    with pytest.raises(ResourceNotFoundError):
        await store._container.get_blob_client("resp_partial/f/p.bin").get_blob_properties()
    assert [b.name async for b in store._container.list_blobs(name_starts_with="resp_partial/")] == []
