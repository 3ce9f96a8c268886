"""The worker's one Microsoft Entra ID credential: the managed identity in Azure, a developer login locally."""

from __future__ import annotations

import time
from typing import Any, TypeVar

from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.exceptions import ClientAuthenticationError
from azure.identity.aio import DefaultAzureCredential

from .settings import Settings

_Token = TypeVar("_Token", AccessToken, AccessTokenInfo)


class IdentityError(Exception):
    """No token could be had. The message names the scope and the hint, never a token."""


def needs_credential(settings: Settings) -> bool:
    return settings.api_key is None or settings.uses_identity_for_storage or settings.queue_service_url is not None


class AppCredential(DefaultAzureCredential):
    """DefaultAzureCredential whose failures say "identity", wherever they surface.

    In Azure it resolves to ManagedIdentityCredential (AZURE_CLIENT_ID picks a user-assigned
    identity); on a laptop to the Azure CLI / azd / VS Code login. It caches tokens until shortly
    before they expire, so runs after the first ask the identity endpoint nothing.
    """

    def __init__(self) -> None:
        super().__init__(exclude_interactive_browser_credential=True)

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        try:
            token = await super().get_token(*scopes, **kwargs)
        except ClientAuthenticationError as error:
            raise _identity_error(scopes, error) from None
        return _unexpired(token, scopes)

    async def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        try:
            token = await super().get_token_info(*scopes, options=options)
        except ClientAuthenticationError as error:
            raise _identity_error(scopes, error) from None
        return _unexpired(token, scopes)


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
