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
# it from incoming requests, so it is trusted only when WEBSITE_AUTH_ENABLED says Easy Auth is on.
PRINCIPAL_HEADER = "x-ms-client-principal-id"
_PRINCIPAL = re.compile(r"[A-Za-z0-9._@-]{1,128}")


def caller_principal(headers: Mapping[str, str], settings: Settings) -> str | None:
    """The authenticated caller's principal id, or None (no Easy Auth: function keys are the boundary)."""
    if not settings.easy_auth:
        return None
    value = next((v for k, v in headers.items() if k.lower() == PRINCIPAL_HEADER), None)
    if value is None:
        return None
    if not _PRINCIPAL.fullmatch(value.strip()):
        raise InvalidRequest(f"the {PRINCIPAL_HEADER} header is not a principal id")
    return value.strip()


def run_metadata(settings: Settings, *, collect: str, principal: str | None) -> dict[str, str]:
    """The response metadata a run is created with (16 keys of at most 512 characters on the service)."""
    metadata = {"collect": collect, "owner": settings.owner_tag}
    if principal is not None:
        metadata["principal"] = principal
    return metadata


def check(owner: str | None, run_principal: str | None, response_id: str, settings: Settings,
          caller: str | None) -> None:  # fmt: skip
    """RunNotFound unless the run is this deployment's and, when it was started by an authenticated
    caller, this caller's. A run started without a principal is every caller's of this deployment."""
    if owner != settings.owner_tag:
        raise RunNotFound(response_id)
    if run_principal is not None and run_principal != caller:
        raise RunNotFound(response_id)


def check_metadata(
    metadata: Mapping[str, Any] | None, response_id: str, settings: Settings, caller: str | None
) -> None:
    """`check` on a response's metadata (what the run was created with)."""
    metadata = metadata or {}
    check(metadata.get("owner"), metadata.get("principal"), response_id, settings, caller)
