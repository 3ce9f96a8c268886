"""Runs belong to this deployment and, behind App Service authentication, to the caller who started them.

Response ids are not secrets (they are in every shared link's path) and one Azure OpenAI resource may
serve several applications: a run is tagged at creation (response `metadata`) with OWNER_TAG and, when
Easy Auth is on, with the caller's principal id. GET, DELETE, `previous_response_id`, the queue and the
webhook accept only runs with this deployment's tag (and the same principal); anything else is the
same 404 as an unknown id, so the answer tells nothing about other applications' runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .errors import InvalidRequest, RunNotFound
from .settings import Settings

# Set by App Service authentication (Easy Auth) after it authenticated the caller; the platform strips
# these from incoming requests, so they are trusted only when WEBSITE_AUTH_ENABLED says Easy Auth is on.
PRINCIPAL_HEADER = "x-ms-client-principal-id"
PROVIDER_HEADER = "x-ms-client-principal-idp"  # aad, google, github, twitter, apple, or a custom provider's name
# Ids are compared exactly as the platform sends them, never trimmed or case-folded. Entra sends an
# object id (a GUID), other providers their own subject: OpenID Connect allows any ASCII up to 255
# characters (`auth0|5f7c...`, `000123.abc.1234`), so any visible ASCII is taken; anything else was
# not written by the platform.
_PRINCIPAL = re.compile(r"[\x21-\x7e]{1,255}")
_PROVIDER = re.compile(r"[A-Za-z0-9._-]{1,64}")
ENTRA_PROVIDER = "aad"


def caller_principal(headers: Mapping[str, str], settings: Settings) -> str | None:
    """The authenticated caller, or None: Easy Auth is off (function keys are the boundary), or it is
    on and the request came with a function key only (unauthenticated requests allowed).

    An Entra ID caller is its object id, as runs recorded it so far; a caller of another provider is
    `<provider>:<id>`, because ids are unique per provider only (a GitHub and a Google user may share
    a numeric id)."""
    if not settings.easy_auth:
        return None
    principal = _header(headers, PRINCIPAL_HEADER)
    if principal is None:
        return None
    if not _PRINCIPAL.fullmatch(principal):
        raise InvalidRequest(f"the {PRINCIPAL_HEADER} header is not a principal id")
    provider = _header(headers, PROVIDER_HEADER)
    if provider is None or provider.lower() == ENTRA_PROVIDER:
        return principal
    if not _PROVIDER.fullmatch(provider):
        raise InvalidRequest(f"the {PROVIDER_HEADER} header is not a provider name")
    return f"{provider.lower()}:{principal}"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name), None)


def run_metadata(settings: Settings, *, collect: str, principal: str | None) -> dict[str, str]:
    """The response metadata a run is created with (16 keys of at most 512 characters on the service)."""
    metadata = {"collect": collect, "owner": settings.owner_tag}
    if principal is not None:
        metadata["principal"] = principal
    return metadata


def check(owner: str | None, run_principal: str | None, response_id: str, settings: Settings,
          caller: str | None) -> None:  # fmt: skip
    """RunNotFound unless the run is this deployment's and was started by this very caller: the same
    principal, or, like this request, none.

    So behind Easy Auth, a run started with a function key and no principal is visible to requests
    with a key and no principal (the key is the boundary, as without Easy Auth) and to no
    authenticated caller; an authenticated caller's run only to that caller. The catalog's partitions
    (run_table.partition_of) draw the same line."""
    if owner != settings.owner_tag or run_principal != caller:
        raise RunNotFound(response_id)


def check_metadata(
    metadata: Mapping[str, Any] | None, response_id: str, settings: Settings, caller: str | None
) -> None:
    """`check` on a response's metadata (what the run was created with)."""
    metadata = metadata or {}
    check(metadata.get("owner"), metadata.get("principal"), response_id, settings, caller)
