"""Settings: every rule, message and default, read from a mapping like the process environment."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from pydantic import SecretStr

from code_interpreter_files import http_api
from code_interpreter_files.setting_rules import normalize_openai_endpoint
from code_interpreter_files.settings import (
    HTTP_ANSWER_LIMIT_SECONDS,
    MAX_SAS_TTL_MINUTES,
    SETTING_NAMES,
    Settings,
    SettingsError,
    load_settings,
    settings_fingerprint,
)
from tests.appclient import AppClient

BASE = {
    "AZURE_OPENAI_ENDPOINT": "https://example.openai.azure.com",
    "AZURE_OPENAI_DEPLOYMENT": "gpt-4.1",
    "OUTPUT_STORAGE_ACCOUNT_URL": "https://account.blob.core.windows.net",
    "RUNS_QUEUE_STORAGE__queueServiceUri": "https://account.queue.core.windows.net",
}
KEYED = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5c2VjcmV0;EndpointSuffix=core.windows.net"
WHSEC = "whsec_" + base64.b64encode(b"k" * 32).decode()


def problems(env: dict[str, str]) -> SettingsError:
    with pytest.raises(SettingsError) as raised:
        load_settings(env)
    return raised.value


def without(*names: str) -> dict[str, str]:
    return {k: v for k, v in BASE.items() if k not in names}


def test_defaults() -> None:
    s = load_settings(BASE)
    assert s.openai_base_url == "https://example.openai.azure.com/openai/v1/"
    assert s.deployment == "gpt-4.1"
    assert s.api_version is None and s.api_key is None
    assert s.token_scope == "https://ai.azure.com/.default"
    assert s.storage_account_url == "https://account.blob.core.windows.net"
    assert s.storage_connection_string is None and s.uses_identity_for_storage
    assert (s.output_container, s.input_container) == ("code-interpreter-outputs", "code-interpreter-inputs")
    assert (s.sas_ttl_minutes, s.sas_ttl_max_minutes) == (60, 1440)
    assert (s.max_files_per_run, s.max_file_bytes) == (20, 536870912)
    assert (s.run_wait_seconds, s.copy_concurrency, s.copy_memory_mb) == (180, 4, 512)
    assert (s.run_events, s.run_events_idle_seconds) == ("stream", 30)
    assert s.runs_queue == "code-interpreter-runs"
    assert s.queue_service_url == "https://account.queue.core.windows.net" and s.queue_connection_string is None
    assert (s.max_input_files, s.max_input_bytes) == (10, 536870912)
    assert s.callback_allowed_hosts == () and s.callback_signing_secret is None and s.webhook_secret is None
    assert s.easy_auth is False


def test_every_name_the_app_reads_is_listed() -> None:
    assert set(SETTING_NAMES) == {
        "AZURE_OPENAI_ENDPOINT",
        "AZURE_OPENAI_DEPLOYMENT",
        "AZURE_OPENAI_API_VERSION",
        "AZURE_OPENAI_API_KEY",
        "AZURE_OPENAI_TOKEN_SCOPE",
        "OUTPUT_STORAGE_ACCOUNT_URL",
        "OUTPUT_STORAGE_CONNECTION_STRING",
        "OUTPUT_CONTAINER",
        "INPUT_CONTAINER",
        "SAS_TTL_MINUTES",
        "SAS_TTL_MAX_MINUTES",
        "MAX_FILES_PER_RUN",
        "MAX_FILE_BYTES",
        "RUN_WAIT_SECONDS",
        "COPY_CONCURRENCY",
        "COPY_MEMORY_MB",
        "RUN_EVENTS",
        "RUN_EVENTS_IDLE_SECONDS",
        "RUNS_QUEUE",
        "RUNS_TABLE",
        "RUNS_TABLE_SERVICE_URL",
        "RUN_RETENTION_DAYS",
        "CONTAINER_LIFETIME_MINUTES",
        "RUNS_QUEUE_STORAGE__queueServiceUri",
        "RUNS_QUEUE_STORAGE",
        "MAX_INPUT_FILES",
        "MAX_INPUT_BYTES",
        "CALLBACK_ALLOWED_HOSTS",
        "CALLBACK_SIGNING_SECRET",
        "AZURE_OPENAI_WEBHOOK_SECRET",
        "OWNER_TAG",
        "WEBSITE_AUTH_ENABLED",
    }


def test_values_are_stripped_and_blank_means_unset() -> None:
    s = load_settings({**BASE, "AZURE_OPENAI_DEPLOYMENT": "  gpt-4.1 \n", "MAX_FILES_PER_RUN": "  ", "RUN_EVENTS": ""})
    assert (s.deployment, s.max_files_per_run, s.run_events) == ("gpt-4.1", 20, "stream")
    assert problems({**BASE, "AZURE_OPENAI_DEPLOYMENT": "   "}).missing == ["AZURE_OPENAI_DEPLOYMENT"]


def test_every_problem_is_named_at_once() -> None:
    error = problems(
        {"OUTPUT_CONTAINER": "Bad_Name", "RUN_WAIT_SECONDS": "soon", "AZURE_OPENAI_API_VERSION": "2024-10-21"}
    )
    assert error.missing == [
        "AZURE_OPENAI_ENDPOINT",
        "AZURE_OPENAI_DEPLOYMENT",
        "OUTPUT_STORAGE_ACCOUNT_URL or OUTPUT_STORAGE_CONNECTION_STRING",
        "RUNS_QUEUE_STORAGE or RUNS_QUEUE_STORAGE__queueServiceUri",
    ]
    assert error.invalid == {
        "AZURE_OPENAI_API_VERSION": (
            "the v1 API takes only v1, preview or latest; dated versions belong to the old /openai/deployments API"
        ),
        "OUTPUT_CONTAINER": "3-63 lowercase letters, digits and single hyphens",
        "RUN_WAIT_SECONDS": "not an integer",
    }
    assert str(error) == (
        "App settings missing: AZURE_OPENAI_ENDPOINT, AZURE_OPENAI_DEPLOYMENT, "
        "OUTPUT_STORAGE_ACCOUNT_URL or OUTPUT_STORAGE_CONNECTION_STRING, "
        "RUNS_QUEUE_STORAGE or RUNS_QUEUE_STORAGE__queueServiceUri / invalid: "
        "AZURE_OPENAI_API_VERSION (the v1 API takes only v1, preview or latest; dated versions belong to the old "
        "/openai/deployments API); OUTPUT_CONTAINER (3-63 lowercase letters, digits and single hyphens); "
        "RUN_WAIT_SECONDS (not an integer)"
    )


@pytest.mark.parametrize(
    ("name", "low", "high", "default"),
    [
        ("SAS_TTL_MAX_MINUTES", 1, MAX_SAS_TTL_MINUTES, 1440),
        ("MAX_FILES_PER_RUN", 1, 1000, 20),
        ("MAX_FILE_BYTES", 1, 4398046511104, 536870912),
        ("RUN_WAIT_SECONDS", 1, HTTP_ANSWER_LIMIT_SECONDS - 20, 180),
        ("COPY_CONCURRENCY", 1, 64, 4),
        ("COPY_MEMORY_MB", 16, 16384, 512),
        ("RUN_EVENTS_IDLE_SECONDS", 1, 600, 30),
        ("MAX_INPUT_FILES", 1, 50, 10),
        ("MAX_INPUT_BYTES", 1, 8589934592, 536870912),
    ],
)
def test_integer_ranges(name: str, low: int, high: int, default: int) -> None:
    field = next(f for f, info in Settings.model_fields.items() if info.validation_alias == name)
    assert getattr(load_settings(BASE), field) == default
    assert getattr(load_settings({**BASE, name: str(low)}), field) == low
    assert getattr(load_settings({**BASE, name: str(high)}), field) == high
    for bad in (low - 1, high + 1):
        assert problems({**BASE, name: str(bad)}).invalid == {name: f"must be between {low} and {high}"}
    for bad_text in ("ten", "1.5", "0x10"):
        assert problems({**BASE, name: bad_text}).invalid == {name: "not an integer"}


def test_sas_ttl_rules() -> None:
    assert MAX_SAS_TTL_MINUTES == 10015
    assert load_settings({**BASE, "SAS_TTL_MAX_MINUTES": "30"}).sas_ttl_minutes == 30  # default follows a short max
    assert load_settings({**BASE, "SAS_TTL_MINUTES": "90"}).sas_ttl_minutes == 90
    assert problems({**BASE, "SAS_TTL_MINUTES": "90", "SAS_TTL_MAX_MINUTES": "60"}).invalid == {
        "SAS_TTL_MINUTES": "must not exceed SAS_TTL_MAX_MINUTES"
    }
    assert problems({**BASE, "SAS_TTL_MINUTES": str(MAX_SAS_TTL_MINUTES + 1)}).invalid == {
        "SAS_TTL_MINUTES": f"must be between 1 and {MAX_SAS_TTL_MINUTES}"
    }


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://r.openai.azure.com",
        "https://r.openai.azure.com/",
        "https://r.openai.azure.com/openai/v1/",
        "https://r.openai.azure.com/openai",
    ],
)
def test_the_endpoint_becomes_the_v1_base_url(endpoint: str) -> None:
    assert load_settings({**BASE, "AZURE_OPENAI_ENDPOINT": endpoint}).openai_base_url == (
        "https://r.openai.azure.com/openai/v1/"
    )
    assert normalize_openai_endpoint(endpoint) == "https://r.openai.azure.com/openai/v1/"


@pytest.mark.parametrize("endpoint", ["ftp://x", "r.openai.azure.com", "https://r.openai.azure.com/?x=1"])
def test_a_bad_endpoint_is_named(endpoint: str) -> None:
    assert problems({**BASE, "AZURE_OPENAI_ENDPOINT": endpoint}).invalid == {
        "AZURE_OPENAI_ENDPOINT": "expected https://<resource>.openai.azure.com"
    }


@pytest.mark.parametrize("version", ["v1", "preview", "latest"])
def test_the_v1_api_versions(version: str) -> None:
    assert load_settings({**BASE, "AZURE_OPENAI_API_VERSION": version}).api_version == version


@pytest.mark.parametrize("version", ["2025-04-01-preview", "2024-10-21", "V1", "2025-03-01"])
def test_dated_api_versions_are_refused_with_the_reason(version: str) -> None:
    why = problems({**BASE, "AZURE_OPENAI_API_VERSION": version}).invalid["AZURE_OPENAI_API_VERSION"]
    assert (
        why == "the v1 API takes only v1, preview or latest; dated versions belong to the old /openai/deployments API"
    )


@pytest.mark.parametrize("scope", ["https://ai.azure.com/.default", "https://cognitiveservices.azure.com/.default"])
def test_both_token_scopes_are_accepted(scope: str) -> None:
    assert load_settings({**BASE, "AZURE_OPENAI_TOKEN_SCOPE": scope}).token_scope == scope


@pytest.mark.parametrize(
    "scope", ["https://ai.azure.com", "http://ai.azure.com/.default", "ai.azure.com/.default", "https://x/.default?a=1"]
)
def test_a_token_scope_is_an_https_url_ending_in_default(scope: str) -> None:
    assert problems({**BASE, "AZURE_OPENAI_TOKEN_SCOPE": scope}).invalid == {
        "AZURE_OPENAI_TOKEN_SCOPE": (
            "an https URL ending in /.default, e.g. https://ai.azure.com/.default "
            "(or https://cognitiveservices.azure.com/.default)"
        )
    }


def test_output_storage_is_one_of_two() -> None:
    assert (
        "OUTPUT_STORAGE_ACCOUNT_URL or OUTPUT_STORAGE_CONNECTION_STRING"
        in problems(without("OUTPUT_STORAGE_ACCOUNT_URL")).missing
    )
    both = problems({**BASE, "OUTPUT_STORAGE_CONNECTION_STRING": KEYED})
    assert both.invalid == {"OUTPUT_STORAGE_CONNECTION_STRING": "set only one of it and OUTPUT_STORAGE_ACCOUNT_URL"}
    assert problems({**BASE, "OUTPUT_STORAGE_ACCOUNT_URL": "ftp://x"}).invalid == {
        "OUTPUT_STORAGE_ACCOUNT_URL": "expected https://<account>.blob.core.windows.net"
    }
    # An invalid URL still counts as given: no "missing" besides the "invalid".
    assert problems({**BASE, "OUTPUT_STORAGE_ACCOUNT_URL": "ftp://x"}).missing == []


def test_the_runs_table_endpoint_is_derived_from_a_standard_account_url_or_given() -> None:
    derived = load_settings({**BASE, "OUTPUT_STORAGE_ACCOUNT_URL": "https://acct.blob.core.windows.net"})
    assert derived.table_service_url == "https://acct.table.core.windows.net"
    sovereign = load_settings({**BASE, "OUTPUT_STORAGE_ACCOUNT_URL": "https://acct.blob.core.chinacloudapi.cn/"})
    assert sovereign.table_service_url == "https://acct.table.core.chinacloudapi.cn"
    path_style = {**BASE, "OUTPUT_STORAGE_ACCOUNT_URL": "https://127.0.0.1:10000/devstoreaccount1"}
    assert problems(path_style).missing == [
        "RUNS_TABLE_SERVICE_URL (OUTPUT_STORAGE_ACCOUNT_URL is not a *.blob.<suffix> URL)"
    ]
    given = load_settings({**path_style, "RUNS_TABLE_SERVICE_URL": "https://127.0.0.1:10002/devstoreaccount1/"})
    assert given.table_service_url == "https://127.0.0.1:10002/devstoreaccount1"
    assert problems({**path_style, "RUNS_TABLE_SERVICE_URL": "http://127.0.0.1:10002/x"}).invalid == {
        "RUNS_TABLE_SERVICE_URL": "expected https://<account>.table.core.windows.net"
    }
    keyed = {**without("OUTPUT_STORAGE_ACCOUNT_URL"), "OUTPUT_STORAGE_CONNECTION_STRING": KEYED}
    assert load_settings(keyed).table_service_url is None  # the connection string names its table endpoint
    assert problems({**keyed, "RUNS_TABLE_SERVICE_URL": "https://a.table.core.windows.net"}).invalid == {
        "RUNS_TABLE_SERVICE_URL": "set it only with OUTPUT_STORAGE_ACCOUNT_URL (a connection string names its own)"
    }
    assert problems({**BASE, "RUNS_TABLE": "runs-table"}).invalid == {
        "RUNS_TABLE": "3-63 letters and digits, starting with a letter"
    }


def test_a_connection_string_must_be_able_to_sign() -> None:
    env = without("OUTPUT_STORAGE_ACCOUNT_URL")
    sas_only = "BlobEndpoint=https://a.blob.core.windows.net;SharedAccessSignature=sv=2024&sig=abc"
    error = problems({**env, "OUTPUT_STORAGE_CONNECTION_STRING": sas_only})
    assert error.invalid == {
        "OUTPUT_STORAGE_CONNECTION_STRING": "needs AccountKey= (to sign links) or UseDevelopmentStorage=true"
    }
    assert "sig=abc" not in str(error)
    assert load_settings({**env, "OUTPUT_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"})
    s = load_settings({**env, "OUTPUT_STORAGE_CONNECTION_STRING": KEYED})
    assert isinstance(s.storage_connection_string, SecretStr)
    assert s.storage_connection_string.get_secret_value() == KEYED
    assert s.storage_account_url is None and not s.uses_identity_for_storage


def test_run_queue_connection_is_one_of_two() -> None:
    assert problems(without("RUNS_QUEUE_STORAGE__queueServiceUri")).missing == [
        "RUNS_QUEUE_STORAGE or RUNS_QUEUE_STORAGE__queueServiceUri"
    ]
    local = load_settings(
        {**without("RUNS_QUEUE_STORAGE__queueServiceUri"), "RUNS_QUEUE_STORAGE": "UseDevelopmentStorage=true"}
    )
    assert local.queue_service_url is None and local.queue_connection_string is not None
    assert local.queue_connection_string.get_secret_value() == "UseDevelopmentStorage=true"
    assert problems({**BASE, "RUNS_QUEUE_STORAGE": KEYED}).invalid == {
        "RUNS_QUEUE_STORAGE": "set only one of it and RUNS_QUEUE_STORAGE__queueServiceUri"
    }
    assert problems(
        {**BASE, "RUNS_QUEUE_STORAGE__queueServiceUri": "http://account.queue.core.windows.net"}
    ).invalid == {"RUNS_QUEUE_STORAGE__queueServiceUri": "expected https://<account>.queue.core.windows.net"}
    garbage = "not a connection string"
    error = problems({**without("RUNS_QUEUE_STORAGE__queueServiceUri"), "RUNS_QUEUE_STORAGE": garbage})
    assert error.invalid == {
        "RUNS_QUEUE_STORAGE": "expected a storage connection string with AccountKey= (or UseDevelopmentStorage=true)"
    }


@pytest.mark.parametrize("name", ["OUTPUT_CONTAINER", "INPUT_CONTAINER", "RUNS_QUEUE"])
@pytest.mark.parametrize("value", ["Bad_Name", "ab", "a" * 64, "-abc", "abc-", "a--b", "résumé"])
def test_container_and_queue_names(name: str, value: str) -> None:
    assert problems({**BASE, name: value}).invalid == {name: "3-63 lowercase letters, digits and single hyphens"}


def test_a_queue_name_leaves_room_for_its_poison_queue() -> None:
    assert load_settings({**BASE, "RUNS_QUEUE": "q" * 56}).runs_queue == "q" * 56
    assert problems({**BASE, "RUNS_QUEUE": "q" * 57}).invalid == {
        "RUNS_QUEUE": "at most 56 characters: the host adds -poison for the poison queue"
    }


def test_run_events() -> None:
    assert load_settings({**BASE, "RUN_EVENTS": "poll"}).run_events == "poll"
    assert problems({**BASE, "RUN_EVENTS": "Stream"}).invalid == {"RUN_EVENTS": "stream or poll"}


def test_callback_hosts_are_lower_cased_names_and_need_the_signing_secret() -> None:
    s = load_settings(
        {**BASE, "CALLBACK_ALLOWED_HOSTS": " Hooks.Example.com, 127.0.0.1,,", "CALLBACK_SIGNING_SECRET": WHSEC}
    )
    assert s.callback_allowed_hosts == ("hooks.example.com", "127.0.0.1") and s.callbacks_enabled
    assert s.callback_signing_secret is not None and s.callback_signing_secret.get_secret_value() == WHSEC
    assert problems({**BASE, "CALLBACK_ALLOWED_HOSTS": "hooks.example.com"}).missing == ["CALLBACK_SIGNING_SECRET"]
    for bad in ("https://hooks.example.com", "hooks.example.com:443", "hooks.example.com/x", "a b", "*.example.com"):
        error = problems({**BASE, "CALLBACK_ALLOWED_HOSTS": bad, "CALLBACK_SIGNING_SECRET": WHSEC})
        assert error.invalid == {"CALLBACK_ALLOWED_HOSTS": "comma-separated host names, without scheme, port or path"}
    assert load_settings({**BASE, "CALLBACK_ALLOWED_HOSTS": " , "}).callback_allowed_hosts == ()
    odd = load_settings(
        {**BASE, "CALLBACK_ALLOWED_HOSTS": "::1,bücher.example,Upper.Example.", "CALLBACK_SIGNING_SECRET": WHSEC}
    )
    assert odd.callback_allowed_hosts == ("::1", "bücher.example", "upper.example.")  # compared normalised


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_",
        "whsec_not-base64!",
        "whsec_" + base64.b64encode(b"k" * 16).decode(),  # too short a key
        "whsec_" + base64.b64encode(b"k" * 65).decode(),
        base64.b64encode(b"k" * 32).decode(),  # no prefix
    ],
)
def test_the_signing_secret_is_a_standard_webhooks_secret(secret: str) -> None:
    error = problems({**BASE, "CALLBACK_SIGNING_SECRET": secret})
    assert error.invalid == {
        "CALLBACK_SIGNING_SECRET": "a Standard Webhooks secret: whsec_ followed by the base64 of 24 to 64 random bytes"
    }
    assert secret.removeprefix("whsec_") not in str(error) or not secret.removeprefix("whsec_")


def test_the_webhook_secret_is_optional_and_secret() -> None:
    s = load_settings({**BASE, "AZURE_OPENAI_WEBHOOK_SECRET": "whsec_abc"})
    assert isinstance(s.webhook_secret, SecretStr) and s.webhook_secret.get_secret_value() == "whsec_abc"


def test_the_owner_tag_is_derived_from_the_output_storage() -> None:
    def expected(account: str, container: str) -> str:
        return "cif-" + hashlib.sha256(f"{account}/{container}".encode()).hexdigest()[:16]

    assert load_settings(BASE).owner_tag == expected(
        "https://account.blob.core.windows.net", "code-interpreter-outputs"
    )
    slash = load_settings({**BASE, "OUTPUT_STORAGE_ACCOUNT_URL": "https://account.blob.core.windows.net/"})
    assert slash.owner_tag == load_settings(BASE).owner_tag
    assert load_settings({**BASE, "OUTPUT_CONTAINER": "other"}).owner_tag == expected(
        "https://account.blob.core.windows.net", "other"
    )
    keyed = {**without("OUTPUT_STORAGE_ACCOUNT_URL"), "OUTPUT_STORAGE_CONNECTION_STRING": KEYED}
    assert load_settings(keyed).owner_tag == expected("acct", "code-interpreter-outputs")
    dev = {**without("OUTPUT_STORAGE_ACCOUNT_URL"), "OUTPUT_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"}
    assert load_settings(dev).owner_tag == expected("devstoreaccount1", "code-interpreter-outputs")


def test_an_explicit_owner_tag() -> None:
    assert load_settings({**BASE, "OWNER_TAG": "team-a_1.0"}).owner_tag == "team-a_1.0"
    for bad in ("a b", "x" * 65, "tag/1", "ü"):
        assert problems({**BASE, "OWNER_TAG": bad}).invalid == {"OWNER_TAG": "1-64 letters, digits, '_', '.' or '-'"}


@pytest.mark.parametrize(
    ("value", "on"), [("true", True), ("True", True), ("false", False), ("False", False), ("1", False)]
)
def test_easy_auth_follows_the_platform_flag(value: str, on: bool) -> None:
    assert load_settings({**BASE, "WEBSITE_AUTH_ENABLED": value}).easy_auth is on


def test_no_secret_in_repr_str_or_errors() -> None:
    secrets = {
        "AZURE_OPENAI_API_KEY": "api-key-value-123",
        "AZURE_OPENAI_WEBHOOK_SECRET": "whsec_webhooksecretvalue",
        "CALLBACK_SIGNING_SECRET": WHSEC,
        "CALLBACK_ALLOWED_HOSTS": "hooks.example.com",
    }
    s = load_settings({**BASE, **secrets})
    shown = repr(s) + str(s) + str(s.model_dump()) + repr(s.api_key)
    for name in ("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_WEBHOOK_SECRET", "CALLBACK_SIGNING_SECRET"):
        assert secrets[name] not in shown
    assert s.api_key is not None and s.api_key.get_secret_value() == "api-key-value-123"
    connection = KEYED.replace("a2V5c2VjcmV0", "c2VjcmV0a2V5")
    error = problems(
        {**BASE, **secrets, "OUTPUT_STORAGE_CONNECTION_STRING": connection, "RUNS_QUEUE_STORAGE": connection}
    )
    assert "c2VjcmV0a2V5" not in str(error) and "c2VjcmV0a2V5" not in repr(error.invalid)


def test_the_fingerprint_follows_every_setting_and_the_identity_variables() -> None:
    base = settings_fingerprint(BASE)
    assert settings_fingerprint({**BASE, "RUNS_QUEUE": "other"}) != base
    assert settings_fingerprint({**BASE, "WEBSITE_AUTH_ENABLED": "true"}) != base
    assert settings_fingerprint({**BASE, "IDENTITY_ENDPOINT": "http://127.0.0.1:1/msi"}) != base
    assert settings_fingerprint({**BASE, "UNRELATED": "x"}) == base


async def test_health_answers_names_only(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "health-secret-value")
    monkeypatch.setenv("AZURE_OPENAI_API_VERSION", "2025-04-01-preview")
    reply = await http_api.health()
    assert reply.status_code == 503
    body = json.loads(reply.get_body())
    assert body == {
        "status": "not_configured",
        "configured": False,
        "missing": [
            "AZURE_OPENAI_ENDPOINT",
            "AZURE_OPENAI_DEPLOYMENT",
            "OUTPUT_STORAGE_ACCOUNT_URL or OUTPUT_STORAGE_CONNECTION_STRING",
            "RUNS_QUEUE_STORAGE or RUNS_QUEUE_STORAGE__queueServiceUri",
        ],
        "invalid": ["AZURE_OPENAI_API_VERSION"],
    }
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AZURE_OPENAI_API_VERSION")
    ok = json.loads((await http_api.health()).get_body())
    assert ok["status"] == "ok" and ok["offline_stand_in"] is False  # an Azure endpoint is never asked


# -- through the app and the rig (issue 9, point 8) ----------------------------------------------


@pytest.mark.parametrize(
    ("scope", "audience"),
    [
        (None, "https://ai.azure.com"),
        ("https://cognitiveservices.azure.com/.default", "https://cognitiveservices.azure.com"),
    ],
)
async def test_the_token_scope_is_the_audience_azure_openai_sees(
    app: AppClient, configure, rig, scope: str | None, audience: str
) -> None:
    configure(model_auth="identity", **({"AZURE_OPENAI_TOKEN_SCOPE": scope} if scope else {}))
    rig.emulator.reset()
    reply = await app.post_run(prompt="hello")
    assert reply.status == 200, reply.body
    assert rig.emulator.stats()["jwt_audiences"] == [audience]


async def test_a_v1_api_version_is_sent_and_a_dated_one_refused_at_start(app: AppClient, configure, rig) -> None:
    configure(AZURE_OPENAI_API_VERSION="preview")
    rig.emulator.reset()
    assert (await app.post_run(prompt="hello")).status == 200
    assert rig.emulator.stats()["api_versions"] == ["preview"]

    configure(AZURE_OPENAI_API_VERSION="2025-04-01-preview")
    rig.emulator.reset()
    reply = await app.post_run(prompt="hello")
    assert reply.status == 503 and reply.error_code() == "not_configured"
    assert "AZURE_OPENAI_API_VERSION (the v1 API takes only v1, preview or latest" in reply.json["error"]["message"]
    assert rig.emulator.stats()["requests"]["POST /responses"] == 0
