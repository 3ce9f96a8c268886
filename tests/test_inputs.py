"""Input files and conversations against the rig: Azurite (HTTPS, bearer), the identity endpoint and
the emulator's Files/Uploads/Containers APIs. The module functions are called directly, with the
services the app builds from its environment."""

from __future__ import annotations

import base64
import hashlib
import tracemalloc
from typing import Any

import openai
import pytest
from azure.storage.blob import BlobServiceClient
from pydantic import TypeAdapter, ValidationError

from code_interpreter_files import conversations, finding, inputs, pipeline, runs
from code_interpreter_files.errors import ServiceError
from code_interpreter_files.http_api import status_of
from code_interpreter_files.models import BlobInput, InlineInput, InputSpec
from code_interpreter_files.records import CarriedRecord
from code_interpreter_files.runlog import RunLog
from code_interpreter_files.services import Services, get_services
from local_azure import content as gen
from local_azure.emulator_files import files_state, queue_fault

INPUT_CONTAINER = "inputs"
MIB = 1024 * 1024
CSV = b"city,temp\nOslo,4\nLisbon,19\n"


@pytest.fixture
def env(configure, rig) -> dict[str, str]:
    settings = configure(INPUT_CONTAINER=INPUT_CONTAINER)
    rig.emulator.reset()
    return settings


def put_blob(rig, name: str, data: bytes | None = None, *, seed: str | None = None, size: int = 0) -> str:
    """Write an input blob with the account key (as an operator or a caller's job would)."""
    service = BlobServiceClient.from_connection_string(rig.azurite.connection_string)
    container = service.get_container_client(INPUT_CONTAINER)
    if not container.exists():
        container.create_container()
    if data is not None:
        container.upload_blob(name, data, overwrite=True)
        return hashlib.sha256(data).hexdigest()
    assert seed is not None
    container.upload_blob(name, gen.chunks(seed, size, 4 * MIB), length=size, overwrite=True, max_concurrency=2)
    return gen.sha256_of(seed, size)


def log() -> RunLog:
    return RunLog("test-inputs", "inputs")


def emulator_files(rig) -> dict[str, dict[str, Any]]:
    return {f["id"]: f for f in files_state(rig.emulator)["files"]}


async def start(services: Services, rig, setup: conversations.RunSetup, script: dict[str, Any]) -> Any:
    """Start a run the way the pipeline will: the setup's tool, owner tag, previous response id."""
    marker = rig.emulator.add_script(script)["marker"]
    options: dict[str, Any] = {}
    if setup.previous_response_id:
        options["previous_response_id"] = setup.previous_response_id
    return await services.openai.responses.create(
        model=services.settings.deployment,
        input=f"analyse the files {marker}",
        tools=[setup.tool()],  # type: ignore[list-item]
        store=True,
        metadata={"owner": services.settings.owner_tag, "collect": "all"},
        **options,
    )


# ---- specs


def test_input_specs_are_strict() -> None:
    adapter: TypeAdapter[list[InputSpec]] = TypeAdapter(list[InputSpec])
    parsed = adapter.validate_python(
        [{"blob": "sales/q1.csv"}, {"blob": "b", "name": "x.csv"}, {"name": "a.txt", "content_base64": "aGk="}]
    )
    assert [type(p) for p in parsed] == [BlobInput, BlobInput, InlineInput]
    assert parsed[2].data() == b"hi"  # type: ignore[union-attr]
    for bad in (
        {"blob": "a", "extra": 1},
        {"blob": "a", "content_base64": "aGk="},
        {"name": "a.txt", "content_base64": "not base64!"},
        {"name": "a.txt"},
        {"blob": ""},
        {"blob": 3},
    ):
        with pytest.raises(ValidationError):
            adapter.validate_python([bad])


def test_unique_names() -> None:
    taken: set[str] = set()
    assert [inputs.unique_name(n, taken) for n in ("a.csv", "a.csv", "a.csv", "b", "b")] == [
        "a.csv",
        "a (2).csv",
        "a (3).csv",
        "b",
        "b (2)",
    ]
    long = "x" * 118 + ".csv"
    assert len(inputs.unique_name(long, {long})) <= 120


# ---- uploads


async def test_blob_and_inline_inputs_reach_the_run_and_are_deleted_after(env, rig) -> None:
    blob_sha = put_blob(rig, "reports/2026/weather.csv", CSV)
    services = await get_services()
    specs: list[InputSpec] = [
        BlobInput(blob="reports/2026/weather.csv"),
        InlineInput(name="drafts/notes.txt", content_base64=base64.b64encode(b"note").decode()),
        InlineInput(name="notes.txt", content_base64=base64.b64encode(b"other").decode()),
    ]
    setup = await conversations.prepare_run(services, specs, None, log())
    assert [(i.name, i.bytes, i.sha256) for i in setup.inputs] == [
        ("weather.csv", len(CSV), blob_sha),
        ("notes.txt", 4, hashlib.sha256(b"note").hexdigest()),
        ("notes (2).txt", 5, hashlib.sha256(b"other").hexdigest()),
    ]
    assert setup.container == {"type": "auto", "file_ids": setup.file_ids}
    assert setup.continued_in is None and setup.answer_inputs()[0] == {
        "name": "weather.csv",
        "bytes": len(CSV),
        "sha256": blob_sha,
    }
    stored = emulator_files(rig)
    for item in setup.inputs:
        assert stored[item.file_id]["sha256"] == item.sha256
        assert stored[item.file_id]["purpose"] == "assistants" and stored[item.file_id]["expires_at"]

    response = await start(
        services, rig, setup, {"files": [{"path": "/mnt/data/weather_copy.csv", "copy_of_input": "weather.csv"}]}
    )
    run = rig.emulator.run(response.id)
    by_path = {f["path"]: f for f in run["files"]}
    assert by_path["/mnt/data/weather.csv"]["sha256"] == blob_sha
    assert by_path["/mnt/data/weather_copy.csv"]["sha256"] == blob_sha  # the bytes went through
    listed = await services.openai.containers.files.list(container_id=run["container_id"])
    sources = {f.path: f.source for f in listed.data}
    assert sources["/mnt/data/notes (2).txt"] == "user" and sources["/mnt/data/weather_copy.csv"] == "assistant"
    # The pipeline copies only what the model wrote: the inputs are not outputs.
    found = (await finding.find_files(services, response, "all")).found
    assert [f.filename for f in found] == ["weather_copy.csv"]

    assert conversations.uploaded_file_ids(response) == setup.file_ids
    assert await inputs.delete_uploaded(services, conversations.uploaded_file_ids(response), log()) == []
    for file_id in setup.file_ids:
        with pytest.raises(openai.NotFoundError):
            await services.openai.files.retrieve(file_id)
    assert files_state(rig.emulator)["files_deleted"] == 3
    assert await inputs.delete_uploaded(services, setup.file_ids) == []  # already gone: fine


async def test_large_blob_input_streams_in_parts_with_bounded_memory(env, rig) -> None:
    size = 64 * MIB + 12345
    sha = put_blob(rig, "big/data.bin", seed="big-input", size=size)
    services = await get_services()
    await services.store.input_blobs.version("big/data.bin")  # clients warmed up outside the measure
    tracemalloc.start()
    try:
        [uploaded] = await inputs.upload_inputs(services, [BlobInput(blob="big/data.bin")], log())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (uploaded.name, uploaded.bytes, uploaded.sha256) == ("data.bin", size, sha)
    stored = emulator_files(rig)[uploaded.file_id]
    assert stored["sha256"] == sha and sum(stored["parts"]) == size
    assert len(stored["parts"]) == -(-size // inputs.PART_BYTES)
    assert max(stored["parts"]) == inputs.PART_BYTES
    # (PARTS_IN_FLIGHT + 1) parts of 4 MiB and the SDKs' copies stay far below the 64 MiB file
    print(f"input streaming: {size} bytes, tracemalloc peak {peak / MIB:.1f} MiB")
    assert peak < 24 * MIB, f"peak {peak / MIB:.1f} MiB"
    await inputs.delete_uploaded(services, [uploaded.file_id])


async def test_limits_and_missing_blobs_fail_before_anything_is_uploaded(env, configure, rig) -> None:
    put_blob(rig, "ok.csv", CSV)
    configure(INPUT_CONTAINER=INPUT_CONTAINER, MAX_INPUT_FILES="2", MAX_INPUT_BYTES=str(len(CSV) + 3))
    services = await get_services()
    inline = InlineInput(name="n.txt", content_base64=base64.b64encode(b"abcd").decode())

    with pytest.raises(ServiceError) as error:
        await inputs.upload_inputs(services, [inline, inline, inline], log())
    assert (status_of(error.value), error.value.code) == (400, "too_many_inputs")
    assert "MAX_INPUT_FILES (2)" in error.value.message

    with pytest.raises(ServiceError) as error:
        await inputs.upload_inputs(services, [BlobInput(blob="ok.csv"), inline], log())
    assert (status_of(error.value), error.value.code) == (413, "input_too_large")
    assert f"MAX_INPUT_BYTES ({len(CSV) + 3} bytes)" in error.value.message

    with pytest.raises(ServiceError) as error:
        await inputs.upload_inputs(services, [inline, BlobInput(blob="nowhere/missing.csv")], log())
    assert (status_of(error.value), error.value.code) == (400, "input_not_found")
    assert "'nowhere/missing.csv'" in error.value.message and f"'{INPUT_CONTAINER}'" in error.value.message

    assert files_state(rig.emulator)["files_uploaded"] == 0
    assert rig.emulator.stats()["requests"]["POST /responses"] == 0


async def test_a_refused_upload_names_the_file_and_deletes_the_others(env, rig) -> None:
    put_blob(rig, "big.bin", seed="refused", size=9 * MIB)
    services = await get_services()
    first = InlineInput(name="first.txt", content_base64=base64.b64encode(b"1").decode())
    queue_fault(rig.emulator, "files", 400, after=1)
    with pytest.raises(ServiceError) as error:
        await inputs.upload_inputs(
            services, [first, InlineInput(name="second.txt", content_base64="Mg=="), BlobInput(blob="big.bin")], log()
        )
    assert (status_of(error.value), error.value.code) == (502, "input_upload_failed")
    assert "'second.txt'" in error.value.message and "400" in error.value.message
    state = files_state(rig.emulator)
    assert (state["files_uploaded"], state["files_deleted"], state["files_live"]) == (1, 1, 0)

    # A part refused midway: the upload is cancelled and the file before it deleted.
    rig.emulator.reset()
    queue_fault(rig.emulator, "parts", 400, after=1)
    with pytest.raises(ServiceError) as error:
        await inputs.upload_inputs(services, [first, BlobInput(blob="big.bin", name="renamed.bin")], log())
    assert error.value.code == "input_upload_failed" and "'renamed.bin'" in error.value.message
    state = files_state(rig.emulator)
    assert (state["files_uploaded"], state["files_deleted"], state["uploads_cancelled"]) == (1, 1, 1)


async def test_a_blob_replaced_after_the_checks_is_refused_and_nothing_stays_uploaded(env, rig) -> None:
    put_blob(rig, "moving.csv", CSV)
    services = await get_services()
    first = InlineInput(name="first.txt", content_base64="MQ==")
    prepared = await inputs.prepare_inputs(services, [first, BlobInput(blob="moving.csv")])
    put_blob(rig, "moving.csv", CSV + b"Rome,17\n")  # a new version between the checks and the upload
    with pytest.raises(ServiceError) as error:
        await inputs.upload_prepared(services, prepared, log())
    assert (status_of(error.value), error.value.code) == (409, "input_changed")
    assert "'moving.csv'" in error.value.message
    state = files_state(rig.emulator)
    assert (state["files_uploaded"], state["files_live"]) == (1, 0)


async def test_a_cancelled_upload_leaves_nothing_behind(env, rig) -> None:
    import asyncio

    put_blob(rig, "slow.bin", seed="cancelled", size=24 * MIB)
    services = await get_services()
    task = asyncio.create_task(
        inputs.upload_inputs(
            services, [InlineInput(name="first.txt", content_base64="MQ=="), BlobInput(blob="slow.bin")], log()
        )
    )
    while files_state(rig.emulator)["upload_parts"] < 1:  # the first file is up, parts are on their way
        assert not task.done()
        await asyncio.sleep(0.01)
    task.cancel()  # the caller's time budget ran out
    with pytest.raises(asyncio.CancelledError):
        await task
    state = files_state(rig.emulator)
    assert (state["files_uploaded"], state["files_deleted"], state["files_live"]) == (1, 1, 0)
    assert state["uploads_cancelled"] == 1


# ---- conversations


async def finished_run(services: Services, rig, *, owner: bool = True) -> Any:
    """A run of this app (owner tag) whose outputs were copied to Blob Storage (its manifest)."""
    marker = rig.emulator.add_script({"files": [{"path": "/mnt/data/chart.png", "content": "PNG-1"}]})["marker"]
    response = await services.openai.responses.create(
        model=services.settings.deployment,
        input=f"draw {marker}",
        tools=[{"type": "code_interpreter", "container": {"type": "auto"}}],
        store=True,
        metadata={"owner": services.settings.owner_tag} if owner else {},
    )
    if owner:  # the app copies only its own runs (a foreign one is 404 to it)
        answer = await pipeline.get_run(services, response.id, None, log())
        assert isinstance(answer, dict) and [f["filename"] for f in answer["files"]] == ["chart.png"]
    return response


async def test_continuing_in_the_live_container_then_in_a_new_one(env, rig) -> None:
    services = await get_services()
    first = await finished_run(services, rig)
    container_id = rig.emulator.run(first.id)["container_id"]

    same = await conversations.prepare_run(services, [], first.id, log())
    assert (same.continued_in, same.container, same.inputs) == ("same_container", container_id, [])
    script = {"files": [{"path": "/mnt/data/chart2.png", "copy_of_input": "chart.png"}]}
    second = await start(services, rig, same, script)
    assert rig.emulator.run(second.id)["container_id"] == container_id
    assert second.previous_response_id == first.id

    rig.emulator.expire_container(container_id)
    with pytest.raises(openai.BadRequestError, match="Container is expired"):
        await start(services, rig, same, {"files": []})
    new = await conversations.prepare_run(services, [], first.id, log())
    assert new.continued_in == "new_container" and new.answer_inputs() == []
    [carried] = new.inputs
    assert (carried.name, carried.carried, carried.sha256) == ("chart.png", True, hashlib.sha256(b"PNG-1").hexdigest())
    third = await start(services, rig, new, {"files": [{"path": "/mnt/data/blue.png", "copy_of_input": "chart.png"}]})
    run = rig.emulator.run(third.id)
    assert run["container_id"] != container_id
    assert {f["path"]: f["sha256"] for f in run["files"]} == {
        "/mnt/data/chart.png": carried.sha256,
        "/mnt/data/blue.png": carried.sha256,
    }
    record = new.record_fields()  # what the run record keeps of the set-up
    assert (record["inputs"], record["continued_in"], record["uploaded_file_ids"]) == (
        (),
        "new_container",
        tuple(new.file_ids),
    )
    assert record["carried"] == (CarriedRecord(name="chart.png", sha256=carried.sha256),)
    assert (await runs.find_run(services, first.id, None)).record.continued_in is None
    known = await conversations.carried_sha256(services, third)
    assert known["/mnt/data/chart.png"] == carried.sha256
    assert await inputs.delete_uploaded(services, conversations.uploaded_file_ids(third)) == []

    # New inputs with a live container: a new container with the conversation's files (newest turn
    # first, one per name) and the inputs; an input replaces a carried file of the same name.
    await pipeline.get_run(services, third.id, None, log())
    fourth = await conversations.prepare_run(
        services, [InlineInput(name="blue.png", content_base64="eA==")], third.id, log()
    )
    assert fourth.continued_in == "new_container"
    assert [(i.name, i.carried, i.bytes) for i in fourth.inputs] == [("blue.png", False, 1), ("chart.png", True, 5)]
    await inputs.delete_uploaded(services, fourth.file_ids)


async def test_a_refused_container_lookup_falls_back_to_listing_its_files(env, rig) -> None:
    services = await get_services()
    first = await finished_run(services, rig)
    container_id = rig.emulator.run(first.id)["container_id"]
    queue_fault(rig.emulator, "containers", 403)  # "get-container not supported for CheckAccess"
    same = await conversations.prepare_run(services, [], first.id, log())
    assert (same.continued_in, same.container, same.warnings) == ("same_container", container_id, [])

    rig.emulator.expire_container(container_id)
    queue_fault(rig.emulator, "containers", 403)
    new = await conversations.prepare_run(services, [], first.id, log())
    assert (new.continued_in, new.warnings) == ("new_container", [])
    assert [i.name for i in new.inputs] == ["chart.png"]
    await inputs.delete_uploaded(services, new.file_ids)


async def test_a_foreign_or_unknown_previous_response_is_not_found(env, rig) -> None:
    services = await get_services()
    foreign = await finished_run(services, rig, owner=False)
    answers = []
    for response_id in (foreign.id, "resp_" + "0" * 48):
        with pytest.raises(ServiceError) as error:
            await conversations.prepare_run(services, [], response_id, log())
        answers.append((status_of(error.value), error.value.code, error.value.message.replace(response_id, "<id>")))
    assert answers[0] == answers[1] == (404, "run_not_found", "Azure OpenAI knows no response <id>")
    assert files_state(rig.emulator)["files_uploaded"] == 0

    # The emulator, like the service, refuses an unknown previous_response_id.
    with pytest.raises(openai.NotFoundError, match="Previous response with id 'resp_nope' not found"):
        await services.openai.responses.create(
            model=services.settings.deployment, input="x", previous_response_id="resp_nope"
        )
    with pytest.raises(openai.BadRequestError, match="file-unknown"):
        await services.openai.responses.create(
            model=services.settings.deployment,
            input="x",
            tools=[{"type": "code_interpreter", "container": {"type": "auto", "file_ids": ["file-unknown"]}}],
        )


# ---- the emulator's bodies follow the published schemas


@pytest.fixture(scope="module")
def openai_schemas() -> dict[str, Any]:
    import yaml

    from local_azure.openai_schemas import find_spec

    spec = find_spec()
    assert spec is not None, "the published OpenAI spec is not beside this clone (../shared/specs/)"
    with open(spec, encoding="utf-8") as handle:
        return yaml.safe_load(handle)["components"]


def assert_schema(components: dict[str, Any], name: str, body: Any) -> None:
    import jsonschema

    jsonschema.Draft202012Validator({"components": components, "$ref": f"#/components/schemas/{name}"}).validate(body)


def test_emulator_files_bodies_follow_the_published_schemas(rig, openai_schemas) -> None:
    import httpx

    with httpx.Client(base_url=rig.emulator_url + "/openai/v1", headers={"api-key": rig.api_key}) as http:
        created = http.post("/files", data={"purpose": "assistants"}, files={"file": ("a.csv", CSV, "text/csv")})
        assert created.status_code == 200, created.text
        assert_schema(openai_schemas, "OpenAIFile", created.json())
        assert_schema(openai_schemas, "OpenAIFile", http.get(f"/files/{created.json()['id']}").json())
        assert http.get(f"/files/{created.json()['id']}/content").content == CSV
        assert_schema(openai_schemas, "DeleteFileResponse", http.delete(f"/files/{created.json()['id']}").json())
        assert http.get(f"/files/{created.json()['id']}").status_code == 404

        upload = http.post(
            "/uploads",
            json={"bytes": 6, "filename": "b.bin", "mime_type": "application/octet-stream", "purpose": "assistants"},
        ).json()
        assert_schema(openai_schemas, "Upload", upload)
        parts = [
            http.post(f"/uploads/{upload['id']}/parts", files={"data": ("blob", d)}).json() for d in (b"abc", b"def")
        ]
        for part in parts:
            assert_schema(openai_schemas, "UploadPart", part)
        wrong = http.post(f"/uploads/{upload['id']}/complete", json={"part_ids": [parts[0]["id"]]})
        assert wrong.status_code == 400 and "does not match" in wrong.json()["error"]["message"]
        done = http.post(f"/uploads/{upload['id']}/complete", json={"part_ids": [p["id"] for p in parts]}).json()
        assert_schema(openai_schemas, "Upload", done)
        assert done["status"] == "completed" and done["file"]["bytes"] == 6
        assert http.get(f"/files/{done['file']['id']}/content").content == b"abcdef"

        marker = rig.emulator.add_script({"files": []})["marker"]
        response = http.post(
            "/responses",
            json={
                "model": "m",
                "input": marker,
                "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}],
            },
        ).json()
        container_id = rig.emulator.run(response["id"])["container_id"]
        container = http.get(f"/containers/{container_id}").json()
        assert_schema(openai_schemas, "ContainerResource", container)
        assert container["status"] == "running"
        rig.emulator.expire_container(container_id)
        assert http.get(f"/containers/{container_id}").json()["status"] == "expired"
        reuse = http.post(
            "/responses",
            json={"model": "m", "input": marker, "tools": [{"type": "code_interpreter", "container": container_id}]},
        )
        assert reuse.status_code == 400
        assert_schema(openai_schemas, "Error", reuse.json()["error"])
        assert reuse.json()["error"]["message"] == "Container is expired."
