"""App settings: read from the environment, validated once per configuration, in one place.

Parsing is pydantic-settings' (types, ranges, defaults, secrets as SecretStr); what is kept by hand is
only what it cannot say: our messages (callers and the README quote them) and the rules about which
settings must be present together. Those are checked on the raw environment, next to the field
errors, because pydantic skips model-level validators once any field failed: one SettingsError must
name every problem at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from annotated_types import Ge, Le
from pydantic import BeforeValidator, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

MIB = 1024 * 1024

# The Azure load balancer ends an HTTP request after 230 s, whatever functionTimeout says.
HTTP_ANSWER_LIMIT_SECONDS = 230
# A user delegation key lives at most 7 days; the app asks for one that covers the longest TTL + 1 h.
MAX_SAS_TTL_MINUTES = 7 * 24 * 60 - 65

DEFAULT_TOKEN_SCOPE = "https://ai.azure.com/.default"
LEGACY_TOKEN_SCOPE = "https://cognitiveservices.azure.com/.default"
V1_API_VERSIONS = ("v1", "preview", "latest")
DEVELOPMENT_STORAGE_ACCOUNT = "devstoreaccount1"  # the account UseDevelopmentStorage=true stands for

_NAME_RULE = "3-63 lowercase letters, digits and single hyphens"
_OWNER_TAG = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


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


def _invalid(why: str) -> PydanticCustomError:
    """A field error whose message is ours, word for word (no "Value error, " prefix)."""
    return PydanticCustomError("invalid_setting", "{why}", {"why": why})


# -- field rules ------------------------------------------------------------------------------


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


def _endpoint(value: str) -> str:
    try:
        return normalize_openai_endpoint(value)
    except ValueError as error:
        raise _invalid(str(error)) from None


def _account_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise _invalid("expected https://<account>.blob.core.windows.net")
    return value.rstrip("/")


def _queue_service_url(value: str) -> str:
    """Identity-based: bearer tokens go only over TLS, so https only."""
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
        raise _invalid("expected https://<account>.queue.core.windows.net")
    return value.rstrip("/")


def _connection_string_keys(connection_string: str) -> dict[str, str]:
    parts = dict(p.split("=", 1) for p in connection_string.split(";") if "=" in p)
    return {k.strip().lower(): v.strip() for k, v in parts.items()}


def _is_development_storage(keys: Mapping[str, str]) -> bool:
    return keys.get("usedevelopmentstorage", "").lower() == "true"


def _output_connection_string(value: SecretStr) -> SecretStr:
    """Service SAS links are signed with the account key: a SAS-only connection string cannot sign."""
    keys = _connection_string_keys(value.get_secret_value())
    if not (keys.get("accountkey") or _is_development_storage(keys)):
        raise _invalid("needs AccountKey= (to sign links) or UseDevelopmentStorage=true")
    return value


def _queue_connection_string(value: SecretStr) -> SecretStr:
    keys = _connection_string_keys(value.get_secret_value())
    if not (keys.get("accountkey") or keys.get("sharedaccesssignature") or _is_development_storage(keys)):
        raise _invalid("expected a storage connection string with AccountKey= (or UseDevelopmentStorage=true)")
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


def _container_name(value: str) -> str:
    if not _valid_storage_name(value):
        raise _invalid(_NAME_RULE)
    return value


def _queue_name(value: str) -> str:
    if not _valid_storage_name(value):
        raise _invalid(_NAME_RULE)
    if len(value) > 63 - len("-poison"):
        raise _invalid("at most 56 characters: the host adds -poison for the poison queue")
    return value


def _table_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{2,62}", value):
        raise _invalid("3-63 letters and digits, starting with a letter")
    return value


def _table_service_url(value: str | None) -> str | None:
    """Identity-based: bearer tokens go only over TLS, so https only. None: derived (or not needed)."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
        raise _invalid("expected https://<account>.table.core.windows.net")
    return value.rstrip("/")


def _is_account_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("https", "http") and bool(parts.netloc)


def table_url_for(account_url: str) -> str | None:
    """`https://<account>.table.<suffix>` for a standard `https://<account>.blob.<suffix>` account URL."""
    parts = urlsplit(account_url)
    host = parts.hostname or ""
    name, dot, rest = host.partition(".")
    if parts.scheme != "https" or not dot or not rest.startswith("blob.") or parts.path.strip("/"):
        return None
    return f"https://{name}.table.{rest.removeprefix('blob.')}"


def _api_version(value: str) -> str:
    if value not in V1_API_VERSIONS:
        raise _invalid(
            "the v1 API takes only v1, preview or latest; dated versions belong to the old /openai/deployments API"
        )
    return value


def _token_scope(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc or not parts.path.endswith("/.default") or parts.query:
        raise _invalid(f"an https URL ending in /.default, e.g. {DEFAULT_TOKEN_SCOPE} (or {LEGACY_TOKEN_SCOPE})")
    return value


def _hosts(value: Any) -> tuple[str, ...]:
    """`a.example.com, B.example.com` -> ("a.example.com", "b.example.com"); empty means callbacks off."""
    items = value.split(",") if isinstance(value, str) else list(value)
    hosts = tuple(str(item).strip().lower() for item in items if str(item).strip())
    for host in hosts:
        # Host names (IDN and a trailing dot allowed: callbacks.normalize_host compares them normalized)
        # or IP literals (IPv6 has colons); never a scheme, port, path, userinfo or query.
        if not is_ip_literal(host) and any(c in host for c in "/:@?#[]*\\ \t"):
            raise _invalid("comma-separated host names, without scheme, port or path")
    return hosts


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _signing_secret(value: SecretStr) -> SecretStr:
    """Standard Webhooks: `whsec_` and the base64 of 24 to 64 random bytes."""
    text = value.get_secret_value()
    try:
        key = base64.b64decode(text.removeprefix("whsec_"), validate=True) if text.startswith("whsec_") else b""
    except (binascii.Error, ValueError):
        key = b""
    if not 24 <= len(key) <= 64:
        raise _invalid("a Standard Webhooks secret: whsec_ followed by the base64 of 24 to 64 random bytes")
    return value


def _owner_tag(value: str) -> str:
    if not _OWNER_TAG.match(value):
        raise _invalid("1-64 letters, digits, '_', '.' or '-'")
    return value


def _run_events(value: Any) -> Any:
    if value not in ("stream", "poll"):
        raise _invalid("stream or poll")
    return value


def _platform_flag(value: Any) -> bool:
    """App Service writes "true"/"True" when Easy Auth is on; anything else is off."""
    return str(value).strip().lower() == "true"


def _in(low: int, high: int) -> Any:
    return Field(ge=low, le=high)


class Settings(BaseSettings):
    """Every setting of the app, by the environment variable it comes from (the alias)."""

    model_config = SettingsConfigDict(
        case_sensitive=True, env_ignore_empty=True, extra="ignore", frozen=True, validate_default=False
    )

    openai_base_url: Annotated[str, BeforeValidator(_endpoint)] = Field(validation_alias="AZURE_OPENAI_ENDPOINT")
    deployment: str = Field(validation_alias="AZURE_OPENAI_DEPLOYMENT")
    api_version: Annotated[str | None, BeforeValidator(_api_version)] = Field(
        None, validation_alias="AZURE_OPENAI_API_VERSION"
    )
    api_key: SecretStr | None = Field(None, validation_alias="AZURE_OPENAI_API_KEY")
    token_scope: Annotated[str, BeforeValidator(_token_scope)] = Field(
        DEFAULT_TOKEN_SCOPE, validation_alias="AZURE_OPENAI_TOKEN_SCOPE"
    )
    """Microsoft Entra ID scope of the Azure OpenAI tokens. The default, https://ai.azure.com/.default,
    is the one the current v1 docs use and the one Foundry project endpoints require; the legacy
    https://cognitiveservices.azure.com/.default is still accepted by every Azure OpenAI resource."""
    storage_account_url: Annotated[str | None, BeforeValidator(_account_url)] = Field(
        None, validation_alias="OUTPUT_STORAGE_ACCOUNT_URL"
    )
    storage_connection_string: SecretStr | None = Field(None, validation_alias="OUTPUT_STORAGE_CONNECTION_STRING")
    output_container: Annotated[str, BeforeValidator(_container_name)] = Field(
        "code-interpreter-outputs", validation_alias="OUTPUT_CONTAINER"
    )
    input_container: Annotated[str, BeforeValidator(_container_name)] = Field(
        "code-interpreter-inputs", validation_alias="INPUT_CONTAINER"
    )
    sas_ttl_max_minutes: Annotated[int, _in(1, MAX_SAS_TTL_MINUTES)] = Field(
        1440, validation_alias="SAS_TTL_MAX_MINUTES"
    )
    sas_ttl_minutes: Annotated[int, _in(1, MAX_SAS_TTL_MINUTES)] = Field(
        None, validation_alias="SAS_TTL_MINUTES", validate_default=True
    )
    """Default 60, or SAS_TTL_MAX_MINUTES when that is shorter."""
    max_files_per_run: Annotated[int, _in(1, 1000)] = Field(20, validation_alias="MAX_FILES_PER_RUN")
    max_file_bytes: Annotated[int, _in(1, 4 * 1024 * 1024 * MIB)] = Field(512 * MIB, validation_alias="MAX_FILE_BYTES")
    run_wait_seconds: Annotated[int, _in(1, HTTP_ANSWER_LIMIT_SECONDS - 20)] = Field(
        180, validation_alias="RUN_WAIT_SECONDS"
    )
    copy_concurrency: Annotated[int, _in(1, 64)] = Field(4, validation_alias="COPY_CONCURRENCY")
    copy_memory_mb: Annotated[int, _in(16, 16384)] = Field(512, validation_alias="COPY_MEMORY_MB")
    """Worker-wide budget of copy bytes in flight, in MiB."""
    run_events: Annotated[Literal["stream", "poll"], BeforeValidator(_run_events)] = Field(
        "stream", validation_alias="RUN_EVENTS"
    )
    """`poll` switches to `responses.retrieve` (Azure lists background + streaming as a known issue)."""
    run_events_idle_seconds: Annotated[int, _in(1, 600)] = Field(30, validation_alias="RUN_EVENTS_IDLE_SECONDS")
    """A silent event stream is trusted this long, then polled."""
    runs_table: Annotated[str, BeforeValidator(_table_name)] = Field(
        "codeinterpreterruns", validation_alias="RUNS_TABLE"
    )
    """The runs table (run records, the catalog, tombstones) in the output storage account."""
    table_service_url: Annotated[str | None, BeforeValidator(_table_service_url)] = Field(
        None, validation_alias="RUNS_TABLE_SERVICE_URL", validate_default=True
    )
    """With OUTPUT_STORAGE_ACCOUNT_URL: the account's table endpoint (derived for standard account URLs)."""
    run_retention_days: Annotated[int, _in(0, 3650)] = Field(30, validation_alias="RUN_RETENTION_DAYS")
    """Runs older than this are deleted by the retention timer; 0 keeps them for ever."""
    container_lifetime_minutes: Annotated[int, _in(1, 1440)] = Field(60, validation_alias="CONTAINER_LIFETIME_MINUTES")
    """How long a run's Code Interpreter container can hold its files: transient faults are retried this long."""
    runs_queue: Annotated[str, BeforeValidator(_queue_name)] = Field(
        "code-interpreter-runs", validation_alias="RUNS_QUEUE"
    )
    queue_service_url: Annotated[str | None, BeforeValidator(_queue_service_url)] = Field(
        None, validation_alias="RUNS_QUEUE_STORAGE__queueServiceUri"
    )
    """Identity-based queue connection (Azure); the host reads the same variable."""
    queue_connection_string: SecretStr | None = Field(None, validation_alias="RUNS_QUEUE_STORAGE")
    """Connection-string queue connection (locally `UseDevelopmentStorage=true`)."""
    max_input_files: Annotated[int, _in(1, 50)] = Field(10, validation_alias="MAX_INPUT_FILES")
    max_input_bytes: Annotated[int, _in(1, 8 * 1024 * MIB)] = Field(512 * MIB, validation_alias="MAX_INPUT_BYTES")
    callback_allowed_hosts: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_hosts)] = Field(
        (), validation_alias="CALLBACK_ALLOWED_HOSTS"
    )
    """Hosts a run's callback_url may name; empty: callbacks are off."""
    callback_signing_secret: SecretStr | None = Field(None, validation_alias="CALLBACK_SIGNING_SECRET")
    webhook_secret: SecretStr | None = Field(None, validation_alias="AZURE_OPENAI_WEBHOOK_SECRET")
    """Unset: POST /api/openai-webhook answers 404 webhook_not_configured."""
    owner_tag: Annotated[str, BeforeValidator(_owner_tag)] = Field(
        None, validation_alias="OWNER_TAG", validate_default=True
    )
    """This deployment's mark on its runs; derived from the output storage account and container."""
    easy_auth: Annotated[bool, BeforeValidator(_platform_flag)] = Field(False, validation_alias="WEBSITE_AUTH_ENABLED")

    @field_validator("storage_connection_string", mode="after")
    @classmethod
    def _signs(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else _output_connection_string(value)

    @field_validator("queue_connection_string", mode="after")
    @classmethod
    def _queue_connects(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else _queue_connection_string(value)

    @field_validator("callback_signing_secret", mode="after")
    @classmethod
    def _standard_webhooks(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else _signing_secret(value)

    @field_validator("sas_ttl_minutes", mode="before")
    @classmethod
    def _default_ttl(cls, value: Any, info: ValidationInfo) -> Any:
        return min(60, info.data.get("sas_ttl_max_minutes", 1440)) if value is None else value

    @field_validator("sas_ttl_minutes", mode="after")
    @classmethod
    def _ttl_within_max(cls, value: int, info: ValidationInfo) -> int:
        if value > info.data.get("sas_ttl_max_minutes", MAX_SAS_TTL_MINUTES):
            raise _invalid("must not exceed SAS_TTL_MAX_MINUTES")
        return value

    @field_validator("table_service_url", mode="before")
    @classmethod
    def _derive_table_url(cls, value: Any, info: ValidationInfo) -> Any:
        """Unset with OUTPUT_STORAGE_ACCOUNT_URL: derived from it (presence rules check it can be)."""
        account = info.data.get("storage_account_url")
        if value is None and account is not None:
            return table_url_for(account)
        return value

    @field_validator("owner_tag", mode="before")
    @classmethod
    def _derive_owner_tag(cls, value: Any, info: ValidationInfo) -> Any:
        """Unset: `cif-` and 16 hex of sha256("<account url or account name>/<output container>"); two
        deployments sharing one Azure OpenAI resource differ by their output storage, and a deployment
        keeps its tag across restarts and scale-out."""
        if value is not None:
            return value
        connection = info.data.get("storage_connection_string")
        account = info.data.get("storage_account_url") or (
            _account_name(connection.get_secret_value()) if connection is not None else ""
        )
        container = info.data.get("output_container", "")
        return "cif-" + hashlib.sha256(f"{account}/{container}".encode()).hexdigest()[:16]

    def __repr__(self) -> str:  # never print a key or a connection string
        return f"Settings(openai_base_url={self.openai_base_url!r}, deployment={self.deployment!r}, ...)"

    __str__ = __repr__

    @property
    def uses_identity_for_storage(self) -> bool:
        return self.storage_account_url is not None

    @property
    def uses_identity_for_queue(self) -> bool:
        return self.queue_service_url is not None

    @property
    def callbacks_enabled(self) -> bool:
        return bool(self.callback_allowed_hosts)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The process environment only: no .env file, no secrets directory (App Service has neither)."""
        return (_Environment(settings_cls),)


def _account_name(connection_string: str) -> str:
    keys = _connection_string_keys(connection_string)
    if _is_development_storage(keys):
        return DEVELOPMENT_STORAGE_ACCOUNT
    return keys.get("accountname") or keys.get("blobendpoint", "")


class _Environment(EnvSettingsSource):
    """The environment (or a given mapping, for checks and tests), values stripped, blanks unset."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name: value.strip() for name, value in self._environ.items() if value.strip()}


SETTING_NAMES: tuple[str, ...] = tuple(str(field.validation_alias) for field in Settings.model_fields.values())
"""Every variable the app reads (WEBSITE_AUTH_ENABLED is the platform's; the rest are the operator's)."""
PLATFORM_SETTING_NAMES: tuple[str, ...] = ("WEBSITE_AUTH_ENABLED",)


def _presence_problems(env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """Which settings must come together, or not at all: on the raw environment, so that a field
    that failed its own rule still counts as given."""
    given = {name for name, value in env.items() if value.strip()}
    missing: list[str] = []
    invalid: dict[str, str] = {}
    for url, connection in (
        ("OUTPUT_STORAGE_ACCOUNT_URL", "OUTPUT_STORAGE_CONNECTION_STRING"),
        ("RUNS_QUEUE_STORAGE__queueServiceUri", "RUNS_QUEUE_STORAGE"),
    ):
        if url in given and connection in given:
            invalid[connection] = f"set only one of it and {url}"
        elif url not in given and connection not in given:
            missing.append(f"{url} or {connection}" if url.startswith("OUTPUT") else f"{connection} or {url}")
    account = env.get("OUTPUT_STORAGE_ACCOUNT_URL", "").strip()
    if "RUNS_TABLE_SERVICE_URL" in given and "OUTPUT_STORAGE_ACCOUNT_URL" not in given:
        invalid["RUNS_TABLE_SERVICE_URL"] = (
            "set it only with OUTPUT_STORAGE_ACCOUNT_URL (a connection string names its own)"
        )
    elif _is_account_url(account) and "RUNS_TABLE_SERVICE_URL" not in given and table_url_for(account) is None:
        missing.append("RUNS_TABLE_SERVICE_URL (OUTPUT_STORAGE_ACCOUNT_URL is not a *.blob.<suffix> URL)")
    hosts = env.get("CALLBACK_ALLOWED_HOSTS", "")
    if any(h.strip() for h in hosts.split(",")) and "CALLBACK_SIGNING_SECRET" not in given:
        missing.append("CALLBACK_SIGNING_SECRET")
    return missing, invalid


def _field_problems(error: ValidationError) -> tuple[list[str], dict[str, str]]:
    """pydantic's errors as names and our words; never the input value (it may be a secret)."""
    missing: list[str] = []
    invalid: dict[str, str] = {}
    for detail in error.errors(include_url=False, include_input=False):
        name = str(detail["loc"][0]) if detail["loc"] else "settings"
        kind = detail["type"]
        if kind == "missing":
            missing.append(name)
        elif kind == "invalid_setting":
            invalid.setdefault(name, str((detail.get("ctx") or {}).get("why", detail["msg"])))
        elif kind in ("int_parsing", "int_from_float", "int_type"):
            invalid.setdefault(name, "not an integer")
        elif kind in ("greater_than_equal", "less_than_equal"):
            low, high = _range_of(name)
            invalid.setdefault(name, f"must be between {low} and {high}")
        else:
            invalid.setdefault(name, detail["msg"])
    return missing, invalid


def _range_of(alias: str) -> tuple[int, int]:
    for field in Settings.model_fields.values():
        if field.validation_alias == alias:
            low = next(m.ge for m in field.metadata if isinstance(m, Ge))
            high = next(m.le for m in field.metadata if isinstance(m, Le))
            return int(low), int(high)  # type: ignore[call-overload]
    raise KeyError(alias)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate every setting; raise SettingsError naming all the bad ones at once."""
    environ = os.environ if env is None else env
    missing, invalid = _presence_problems(environ)
    try:
        # mypy sees pydantic's field-only __init__ (dataclass_transform); pydantic-settings adds _build_sources.
        settings = Settings(_build_sources=((_Environment(Settings, environ),), {}))  # type: ignore[call-arg]
    except ValidationError as error:
        field_missing, field_invalid = _field_problems(error)
        raise SettingsError(field_missing + missing, {**field_invalid, **invalid}) from None
    if missing or invalid:
        raise SettingsError(missing, invalid)
    return settings


# Read by azure-identity when it builds the credential, so they are part of a configuration too.
IDENTITY_SETTING_NAMES = ("AZURE_CLIENT_ID", "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT")


def settings_fingerprint(env: Mapping[str, str] | None = None) -> tuple[str | None, ...]:
    """The raw values the clients are built from: a new fingerprint means a new configuration."""
    env = os.environ if env is None else env
    return tuple(env.get(name) for name in SETTING_NAMES + IDENTITY_SETTING_NAMES)
