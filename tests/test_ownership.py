"""Runs belong to this deployment and their callers (issue 13): another application's response on the
same Azure OpenAI resource, or another caller's run behind Easy Auth, is exactly an unknown run."""

from __future__ import annotations

import json
import os
import uuid

import openai

from local_azure.queue_host import QueueHost
from tests import figures
from tests.appclient import FUNCTIONS, AppClient
from tests.helpers import SECRET, storage_names
from tests.helpers import signed_webhook as _signed


def _foreign_response(rig, **metadata: str) -> str:
    """A response another application made on the same resource (its own metadata, or none)."""
    client = openai.OpenAI(base_url=rig.emulator_url + "/openai/v1/", api_key=rig.api_key)
    response = client.responses.create(
        model=rig.DEPLOYMENT,
        input="someone else's analysis",
        tools=[{"type": "code_interpreter", "container": {"type": "auto"}}],
        store=True,
        metadata=metadata or None,
    )
    client.close()
    return response.id


async def test_another_applications_run_is_not_found_everywhere_and_nothing_is_written(app: AppClient, rig) -> None:
    unknown = await app.get_run("resp_" + uuid.uuid4().hex)
    for foreign in (_foreign_response(rig), _foreign_response(rig, owner="cif-someoneelse", collect="all")):
        got = await app.get_run(foreign)
        assert got.status == 404 and got.error_code() == "run_not_found"
        assert got.json["error"]["message"] == unknown.json["error"]["message"].replace(unknown_id(unknown), foreign)
        deleted = await app.delete_run(foreign)
        assert deleted.status == 404 and deleted.error_code() == "run_not_found"
        continued = await app.post_run(prompt="go on", previous_response_id=foreign)
        assert continued.status == 404 and continued.error_code() == "run_not_found"
        assert storage_names(rig, foreign, bookkeeping=True) == []  # no manifest, no tombstone, no lock
        assert rig.emulator.run(foreign)["request"]["store"] is True  # and its response is untouched
        assert (await app.get_run(foreign)).status == 404
        figures.count("foreign_reads_refused", 4)


def unknown_id(reply) -> str:
    return reply.json["error"]["message"].rsplit(" ", 1)[-1]


async def test_a_webhook_for_another_applications_run_writes_nothing(app: AppClient, rig, configure) -> None:
    configure(RUNS_QUEUE=f"q{uuid.uuid4().hex[:12]}", AZURE_OPENAI_WEBHOOK_SECRET=SECRET)
    foreign = _foreign_response(rig)
    body = json.dumps({"id": "evt_f", "type": "response.completed", "created_at": 1, "data": {"id": foreign}})
    reply = await app.call(
        "openai_webhook", "POST", "/api/openai-webhook", body.encode(), headers=_signed(body, "wh_f")
    )
    assert reply.status == 200, reply.body
    async with QueueHost(FUNCTIONS.values(), environ=os.environ, lease_seconds=3, poll_seconds=0.05) as host:
        [invocation] = await host.drain(within=30)
    assert invocation.outcome == "succeeded"
    assert storage_names(rig, foreign, bookkeeping=True) == []


async def test_behind_easy_auth_a_run_is_its_callers_only(app: AppClient, rig, configure) -> None:
    configure(WEBSITE_AUTH_ENABLED="true")
    alice, bob = {"x-ms-client-principal-id": str(uuid.uuid4())}, {"x-ms-client-principal-id": str(uuid.uuid4())}
    body = json.dumps({"prompt": "Create test.txt containing hello world"}).encode()
    created = await app.call(
        "create_run", "POST", "/api/runs", body, headers={"content-type": "application/json", **alice}
    )
    assert created.status == 200, created.body
    response_id = created.json["response_id"]
    assert rig.emulator.run(response_id)["request"]["metadata"]["principal"] == alice["x-ms-client-principal-id"]

    async def get(who: dict[str, str]):
        return await app.call(
            "get_run", "GET", f"/api/runs/{response_id}", route_params={"response_id": response_id}, headers=who
        )

    async def delete(who: dict[str, str]):
        return await app.call(
            "delete_run", "DELETE", f"/api/runs/{response_id}", route_params={"response_id": response_id}, headers=who
        )

    assert (await get(bob)).status == 404 and (await get({})).status == 404
    assert (await delete(bob)).status == 404
    continued = await app.call(
        "create_run",
        "POST",
        "/api/runs",
        json.dumps({"prompt": "more", "previous_response_id": response_id}).encode(),
        headers={"content-type": "application/json", **bob},
    )
    assert continued.status == 404
    figures.count("foreign_reads_refused", 5)
    mine = await get(alice)
    assert mine.status == 200 and [f["filename"] for f in mine.json["files"]] == ["test.txt"]
    assert (await delete(alice)).status == 204


async def test_without_easy_auth_the_principal_header_is_ignored(app: AppClient, rig) -> None:
    """Function keys are the boundary then: a header a caller sets itself decides nothing."""
    body = json.dumps({"prompt": "hello"}).encode()
    created = await app.call(
        "create_run",
        "POST",
        "/api/runs",
        body,
        headers={"content-type": "application/json", "x-ms-client-principal-id": "x"},
    )
    assert "principal" not in rig.emulator.run(created.json["response_id"])["request"]["metadata"]
    assert (await app.get_run(created.json["response_id"])).status == 200


async def test_behind_easy_auth_a_function_key_caller_and_authenticated_callers_see_only_their_own(
    app: AppClient, rig, configure
) -> None:
    """Easy Auth on with unauthenticated requests allowed: a request with a function key only comes
    without a principal. Its runs are visible to key-only requests (the key is the boundary, as
    without Easy Auth) and to no authenticated caller; an authenticated caller's runs to that caller
    only, not to key-only requests, nor to a user of another provider with the same id."""
    configure(WEBSITE_AUTH_ENABLED="true")
    alice_id = str(uuid.uuid4())
    key_only: dict[str, str] = {}
    alice = {"x-ms-client-principal-id": alice_id, "x-ms-client-principal-idp": "aad"}
    bob = {"x-ms-client-principal-id": str(uuid.uuid4()), "x-ms-client-principal-idp": "aad"}
    alice_elsewhere = {"x-ms-client-principal-id": alice_id, "x-ms-client-principal-idp": "github"}

    async def post(who: dict[str, str], **body: object):
        data = json.dumps({"prompt": "Create test.txt containing hello world", **body}).encode()
        return await app.call("create_run", "POST", "/api/runs", data, headers=who)

    async def get(who: dict[str, str], response_id: str) -> int:
        reply = await app.call(
            "get_run", "GET", f"/api/runs/{response_id}", route_params={"response_id": response_id}, headers=who
        )
        return reply.status

    keyed, alices = (await post(key_only)).json["response_id"], (await post(alice)).json["response_id"]
    assert "principal" not in rig.emulator.run(keyed)["request"]["metadata"]
    assert rig.emulator.run(alices)["request"]["metadata"]["principal"] == alice_id  # as the platform sent it
    assert [await get(key_only, keyed), await get(alice, keyed), await get(bob, keyed)] == [200, 404, 404]
    assert [await get(who, alices) for who in (alice, key_only, alice_elsewhere)] == [200, 404, 404]
    assert (await post(alice, previous_response_id=keyed)).status == 404
    assert (await post(key_only, previous_response_id=alices)).status == 404
    deleted = await app.call(
        "delete_run", "DELETE", f"/api/runs/{keyed}", route_params={"response_id": keyed}, headers=alice
    )
    assert deleted.status == 404 and await get(key_only, keyed) == 200
    figures.count("foreign_reads_refused", 7)

    configure()  # Easy Auth switched off: keys are the boundary; an authenticated caller's run stays theirs
    assert [await get(key_only, keyed), await get(alice, keyed), await get(alice, alices)] == [200, 200, 404]


async def test_principal_ids_are_taken_as_the_platform_sends_them(app: AppClient, rig, configure) -> None:
    """Any provider's subject (OpenID Connect: visible ASCII up to 255 characters) is a principal, kept
    exactly, qualified by its provider unless Entra ID; a value the platform never sends is a 400."""
    configure(WEBSITE_AUTH_ENABLED="true")
    subject = "auth0|5f7c8ec7c33c6c004bbafe82"
    oidc = {"x-ms-client-principal-id": subject, "x-ms-client-principal-idp": "MyAuth0"}
    body = json.dumps({"prompt": "Create test.txt containing hello world"}).encode()
    created = await app.call("create_run", "POST", "/api/runs", body, headers=oidc)
    assert created.status == 200, created.body
    response_id = created.json["response_id"]
    assert rig.emulator.run(response_id)["request"]["metadata"]["principal"] == f"myauth0:{subject}"
    seen = await app.call(
        "get_run", "GET", f"/api/runs/{response_id}", route_params={"response_id": response_id}, headers=oidc
    )
    assert seen.status == 200
    for bad in (f" {subject}", f"{subject}\t", "é", "x" * 256, ""):
        reply = await app.call("create_run", "POST", "/api/runs", body, headers={"x-ms-client-principal-id": bad})
        assert reply.status == 400 and reply.error_code() == "invalid_request", repr(bad)
