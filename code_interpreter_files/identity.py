"""The worker's one Microsoft Entra ID credential: the managed identity in Azure, a developer login locally.

As the Azure SDK guidance says: in Azure, `ManagedIdentityCredential` alone (no probing of other
credentials, no waiting on a chain when the identity endpoint is slow); on a laptop, the developer
credentials. Which one is decided in one place, `platform_credential`, by the variables the platform
itself sets (App Service / Functions / Container Apps: IDENTITY_ENDPOINT + IDENTITY_HEADER; older
hosts and Cloud Shell: MSI_ENDPOINT), never by an app setting or a test switch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TypeVar

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from azure.core.exceptions import ClientAuthenticationError
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

from .settings import Settings

_Token = TypeVar("_Token", AccessToken, AccessTokenInfo)


class IdentityError(Exception):
    """No token could be had. The message names the scope and the hint, never a token."""


def needs_credential(settings: Settings) -> bool:
    return settings.api_key is None or settings.uses_identity_for_storage or settings.uses_identity_for_queue


def has_managed_identity(env: Mapping[str, str] | None = None) -> bool:
    """Whether the platform runs this worker with a managed identity endpoint."""
    env = os.environ if env is None else env
    return bool(env.get("IDENTITY_ENDPOINT") and env.get("IDENTITY_HEADER")) or bool(env.get("MSI_ENDPOINT"))


def platform_credential(env: Mapping[str, str] | None = None) -> ManagedIdentityCredential | DefaultAzureCredential:
    """The one place that chooses the credential.

    Managed identity: AZURE_CLIENT_ID names a user-assigned identity (unset: the system-assigned one).
    Locally: DefaultAzureCredential without its managed identity part, i.e. environment service
    principal, workload identity, VS Code, Azure CLI, azd, Azure PowerShell (in the SDK's order),
    never an interactive browser prompt in a worker.
    """
    env = os.environ if env is None else env
    if has_managed_identity(env):
        return ManagedIdentityCredential(client_id=env.get("AZURE_CLIENT_ID") or None)
    return DefaultAzureCredential(exclude_managed_identity_credential=True, exclude_interactive_browser_credential=True)


class AppCredential:
    """The platform's credential, whose failures say "identity", wherever they surface.

    Both kinds cache tokens until shortly before they expire, so runs after the first ask the
    identity endpoint nothing.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.credential = platform_credential(env)

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        try:
            token = await self.credential.get_token(
                *scopes, claims=claims, tenant_id=tenant_id, enable_cae=enable_cae, **kwargs
            )
        except ClientAuthenticationError as error:
            raise _identity_error(scopes, error) from None
        return _unexpired(token, scopes)

    async def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        try:
            token = await self.credential.get_token_info(*scopes, options=options)
        except ClientAuthenticationError as error:
            raise _identity_error(scopes, error) from None
        return _unexpired(token, scopes)

    async def close(self) -> None:
        await self.credential.close()

    async def __aenter__(self) -> AppCredential:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.close()


def _unexpired(token: _Token, scopes: tuple[str, ...]) -> _Token:
    """A token that has already expired would only be refused downstream, as a misleading 401 about
    roles or keys: say what is wrong instead (a broken identity endpoint or a wrong host clock)."""
    if token.expires_on <= time.time():
        raise IdentityError(
            f"the identity endpoint gave an already expired Microsoft Entra ID token for {', '.join(scopes)}: "
            "check the host's clock and the managed identity endpoint (IDENTITY_ENDPOINT)"
        )
    return token


def _identity_error(scopes: tuple[str, ...], error: Exception) -> IdentityError:
    return IdentityError(
        f"could not get a Microsoft Entra ID token for {', '.join(scopes)} ({type(error).__name__}): "
        "in Azure, check that the function app has the managed identity and AZURE_CLIENT_ID names it; "
        "locally, sign in with `az login`, or set AZURE_OPENAI_API_KEY / OUTPUT_STORAGE_CONNECTION_STRING"
    )
