"""Inputs and conversations through POST /api/runs (issue 11): the caller's files reach the run and are
never outputs, uploaded copies do not accumulate, a conversation goes on in its container or, once that
expired, in a new one with its files carried over."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from azure.storage.blob import BlobServiceClient

from local_azure.azurite import ACCOUNT_NAME, Azurite
from local_azure.emulator_files import files_state
from tests.appclient import AppClient
from tests.helpers import AzuriteRecorder
from tests.rig.rig import Rig

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
            {"name": "drafts/notes.txt", "content_base64": base64.b64encode(b"use Celsius").decode()},
        ],
    )
    assert reply.status == 200, reply.body
    answer = reply.json
    assert answer["inputs"] == [
        {"name": "weather.csv", "bytes": len(table), "sha256": hashlib.sha256(table).hexdigest()},
        {"name": "notes.txt", "bytes": 11, "sha256": hashlib.sha256(b"use Celsius").hexdigest()},  # its last segment
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


# ---- input names (issue 18): a name inside INPUT_CONTAINER, nothing else, checked against the wire


@pytest.fixture(scope="module")
def recorder(rig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteRecorder]:
    """A storage account of its own whose every request is logged (Azurite --debug): the app is
    configured to it the way an operator points OUTPUT_STORAGE_ACCOUNT_URL at an account."""
    log = tmp_path_factory.mktemp("azurite-debug") / "debug.log"
    with Azurite(rig.tls, debug_log=log, queue=True) as azurite:  # its tables too: a run records itself
        service = BlobServiceClient.from_connection_string(azurite.connection_string)
        service.create_container(INPUTS).upload_blob(LEGIT, LEGIT_BYTES)
        service.get_container_client(INPUTS).upload_blob(LITERAL, b"literal")
        # What the names below would reach if they left INPUT_CONTAINER: another run's files.
        outputs = service.create_container(rig.OUTPUT_CONTAINER)
        outputs.upload_blob("resp_other/manifest.json", b'{"secret": "another caller"}')
        outputs.upload_blob("x", b"another caller's file")
        service.close()
        yield AzuriteRecorder(log, azurite.connection_string)
    log.unlink(missing_ok=True)  # it holds bearer tokens of the rig's identity


def _recorded_env(rig, recorder: AzuriteRecorder, storage: str) -> dict[str, str]:
    parts = dict(part.split("=", 1) for part in recorder.connection_string.split(";") if part)
    if storage == "identity":
        return {"OUTPUT_STORAGE_ACCOUNT_URL": parts["BlobEndpoint"], "RUNS_TABLE_SERVICE_URL": parts["TableEndpoint"]}
    return {"OUTPUT_STORAGE_CONNECTION_STRING": recorder.connection_string}


LEGIT, LEGIT_BYTES = "team/2026/q3.csv", b"quarter,revenue\nq3,42\n"
LITERAL = "données/été 100%.csv"  # taken literally: '%' not followed by two hex digits, spaces, accents
HOSTILE_NAMES = {
    "dot-dot": f"../{Rig.OUTPUT_CONTAINER}/x",
    "dot-dot inside": f"team/../../{Rig.OUTPUT_CONTAINER}/resp_other/manifest.json",
    "dot": "./q3.csv",
    "dot inside": "team/./q3.csv",
    "dots only": "team/.../q3.csv",
    "leading slash": f"/{Rig.OUTPUT_CONTAINER}/x",
    "backslash": f"..\\{Rig.OUTPUT_CONTAINER}\\x",
    "empty segment": "team//q3.csv",
    "trailing slash": "team/2026/",
    "NUL": "team/q3\x00.csv",
    "newline": "team/q3\n.csv",
    "DEL": "team/q3\x7f.csv",
    "C1 control": "team/q3\x85.csv",
    "lone surrogate": "team/q3\ud800.csv",
    "%2e%2e": f"%2e%2e/{Rig.OUTPUT_CONTAINER}/x",
    "%2E%2E": f"%2E%2E/{Rig.OUTPUT_CONTAINER}/x",
    ".%2e": f".%2e/{Rig.OUTPUT_CONTAINER}/x",
    "%2f": f"..%2f{Rig.OUTPUT_CONTAINER}%2fx",
    "%2F inside a name": "team%2F2026%2Fq3.csv",
    "%5c": f"..%5c{Rig.OUTPUT_CONTAINER}%5cx",
    "%00": "team/q3%00.csv",
    "double-encoded": f"%252e%252e/{Rig.OUTPUT_CONTAINER}/x",
    "too long": "a/" * 512 + "b.csv",
    "too many segments": "a/" * 254 + "b",
    "empty": "",
}


def _files_and_uploads(rig) -> tuple[list[Any], list[Any]]:
    state = files_state(rig.emulator)
    return state["files"], state["uploads"]


@pytest.mark.parametrize("field", ["blob", "name", "inline name"])
async def test_hostile_input_names_are_400_and_nothing_is_read_uploaded_or_started(
    app: AppClient, rig, configure, recorder: AzuriteRecorder, field: str
) -> None:
    configure(**_recorded_env(rig, recorder, "identity"))
    info = app.script()
    before = _files_and_uploads(rig)
    recorder.mark()
    for label, name in HOSTILE_NAMES.items():
        item = {
            "blob": {"blob": name},
            "name": {"blob": LEGIT, "name": name},
            "inline name": {"name": name, "content_base64": "eA=="},
        }[field]
        reply = await app.post_run(prompt=info["prompt"], input_files=[{"blob": LEGIT}, item])
        assert reply.status == 400 and reply.error_code() == "invalid_input_name", (label, reply.body)
        shown = "name" if field == "inline name" else field
        assert reply.json["error"]["message"].startswith(f"input_files[1].{shown} "), (label, reply.body)
    assert _files_and_uploads(rig) == before  # nothing uploaded to Azure OpenAI
    assert rig.emulator.stats()["runs_started"]["by_script"].get(info["script_id"], 0) == 0
    assert recorder.requests_until_marker() == []  # not even the legitimate first item was looked up


@pytest.mark.parametrize("storage", ["identity", "connection_string"])
async def test_a_nested_name_is_requested_as_input_container_slash_name(
    app: AppClient, rig, configure, recorder: AzuriteRecorder, storage: str
) -> None:
    configure(storage=storage, **_recorded_env(rig, recorder, storage))
    info = app.script(files=[{"path": "/mnt/data/copy.csv", "copy_of_input": "q3.csv"}])
    recorder.mark()
    reply = await app.post_run(prompt=info["prompt"], input_files=[{"blob": LEGIT}, {"blob": LITERAL}])
    assert reply.status == 200, reply.body
    answer = reply.json
    assert answer["inputs"] == [
        {"name": "q3.csv", "bytes": len(LEGIT_BYTES), "sha256": hashlib.sha256(LEGIT_BYTES).hexdigest()},
        {"name": "été 100_.csv", "bytes": 7, "sha256": hashlib.sha256(b"literal").hexdigest()},
    ]
    app.verify_answer(answer)
    requests = recorder.requests_until_marker()
    account = "/" + ACCOUNT_NAME
    reads = [r for r in requests if r.container == INPUTS]
    assert {(r.method, r.blob, r.path) for r in reads} == {
        (method, blob, f"{account}/{INPUTS}/{quote(blob)}") for method in ("HEAD", "GET") for blob in (LEGIT, LITERAL)
    }
    # Everything else the run did stays inside its own prefix of the output container (or is the
    # account's user delegation key, in identity mode).
    others = [r for r in requests if r.container != INPUTS]
    assert {r.container for r in others} <= {rig.OUTPUT_CONTAINER, ""}
    assert all(r.blob == "" for r in others if r.container == ""), others
    outputs = [r.blob for r in others if r.container == rig.OUTPUT_CONTAINER]
    assert f"{answer['response_id']}/manifest.json" in outputs
    assert all(b == "" or b.startswith(answer["response_id"] + "/") for b in outputs), outputs
