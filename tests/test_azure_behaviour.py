"""What production Azure OpenAI does that a naive client does not survive (issue 9), against the rig.

Each scenario is played by the emulator the way the public reports and the published spec describe it
(the emulator's script fields name them); the app must answer clearly and lose no file.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest

from code_interpreter_files.settings import SettingsError, load_settings
from local_azure.png import png_of_size
from tests import figures
from tests.appclient import AppClient


def _runs_started(rig, script_id: str) -> int:
    return rig.emulator.stats()["runs_started"]["by_script"].get(script_id, 0)


@pytest.mark.parametrize("status", [403, 404, 500])
async def test_a_failing_container_listing_never_fails_the_run(app: AppClient, rig, status: int) -> None:
    """Azure: listing and file metadata can fail (RBAC CheckAccess 403, 404 "Container not found", 500s)
    while downloads by id work. The cited file is downloaded by id, named from the citation."""
    info = app.script(
        text="Here: [report.csv](sandbox:/mnt/data/report.csv)",
        files=[
            {"path": "/mnt/data/report.csv", "content": "a,b\n1,2\n", "citation_filename": "$file_id"},
            {"path": "/mnt/data/uncited.bin", "size": 1000, "cite": False},
        ],
        list_fails={"status": status},
        retrieve_fails={"status": status},
    )
    reply = await app.post_run(prompt=info["prompt"], collect="all")
    assert reply.status == 200, reply.body
    answer = reply.json
    [file] = answer["files"]
    assert (file["filename"], file["origin"], file["bytes"]) == ("report.csv", "cited", 8)  # name from the sandbox link
    assert file["url"] in answer["text"]
    [warning] = answer["warnings"]
    assert warning["code"] == "container_listing_failed" and str(status) in warning["message"]
    assert "collect=all" in warning["message"]
    app.verify_answer(answer)
    again = await app.get_run(answer["response_id"])
    assert again.json["warnings"] == answer["warnings"]  # kept in the manifest


async def test_warnings_are_an_empty_list_when_all_went_well(app: AppClient) -> None:
    answer = (await app.post_run(prompt="hello")).json
    assert answer["warnings"] == [] and answer["incomplete_reason"] is None
    assert (await app.get_run(answer["response_id"])).json["warnings"] == []


@pytest.mark.parametrize("shape", ["openai_400", "azure_404"])
async def test_an_expired_container_in_its_real_shapes_is_container_expired(app: AppClient, rig, shape: str) -> None:
    info = app.script(
        latency=0.3,
        expired_shape=shape,
        container_expires="before_list",
        files=[{"path": "/mnt/data/gone.txt", "content": "gone"}],
    )
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 410, reply.body
    assert reply.error_code() == "container_expired"
    assert "expired or was deleted" in reply.json["error"]["message"]
    assert "AZURE_OPENAI_ENDPOINT" not in reply.json["error"]["message"]


@pytest.mark.parametrize("shape", ["openai_400", "azure_404"])
async def test_a_container_expiring_after_the_first_file_keeps_that_file(app: AppClient, rig, shape: str) -> None:
    info = app.script(
        expired_shape=shape,
        container_expires="after_first_download",
        files=[{"path": f"/mnt/data/f{i}.txt", "content": f"file {i}"} for i in range(3)],
    )
    answer = (await app.post_run(prompt=info["prompt"], collect="all")).json
    assert len(answer["files"]) >= 1
    assert {f["code"] for f in answer["failed_files"]} <= {"container_expired"}
    app.assert_nothing_lost(answer, set(app.expected_files(answer["response_id"])))
    app.verify_answer(answer)


async def test_a_create_that_fails_after_starting_the_run_is_not_retried(app: AppClient, rig) -> None:
    """The SDK would retry a 500; after Azure accepted the request that bills a second run."""
    info = app.script(create_500_after_start=True)
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 502 and reply.error_code() == "upstream_error", reply.body
    assert _runs_started(rig, info["script_id"]) == 1


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 429, "times": 1, "retry_after_ms": 200},
        {"status": 429, "times": 1, "retry_after": 1},
        {"status": 429, "times": 1},
        {"status": 503, "times": 1, "retry_after": 1},
    ],
    ids=["429-retry-after-ms", "429-retry-after", "429-no-header", "503-retry-after"],
)
async def test_a_create_refused_before_starting_is_retried_once_and_runs_once(app: AppClient, rig, fault) -> None:
    info = app.script(fail_first=[fault])
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 200, reply.body
    assert _runs_started(rig, info["script_id"]) == 1
    figures.count("faults_injected")


@pytest.mark.parametrize(
    ("fault", "expected_retry_after"),
    [
        ({"status": 429, "times": 10, "retry_after_ms": 30000}, "30"),
        ({"status": 429, "times": 10, "retry_after": 45}, "45"),
        ({"status": 429, "times": 10}, None),
    ],
    ids=["retry-after-ms", "retry-after", "none"],
)
async def test_a_persistent_429_is_answered_429_in_time(
    app: AppClient, configure, rig, fault, expected_retry_after
) -> None:
    configure(RUN_WAIT_SECONDS=5)
    info = app.script(fail_first=[fault])
    started = asyncio.get_running_loop().time()
    reply = await app.post_run(prompt=info["prompt"])
    elapsed = asyncio.get_running_loop().time() - started
    assert reply.status == 429 and reply.error_code() == "rate_limited", reply.body
    retry_after = reply.headers["Retry-After"]
    assert retry_after.isdigit() and int(retry_after) >= 1
    if expected_retry_after is not None:
        assert retry_after == expected_retry_after
    assert elapsed < 5  # no retry slept past the deadline (a structural bound: the budget, not a speed)
    assert _runs_started(rig, info["script_id"]) == 0


async def test_a_429_on_get_is_answered_429_with_retry_after(app: AppClient, configure, rig) -> None:
    """A long Retry-After inside an HTTP answer is the caller's to wait, not a 60-second hang."""
    info = app.script(latency=0.2, fail_first=[{"status": 429, "times": 10, "retry_after": 60, "on": "get_response"}])
    response_id = (await app.post_run(prompt=info["prompt"], wait=False)).json["response_id"]
    await asyncio.sleep(0.3)
    before = rig.emulator.stats()["requests"]["GET /responses/{id}"]
    reply = await app.get_run(response_id)
    assert reply.status == 429 and reply.headers["Retry-After"] == "60", reply.body
    assert rig.emulator.stats()["requests"]["GET /responses/{id}"] - before == 1  # not retried into the wait


async def test_a_stream_that_closes_before_the_run_is_created_is_a_clear_502(app: AppClient, rig) -> None:
    info = app.script(stream_closes_before_created=True)
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 502 and reply.error_code() == "upstream_error", reply.body
    assert "RUN_EVENTS=poll" in reply.json["error"]["message"]


async def test_a_silent_stream_is_trusted_only_run_events_idle_seconds(app: AppClient, configure, rig) -> None:
    configure(RUN_EVENTS_IDLE_SECONDS=1, RUN_WAIT_SECONDS=20)
    info = app.script(latency=1.5, silent_stream=True, files=[{"path": "/mnt/data/late.txt", "content": "late"}])
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 200, reply.body
    assert [f["filename"] for f in reply.json["files"]] == ["late.txt"]
    assert rig.emulator.stats()["requests"]["GET /responses/{id}"] >= 1  # it polled after the silence


async def test_run_events_poll_never_opens_a_stream(app: AppClient, configure, rig) -> None:
    configure(RUN_EVENTS="poll")
    info = app.script(latency=0.3)
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 200, reply.body
    request = rig.emulator.run(reply.json["response_id"])["request"]
    assert request["stream"] is False and request["background"] is True


async def test_images_that_were_only_shown_are_copied(app: AppClient, rig) -> None:
    info = app.script(images=[{"png_bytes": 300}, {"png_bytes": 5000}], files=[])
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 200, reply.body
    request = rig.emulator.run(reply.json["response_id"])["request"]
    assert request["include"] == ["code_interpreter_call.outputs"]
    images = [f for f in reply.json["files"] if f["origin"] == "image_output"]
    assert len(images) == 2
    call_id = rig.emulator.run(reply.json["response_id"])["code_interpreter_call_id"]
    assert [f["filename"] for f in images] == [f"{call_id}-1.png", f"{call_id}-2.png"]
    for file in images:
        assert file["content_type"] == "image/png" and file["cited"] is False
        body = app.http.get(file["url"]).content
        assert body.startswith(b"\x89PNG") and hashlib.sha256(body).hexdigest() == file["sha256"]
        app.check_link(file)


async def test_an_image_output_that_is_not_a_data_url_is_refused_not_fetched() -> None:
    from code_interpreter_files.finding import _image_output

    refused = _image_output("ci_1", "cntr_1", 1, "https://169.254.169.254/latest/meta-data", 1 << 20)
    assert refused.code == "invalid_image_output"  # type: ignore[union-attr]
    too_big = _image_output("ci_1", "cntr_1", 1, "data:image/png;base64," + "A" * 4000, 100)
    assert too_big.code == "invalid_image_output"  # type: ignore[union-attr]
    data = png_of_size(200, "unit")
    ok = _image_output("ci_1", "cntr_1", 2, "data:image/png;base64," + base64.b64encode(data).decode(), 1 << 20)
    assert ok.filename == "ci_1-2.png" and ok.data == data  # type: ignore[union-attr]


def test_dated_api_versions_are_refused_at_start() -> None:
    base = {
        "AZURE_OPENAI_ENDPOINT": "https://x.openai.azure.com",
        "AZURE_OPENAI_DEPLOYMENT": "d",
        "OUTPUT_STORAGE_ACCOUNT_URL": "https://a.blob.core.windows.net",
        "RUNS_QUEUE_STORAGE__queueServiceUri": "https://a.queue.core.windows.net",
    }
    for good in ("v1", "preview", "latest"):
        assert load_settings({**base, "AZURE_OPENAI_API_VERSION": good}).api_version == good
    with pytest.raises(SettingsError) as error:
        load_settings({**base, "AZURE_OPENAI_API_VERSION": "2025-04-01-preview"})
    assert "AZURE_OPENAI_API_VERSION" in error.value.invalid
    assert "dated" in error.value.invalid["AZURE_OPENAI_API_VERSION"]


async def test_the_ai_azure_com_audience_is_the_default_and_the_legacy_one_works(
    app: AppClient, configure, rig
) -> None:
    rig.emulator.reset()
    assert (await app.post_run(prompt="hello")).status == 200
    assert rig.emulator.stats()["jwt_audiences"] == ["https://ai.azure.com"]
    configure(AZURE_OPENAI_TOKEN_SCOPE="https://cognitiveservices.azure.com/.default")
    rig.emulator.reset()
    assert (await app.post_run(prompt="hello")).status == 200
    assert rig.emulator.stats()["jwt_audiences"] == ["https://cognitiveservices.azure.com"]


async def test_delete_answers_204_when_azure_refuses_to_delete_a_running_response(app: AppClient, rig) -> None:
    """Cancel is best effort: the run goes on, the response delete is refused while it runs."""
    info = app.script(latency=30, cancel_ignored=True, delete_refused_while_running=True)
    response_id = (await app.post_run(prompt=info["prompt"], wait=False)).json["response_id"]
    reply = await app.delete_run(response_id)
    assert reply.status == 204, reply.body
    assert rig.emulator.stats()["requests"]["DELETE /responses/{id}"] >= 2  # retried briefly
