"""App settings: read from the environment, validated once per configuration, in one place.

Parsing is pydantic-settings' (types, ranges, defaults, secrets as SecretStr); what is kept by hand is
only what it cannot say: our messages (callers and the README quote them) and the rules about which
settings must be present together. Those are checked on the raw environment, next to the field
errors, because pydantic skips model-level validators once any field failed: one SettingsError must
name every problem at once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from annotated_types import Ge, Le
from pydantic import BeforeValidator, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from . import setting_rules as rules

MIB = 1024 * 1024

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


class Settings(BaseSettings):
    """Every setting of the app, by the environment variable it comes from (the alias)."""

    model_config = SettingsConfigDict(
        case_sensitive=True, env_ignore_empty=True, extra="ignore", frozen=True, validate_default=False
    )

    openai_base_url: Annotated[str, BeforeValidator(rules.openai_endpoint)] = Field(
        validation_alias="AZURE_OPENAI_ENDPOINT"
    )
    deployment: str = Field(validation_alias="AZURE_OPENAI_DEPLOYMENT")
    api_version: Annotated[str | None, BeforeValidator(rules.api_version)] = Field(
        None, validation_alias="AZURE_OPENAI_API_VERSION"
    )
    api_key: SecretStr | None = Field(None, validation_alias="AZURE_OPENAI_API_KEY")
    token_scope: Annotated[str, BeforeValidator(rules.token_scope)] = Field(
        rules.DEFAULT_TOKEN_SCOPE, validation_alias="AZURE_OPENAI_TOKEN_SCOPE"
    )
    """Microsoft Entra ID scope of the Azure OpenAI tokens. The default, https://ai.azure.com/.default,
    is the one the current v1 docs use and the one Foundry project endpoints require; the legacy
    https://cognitiveservices.azure.com/.default is still accepted by every Azure OpenAI resource."""
    storage_account_url: Annotated[str | None, BeforeValidator(rules.account_url)] = Field(
        None, validation_alias="OUTPUT_STORAGE_ACCOUNT_URL"
    )
    storage_connection_string: SecretStr | None = Field(None, validation_alias="OUTPUT_STORAGE_CONNECTION_STRING")
    output_container: Annotated[str, BeforeValidator(rules.container_name)] = Field(
        "code-interpreter-outputs", validation_alias="OUTPUT_CONTAINER"
    )
    input_container: Annotated[str, BeforeValidator(rules.container_name)] = Field(
        "code-interpreter-inputs", validation_alias="INPUT_CONTAINER"
    )
    sas_ttl_max_minutes: Annotated[int, rules.in_range(1, MAX_SAS_TTL_MINUTES)] = Field(
        1440, validation_alias="SAS_TTL_MAX_MINUTES"
    )
    sas_ttl_minutes: Annotated[int, rules.in_range(1, MAX_SAS_TTL_MINUTES)] = Field(
        None, validation_alias="SAS_TTL_MINUTES", validate_default=True
    )
    """Default 60, or SAS_TTL_MAX_MINUTES when that is shorter."""
    max_files_per_run: Annotated[int, rules.in_range(1, 1000)] = Field(20, validation_alias="MAX_FILES_PER_RUN")
    max_file_bytes: Annotated[int, rules.in_range(1, 4 * 1024 * 1024 * MIB)] = Field(
        512 * MIB, validation_alias="MAX_FILE_BYTES"
    )
    run_wait_seconds: Annotated[int, rules.in_range(1, HTTP_ANSWER_LIMIT_SECONDS - 20)] = Field(
        180, validation_alias="RUN_WAIT_SECONDS"
    )
    copy_concurrency: Annotated[int, rules.in_range(1, 64)] = Field(4, validation_alias="COPY_CONCURRENCY")
    copy_memory_mb: Annotated[int, rules.in_range(16, 16384)] = Field(512, validation_alias="COPY_MEMORY_MB")
    """Worker-wide budget of copy bytes in flight, in MiB."""
    run_events: Annotated[Literal["stream", "poll"], BeforeValidator(rules.run_events)] = Field(
        "stream", validation_alias="RUN_EVENTS"
    )
    """`poll` switches to `responses.retrieve` (Azure lists background + streaming as a known issue)."""
    run_events_idle_seconds: Annotated[int, rules.in_range(1, 600)] = Field(
        30, validation_alias="RUN_EVENTS_IDLE_SECONDS"
    )
    """A silent event stream is trusted this long, then polled."""
    runs_table: Annotated[str, BeforeValidator(rules.table_name)] = Field(
        "codeinterpreterruns", validation_alias="RUNS_TABLE"
    )
    """The runs table (run records, the catalog, tombstones) in the output storage account."""
    table_service_url: Annotated[str | None, BeforeValidator(rules.table_service_url)] = Field(
        None, validation_alias="RUNS_TABLE_SERVICE_URL", validate_default=True
    )
    """With OUTPUT_STORAGE_ACCOUNT_URL: the account's table endpoint (derived for standard account URLs)."""
    run_retention_days: Annotated[int, rules.in_range(0, 3650)] = Field(30, validation_alias="RUN_RETENTION_DAYS")
    """Runs older than this are deleted by the retention timer; 0 keeps them for ever."""
    container_lifetime_minutes: Annotated[int, rules.in_range(1, 1440)] = Field(
        60, validation_alias="CONTAINER_LIFETIME_MINUTES"
    )
    """How long a run's Code Interpreter container can hold its files: transient faults are retried this long."""
    runs_queue: Annotated[str, BeforeValidator(rules.queue_name)] = Field(
        "code-interpreter-runs", validation_alias="RUNS_QUEUE"
    )
    queue_service_url: Annotated[str | None, BeforeValidator(rules.queue_service_url)] = Field(
        None, validation_alias="RUNS_QUEUE_STORAGE__queueServiceUri"
    )
    """Identity-based queue connection (Azure); the host reads the same variable."""
    queue_connection_string: SecretStr | None = Field(None, validation_alias="RUNS_QUEUE_STORAGE")
    """Connection-string queue connection (locally `UseDevelopmentStorage=true`)."""
    max_input_files: Annotated[int, rules.in_range(1, 50)] = Field(10, validation_alias="MAX_INPUT_FILES")
    max_input_bytes: Annotated[int, rules.in_range(1, 8 * 1024 * MIB)] = Field(
        512 * MIB, validation_alias="MAX_INPUT_BYTES"
    )
    callback_allowed_hosts: Annotated[tuple[str, ...], NoDecode, BeforeValidator(rules.hosts)] = Field(
        (), validation_alias="CALLBACK_ALLOWED_HOSTS"
    )
    """Hosts a run's callback_url may name; empty: callbacks are off."""
    callback_signing_secret: SecretStr | None = Field(None, validation_alias="CALLBACK_SIGNING_SECRET")
    webhook_secret: SecretStr | None = Field(None, validation_alias="AZURE_OPENAI_WEBHOOK_SECRET")
    """Unset: POST /api/openai-webhook answers 404 webhook_not_configured."""
    owner_tag: Annotated[str, BeforeValidator(rules.owner_tag)] = Field(
        None, validation_alias="OWNER_TAG", validate_default=True
    )
    """This deployment's mark on its runs; derived from the output storage account and container."""
    easy_auth: Annotated[bool, BeforeValidator(rules.platform_flag)] = Field(
        False, validation_alias="WEBSITE_AUTH_ENABLED"
    )

    @field_validator("storage_connection_string", mode="after")
    @classmethod
    def _signs(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else rules.output_connection_string(value)

    @field_validator("queue_connection_string", mode="after")
    @classmethod
    def _queue_connects(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else rules.queue_connection_string(value)

    @field_validator("callback_signing_secret", mode="after")
    @classmethod
    def _standard_webhooks(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else rules.signing_secret(value)

    @field_validator("sas_ttl_minutes", mode="before")
    @classmethod
    def _default_ttl(cls, value: Any, info: ValidationInfo) -> Any:
        return min(60, info.data.get("sas_ttl_max_minutes", 1440)) if value is None else value

    @field_validator("sas_ttl_minutes", mode="after")
    @classmethod
    def _ttl_within_max(cls, value: int, info: ValidationInfo) -> int:
        if value > info.data.get("sas_ttl_max_minutes", MAX_SAS_TTL_MINUTES):
            raise rules.invalid("must not exceed SAS_TTL_MAX_MINUTES")
        return value

    @field_validator("table_service_url", mode="before")
    @classmethod
    def _derive_table_url(cls, value: Any, info: ValidationInfo) -> Any:
        """Unset with OUTPUT_STORAGE_ACCOUNT_URL: derived from it (presence rules check it can be)."""
        account = info.data.get("storage_account_url")
        if value is None and account is not None:
            return rules.table_url_for(account)
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
            rules.account_name(connection.get_secret_value()) if connection is not None else ""
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
    elif (
        rules.is_account_url(account) and "RUNS_TABLE_SERVICE_URL" not in given and rules.table_url_for(account) is None
    ):
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
