"""App settings: read from the environment, validated once per configuration, in one place."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import SecretStr

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
    "AZURE_OPENAI_TOKEN_SCOPE",
    "RUN_EVENTS",
    "RUN_EVENTS_IDLE_SECONDS",
)
API_VERSIONS = ("v1", "preview", "latest")

# Read by the queue, callback and webhook modules. Kept apart from SETTING_NAMES on the queue branch
# only so the deploy test does not ask for them before infra learns them; the settings rewrite merges them.
QUEUE_SETTING_NAMES: tuple[str, ...] = (
    "RUNS_QUEUE",
    "RUNS_QUEUE_STORAGE__queueServiceUri",
    "RUNS_QUEUE_STORAGE",
    "CALLBACK_ALLOWED_HOSTS",
    "CALLBACK_SIGNING_SECRET",
    "AZURE_OPENAI_WEBHOOK_SECRET",
)
INPUT_SETTING_NAMES: tuple[str, ...] = (
    "INPUT_CONTAINER",
    "MAX_INPUT_FILES",
    "MAX_INPUT_BYTES",
    "OWNER_TAG",
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
    api_key: SecretStr | None
    storage_account_url: str | None
    storage_connection_string: str | None
    output_container: str
    sas_ttl_minutes: int
    sas_ttl_max_minutes: int
    max_files_per_run: int
    max_file_bytes: int
    run_wait_seconds: float
    copy_concurrency: int
    token_scope: str = "https://ai.azure.com/.default"
    run_events: Literal["stream", "poll"] = "stream"
    run_events_idle_seconds: float = 30
    runs_queue: str = "code-interpreter-runs"
    queue_service_url: str | None = None
    queue_connection_string: SecretStr | None = None
    callback_allowed_hosts: tuple[str, ...] = ()
    callback_signing_secret: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    input_container: str = "code-interpreter-inputs"
    max_input_files: int = 10
    max_input_bytes: int = 512 * MIB
    owner_tag: str = "cif-unset"

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

    input_container = text("INPUT_CONTAINER") or "code-interpreter-inputs"
    if not _valid_container_name(input_container):
        invalid["INPUT_CONTAINER"] = "3-63 lowercase letters, digits and single hyphens"
    owner_tag = text("OWNER_TAG") or _derived_owner_tag(account_url or connection_string or "", container)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", owner_tag):
        invalid["OWNER_TAG"] = "1-64 letters, digits, '_', '.' or '-'"

    ttl_max = integer("SAS_TTL_MAX_MINUTES", 1440, 1, MAX_SAS_TTL_MINUTES)
    ttl = integer("SAS_TTL_MINUTES", min(60, ttl_max), 1, MAX_SAS_TTL_MINUTES)
    if ttl > ttl_max and "SAS_TTL_MINUTES" not in invalid:
        invalid["SAS_TTL_MINUTES"] = "must not exceed SAS_TTL_MAX_MINUTES"

    api_version = text("AZURE_OPENAI_API_VERSION")
    if api_version is not None and api_version not in API_VERSIONS:
        invalid["AZURE_OPENAI_API_VERSION"] = (
            "the v1 API takes only v1, preview or latest; dated versions belong to the old /openai/deployments API"
        )
    run_events = text("RUN_EVENTS") or "stream"
    if run_events not in ("stream", "poll"):
        invalid["RUN_EVENTS"] = "stream or poll"
        run_events = "stream"
    api_key = text("AZURE_OPENAI_API_KEY")
    settings = Settings(
        openai_base_url=base_url,
        deployment=deployment,
        api_version=api_version,
        api_key=SecretStr(api_key) if api_key else None,
        storage_account_url=account_url,
        storage_connection_string=None if account_url else connection_string,
        output_container=container,
        sas_ttl_minutes=ttl,
        sas_ttl_max_minutes=ttl_max,
        max_files_per_run=integer("MAX_FILES_PER_RUN", 20, 1, 1000),
        max_file_bytes=integer("MAX_FILE_BYTES", 512 * MIB, 1, 4 * 1024 * 1024 * MIB),
        run_wait_seconds=integer("RUN_WAIT_SECONDS", 180, 1, HTTP_ANSWER_LIMIT_SECONDS - 20),
        copy_concurrency=integer("COPY_CONCURRENCY", 4, 1, 64),
        token_scope=text("AZURE_OPENAI_TOKEN_SCOPE") or "https://ai.azure.com/.default",
        run_events=run_events,  # type: ignore[arg-type]
        run_events_idle_seconds=integer("RUN_EVENTS_IDLE_SECONDS", 30, 1, 600),
        **_queue_settings(text, invalid),
        input_container=input_container,
        max_input_files=integer("MAX_INPUT_FILES", 10, 1, 50),
        max_input_bytes=integer("MAX_INPUT_BYTES", 512 * MIB, 1, 8 * 1024 * MIB),
        owner_tag=owner_tag,
    )
    if missing or invalid:
        raise SettingsError(missing, invalid)
    return settings


def _queue_settings(text: Callable[[str], str | None], invalid: dict[str, str]) -> dict[str, Any]:
    """Queue, callback and webhook settings (minimal on the queue branch; the settings rewrite owns them)."""
    queue = text("RUNS_QUEUE") or "code-interpreter-runs"
    if not _valid_container_name(queue):  # queue names follow the container name rules
        invalid["RUNS_QUEUE"] = "3-63 lowercase letters, digits and single hyphens"
    queue_url = text("RUNS_QUEUE_STORAGE__queueServiceUri")
    queue_conn = text("RUNS_QUEUE_STORAGE")
    if queue_url:
        try:
            queue_url = _https_url(queue_url)
        except ValueError:
            invalid["RUNS_QUEUE_STORAGE__queueServiceUri"] = "expected https://<account>.queue.core.windows.net"
    if queue_url and queue_conn:
        invalid["RUNS_QUEUE_STORAGE"] = "set only one of it and RUNS_QUEUE_STORAGE__queueServiceUri"
    hosts = tuple(h.strip().lower() for h in (text("CALLBACK_ALLOWED_HOSTS") or "").split(",") if h.strip())
    if any(not _is_ip(h) and any(c in h for c in "/:@?#[]\\ ") for h in hosts):
        invalid["CALLBACK_ALLOWED_HOSTS"] = "comma-separated host names, without scheme, port or path"
    signing = text("CALLBACK_SIGNING_SECRET")
    if hosts and not signing:
        invalid["CALLBACK_SIGNING_SECRET"] = "required when CALLBACK_ALLOWED_HOSTS is set"
    if signing and not _is_whsec(signing):
        invalid["CALLBACK_SIGNING_SECRET"] = "expected whsec_<base64>"
    webhook = text("AZURE_OPENAI_WEBHOOK_SECRET")
    return {
        "runs_queue": queue,
        "queue_service_url": queue_url,
        "queue_connection_string": SecretStr(queue_conn) if queue_conn and not queue_url else None,
        "callback_allowed_hosts": hosts,
        "callback_signing_secret": SecretStr(signing) if signing else None,
        "webhook_secret": SecretStr(webhook) if webhook else None,
    }


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_whsec(value: str) -> bool:
    if not value.startswith("whsec_"):
        return False
    try:
        return len(base64.b64decode(value[len("whsec_") :], validate=True)) >= 16
    except ValueError:
        return False


def _derived_owner_tag(storage: str, container: str) -> str:
    """Tags the runs this app starts (response metadata "owner"), the same for every worker of one
    deployment: derived from where its outputs go, never from a secret (only the account's name)."""
    account = storage
    if not storage.startswith(("https://", "http://")):
        parts = dict(p.split("=", 1) for p in storage.split(";") if "=" in p)
        keys = {k.strip().lower(): v.strip() for k, v in parts.items()}
        account = keys.get("accountname") or ("devstoreaccount1" if keys.get("usedevelopmentstorage") else "")
    return "cif-" + hashlib.sha256(f"{account}/{container}".encode()).hexdigest()[:16]


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
    return tuple(
        env.get(name) for name in SETTING_NAMES + QUEUE_SETTING_NAMES + INPUT_SETTING_NAMES + IDENTITY_SETTING_NAMES
    )
