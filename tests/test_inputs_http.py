"""Inputs and conversations through POST /api/runs (issue 11): the caller's files reach the run and are
never outputs, uploaded copies do not accumulate, a conversation goes on in its container or, once that
expired, in a new one with its files carried over."""

from __future__ import annotations

import base64
import hashlib

from azure.storage.blob import BlobServiceClient

from local_azure.emulator_files import files_state
from tests.appclient import AppClient

INPUTS = "code-interpreter-inputs"


def _put_input(rig, name: str, data: bytes) -> None:
    service = BlobServiceClient.from_connection_string(rig.azurite.connection_string)
    container = service.get_container_client(INPUTS)
    if not container.exists():
        container.create_container()
    container.upload_blob(name, data, overwrite=True)


def _live_uploads(rig) -> set[str]:
    return {f["id"] for f in files_state(rig.emulator)["files"] if not f["deleted"]}


async def test_blob_and_inline_inputs_are_analysed_listed_and_deleted_after(app: AppClient, rig) -> None:
    table = b"city,temp\nOslo,3\nLima,19\n"
    _put_input(rig, "uploads/weather-2026.csv", table)
    before = _live_uploads(rig)
    info = app.script(
        files=[{"path": "/mnt/data/summary.csv", "copy_of_input": "weather.csv"}],
        text="Summary: [summary.csv](sandbox:/mnt/data/summary.csv)",
    )
    reply = await app.post_run(
        prompt=info["prompt"],
        collect="all",
        input_files=[
            {"blob": "uploads/weather-2026.csv", "name": "weather.csv"},
            {"name": "../notes.txt", "content_base64": base64.b64encode(b"use Celsius").decode()},
        ],
    )
    assert reply.status == 200, reply.body
    answer = reply.json
    assert answer["inputs"] == [
        {"name": "weather.csv", "bytes": len(table), "sha256": hashlib.sha256(table).hexdigest()},
        {"name": "notes.txt", "bytes": 11, "sha256": hashlib.sha256(b"use Celsius").hexdigest()},  # made safe
    ]
    assert [f["filename"] for f in answer["files"]] == ["summary.csv"]  # inputs are never outputs
    app.verify_answer(answer)
    request = rig.emulator.run(answer["response_id"])["request"]
    file_ids = request["tools"][0]["container"]["file_ids"]
    assert len(file_ids) == 2 and request["tools"][0]["container"]["type"] == "auto"
    assert _live_uploads(rig) == before  # the uploaded copies were deleted when the run finished
    assert (await app.get_run(answer["response_id"])).json["inputs"] == answer["inputs"]


async def test_a_missing_input_blob_is_a_400_naming_it_and_nothing_starts(app: AppClient, rig) -> None:
    info = app.script()
    before = _live_uploads(rig)
    reply = await app.post_run(
        prompt=info["prompt"],
        input_files=[{"name": "ok.txt", "content_base64": "b2s="}, {"blob": "nowhere/missing.csv"}],
    )
    assert reply.status == 400 and reply.error_code() == "input_not_found", reply.body
    assert "nowhere/missing.csv" in reply.json["error"]["message"]
    assert rig.emulator.stats()["runs_started"]["by_script"].get(info["script_id"], 0) == 0
    assert _live_uploads(rig) == before


async def test_too_many_inputs_is_refused_with_the_limit(app: AppClient, configure) -> None:
    configure(MAX_INPUT_FILES=2)
    files = [{"name": f"f{i}.txt", "content_base64": "eA=="} for i in range(3)]
    reply = await app.post_run(prompt="x", input_files=files)
    assert reply.status == 400 and reply.error_code() == "too_many_inputs"
    assert "MAX_INPUT_FILES" in reply.json["error"]["message"]


async def test_delete_removes_the_uploaded_inputs_of_a_running_run(app: AppClient, rig) -> None:
    info = app.script(latency=30)
    before = _live_uploads(rig)
    started = await app.post_run(
        prompt=info["prompt"], wait=False, input_files=[{"name": "a.txt", "content_base64": "YQ=="}]
    )
    assert _live_uploads(rig) - before  # uploaded while the run goes on
    assert (await app.delete_run(started.json["response_id"])).status == 204
    assert _live_uploads(rig) == before


async def test_a_conversation_goes_on_in_its_container_then_in_a_new_one_with_its_files(app: AppClient, rig) -> None:
    chart = app.script(files=[{"path": "/mnt/data/chart.png", "content": "PNG-red"}])
    first = (await app.post_run(prompt=chart["prompt"])).json
    container_id = rig.emulator.run(first["response_id"])["container_id"]

    again = app.script(files=[{"path": "/mnt/data/chart2.png", "copy_of_input": "chart.png"}])
    second = (await app.post_run(prompt=again["prompt"], previous_response_id=first["response_id"])).json
    assert second["continued_in"] == "same_container", second
    request = rig.emulator.run(second["response_id"])["request"]
    assert request["tools"][0]["container"] == container_id
    assert request["previous_response_id"] == first["response_id"]

    rig.emulator.expire_container(container_id)  # an hour later: "now make the chart blue"
    blue = app.script(files=[{"path": "/mnt/data/blue.png", "copy_of_input": "chart.png"}])
    third = (await app.post_run(prompt=blue["prompt"], previous_response_id=second["response_id"])).json
    assert third["continued_in"] == "new_container", third
    run = rig.emulator.run(third["response_id"])
    assert run["container_id"] != container_id
    carried = {f["path"]: f["sha256"] for f in run["files"]}
    assert carried["/mnt/data/chart.png"] == hashlib.sha256(b"PNG-red").hexdigest()  # under its own name
    assert [f["filename"] for f in third["files"]] == ["blue.png"]  # the carried file is not an output
    assert third["inputs"] == []  # carried files are the conversation's, not the caller's inputs
    app.verify_answer(third)
