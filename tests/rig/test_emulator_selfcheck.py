"""Quick self-checks of the Azure OpenAI Responses/Containers emulator with the real SDK."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import openai
import pytest

from local_azure import openai_schemas, png
from local_azure.emulator_client import EmulatorControl, schema_report, start_emulator, stop_emulator

KEY = "selfcheck-key"
CI_TOOLS = [{"type": "code_interpreter", "container": {"type": "auto"}}]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    proc, url = start_emulator(KEY)
    try:
        yield url
    finally:
        stop_emulator(proc)


@pytest.fixture(scope="module")
def ctl(base_url: str) -> Iterator[EmulatorControl]:
    with EmulatorControl(base_url) as c:
        yield c


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/openai/v1/", api_key=KEY, max_retries=2)


def _create(client: openai.OpenAI, marker: str = "", **kw: object):  # type: ignore[no-untyped-def]
    return client.responses.create(model="gpt-4.1", input=f"make files {marker}", tools=CI_TOOLS, **kw)  # type: ignore[arg-type]


def test_a_prompt_without_marker_goes_to_the_stand_in(client: openai.OpenAI, ctl: EmulatorControl) -> None:
    r = client.responses.create(model="gpt-4.1", input="Create test.txt containing hello world", tools=CI_TOOLS)  # type: ignore[arg-type]
    assert r.status == "completed"
    ci, msg = r.output
    assert ci.type == "code_interpreter_call"
    text = msg.content[0]
    (ann,) = text.annotations
    assert ann.type == "container_file_citation" and ann.filename == "test.txt"
    assert ann.container_id == ci.container_id
    assert text.text[ann.start_index : ann.end_index] == "sandbox:/mnt/data/test.txt"
    f = client.containers.files.retrieve(ann.file_id, container_id=ann.container_id)
    assert f.path == "/mnt/data/test.txt" and f.bytes == 11 and f.source == "assistant"
    assert client.containers.files.content.retrieve(ann.file_id, container_id=ann.container_id).read() == b"hello world"
    run = ctl.run(r.id)
    assert run["container_id"] == ci.container_id and run["files"][0]["file_id"] == ann.file_id


def test_citation_variants(client: openai.OpenAI, ctl: EmulatorControl) -> None:
    s = ctl.add_script(
        {
            "files": [
                {
                    "path": "/mnt/data/a.png",
                    "size": 10,
                    "citation_filename": "$file_id_ext",
                    "citation_extra": {"index": None},
                },
                {"path": "/mnt/data/b.csv", "content": "x", "citation_filename": None, "cite_times": 2},
                {"path": "/mnt/data/c.txt", "content": "y", "cite": False},
            ],
            "extra_annotations": [
                {
                    "type": "container_file_citation",
                    "container_id": "$container_id",
                    "file_id": "cfile_nope",
                    "filename": "ghost.txt",
                    "start_index": 0,
                    "end_index": 0,
                }
            ],
        }
    )
    r = _create(client, s["marker"])
    anns = r.output[1].content[0].annotations
    run = ctl.run(r.id)
    ids = [f["file_id"] for f in run["files"]]
    assert [a.file_id for a in anns] == [ids[0], ids[1], ids[1], "cfile_nope"]
    raw = r.model_dump()["output"][1]["content"][0]["annotations"]
    assert raw[0]["filename"] == ids[0] + ".png" and raw[0]["index"] is None
    assert "filename" not in r.to_dict()["output"][1]["content"][0]["annotations"][1]
    assert anns[3].container_id == run["container_id"]
    # A nameless citation is off the schema on purpose: its violation is kept apart.
    deliberate = ctl.stats()["schemas"]["deliberate_violations"]
    assert any("[AzureResponse]" in v and "'filename' is a required property" in v for v in deliberate), deliberate


def test_list_150_files_autopaginates(client: openai.OpenAI, ctl: EmulatorControl) -> None:
    s = ctl.add_script({"files": [{"path": f"/mnt/data/f{i:03}.txt", "content": str(i)} for i in range(150)]})
    r = _create(client, s["marker"])
    cid = r.output[0].container_id
    ctl.reset()
    paths = [f.path for f in client.containers.files.list(container_id=cid, limit=100)]
    assert len(paths) == 150 and len(set(paths)) == 150
    assert ctl.stats()["requests"]["GET /containers/{cid}/files"] == 2
    asc = [f.path for f in client.containers.files.list(container_id=cid, limit=7, order="asc")]
    assert asc == sorted(paths)
    bad = httpx.get(f"{client.base_url}containers/{cid}/files?limit=101", headers={"api-key": KEY})
    assert bad.status_code == 400


def test_stream_large_content_sha(client: openai.OpenAI, ctl: EmulatorControl) -> None:
    s = ctl.add_script({"files": [{"path": "/mnt/data/big.bin", "size": (32 << 20) + 123}]})
    r = _create(client, s["marker"])
    f = ctl.run(r.id)["files"][0]
    h = hashlib.sha256()
    with client.containers.files.content.with_streaming_response.retrieve(
        f["file_id"], container_id=ctl.run(r.id)["container_id"]
    ) as resp:
        assert resp.headers["content-length"] == str(f["bytes"])
        for b in resp.iter_bytes(1 << 20):
            h.update(b)
    assert h.hexdigest() == f["sha256"] == s["files"][0]["sha256"]
    assert ctl.stats()["downloads"][f["file_id"]] >= 1


def test_background_and_cancel_and_delete(client: openai.OpenAI, ctl: EmulatorControl) -> None:
    s = ctl.add_script({"latency": 0.5, "files": [{"path": "/mnt/data/r.txt", "content": "r"}]})
    r = _create(client, s["marker"], background=True)
    assert r.status == "queued" and r.output == []
    assert client.responses.retrieve(r.id).status == "in_progress"
    deadline = time.time() + 5
    while (got := client.responses.retrieve(r.id)).status != "completed":
        assert time.time() < deadline
        time.sleep(0.1)
    assert got.output[1].content[0].annotations[0].filename == "r.txt"
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(r.id)

    r2 = _create(client, s["marker"], background=True)
    assert client.responses.cancel(r2.id).status == "cancelled"
    assert client.responses.retrieve(r2.id).status == "cancelled"
    client.responses.delete(r2.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r2.id)


def test_final_status_and_faults(client: openai.OpenAI, ctl: EmulatorControl) -> None:
    failed = ctl.add_script({"status": "failed"})
    r = _create(client, failed["marker"])
    assert r.status == "failed" and r.error is not None and r.error.code == "server_error"
    flaky = ctl.add_script({"fail_first": [{"status": 429, "retry_after": 0}, {"status": 500}]})
    ctl.reset()
    assert _create(client, flaky["marker"]).status == "completed"
    assert ctl.stats()["requests"]["POST /responses"] == 3


def test_container_expiry_openai_shape_on_every_container_endpoint(client: openai.OpenAI, ctl: EmulatorControl) -> None:
    """OpenAI's expired container: 400 "Container is expired." with type and null param/code."""
    s = ctl.add_script({"container_expires": "after_list", "files": [{"path": "/mnt/data/e.txt", "content": "e"}]})
    r = _create(client, s["marker"])
    cid = r.output[0].container_id
    (f,) = list(client.containers.files.list(container_id=cid))
    calls = (
        lambda: list(client.containers.files.list(container_id=cid)),
        lambda: client.containers.files.retrieve(f.id, container_id=cid),
        lambda: client.containers.files.content.retrieve(f.id, container_id=cid),
    )
    for call in calls:
        with pytest.raises(openai.BadRequestError) as ei:
            call()
        assert ei.value.body == {
            "message": "Container is expired.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    r = _create(client)
    cid = r.output[0].container_id
    ctl.expire_container(cid)
    with pytest.raises(openai.BadRequestError, match="Container is expired"):
        list(client.containers.files.list(container_id=cid))


def test_container_expiry_azure_shape(client: openai.OpenAI, ctl: EmulatorControl) -> None:
    """``expired_shape: azure_404``: every container endpoint answers 404 "Container <id> not found"."""
    s = ctl.add_script({"expired_shape": "azure_404", "files": [{"path": "/mnt/data/e.txt", "content": "e"}]})
    r = _create(client, s["marker"])
    run = ctl.run(r.id)
    cid, fid = run["container_id"], run["files"][0]["file_id"]
    assert client.containers.files.content.retrieve(fid, container_id=cid).read() == b"e"
    ctl.expire_container(cid)
    calls = (
        lambda: list(client.containers.files.list(container_id=cid)),
        lambda: client.containers.files.retrieve(fid, container_id=cid),
        lambda: client.containers.files.content.retrieve(fid, container_id=cid),
    )
    for call in calls:
        with pytest.raises(openai.NotFoundError) as ei:
            call()
        assert ei.value.body == {
            "message": f"Container {cid} not found",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }


def test_auth(base_url: str, ctl: EmulatorControl) -> None:
    bad = openai.OpenAI(base_url=base_url + "/openai/v1/", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.responses.retrieve("resp_x")
    aud = "https://cognitiveservices.azure.com"
    good = jwt.encode(
        {"aud": aud, "iss": "https://sts.windows.net/t/", "exp": int(time.time()) + 600}, "k" * 32, algorithm="HS256"
    )
    expired = jwt.encode(
        {"aud": aud, "iss": "https://sts.windows.net/t/", "exp": int(time.time()) - 1}, "k" * 32, algorithm="HS256"
    )
    url = base_url + "/openai/v1/responses/resp_missing?api-version=preview"
    assert httpx.get(url, headers={"Authorization": f"Bearer {good}"}).status_code == 404
    denied = httpx.get(url, headers={"Authorization": f"Bearer {expired}"})
    assert denied.status_code == 401
    assert denied.json()["error"] == {
        "code": "401",
        "message": denied.json()["error"]["message"],
        "type": "invalid_request_error",
        "param": None,
    }
    st = ctl.stats()
    assert st["auth"]["bearer_jwt"] >= 1 and st["auth"]["rejected"] >= 2
    assert aud in st["jwt_audiences"] and "preview" in st["api_versions"]


def _jwt(aud: str) -> str:
    claims = {"aud": aud, "iss": "https://sts.windows.net/t/", "exp": int(time.time()) + 600}
    return jwt.encode(claims, "k" * 32, algorithm="HS256")


def test_ai_azure_com_audience_is_accepted_and_counted(base_url: str, ctl: EmulatorControl) -> None:
    """The v1 docs' scope (https://ai.azure.com/.default) and the legacy one both work; others do not."""
    ctl.reset()
    sdk = openai.OpenAI(base_url=base_url + "/openai/v1/", api_key=_jwt("https://ai.azure.com"), max_retries=0)
    assert _create(sdk).status == "completed"
    legacy = openai.OpenAI(
        base_url=base_url + "/openai/v1/", api_key=_jwt("https://cognitiveservices.azure.com"), max_retries=0
    )
    assert _create(legacy).status == "completed"
    wrong = openai.OpenAI(
        base_url=base_url + "/openai/v1/", api_key=_jwt("https://management.azure.com"), max_retries=0
    )
    with pytest.raises(openai.AuthenticationError, match="audience"):
        _create(wrong)
    st = ctl.stats()
    assert st["auth"] == {"api_key": 0, "bearer_jwt": 2, "rejected": 1}
    assert st["jwt_audience_counts"] == {
        "https://ai.azure.com": 1,
        "https://cognitiveservices.azure.com": 1,
        "https://management.azure.com": 1,
    }


def test_cut_stream_raises(client: openai.OpenAI, ctl: EmulatorControl) -> None:
    s = ctl.add_script(
        {"files": [{"path": "/mnt/data/cut.bin", "size": 3 << 20, "cut_after": 1 << 20, "cut_times": 1}]}
    )
    r = _create(client, s["marker"])
    run = ctl.run(r.id)
    f, cid = run["files"][0], run["container_id"]
    # The SDK's transport (httpx/httpx2 depending on the version) raises RemoteProtocolError.
    with pytest.raises(Exception, match="peer closed connection without sending complete message body"):
        with client.containers.files.content.with_streaming_response.retrieve(f["file_id"], container_id=cid) as resp:
            for _ in resp.iter_bytes():
                pass
    data = client.containers.files.content.retrieve(f["file_id"], container_id=cid).read()
    assert hashlib.sha256(data).hexdigest() == f["sha256"]


# ---- schemas and shapes


def test_unknown_routes_and_methods_answer_json_errors(base_url: str) -> None:
    for method, path in (("GET", "/openai/v1/nope"), ("PUT", "/openai/v1/responses"), ("GET", "/elsewhere")):
        r = httpx.request(method, base_url + path, headers={"api-key": KEY})
        assert r.status_code in (404, 405) and r.headers["content-type"].startswith("application/json")
        assert r.json() == {
            "error": {
                "message": f"Invalid URL ({method} {path})",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }


def test_empty_page_has_string_ids(client: openai.OpenAI, ctl: EmulatorControl) -> None:
    s = ctl.add_script({"files": []})
    cid = _create(client, s["marker"]).output[0].container_id
    page = httpx.get(f"{client.base_url}containers/{cid}/files", headers={"api-key": KEY}).json()
    assert page == {"object": "list", "data": [], "first_id": "", "last_id": "", "has_more": False}
    assert list(client.containers.files.list(container_id=cid)) == []


def test_response_carries_azure_user_and_usage_details(client: openai.OpenAI, ctl: EmulatorControl) -> None:
    raw = client.responses.with_raw_response.create(model="gpt-4.1", input="hi", tools=CI_TOOLS)  # type: ignore[arg-type]
    body = raw.http_response.json()
    assert "user" in body and body["user"] is None
    assert body["usage"]["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
    queued = _create(client, ctl.add_script({"latency": 0.3})["marker"], background=True).to_dict()
    assert queued["status"] == "queued" and "usage" not in queued  # not null: the schema says object


def test_schema_checker_finds_what_it_looks_for() -> None:
    """The bodies the emulator used to send are violations; the checker is not a rubber stamp."""
    schemas = openai_schemas.load()
    page = {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    assert schemas.errors("ContainerFileListResource", page)
    assert schemas.errors("ErrorResponse", {"error": {"code": "401", "message": "no"}})
    assert not schemas.errors(
        "ErrorResponse", {"error": {"code": "401", "message": "no", "type": "invalid_request_error", "param": None}}
    )
    checker = openai_schemas.SchemaChecker()
    checker.check("ContainerFileListResource", json.dumps(page), "GET /x 200")
    checker.check("ContainerFileListResource", json.dumps({**page, "first_id": "", "last_id": ""}), "GET /x 200")
    checker.flush().result(timeout=60)
    checker.close()
    stats = checker.stats()
    assert stats["validated"] == {"ContainerFileListResource": 2}
    assert stats["violation_counts"] == {"ContainerFileListResource": 1}
    assert stats["bodies_queued"] == stats["bodies_checked"] == 2
    assert stats["violations"][0].startswith("GET /x 200 [ContainerFileListResource] $.")
    assert "None is not of type 'string'" in stats["violations"][0]


def test_a_missing_spec_is_reported_not_passed(tmp_path: Path) -> None:
    checker = openai_schemas.SchemaChecker(spec=tmp_path / "nowhere.yaml")
    checker.check("ErrorResponse", "{}", "GET /x 404")
    checker.flush().result(timeout=60)
    checker.close()
    stats = checker.stats()
    assert stats["load_error"] is not None and "nowhere.yaml" in stats["load_error"]
    assert stats["bodies_queued"] == 1 and stats["bodies_checked"] == 0 and stats["validated"] == {}


def test_the_spec_is_found_beside_any_ancestor(tmp_path: Path) -> None:
    spec = tmp_path / "shared" / "specs" / "openai-openapi.yaml"
    spec.parent.mkdir(parents=True)
    spec.write_text("openapi: 3.1.0\n")
    assert openai_schemas.find_spec(tmp_path / "wt" / "emulator") == spec  # a worktree under wt/
    assert openai_schemas.find_spec(tmp_path / "main") == spec  # the clone beside shared/
    assert openai_schemas.find_spec() is not None  # this checkout's


def test_azure_response_overlay_requires_user() -> None:
    schemas = openai_schemas.load()
    response = {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "model": "gpt-4.1",
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "tools": [],
        "output": [],
        "parallel_tool_calls": True,
        "metadata": {},
        "tool_choice": "auto",
        "temperature": 1.0,
        "top_p": 1.0,
    }
    assert not schemas.errors("Response", response)
    assert any("'user' is a required property" in e for e in schemas.errors("AzureResponse", response))
    assert not schemas.errors("AzureResponse", {**response, "user": None})


def test_every_body_served_here_validated(client: openai.OpenAI, ctl: EmulatorControl) -> None:
    """This module's emulator: one body of each kind served now, and every body so far checked,
    none against its schema (the session check below adds up every emulator of the run)."""
    before = ctl.stats()["schemas"]["validated"]
    r = _create(client, ctl.add_script({"files": [{"path": "/mnt/data/s.txt", "content": "s"}]})["marker"])
    ann = r.output[1].content[0].annotations[0]
    client.containers.files.retrieve(ann.file_id, container_id=ann.container_id)
    list(client.containers.files.list(container_id=ann.container_id))
    with _create(client, stream=True) as events:
        assert [e.type for e in events][-1] == "response.completed"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_nope")
    st = ctl.stats()["schemas"]
    assert st["load_error"] is None and st["spec"] and st["bodies_queued"] == st["bodies_checked"] > 0
    assert st["violations"] == [] and st["violation_counts"] == {}
    kinds = ("AzureResponse", "ContainerFileListResource", "ContainerFileResource", "ErrorResponse")
    for schema in (*kinds, "ResponseCreatedEvent", "ResponseInProgressEvent", "ResponseCompletedEvent"):
        assert st["validated"].get(schema, 0) > before.get(schema, 0), schema


# ---- issue 9 scenarios


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (403, openai.PermissionDeniedError, "OperationId get-container not supported for CheckAccess"),
        (404, openai.NotFoundError, "Container not found"),
        (500, openai.InternalServerError, "The server had an error"),
    ],
)
def test_listing_and_metadata_fail_while_downloads_work(
    client: openai.OpenAI, ctl: EmulatorControl, status: int, error: type[openai.APIStatusError], message: str
) -> None:
    s = ctl.add_script(
        {
            "files": [{"path": "/mnt/data/ok.txt", "content": "fine"}],
            "list_fails": {"status": status},
            "retrieve_fails": {"status": status, "times": None},
        }
    )
    r = _create(client, s["marker"])
    ann = r.output[1].content[0].annotations[0]
    ctl.reset()
    for _ in range(2):  # every time, through the SDK's retries too
        with pytest.raises(error, match=message):
            list(client.containers.files.list(container_id=ann.container_id))
        with pytest.raises(error, match=message):
            client.containers.files.retrieve(ann.file_id, container_id=ann.container_id)
    assert client.containers.files.content.retrieve(ann.file_id, container_id=ann.container_id).read() == b"fine"
    tries = 6 if status == 500 else 2  # the SDK retries 5xx twice
    assert ctl.stats()["faults_served"] == {f"list {status}": tries, f"retrieve {status}": tries}


def test_listing_fails_a_number_of_times(client: openai.OpenAI, ctl: EmulatorControl) -> None:
    s = ctl.add_script(
        {"files": [{"path": "/mnt/data/a.txt", "content": "a"}], "list_fails": {"status": 403, "times": 1}}
    )
    cid = _create(client, s["marker"]).output[0].container_id
    with pytest.raises(openai.PermissionDeniedError) as ei:
        list(client.containers.files.list(container_id=cid))
    assert ei.value.code == "PermissionDenied" and ei.value.type == "invalid_request_error"
    assert [f.path for f in client.containers.files.list(container_id=cid)] == ["/mnt/data/a.txt"]


@pytest.mark.parametrize(
    ("fault", "headers", "wait_text"),
    [
        ({"retry_after_ms": 1500}, {"retry-after-ms": "1500"}, "Please retry after 2 seconds."),
        ({"retry_after": 3}, {"retry-after": "3"}, "Please retry after 3 seconds."),
        ({}, {}, "Please retry later."),
    ],
)
def test_429_azure_shapes(
    base_url: str, ctl: EmulatorControl, fault: dict[str, int], headers: dict[str, str], wait_text: str
) -> None:
    s = ctl.add_script({"fail_first": [{"status": 429, **fault}]})
    sdk = openai.OpenAI(base_url=base_url + "/openai/v1/", api_key=KEY, max_retries=0)
    ctl.reset()
    with pytest.raises(openai.RateLimitError) as ei:
        _create(sdk, s["marker"])
    got = {k: v for k, v in ei.value.response.headers.items() if k in ("retry-after", "retry-after-ms")}
    assert got == headers
    assert ei.value.code == "429" and wait_text in ei.value.message
    assert ctl.stats()["runs_started"] == {"total": 0, "by_script": {}}  # a 429 starts nothing
    assert _create(sdk, s["marker"]).status == "completed"


@pytest.mark.parametrize("on", ["get_response", "list", "retrieve", "content"])
def test_429_on_other_endpoints_is_retried_by_the_sdk(client: openai.OpenAI, ctl: EmulatorControl, on: str) -> None:
    s = ctl.add_script(
        {
            "files": [{"path": "/mnt/data/a.txt", "content": "a"}],
            "fail_first": [{"status": 429, "retry_after_ms": 10, "times": 2, "on": on}],
        }
    )
    r = _create(client, s["marker"])
    ann = r.output[1].content[0].annotations[0]
    ctl.reset()
    calls = {
        "get_response": lambda: client.responses.retrieve(r.id).status,
        "list": lambda: len(list(client.containers.files.list(container_id=ann.container_id))),
        "retrieve": lambda: client.containers.files.retrieve(ann.file_id, container_id=ann.container_id).bytes,
        "content": lambda: client.containers.files.content.retrieve(ann.file_id, container_id=ann.container_id).read(),
    }
    assert calls[on]() in ("completed", 1, b"a")
    st = ctl.stats()
    assert st["faults_served"] == {f"{on} 429": 2}
    endpoint = {
        "get_response": "GET /responses/{id}",
        "list": "GET /containers/{cid}/files",
        "retrieve": "GET /containers/{cid}/files/{fid}",
        "content": "GET /containers/{cid}/files/{fid}/content",
    }[on]
    assert st["requests"][endpoint] == 3


def test_create_500_after_start_runs_and_the_sdk_retry_starts_another(base_url: str, ctl: EmulatorControl) -> None:
    s = ctl.add_script({"files": [{"path": "/mnt/data/a.txt", "content": "a"}], "create_500_after_start": True})
    once = openai.OpenAI(base_url=base_url + "/openai/v1/", api_key=KEY, max_retries=0)
    ctl.reset()
    with pytest.raises(openai.InternalServerError):
        _create(once, s["marker"], background=True)
    [rid] = ctl.runs_for(s["script_id"])
    assert ctl.stats()["runs_started"] == {"total": 1, "by_script": {s["script_id"]: 1}}
    assert once.responses.retrieve(rid).status == "completed"  # the run exists and ran
    retried = openai.OpenAI(base_url=base_url + "/openai/v1/", api_key=KEY, max_retries=2)
    with pytest.raises(openai.InternalServerError):
        _create(retried, s["marker"], background=True)
    assert ctl.stats()["runs_started"]["by_script"] == {s["script_id"]: 4}  # three more billed runs
    counted = ctl.add_script({"create_500_after_start": 1})
    assert _create(retried, counted["marker"]).status == "completed"  # the SDK's retry got through
    assert len(ctl.runs_for(counted["script_id"])) == 2


@pytest.mark.parametrize("mode", ["eof", "drop"])
def test_stream_closes_before_created(client: openai.OpenAI, ctl: EmulatorControl, mode: str) -> None:
    s = ctl.add_script({"latency": 0.2, "stream_closes_before_created": True if mode == "eof" else mode})
    if mode == "eof":
        with _create(client, s["marker"], background=True, stream=True) as events:
            assert list(events) == []
    else:  # the SDK wraps its transport's RemoteProtocolError while reading the events
        with pytest.raises(openai.APIConnectionError) as ei:
            with _create(client, s["marker"], background=True, stream=True) as events:
                list(events)
        assert "peer closed connection without sending complete message body" in str(ei.value.__cause__)
    [rid] = ctl.runs_for(s["script_id"])  # one run: the 200 came before the break, nothing retried
    assert client.responses.retrieve(rid).status in ("queued", "in_progress", "completed")


def test_silent_stream_sends_only_created_and_stays_open(base_url: str, ctl: EmulatorControl) -> None:
    s = ctl.add_script({"latency": 0.1, "silent_stream": True, "files": [{"path": "/mnt/data/a.txt", "content": "a"}]})
    body = {"model": "gpt-4.1", "input": s["marker"], "tools": CI_TOOLS, "background": True, "stream": True}
    # The read timeout bounds the wait for an event that must not come; it is generous so that a
    # loaded machine delivering `response.created` late does not fail the test (it did once at 1.5 s).
    timeout = httpx.Timeout(30.0, read=5.0)
    with httpx.Client(timeout=timeout) as http:
        with http.stream("POST", base_url + "/openai/v1/responses", json=body, headers={"api-key": KEY}) as resp:
            lines = resp.iter_lines()
            assert next(lines) == "event: response.created"
            created = json.loads(next(lines).removeprefix("data: "))
            assert created["response"]["status"] == "queued"
            assert next(lines) == ""
            rid = created["response"]["id"]
            deadline = time.monotonic() + 10
            while (
                http.get(f"{base_url}/openai/v1/responses/{rid}", headers={"api-key": KEY}).json()["status"]
                != "completed"
            ):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            with pytest.raises(httpx.ReadTimeout):  # nothing more, though the run has ended
                next(lines)
            assert ctl.stats()["streams_open"] == 1
    deadline = time.monotonic() + 10
    while ctl.stats()["streams_open"] != 0:  # the handler notices the client left
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _png_chunks(data: bytes) -> list[bytes]:
    """Parse a PNG, checking its signature, every CRC and the image data; return the chunk types."""
    assert data[:8] == png.SIGNATURE
    kinds, pos, idat = [], 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + payload) & 0xFFFFFFFF == crc
        if kind == b"IDAT":
            idat += payload
        kinds.append(kind)
        pos += 12 + length
    assert len(zlib.decompress(idat)) == png.SIDE * (1 + 3 * png.SIDE)
    return kinds


def test_png_sizes() -> None:
    assert _png_chunks(png.png_of_size(png.MINIMUM, "a")) == [b"IHDR", b"IDAT", b"IEND"]
    for size in (png.MINIMUM_PADDED, 500, 70_000):
        data = png.png_of_size(size, "b")
        assert len(data) == size and _png_chunks(data) == [b"IHDR", b"tEXt", b"IDAT", b"IEND"]
    with pytest.raises(ValueError):
        png.png_of_size(png.MINIMUM + 1, "c")


def test_image_outputs_only_with_include(client: openai.OpenAI, ctl: EmulatorControl) -> None:
    raw = base64.b64encode(b"\x89PNG literal").decode()
    s = ctl.add_script({"images": [{"png_bytes": 500}, {"content_base64": raw}], "logs": "shown"})
    plain = _create(client, s["marker"])
    assert plain.output[0].type == "code_interpreter_call" and plain.output[0].outputs is None
    r = _create(client, s["marker"], include=["code_interpreter_call.outputs"])
    ci = r.output[0]
    assert ci.outputs is not None
    logs, first, second = ci.outputs
    assert logs.type == "logs" and logs.logs == "shown"
    assert first.type == "image" and first.url.startswith("data:image/png;base64,")
    data = base64.b64decode(first.url.split(",", 1)[1])
    assert len(data) == 500 and _png_chunks(data)
    assert base64.b64decode(second.url.split(",", 1)[1]) == b"\x89PNG literal"
    info = ctl.run(r.id)
    assert info["code_interpreter_call_id"] == ci.id
    assert info["images"] == [
        {"bytes": 500, "sha256": hashlib.sha256(data).hexdigest()},
        {"bytes": 12, "sha256": hashlib.sha256(b"\x89PNG literal").hexdigest()},
    ]
    assert [i["sha256"] for i in s["images"]] == [i["sha256"] for i in info["images"]]


def test_incomplete_run_keeps_its_files(client: openai.OpenAI, ctl: EmulatorControl) -> None:
    s = ctl.add_script({"status": "incomplete", "files": [{"path": "/mnt/data/partial.csv", "content": "a,b"}]})
    r = _create(client, s["marker"])
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    ann = r.output[1].content[0].annotations[0]
    assert [f.path for f in client.containers.files.list(container_id=ann.container_id)] == ["/mnt/data/partial.csv"]
    assert client.containers.files.content.retrieve(ann.file_id, container_id=ann.container_id).read() == b"a,b"
    filtered = ctl.add_script({"status": "incomplete", "incomplete_reason": "content_filter"})
    with _create(client, filtered["marker"], stream=True) as events:
        kinds = [e.type for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.incomplete"]


@pytest.mark.parametrize(("refusal", "status"), [(True, 400), (409, 409)])
def test_delete_refused_while_running(
    client: openai.OpenAI, ctl: EmulatorControl, refusal: object, status: int
) -> None:
    s = ctl.add_script({"latency": 0.4, "delete_refused_while_running": refusal})
    r = _create(client, s["marker"], background=True)
    with pytest.raises(openai.APIStatusError, match="Cannot delete a response that is in progress") as ei:
        client.with_options(max_retries=0).responses.delete(r.id)
    assert ei.value.status_code == status
    deadline = time.time() + 10
    while client.responses.retrieve(r.id).status != "completed":
        assert time.time() < deadline
        time.sleep(0.05)
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_delete_of_a_running_response_is_accepted_by_default(client: openai.OpenAI, ctl: EmulatorControl) -> None:
    r = _create(client, ctl.add_script({"latency": 5})["marker"], background=True)
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_cancel_ignored_shows_cancelled_then_completes(client: openai.OpenAI, ctl: EmulatorControl) -> None:
    s = ctl.add_script(
        {
            "latency": 0.4,
            "cancel_ignored": True,
            "delete_refused_while_running": True,
            "files": [{"path": "/mnt/data/late.txt", "content": "late"}],
        }
    )
    r = _create(client, s["marker"], background=True)
    assert client.responses.cancel(r.id).status == "cancelled"
    assert client.responses.retrieve(r.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError, match="in progress"):
        client.with_options(max_retries=0).responses.delete(r.id)  # it still runs
    deadline = time.time() + 10
    while (got := client.responses.retrieve(r.id)).status != "completed":
        assert got.status == "cancelled" and time.time() < deadline
        time.sleep(0.05)
    ann = got.output[1].content[0].annotations[0]
    assert client.containers.files.content.retrieve(ann.file_id, container_id=ann.container_id).read() == b"late"


def test_script_fields_are_validated(ctl: EmulatorControl) -> None:
    for bad in (
        {"expired_shape": "gone"},
        {"list_fails": {"status": "403"}},
        {"fail_first": [{"status": 429, "on": "everything"}]},
        {"fail_first": [{"status": 429, "retry_after_ms": -1}]},
        {"images": [{"png_bytes": png.MINIMUM + 1}]},
        {"images": [{"content_base64": "***"}]},
        {"delete_refused_while_running": 500},
        {"stream_closes_before_created": "later"},
        {"create_500_after_start": -1},
    ):
        with pytest.raises(RuntimeError, match="-> 400"):
            ctl.add_script(bad)


@pytest.mark.run_last
def test_no_emulator_body_violated_its_schema() -> None:
    """Session-wide: every JSON body every emulator of this run served (the rig's and the
    self-checks') was checked against the published OpenAI schemas (plus Azure's `user`), and none
    violated them."""
    report = schema_report()
    if report["emulators"] == 0 or report["bodies_queued"] == 0:
        pytest.skip("no emulator served a body in this session")
    assert report["unreachable"] == 0 and report["load_errors"] == [], report
    assert report["bodies_checked"] == report["bodies_queued"], report
    assert sum(report["validated"].values()) > 0 and report["specs"], report
    assert report["violations"] == [], "\n".join(report["violations"])
