"""POST /api/runs end to end: the real SDKs against Azurite (HTTPS, bearer), the identity endpoint
and the Responses emulator; every link fetched with a plain HTTP client."""

from __future__ import annotations

import json
import re
from datetime import UTC
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web

from tests.appclient import AppClient
from tests.helpers import storage_names

MODES = [("identity", "identity"), ("identity", "key"), ("connection_string", "identity"), ("connection_string", "key")]


def test_function_metadata_shows_routes_methods_and_auth(app: AppClient) -> None:
    bindings = {name: f.get_bindings_dict()["bindings"][0] for name, f in app.functions.items()}
    http = {name: b for name, b in bindings.items() if b["type"] == "httpTrigger"}
    assert {
        name: (b["route"], [str(m.value) for m in b["methods"]], str(b["authLevel"].value)) for name, b in http.items()
    } == {
        "create_run": ("runs", ["POST"], "function"),
        "list_runs": ("runs", ["GET"], "function"),
        "get_run": ("runs/{response_id}", ["GET"], "function"),
        "delete_run": ("runs/{response_id}", ["DELETE"], "function"),
        "openai_webhook": ("openai-webhook", ["POST"], "anonymous"),  # verified by its signature instead
        "health": ("health", ["GET"], "anonymous"),
    }
    queues = {name: (b["queueName"], b["connection"]) for name, b in bindings.items() if b["type"] == "queueTrigger"}
    assert queues == {
        "finish_run": ("%RUNS_QUEUE%", "RUNS_QUEUE_STORAGE"),
        "record_poison": ("%RUNS_QUEUE%-poison", "RUNS_QUEUE_STORAGE"),
    }
    timers = {name: b["schedule"] for name, b in bindings.items() if b["type"] == "timerTrigger"}
    assert timers == {"sweep_runs": "0 */10 * * * *"}


@pytest.mark.parametrize(("storage", "model_auth"), MODES)
async def test_default_run_copies_the_cited_file_in_every_auth_mode(
    app: AppClient, configure, rig, storage, model_auth
) -> None:
    env = configure(storage=storage, model_auth=model_auth)
    rig.emulator.reset()
    reply = await app.post_run(prompt="Create test.txt containing hello world")
    assert reply.status == 200, reply.body
    answer = reply.json
    assert answer["status"] == "completed"
    assert answer["failed_files"] == []
    [file] = answer["files"]
    assert file["filename"] == "test.txt"
    assert file["content_type"] == "text/plain"
    assert file["bytes"] == 11 and file["cited"] is True
    assert file["blob"] == f"{answer['response_id']}/{file['file_id']}/test.txt"
    assert app.verify_link(file, app.expected_files(answer["response_id"])[file["file_id"]]["sha256"]) == b"hello world"
    assert "sandbox:" not in answer["text"] and file["url"] in answer["text"]
    sas = parse_qs(urlsplit(file["url"]).query)
    assert ("skoid" in sas) == (storage == "identity")  # user delegation SAS vs service SAS
    assert sas["spr"] == ["https"]
    request = rig.emulator.run(answer["response_id"])["request"]
    assert (request["background"], request["store"], request["stream"]) == (True, True, True)
    assert rig.emulator.stats()["requests"].get("GET /responses/{id}", 0) == 0  # the events said when it ended
    auth = rig.emulator.stats()["auth"]
    assert auth["bearer_jwt" if model_auth == "identity" else "api_key"] >= 1
    assert auth["api_key" if model_auth == "identity" else "bearer_jwt"] == 0
    if model_auth == "identity" and storage == "identity":
        assert "AZURE_OPENAI_API_KEY" not in env and "OUTPUT_STORAGE_CONNECTION_STRING" not in env


async def test_links_honour_ttl_and_expire(app: AppClient, rig) -> None:
    from datetime import datetime, timedelta

    reply = await app.post_run(prompt="hello", sas_ttl_minutes=7)
    file = reply.json["files"][0]
    expires = datetime.fromisoformat(file["expires_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=6) < expires - datetime.now(UTC) <= timedelta(minutes=7)
    sas = parse_qs(urlsplit(file["url"]).query)
    assert sas["se"][0].startswith(file["expires_at"][:16])

    from code_interpreter_files.services import get_services

    store = (await get_services()).store
    url, _ = await store.links.sign(file["blob"], file["filename"], timedelta(seconds=3))
    assert app.http.get(url).status_code == 200
    import asyncio

    await asyncio.sleep(4.2)
    assert app.http.get(url).status_code == 403  # expired
    tampered = re.sub(r"sp=r", "sp=rw", file["url"])
    assert app.http.get(tampered).status_code == 403


async def test_uncited_files_fall_back_to_the_containers_assistant_files(app: AppClient, rig) -> None:
    info = app.script(
        text="I made two files.",
        files=[
            {"path": "/mnt/data/a.csv", "content": "x,y\n1,2\n", "cite": False},
            {"path": "/mnt/data/b.json", "content": "{}", "cite": False},
            {"path": "/mnt/data/upload.txt", "content": "the user's own", "cite": False, "source": "user"},
        ],
    )
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 200, reply.body
    answer = reply.json
    assert sorted(f["filename"] for f in answer["files"]) == ["a.csv", "b.json"]
    assert all(f["cited"] is False for f in answer["files"])
    app.verify_answer(answer)


async def test_collect_all_adds_uncited_files_and_cited_mode_does_not(app: AppClient) -> None:
    info = app.script(
        files=[
            {"path": "/mnt/data/chart.png", "size": 5000},
            {"path": "/mnt/data/extra.txt", "content": "not cited", "cite": False},
        ],
    )
    cited = (await app.post_run(prompt=info["prompt"])).json
    assert [(f["filename"], f["cited"]) for f in cited["files"]] == [("chart.png", True)]
    everything = (await app.post_run(prompt=info["prompt"], collect="all")).json
    assert sorted((f["filename"], f["cited"]) for f in everything["files"]) == [
        ("chart.png", True),
        ("extra.txt", False),
    ]
    assert everything["files"][0]["content_type"] == "image/png"
    app.verify_answer(everything)


async def test_sandbox_links_are_replaced_by_their_sas_urls(app: AppClient) -> None:
    info = app.script(
        text=(
            "Report: [report](sandbox:/mnt/data/report.csv). Chart: sandbox:/mnt/data/chart.png. "
            "Unknown: [x](sandbox:/mnt/data/missing.txt)"
        ),
        files=[{"path": "/mnt/data/report.csv", "content": "a,b"}, {"path": "/mnt/data/chart.png", "size": 100}],
    )
    answer = (await app.post_run(prompt=info["prompt"])).json
    urls = {f["filename"]: f["url"] for f in answer["files"]}
    assert f"[report]({urls['report.csv']})" in answer["text"]
    assert f"Chart: {urls['chart.png']}." in answer["text"]
    assert "(sandbox:/mnt/data/missing.txt)" in answer["text"]  # not a copied file: left alone


HOSTILE = [
    "../../etc/passwd",
    "/abs/path/secret.txt",
    "C:\\Users\\evil\\win.txt",
    "bell\x07tab\tnl\nname.txt",
    "résumé 数据.csv",
    "Data.csv",
    "data.csv",
    "x" * 400 + ".txt",
    "...",
    "con.txt.",
]


async def test_hostile_and_colliding_names_become_safe_distinct_blobs(app: AppClient, rig) -> None:
    files = [
        {"path": f"/mnt/data/f{i}", "content": f"file {i}", "citation_filename": name} for i, name in enumerate(HOSTILE)
    ]
    files += [
        {"path": "/mnt/data/sub/dup.txt", "content": "one"},
        {"path": "/mnt/data/other/dup.txt", "content": "two"},
        {
            "path": "/mnt/data/plot.png",
            "size": 300,
            "citation_filename": "$file_id_ext",
            "citation_extra": {"index": None},
        },
        {"path": "/mnt/data/table.csv", "content": "1", "citation_filename": "$file_id", "cite_times": 3},
        {"path": "/mnt/data/nameless.md", "content": "#", "citation_filename": None},
    ]
    info = app.script(files=files)
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 200, reply.body
    answer = reply.json
    assert answer["failed_files"] == []
    names = [f["filename"] for f in answer["files"]]
    assert len(answer["files"]) == len(files)  # each file once, though one was cited three times
    blobs = [f["blob"] for f in answer["files"]]
    assert len(set(blobs)) == len(blobs)
    for file in answer["files"]:
        blob = file["blob"]
        assert blob.startswith(answer["response_id"] + "/")
        assert len(blob) <= 1024 and ".." not in blob.split("/") and not blob.startswith("/")
        assert "\\" not in blob and not any(ord(c) < 32 for c in blob)
        assert not any(segment.endswith(".") for segment in blob.split("/"))
    assert names[0] == "passwd" and names[1] == "secret.txt" and names[2] == "win.txt"
    assert names[3] == "bell_tab_nl_name.txt" or "\n" not in names[3]
    assert names[4] == "résumé 数据.csv"
    assert names[5] == "Data.csv" and names[6] == "data.csv"
    assert len(names[7]) <= 120 and names[7].endswith(".txt")
    assert names[8] == "file" and names[9] == "con.txt"
    assert names[-3:] == ["plot.png", "table.csv", "nameless.md"]
    assert names.count("dup.txt") == 2
    app.verify_answer(answer)
    assert sorted(blobs) == [n for n in storage_names(rig, answer["response_id"]) if not n.endswith("manifest.json")]
    # Copying the same run again writes the same names, nothing more.
    again = await app.get_run(answer["response_id"])
    assert sorted(f["blob"] for f in again.json["files"]) == sorted(blobs)


async def test_a_large_file_streams_into_storage(app: AppClient) -> None:
    size = 256 * 1024 * 1024 + 12345
    info = app.script(files=[{"path": "/mnt/data/big.bin", "size": size}])
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 200, reply.body
    [file] = reply.json["files"]
    assert file["bytes"] == size and file["sha256"] == info["files"][0]["sha256"]
    app.verify_link(file, info["files"][0]["sha256"])


async def test_container_pagination_beyond_100_files(app: AppClient, configure) -> None:
    configure(MAX_FILES_PER_RUN=150, COPY_CONCURRENCY=8)
    info = app.script(files=[{"path": f"/mnt/data/f{i:03}.txt", "content": str(i), "cite": False} for i in range(130)])
    answer = (await app.post_run(prompt=info["prompt"])).json
    assert len(answer["files"]) == 130 and answer["failed_files"] == []
    assert {f["filename"] for f in answer["files"]} == {f"f{i:03}.txt" for i in range(130)}


async def test_limits_report_files_and_write_nothing_of_them(app: AppClient, configure, rig) -> None:
    configure(MAX_FILES_PER_RUN=2, MAX_FILE_BYTES=1000)
    info = app.script(
        files=[
            {"path": "/mnt/data/big.bin", "size": 1001},
            {"path": "/mnt/data/ok1.txt", "content": "1"},
            {"path": "/mnt/data/ok2.txt", "content": "2"},
        ]
    )
    answer = (await app.post_run(prompt=info["prompt"])).json
    assert [f["filename"] for f in answer["files"]] == ["ok1.txt"]
    assert {f["filename"]: f["code"] for f in answer["failed_files"]} == {
        "big.bin": "file_too_large",
        "ok2.txt": "too_many_files",
    }
    assert storage_names(rig, answer["response_id"]) == sorted(
        [answer["files"][0]["blob"], f"{answer['response_id']}/manifest.json"]
    )


async def test_a_stream_cut_midway_leaves_no_blob_and_spares_the_others(app: AppClient, rig) -> None:
    info = app.script(
        files=[
            {"path": "/mnt/data/cut.bin", "size": 9 * 1024 * 1024, "cut_after": 5 * 1024 * 1024 + 7},
            {"path": "/mnt/data/fine.txt", "content": "fine"},
        ]
    )
    answer = (await app.post_run(prompt=info["prompt"])).json
    assert [f["filename"] for f in answer["files"]] == ["fine.txt"]
    [failed] = answer["failed_files"]
    assert failed["filename"] == "cut.bin" and failed["code"] == "download_interrupted"
    names = storage_names(rig, answer["response_id"])
    assert not any(n.endswith("/cut.bin") for n in names)
    assert not any(n.endswith("manifest.json") for n in names)  # a retryable failure: a later GET tries again


async def test_container_expired_before_listing_is_410(app: AppClient) -> None:
    info = app.script(
        files=[{"path": "/mnt/data/a.txt", "content": "a", "cite": False}], container_expires="before_list"
    )
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 410 and reply.error_code() == "container_expired"
    assert "run the prompt again" in reply.json["error"]["message"]


async def test_container_expired_after_listing_reports_each_file(app: AppClient) -> None:
    info = app.script(
        files=[{"path": "/mnt/data/a.txt", "content": "a"}, {"path": "/mnt/data/b.txt", "content": "b"}],
        container_expires="after_list",
    )
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 410 and reply.error_code() == "container_expired"


async def test_no_files_is_a_clear_empty_answer(app: AppClient, caplog) -> None:
    info = app.script(text="Nothing to write.", files=[])
    answer = (await app.post_run(prompt=info["prompt"])).json
    assert answer["files"] == [] and answer["failed_files"] == [] and answer["text"] == "Nothing to write."
    assert "no files" in caplog.text


async def test_citations_outside_the_run_are_refused(app: AppClient) -> None:
    info = app.script(
        files=[{"path": "/mnt/data/ok.txt", "content": "ok"}],
        extra_annotations=[
            {
                "type": "container_file_citation",
                "container_id": "cntr_someone_else",
                "file_id": "cfile_theirs",
                "filename": "theirs.txt",
                "start_index": 0,
                "end_index": 0,
            },
            {
                "type": "container_file_citation",
                "container_id": "$container_id",
                "file_id": "cfile_nope",
                "filename": "ghost.txt",
                "start_index": 0,
                "end_index": 0,
            },
        ],
    )
    answer = (await app.post_run(prompt=info["prompt"])).json
    assert [f["filename"] for f in answer["files"]] == ["ok.txt"]
    assert {f["file_id"]: f["code"] for f in answer["failed_files"]} == {
        "cfile_theirs": "unknown_container",
        "cfile_nope": "file_not_found",
    }


async def test_rate_limit_is_retried_and_persistent_500_is_502(app: AppClient, rig) -> None:
    info = app.script(
        files=[{"path": "/mnt/data/a.txt", "content": "a"}], fail_first=[{"status": 429, "retry_after": 1}]
    )
    assert (await app.post_run(prompt=info["prompt"])).status == 200
    broken = app.script(files=[], fail_first=[{"status": 500, "times": 10}])
    reply = await app.post_run(prompt=broken["prompt"])
    assert reply.status == 502 and reply.error_code() == "upstream_error"
    assert reply.json["error"]["upstream_status"] == 500


async def test_bad_model_credentials_are_502_with_a_hint(app: AppClient, configure) -> None:
    configure(model_auth="key", AZURE_OPENAI_API_KEY="wrong-key")
    reply = await app.post_run(prompt="hi")
    assert reply.status == 502 and reply.json["error"]["upstream_status"] == 401
    assert "wrong-key" not in reply.body.decode()


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_request"),
        (b'{"prompt": ""}', 400, "invalid_request"),
        (b'{"prompt": "   "}', 400, "invalid_request"),
        (b'{"prompt": 5}', 400, "invalid_request"),
        (b'{"prompt": "x", "colour": "red"}', 400, "invalid_request"),
        (b'{"prompt": "x", "collect": "some"}', 400, "invalid_request"),
        (b'{"prompt": "x", "sas_ttl_minutes": "5"}', 400, "invalid_request"),
        (b'{"prompt": "x", "sas_ttl_minutes": true}', 400, "invalid_request"),
        (b'{"prompt": "x", "sas_ttl_minutes": 0}', 400, "invalid_request"),
        (b'{"prompt": "x", "sas_ttl_minutes": 1441}', 400, "invalid_request"),
        (json.dumps({"prompt": "x" * 32001}).encode(), 400, "invalid_request"),
        (b'{"prompt": "' + b"x" * (1024 * 1024) + b'"}', 413, "payload_too_large"),
        (b"[" * 100000, 400, "invalid_json"),
        (b"", 400, "invalid_json"),
    ],
)
async def test_bad_input_gets_a_clear_json_error(app: AppClient, raw: bytes, status: int, code: str) -> None:
    reply = await app.post_run(raw=raw)
    assert (reply.status, reply.error_code()) == (status, code), reply.body
    assert reply.json["error"]["message"]


async def test_missing_settings_are_503_naming_them_and_health_says_so(app: AppClient, monkeypatch) -> None:
    monkeypatch.delenv("AZURE_OPENAI_DEPLOYMENT")
    monkeypatch.setenv("SAS_TTL_MINUTES", "many")
    reply = await app.post_run(prompt="hi")
    assert reply.status == 503 and reply.error_code() == "not_configured"
    assert (
        "AZURE_OPENAI_DEPLOYMENT" in reply.json["error"]["message"]
        and "SAS_TTL_MINUTES" in reply.json["error"]["message"]
    )
    health = await app.call("health", "GET", "/api/health")
    assert health.status == 503
    assert health.json == {
        "status": "not_configured",
        "configured": False,
        "missing": ["AZURE_OPENAI_DEPLOYMENT"],
        "invalid": ["SAS_TTL_MINUTES"],
    }
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT", "gpt-4.1")
    monkeypatch.delenv("SAS_TTL_MINUTES")
    assert (await app.call("health", "GET", "/api/health")).json["configured"] is True


async def test_health_says_when_the_model_is_the_offline_stand_in(app: AppClient, configure) -> None:
    """Derived from what the model endpoint answers (its model object), never from a setting: the rig's
    emulator says it is the stand-in; another local endpoint that does not is not called one."""
    health = await app.call("health", "GET", "/api/health")
    assert health.status == 200 and health.json["offline_stand_in"] is True
    assert "offline stand-in" in health.json["notice"] and "not Azure OpenAI" in health.json["notice"]

    async def model(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return web.json_response({"id": name, "object": "model", "created": 1, "owned_by": "system"})

    server = web.Application()
    server.router.add_get("/openai/v1/models/{name}", model)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        configure(model_auth="key", AZURE_OPENAI_ENDPOINT=f"http://127.0.0.1:{port}")
        other = await app.call("health", "GET", "/api/health")
    finally:
        await runner.cleanup()
    assert other.status == 200 and other.json["offline_stand_in"] is False and "notice" not in other.json


async def test_logs_follow_the_steps_without_secrets(app: AppClient, rig, caplog) -> None:
    reply = await app.post_run(prompt="Create test.txt containing hello world")
    answer = reply.json
    lines = [r.getMessage() for r in caplog.records if r.name == "code_interpreter_files"]
    for step in (
        "[1/5] start response",
        "[2/5] wait for the model",
        "[3/5] find files",
        "[4/5] copy files",
        "[5/5] sign links",
    ):
        assert any(step in line and f"invocation_id={reply.invocation_id}" in line for line in lines), step
    assert any("files found" in line and "test.txt" in line for line in lines)
    assert any("elapsed_ms=" in line and f"response_id={answer['response_id']}" in line for line in lines)
    text = caplog.text
    assert "sig=" not in text and rig.api_key not in text and "eyJ" not in text


async def test_the_delegation_key_and_tokens_are_reused(app: AppClient, rig) -> None:
    await app.post_run(prompt="warm up")
    rig.identity.reset()
    from code_interpreter_files.services import get_services

    store = (await get_services()).store
    key = store.links.cached_key
    for _ in range(3):
        assert (await app.post_run(prompt="again")).status == 200
    assert store.links.cached_key is key
    assert rig.identity.stats()["requests"] == 0


async def test_use_development_storage_works_with_plain_azurite(app: AppClient, configure) -> None:
    import socket

    from local_azure.azurite import Azurite

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 10000)) == 0:
            pytest.skip("port 10000 (UseDevelopmentStorage=true) is taken on this machine")
    with Azurite(None, port=10000, queue=True, queue_port=10001, table_port=10002):
        configure(
            storage="connection_string", model_auth="key", OUTPUT_STORAGE_CONNECTION_STRING="UseDevelopmentStorage=true"
        )
        reply = await app.post_run(prompt="Create test.txt containing hello world")
        assert reply.status == 200, reply.body
        [file] = reply.json["files"]
        assert file["url"].startswith("http://127.0.0.1:10000/devstoreaccount1/")
        assert "spr" not in parse_qs(urlsplit(file["url"]).query)  # an http endpoint: https-only would lock it out
        assert app.verify_link(file, file["sha256"]) == b"hello world"
