"""The links the app hands out: read-only, one blob, https, time-bound, untamperable; in identity mode
no account key anywhere. `AppClient.check_link` holds the checks (every link of the suite passes
through it); these tests show the checks can fail, and cover what one link alone cannot."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from azure.storage.blob import BlobSasPermissions, generate_blob_sas

from code_interpreter_files.services import get_services
from local_azure.azurite import ACCOUNT_KEY, ACCOUNT_NAME
from local_azure.emulator_files import files_state
from tests import figures
from tests.appclient import AppClient


async def one_file_run(app: AppClient, content: str = "secret report") -> dict[str, Any]:
    info = app.script(files=[{"path": "/mnt/data/report.txt", "content": content}])
    reply = await app.post_run(prompt=info["prompt"])
    assert reply.status == 200, reply.body
    return reply.json


def with_query(url: str, query: str) -> str:
    return url.split("?", 1)[0] + "?" + query


async def test_the_checker_rejects_links_that_grant_too_much(app: AppClient, rig) -> None:
    """Links signed with the account key that a careless app could hand out: each one fails check_link,
    and the refusals check_link expects are real (the wider link can really write, list, delete)."""
    answer = await one_file_run(app)
    file = answer["files"][0]
    now = datetime.now(UTC)

    def signed(**overrides: Any) -> str:
        options: dict[str, Any] = {
            "account_name": ACCOUNT_NAME,
            "container_name": rig.OUTPUT_CONTAINER,
            "blob_name": file["blob"],
            "account_key": ACCOUNT_KEY,
            "permission": BlobSasPermissions(read=True),
            "start": now - timedelta(minutes=5),
            "expiry": now + timedelta(hours=1),
            "protocol": "https",
            **overrides,
        }
        return with_query(file["url"], generate_blob_sas(**options))

    too_wide = {
        "write": signed(permission=BlobSasPermissions(read=True, write=True)),
        "delete": signed(permission=BlobSasPermissions(read=True, delete=True)),
        "http too": signed(protocol="https,http"),
        "a month": signed(expiry=now + timedelta(days=30)),
        "no name": signed(content_disposition=None),
    }
    for why, url in too_wide.items():
        figures.count("inputs_listed")
        try:
            app.check_link({**file, "url": url}, identity=False)
        except AssertionError:
            continue
        raise AssertionError(f"check_link accepted a link that grants too much: {why}")
    # what the 403s in check_link stand for: a link that may write really can
    wide = too_wide["write"]
    assert app.http.put(wide, content=b"over", headers={"x-ms-blob-type": "BlockBlob"}).status_code == 201
    assert app.http.get(wide).content == b"over"
    # the app's own link still cannot, and the service SAS of the connection-string mode passes
    app.check_link(file)


async def test_a_links_signature_works_for_its_blob_only(app: AppClient, rig) -> None:
    """The query of one run's link on another run's blob, and on the run's manifest: refused."""
    first, second = await one_file_run(app, "first"), await one_file_run(app, "second")
    a, b = first["files"][0], second["files"][0]
    assert app.http.get(with_query(b["url"], urlsplit(a["url"]).query)).status_code == 403
    manifest = a["url"].split("?")[0].rsplit("/", 2)[0] + "/manifest.json"
    assert app.http.get(with_query(manifest, urlsplit(a["url"]).query)).status_code == 403
    assert app.http.get(a["url"]).content == b"first" and app.http.get(b["url"]).content == b"second"
    app.verify_answer(first)
    app.verify_answer(second)


@pytest.mark.parametrize("storage", ["identity", "connection_string"])
async def test_expired_links_are_refused_in_both_modes(app: AppClient, configure, storage: str) -> None:
    configure(storage=storage)
    answer = await one_file_run(app)
    file = answer["files"][0]
    store = (await get_services()).store
    url, expiry = await store.links.sign(file["blob"], file["filename"], timedelta(seconds=3))
    assert app.http.get(url).status_code == 200
    await asyncio.sleep(max(0.0, (expiry - datetime.now(UTC)).total_seconds()) + 1.2)
    response = app.http.get(url)
    assert response.status_code == 403 and b"report" not in response.content
    app.verify_answer(answer)


async def test_identity_mode_uses_no_account_key_anywhere(app: AppClient, configure, rig, monkeypatch) -> None:
    """Only OUTPUT_STORAGE_ACCOUNT_URL: every request and every SAS is signed with Entra ID material
    (a bearer token, the user delegation key), never with the account key, and no setting holds it."""
    import azure.storage.blob._shared.authentication as authentication
    import azure.storage.blob._shared.shared_access_signature as shared_sas
    import azure.storage.blob._shared_access_signature as blob_sas

    env = configure(storage="identity", model_auth="identity")
    assert "OUTPUT_STORAGE_CONNECTION_STRING" not in env and "AZURE_OPENAI_API_KEY" not in env
    assert not any(ACCOUNT_KEY in value for value in os.environ.values())
    keys: list[str] = []
    for module in (authentication, shared_sas, blob_sas):
        real = module.sign_string

        def spy(key: str, string_to_sign: str, *args: Any, _real: Any = real, **kwargs: Any) -> str:
            keys.append(key)
            return _real(key, string_to_sign, *args, **kwargs)

        monkeypatch.setattr(module, "sign_string", spy)

    answer = await one_file_run(app)
    renewed = await app.get_run(answer["response_id"], sas_ttl_minutes="5")
    assert renewed.status == 200
    store = (await get_services()).store
    assert store.links._account_key is None and store.links.cached_key is not None
    assert keys and set(keys) == {store.links.cached_key.value}, "something was signed with another key"
    assert ACCOUNT_KEY not in keys
    for file in answer["files"] + renewed.json["files"]:
        app.check_link(file, identity=True)  # skoid/sktid of the app's identity, spr=https ...
    app.verify_answer(answer)
    assert (await app.delete_run(answer["response_id"])).status == 204
    assert set(keys) == {store.links.cached_key.value}


async def test_an_input_name_cannot_read_another_callers_run(app: AppClient, rig, configure) -> None:
    """Issue 18's attack: behind Easy Auth, caller B names blobs of caller A's run as input files
    (`../<OUTPUT_CONTAINER>/...`, and encoded forms). Each is 400 invalid_input_name: no byte of A's
    run reaches Azure OpenAI, nothing is uploaded, no run starts."""
    configure(WEBSITE_AUTH_ENABLED="true")
    alice = {"x-ms-client-principal-id": str(uuid.uuid4())}
    bob = {"x-ms-client-principal-id": str(uuid.uuid4())}
    secret = app.script(files=[{"path": "/mnt/data/secret.txt", "content": "alice's secret"}])
    created = await app.call(
        "create_run", "POST", "/api/runs", json.dumps({"prompt": secret["prompt"]}).encode(), headers=alice
    )
    assert created.status == 200, created.body
    response_id, blob = created.json["response_id"], created.json["files"][0]["blob"]
    out = rig.OUTPUT_CONTAINER
    attacks = [
        f"../{out}/{blob}",
        f"../{out}/{response_id}/manifest.json",
        f"../{out}/{response_id}/run.json",
        f"..%2f{out}%2f{response_id}%2fmanifest.json",
        f"%2e%2e/{out}/{blob}",
        f"..\\{out}\\{blob}",
        f"x/../../{out}/{blob}",
    ]
    bob_script = app.script()
    before = files_state(rig.emulator)
    for name in attacks:
        for item in ({"blob": name}, {"blob": "ok.csv", "name": name}):
            body = json.dumps({"prompt": bob_script["prompt"], "input_files": [item]}).encode()
            reply = await app.call("create_run", "POST", "/api/runs", body, headers=bob)
            assert reply.status == 400 and reply.error_code() == "invalid_input_name", (name, reply.body)
            assert "input_files[0]" in reply.json["error"]["message"]
    after = files_state(rig.emulator)
    assert after["files"] == before["files"] and after["uploads"] == before["uploads"]  # nothing uploaded
    assert rig.emulator.stats()["runs_started"]["by_script"].get(bob_script["script_id"], 0) == 0
    seen_by_bob = await app.call(
        "get_run", "GET", f"/api/runs/{response_id}", route_params={"response_id": response_id}, headers=bob
    )
    assert seen_by_bob.status == 404  # the same boundary GET keeps
    figures.count("foreign_reads_refused", 2 * len(attacks) + 1)
