"""Quick self-checks of the Azure OpenAI Responses/Containers emulator with the real SDK."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import httpx
import jwt
import openai
import pytest

from .emulator import EmulatorControl, start_emulator, stop_emulator

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


def test_default_script_annotations(client: openai.OpenAI, ctl: EmulatorControl) -> None:
    r = _create(client)
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


def test_container_expiry(client: openai.OpenAI, ctl: EmulatorControl) -> None:
    s = ctl.add_script({"container_expires": "after_list", "files": [{"path": "/mnt/data/e.txt", "content": "e"}]})
    r = _create(client, s["marker"])
    cid = r.output[0].container_id
    (f,) = list(client.containers.files.list(container_id=cid))
    with pytest.raises(openai.NotFoundError) as ei:
        client.containers.files.retrieve(f.id, container_id=cid)
    assert ei.value.code == "container_expired"
    r = _create(client)
    cid = r.output[0].container_id
    ctl.expire_container(cid)
    with pytest.raises(openai.NotFoundError):
        list(client.containers.files.list(container_id=cid))


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
    assert httpx.get(url, headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    st = ctl.stats()
    assert st["auth"]["bearer_jwt"] >= 1 and st["auth"]["rejected"] >= 2
    assert aud in st["jwt_audiences"] and "preview" in st["api_versions"]


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
