"""The rules each app setting's value must follow, and the words a broken one is reported in.

One function per kind of value (an endpoint, a storage name, a connection string, a secret), used by
`settings.Settings` as its fields' validators: they raise `invalid(why)`, whose message is ours word
for word (callers and the README quote them). Kept apart from the settings model so that one reader
holds each: the model says which settings there are, this module what a valid one looks like.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr
from pydantic_core import PydanticCustomError

DEFAULT_TOKEN_SCOPE = "https://ai.azure.com/.default"
LEGACY_TOKEN_SCOPE = "https://cognitiveservices.azure.com/.default"
V1_API_VERSIONS = ("v1", "preview", "latest")
DEVELOPMENT_STORAGE_ACCOUNT = "devstoreaccount1"  # the account UseDevelopmentStorage=true stands for

_NAME_RULE = "3-63 lowercase letters, digits and single hyphens"
_OWNER_TAG = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def invalid(why: str) -> PydanticCustomError:
    """A field error whose message is ours, word for word (no "Value error, " prefix)."""
    return PydanticCustomError("invalid_setting", "{why}", {"why": why})


def normalize_openai_endpoint(value: str) -> str:
    """Accept `https://<resource>.openai.azure.com` or its `/openai/v1/` base; return the v1 base URL."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError("expected https://<resource>.openai.azure.com")
    path = parts.path.rstrip("/")
    if path.endswith("/openai/v1"):
        path = path[: -len("/openai/v1")]
    elif path.endswith("/openai"):
        path = path[: -len("/openai")]
    return f"{parts.scheme}://{parts.netloc}{path}/openai/v1/"


def openai_endpoint(value: str) -> str:
    try:
        return normalize_openai_endpoint(value)
    except ValueError as error:
        raise invalid(str(error)) from None


def account_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise invalid("expected https://<account>.blob.core.windows.net")
    return value.rstrip("/")


def queue_service_url(value: str) -> str:
    """Identity-based: bearer tokens go only over TLS, so https only."""
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
        raise invalid("expected https://<account>.queue.core.windows.net")
    return value.rstrip("/")


def _connection_string_keys(connection_string: str) -> dict[str, str]:
    parts = dict(p.split("=", 1) for p in connection_string.split(";") if "=" in p)
    return {k.strip().lower(): v.strip() for k, v in parts.items()}


def _is_development_storage(keys: Mapping[str, str]) -> bool:
    return keys.get("usedevelopmentstorage", "").lower() == "true"


def output_connection_string(value: SecretStr) -> SecretStr:
    """Service SAS links are signed with the account key: a SAS-only connection string cannot sign."""
    keys = _connection_string_keys(value.get_secret_value())
    if not (keys.get("accountkey") or _is_development_storage(keys)):
        raise invalid("needs AccountKey= (to sign links) or UseDevelopmentStorage=true")
    return value


def queue_connection_string(value: SecretStr) -> SecretStr:
    keys = _connection_string_keys(value.get_secret_value())
    if not (keys.get("accountkey") or keys.get("sharedaccesssignature") or _is_development_storage(keys)):
        raise invalid("expected a storage connection string with AccountKey= (or UseDevelopmentStorage=true)")
    return value


def _valid_storage_name(name: str) -> bool:
    """Container and queue names: 3-63 lowercase letters, digits and single hyphens, inside."""
    return (
        3 <= len(name) <= 63
        and name.isascii()
        and all(c.islower() or c.isdigit() or c == "-" for c in name)
        and not name.startswith("-")
        and not name.endswith("-")
        and "--" not in name
    )


def container_name(value: str) -> str:
    if not _valid_storage_name(value):
        raise invalid(_NAME_RULE)
    return value


def queue_name(value: str) -> str:
    if not _valid_storage_name(value):
        raise invalid(_NAME_RULE)
    if len(value) > 63 - len("-poison"):
        raise invalid("at most 56 characters: the host adds -poison for the poison queue")
    return value


def table_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{2,62}", value):
        raise invalid("3-63 letters and digits, starting with a letter")
    return value


def table_service_url(value: str | None) -> str | None:
    """Identity-based: bearer tokens go only over TLS, so https only. None: derived (or not needed)."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
        raise invalid("expected https://<account>.table.core.windows.net")
    return value.rstrip("/")


def is_account_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("https", "http") and bool(parts.netloc)


def table_url_for(url: str) -> str | None:
    """`https://<account>.table.<suffix>` for a standard `https://<account>.blob.<suffix>` account URL."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    name, dot, rest = host.partition(".")
    if parts.scheme != "https" or not dot or not rest.startswith("blob.") or parts.path.strip("/"):
        return None
    return f"https://{name}.table.{rest.removeprefix('blob.')}"


def api_version(value: str) -> str:
    if value not in V1_API_VERSIONS:
        raise invalid(
            "the v1 API takes only v1, preview or latest; dated versions belong to the old /openai/deployments API"
        )
    return value


def token_scope(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc or not parts.path.endswith("/.default") or parts.query:
        raise invalid(f"an https URL ending in /.default, e.g. {DEFAULT_TOKEN_SCOPE} (or {LEGACY_TOKEN_SCOPE})")
    return value


def hosts(value: Any) -> tuple[str, ...]:
    """`a.example.com, B.example.com` -> ("a.example.com", "b.example.com"); empty means callbacks off."""
    items = value.split(",") if isinstance(value, str) else list(value)
    hosts = tuple(str(item).strip().lower() for item in items if str(item).strip())
    for host in hosts:
        # Host names (IDN and a trailing dot allowed: callbacks.normalize_host compares them normalized)
        # or IP literals (IPv6 has colons); never a scheme, port, path, userinfo or query.
        if not is_ip_literal(host) and any(c in host for c in "/:@?#[]*\\ \t"):
            raise invalid("comma-separated host names, without scheme, port or path")
    return hosts


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def signing_secret(value: SecretStr) -> SecretStr:
    """Standard Webhooks: `whsec_` and the base64 of 24 to 64 random bytes."""
    text = value.get_secret_value()
    try:
        key = base64.b64decode(text.removeprefix("whsec_"), validate=True) if text.startswith("whsec_") else b""
    except (binascii.Error, ValueError):
        key = b""
    if not 24 <= len(key) <= 64:
        raise invalid("a Standard Webhooks secret: whsec_ followed by the base64 of 24 to 64 random bytes")
    return value


def owner_tag(value: str) -> str:
    if not _OWNER_TAG.match(value):
        raise invalid("1-64 letters, digits, '_', '.' or '-'")
    return value


def run_events(value: Any) -> Any:
    if value not in ("stream", "poll"):
        raise invalid("stream or poll")
    return value


def platform_flag(value: Any) -> bool:
    """App Service writes "true"/"True" when Easy Auth is on; anything else is off."""
    return str(value).strip().lower() == "true"


def in_range(low: int, high: int) -> Any:
    return Field(ge=low, le=high)


def account_name(connection_string: str) -> str:
    keys = _connection_string_keys(connection_string)
    if _is_development_storage(keys):
        return DEVELOPMENT_STORAGE_ACCOUNT
    return keys.get("accountname") or keys.get("blobendpoint", "")
