"""Which credential the worker uses, decided by the platform's own variables (the rig sets the App
Service ones, so every rig test goes through ManagedIdentityCredential); and the local branch."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from azure.core.credentials import AccessToken
from azure.identity.aio import (
    AzureCliCredential,
    AzureDeveloperCliCredential,
    DefaultAzureCredential,
    ManagedIdentityCredential,
)

from code_interpreter_files.identity import AppCredential, IdentityError, has_managed_identity, platform_credential

APP_SERVICE = {"IDENTITY_ENDPOINT": "http://127.0.0.1:41234/msi/token", "IDENTITY_HEADER": "h"}


@pytest.mark.parametrize("env", [APP_SERVICE, {"MSI_ENDPOINT": "http://127.0.0.1:41234/msi/token"}])
async def test_a_managed_identity_host_gets_the_managed_identity_credential(env: dict[str, str]) -> None:
    assert has_managed_identity(env)
    credential = platform_credential(env)
    try:
        assert isinstance(credential, ManagedIdentityCredential)
    finally:
        await credential.close()


@pytest.mark.parametrize("env", [{}, {"IDENTITY_ENDPOINT": "http://127.0.0.1:1/"}, {"AZURE_CLIENT_ID": "x"}])
async def test_elsewhere_the_developer_chain_without_managed_identity(env: dict[str, str]) -> None:
    assert not has_managed_identity(env)
    credential = platform_credential(env)
    try:
        assert isinstance(credential, DefaultAzureCredential)
        kinds = [type(c) for c in credential.credentials]
        assert ManagedIdentityCredential not in kinds
        assert AzureCliCredential in kinds and AzureDeveloperCliCredential in kinds
    finally:
        await credential.close()


async def test_without_a_developer_login_the_error_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A laptop with no `az login` and no CLIs: the local chain runs for real and fails clearly."""
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "AZURE_CLIENT_ID", "AZURE_TENANT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no az, azd or pwsh to find
    monkeypatch.setenv("HOME", str(tmp_path))  # no token caches
    credential = AppCredential()
    assert isinstance(credential.credential, DefaultAzureCredential)
    async with credential:
        with pytest.raises(IdentityError) as raised:
            await credential.get_token("https://storage.azure.com/.default")
    message = str(raised.value)
    assert "could not get a Microsoft Entra ID token for https://storage.azure.com/.default" in message
    assert "sign in with `az login`" in message


class _Stale:
    """An identity endpoint that answers with a token that has already expired (a unit stand-in)."""

    async def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return AccessToken("x", int(time.time()) - 10)

    async def close(self) -> None:
        pass


async def test_an_already_expired_token_is_an_identity_error() -> None:
    credential = AppCredential(APP_SERVICE)
    await credential.close()
    credential.credential = _Stale()  # type: ignore[assignment]
    with pytest.raises(IdentityError, match="already expired"):
        await credential.get_token("https://ai.azure.com/.default")
