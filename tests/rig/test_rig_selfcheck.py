"""Self-check of the test rig with the real Azure SDKs (no Azure, no internet)."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.identity.aio import ManagedIdentityCredential
from azure.storage.blob import BlobSasPermissions, generate_blob_sas
from azure.storage.blob.aio import BlobServiceClient

from local_azure.azurite import ACCOUNT_NAME, NODE_BIN, Azurite
from local_azure.identity_endpoint import (
    OBJECT_ID,
    TENANT_ID,
    IdentityControl,
    start_identity_endpoint,
    stop_process,
)
from tests.rig.rig import Rig

STORAGE_SCOPE = "https://storage.azure.com/.default"
OPENAI_SCOPE = "https://cognitiveservices.azure.com/.default"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def identity_env(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> Rig:
    """Environment of a Functions host with a system-assigned identity, trusting the rig CA."""
    for name in (*Rig.ENV_NAMES, "MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", rig.identity_url)
    monkeypatch.setenv("IDENTITY_HEADER", rig.identity_header)
    monkeypatch.setenv("SSL_CERT_FILE", str(rig.tls.ca_pem))
    rig.identity.reset()
    return rig


def _ca_context(rig: Rig) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(rig.tls.ca_pem))


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


class _StaticToken:
    """An async credential that always returns the same token."""

    def __init__(self, token: AccessToken) -> None:
        self._token = token

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return self._token

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> _StaticToken:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


# -- packages -----------------------------------------------------------------------------------


def test_pinned_node_and_azurite_versions() -> None:
    """`npm ci` put Node 22 first in node_modules/.bin and Azurite 3.37.0 runs on it."""
    node = subprocess.run([str(NODE_BIN / "node"), "--version"], capture_output=True, text=True, check=True)
    assert node.stdout.startswith("v22."), node.stdout
    env = dict(os.environ, PATH=f"{NODE_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    azurite = subprocess.run(
        [str(NODE_BIN / "azurite-blob"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert azurite.stdout.strip() == "3.37.0"


# -- identity endpoint --------------------------------------------------------------------------


def test_identity_endpoint_protocol(identity_env: Rig) -> None:
    """Raw protocol: header check, reply fields, JWT claims, stats."""
    rig = identity_env
    params = {"api-version": "2019-08-01", "resource": "https://storage.azure.com"}
    assert httpx.get(rig.identity_url, params=params).status_code == 401
    wrong = {"X-IDENTITY-HEADER": "wrong"}
    assert httpx.get(rig.identity_url, params=params, headers=wrong).status_code == 401
    ok = httpx.get(rig.identity_url, params=params, headers={"X-IDENTITY-HEADER": rig.identity_header})
    assert ok.status_code == 200
    body = ok.json()
    assert set(body) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
    assert body["token_type"] == "Bearer" and body["resource"] == "https://storage.azure.com"
    assert int(body["expires_on"]) > time.time() + 3600
    claims = _claims(body["access_token"])
    assert claims["aud"] == "https://storage.azure.com"
    assert claims["iss"] == f"https://sts.windows.net/{TENANT_ID}/"
    assert claims["oid"] == OBJECT_ID and claims["tid"] == TENANT_ID
    assert claims["nbf"] <= time.time() < claims["exp"] == int(body["expires_on"])
    stats = rig.identity.stats()
    assert stats["requests"] == 3
    assert stats["by_resource"] == {"https://storage.azure.com": 3}


def test_identity_endpoint_user_assigned_client_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """Started with a client id, the endpoint serves only requests naming that id."""
    monkeypatch.setenv("IDENTITY_HEADER", "secret-header")
    for name in ("AZURE_CLIENT_ID", "IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    proc, url = start_identity_endpoint("secret-header", client_id="client-123")
    try:
        monkeypatch.setenv("IDENTITY_ENDPOINT", url)

        async def flow() -> None:
            async with ManagedIdentityCredential(client_id="client-123") as cred:
                token = await cred.get_token(OPENAI_SCOPE)
            claims = _claims(token.token)
            assert claims["aud"] == "https://cognitiveservices.azure.com"
            assert claims["appid"] == "client-123"
            async with ManagedIdentityCredential(retry_total=0) as cred:
                with pytest.raises(ClientAuthenticationError):
                    await cred.get_token(OPENAI_SCOPE)

        asyncio.run(flow())
        control = IdentityControl(url)
        assert control.stats()["by_resource"] == {"https://cognitiveservices.azure.com": 2}
        control.close()
    finally:
        stop_process(proc)


def test_identity_fail_mode_makes_credential_raise(identity_env: Rig) -> None:
    rig = identity_env
    rig.identity.config("fail")
    try:

        async def flow() -> None:
            async with ManagedIdentityCredential(retry_total=0) as cred:
                with pytest.raises(ClientAuthenticationError):
                    await cred.get_token(STORAGE_SCOPE)

        asyncio.run(flow())
        assert rig.identity.stats()["requests"] >= 1
    finally:
        rig.identity.reset()


def test_identity_expired_mode_is_rejected_by_azurite(identity_env: Rig) -> None:
    rig = identity_env
    rig.identity.config("expired")
    try:

        async def flow() -> None:
            async with ManagedIdentityCredential() as cred:
                token = await cred.get_token(STORAGE_SCOPE)
            assert token.expires_on < time.time()
            assert _claims(token.token)["exp"] < time.time()
            stale = _StaticToken(token)
            async with BlobServiceClient(rig.azurite.account_url, credential=stale) as svc:
                with pytest.raises(HttpResponseError) as err:
                    await svc.create_container(f"expired-{uuid.uuid4().hex[:8]}")
            assert err.value.status_code in (401, 403)

        asyncio.run(flow())
    finally:
        rig.identity.reset()


# -- storage ------------------------------------------------------------------------------------


def test_identity_storage_and_user_delegation_sas(identity_env: Rig) -> None:
    """Bearer token -> container -> blob -> user delegation key -> read-only SAS over HTTPS."""
    rig = identity_env
    container = f"sas-{uuid.uuid4().hex[:8]}"
    blob = "report.csv"
    data = b"a,b\n1,2\n" * 1000
    disposition = 'attachment; filename="report.csv"'

    async def flow() -> str:
        async with ManagedIdentityCredential() as cred:
            async with BlobServiceClient(rig.azurite.account_url, credential=cred) as svc:
                await svc.create_container(container)
                await svc.get_blob_client(container, blob).upload_blob(data)
                start = datetime.now(UTC) - timedelta(minutes=5)
                expiry = start + timedelta(hours=1)
                key = await svc.get_user_delegation_key(start, expiry)
                assert key.signed_oid == OBJECT_ID and key.signed_tid == TENANT_ID
                sas = generate_blob_sas(
                    account_name=ACCOUNT_NAME,
                    container_name=container,
                    blob_name=blob,
                    user_delegation_key=key,
                    permission=BlobSasPermissions(read=True),
                    start=start,
                    expiry=expiry,
                    protocol="https",
                    content_disposition=disposition,
                )
        return f"{rig.azurite.account_url}/{container}/{blob}?{sas}"

    url = asyncio.run(flow())
    with httpx.Client(verify=_ca_context(rig)) as http:
        got = http.get(url)
        assert got.status_code == 200, got.text
        assert got.content == data
        assert got.headers["content-disposition"] == disposition
        put = http.put(url, content=b"overwrite", headers={"x-ms-blob-type": "BlockBlob"})
        assert put.status_code == 403, put.text
        tampered = http.get(url.replace("sp=r", "sp=rw"))
        assert tampered.status_code == 403
    stats = rig.identity.stats()
    assert stats["by_resource"].get("https://storage.azure.com", 0) >= 1


def test_connection_string_client(rig: Rig) -> None:
    """Account-key auth through the https connection string works as well."""
    container = f"key-{uuid.uuid4().hex[:8]}"

    async def flow() -> bytes:
        async with BlobServiceClient.from_connection_string(rig.azurite.connection_string) as svc:
            await svc.create_container(container)
            blob = svc.get_blob_client(container, "hello.txt")
            await blob.upload_blob(b"hello")
            return bytes(await (await blob.download_blob()).readall())

    assert asyncio.run(flow()) == b"hello"


def test_azurite_persists_across_restart_on_same_port(rig: Rig, tmp_path: Path) -> None:
    """With ``location`` the data survives a stop/start, and the port stays the same."""
    with Azurite(rig.tls, location=tmp_path / "azurite") as azurite:
        port = azurite.port

        async def upload() -> None:
            async with BlobServiceClient.from_connection_string(azurite.connection_string) as svc:
                await svc.create_container("keep")
                await svc.get_blob_client("keep", "a.bin").upload_blob(b"\x00\x01" * 512)

        async def download() -> bytes:
            async with BlobServiceClient.from_connection_string(azurite.connection_string) as svc:
                stream = await svc.get_blob_client("keep", "a.bin").download_blob()
                return bytes(await stream.readall())

        asyncio.run(upload())
        azurite.restart()
        assert azurite.port == port
        assert asyncio.run(download()) == b"\x00\x01" * 512


# -- rig ----------------------------------------------------------------------------------------


def test_app_env_combinations(rig: Rig) -> None:
    ca = str(rig.tls.ca_pem)
    base = {
        "AZURE_OPENAI_ENDPOINT": rig.emulator_url,
        "AZURE_OPENAI_DEPLOYMENT": "gpt-4.1",
        "SSL_CERT_FILE": ca,
        "REQUESTS_CA_BUNDLE": ca,
        "OUTPUT_CONTAINER": "outputs",
        "RUNS_QUEUE": "runs",
    }
    identity = {"IDENTITY_ENDPOINT": rig.identity_url, "IDENTITY_HEADER": rig.identity_header}
    account = {
        "OUTPUT_STORAGE_ACCOUNT_URL": rig.azurite.account_url,
        "RUNS_TABLE_SERVICE_URL": rig.azurite.table_url,
        "RUNS_QUEUE_STORAGE__queueServiceUri": rig.azurite.queue_url,
    }
    conn = {
        "OUTPUT_STORAGE_CONNECTION_STRING": rig.azurite.connection_string,
        "RUNS_QUEUE_STORAGE": rig.azurite.queue_connection_string,
    }
    key = {"AZURE_OPENAI_API_KEY": rig.api_key}
    assert rig.app_env("identity", "identity") == base | account | identity
    assert rig.app_env("identity", "key") == base | account | key | identity
    assert rig.app_env("connection_string", "identity") == base | conn | identity
    assert rig.app_env("connection_string", "key") == base | conn | key
    for storage in ("identity", "connection_string"):
        for model in ("identity", "key"):
            assert set(rig.app_env(storage, model)) <= set(Rig.ENV_NAMES)
    assert "AZURE_CLIENT_ID" in Rig.ENV_NAMES


def test_emulator_is_up(rig: Rig) -> None:
    assert rig.emulator_url.startswith("http://127.0.0.1:")
    assert isinstance(rig.emulator.stats(), dict)


def test_secrets_that_begin_with_a_dash_still_start_the_services() -> None:
    """secrets.token_urlsafe() begins with "-" once in 64 draws: argparse must not take it for an option."""
    from local_azure.emulator_client import start_emulator, stop_emulator

    proc, url = start_emulator("-looks-like-an-option")
    try:
        assert httpx.get(f"{url}/openai/v1/models/m", headers={"api-key": "-looks-like-an-option"}).status_code == 200
    finally:
        stop_emulator(proc)
    identity, token_url = start_identity_endpoint("-also-like-an-option")
    try:
        answer = httpx.get(
            token_url,
            params={"api-version": "2019-08-01", "resource": "https://storage.azure.com"},
            headers={"X-IDENTITY-HEADER": "-also-like-an-option"},
        )
        assert answer.status_code == 200, answer.text
    finally:
        stop_process(identity)
