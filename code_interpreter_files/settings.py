"""App settings: read from the environment, validated once per configuration, in one place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

MIB = 1024 * 1024

SETTING_NAMES: tuple[str, ...] = (
    "AZURE_OPENAI_ENDPOINT",
    "AZURE_OPENAI_DEPLOYMENT",
    "AZURE_OPENAI_API_VERSION",
    "AZURE_OPENAI_API_KEY",
    "OUTPUT_STORAGE_ACCOUNT_URL",
    "OUTPUT_STORAGE_CONNECTION_STRING",
    "OUTPUT_CONTAINER",
    "SAS_TTL_MINUTES",
    "SAS_TTL_MAX_MINUTES",
    "MAX_FILES_PER_RUN",
    "MAX_FILE_BYTES",
    "RUN_WAIT_SECONDS",
    "COPY_CONCURRENCY",
    "COPY_MEMORY_MB",
)

# The Azure load balancer ends an HTTP request after 230 s, whatever functionTimeout says.
HTTP_ANSWER_LIMIT_SECONDS = 230
# A user delegation key lives at most 7 days; the app asks for one that covers the longest TTL + 1 h.
MAX_SAS_TTL_MINUTES = 7 * 24 * 60 - 65


class SettingsError(Exception):
    """Some settings are missing or invalid; carries their names, never their values."""

    def __init__(self, missing: list[str], invalid: dict[str, str]) -> None:
        self.missing = missing
        self.invalid = invalid
        parts = []
        if missing:
            parts.append("missing: " + ", ".join(missing))
        if invalid:
            parts.append("invalid: " + "; ".join(f"{name} ({why})" for name, why in invalid.items()))
        super().__init__("App settings " + " / ".join(parts))


@dataclass(frozen=True)
class Settings:
    openai_base_url: str
    deployment: str
    api_version: str | None
    api_key: str | None
    storage_account_url: str | None
    storage_connection_string: str | None
    output_container: str
    sas_ttl_minutes: int
    sas_ttl_max_minutes: int
    max_files_per_run: int
    max_file_bytes: int
    run_wait_seconds: float
    copy_concurrency: int
    copy_memory_mb: int = 512  # worker-wide budget of copy bytes in flight (memory_budget.py)

    def __repr__(self) -> str:  # never print a key or a connection string
        return f"Settings(openai_base_url={self.openai_base_url!r}, deployment={self.deployment!r}, ...)"

    @property
    def uses_identity_for_storage(self) -> bool:
        return self.storage_account_url is not None


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


def _https_url(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError("expected https://<account>.blob.core.windows.net")
    return value.strip().rstrip("/")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate every setting; raise SettingsError naming all the bad ones at once."""
    env = os.environ if env is None else env
    missing: list[str] = []
    invalid: dict[str, str] = {}

    def text(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    def required(name: str) -> str:
        value = text(name)
        if value is None:
            missing.append(name)
        return value or ""

    def integer(name: str, default: int, low: int, high: int) -> int:
        raw = text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            invalid[name] = "not an integer"
            return default
        if not low <= value <= high:
            invalid[name] = f"must be between {low} and {high}"
            return default
        return value

    endpoint = required("AZURE_OPENAI_ENDPOINT")
    base_url = ""
    if endpoint:
        try:
            base_url = normalize_openai_endpoint(endpoint)
        except ValueError as error:
            invalid["AZURE_OPENAI_ENDPOINT"] = str(error)
    deployment = required("AZURE_OPENAI_DEPLOYMENT")

    account_url = text("OUTPUT_STORAGE_ACCOUNT_URL")
    connection_string = text("OUTPUT_STORAGE_CONNECTION_STRING")
    if account_url:
        try:
            account_url = _https_url(account_url)
        except ValueError as error:
            invalid["OUTPUT_STORAGE_ACCOUNT_URL"] = str(error)
    if not account_url and not connection_string:
        missing.append("OUTPUT_STORAGE_ACCOUNT_URL or OUTPUT_STORAGE_CONNECTION_STRING")
    if connection_string and not _signs_with_account_key(connection_string):
        invalid["OUTPUT_STORAGE_CONNECTION_STRING"] = "needs AccountKey= (to sign links) or UseDevelopmentStorage=true"
    if account_url and connection_string:
        invalid["OUTPUT_STORAGE_CONNECTION_STRING"] = "set only one of it and OUTPUT_STORAGE_ACCOUNT_URL"

    container = text("OUTPUT_CONTAINER") or "code-interpreter-outputs"
    if not _valid_container_name(container):
        invalid["OUTPUT_CONTAINER"] = "3-63 lowercase letters, digits and single hyphens"

    ttl_max = integer("SAS_TTL_MAX_MINUTES", 1440, 1, MAX_SAS_TTL_MINUTES)
    ttl = integer("SAS_TTL_MINUTES", min(60, ttl_max), 1, MAX_SAS_TTL_MINUTES)
    if ttl > ttl_max and "SAS_TTL_MINUTES" not in invalid:
        invalid["SAS_TTL_MINUTES"] = "must not exceed SAS_TTL_MAX_MINUTES"

    settings = Settings(
        openai_base_url=base_url,
        deployment=deployment,
        api_version=text("AZURE_OPENAI_API_VERSION"),
        api_key=text("AZURE_OPENAI_API_KEY"),
        storage_account_url=account_url,
        storage_connection_string=None if account_url else connection_string,
        output_container=container,
        sas_ttl_minutes=ttl,
        sas_ttl_max_minutes=ttl_max,
        max_files_per_run=integer("MAX_FILES_PER_RUN", 20, 1, 1000),
        max_file_bytes=integer("MAX_FILE_BYTES", 512 * MIB, 1, 4 * 1024 * 1024 * MIB),
        run_wait_seconds=integer("RUN_WAIT_SECONDS", 180, 1, HTTP_ANSWER_LIMIT_SECONDS - 20),
        copy_concurrency=integer("COPY_CONCURRENCY", 4, 1, 64),
        copy_memory_mb=integer("COPY_MEMORY_MB", 512, 16, 16384),
    )
    if missing or invalid:
        raise SettingsError(missing, invalid)
    return settings


def _signs_with_account_key(connection_string: str) -> bool:
    """Service SAS links are signed with the account key: a SAS-only connection string cannot sign."""
    parts = dict(p.split("=", 1) for p in connection_string.split(";") if "=" in p)
    keys = {k.strip().lower(): v.strip() for k, v in parts.items()}
    return bool(keys.get("accountkey")) or keys.get("usedevelopmentstorage", "").lower() == "true"


def _valid_container_name(name: str) -> bool:
    return (
        3 <= len(name) <= 63
        and all(c.islower() or c.isdigit() or c == "-" for c in name)
        and name.isascii()
        and not name.startswith("-")
        and not name.endswith("-")
        and "--" not in name
    )


# Read by azure-identity when it builds the credential, so they are part of a configuration too.
IDENTITY_SETTING_NAMES = ("AZURE_CLIENT_ID", "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT")


def settings_fingerprint(env: Mapping[str, str] | None = None) -> tuple[str | None, ...]:
    """The raw values the clients are built from: a new fingerprint means a new configuration."""
    env = os.environ if env is None else env
    return tuple(env.get(name) for name in SETTING_NAMES + IDENTITY_SETTING_NAMES)
