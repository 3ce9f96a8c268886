"""App settings: the table (tests/deploy/contract.py), local.settings.json.example, Bicep and the script agree."""

from __future__ import annotations

import json
import re

import pytest

from tests.deploy.bicep_text import API, MAIN, bicep_object_keys, bicep_params, strip_bicep
from tests.deploy.contract import (
    NEVER_IN_AZURE,
    OPTIONAL_IN_AZURE,
    REQUIRED_PLATFORM_IN_AZURE,
    SET_IN_AZURE,
    SETTINGS,
    is_platform,
)
from tests.deploy.deploy_script import ROOT, SCRIPT, dry_run_commands, script_settings


def bicep_settings() -> dict[str, dict[str, str]]:
    main, api = MAIN.read_text(), API.read_text()
    parts = {
        "always": bicep_object_keys(main, "appSettings"),
        "optional": {**bicep_object_keys(main, "optionalAppSettings"), **bicep_object_keys(api, "secretAppSettings")},
        "platform": bicep_object_keys(api, "platformAppSettings"),
    }
    names = [n for part in parts.values() for n in part]
    assert len(names) == len(set(names)), "a setting is defined twice"
    return parts


def check_azure_settings(where: str, always: set[str], optional: set[str]) -> None:
    missing = SET_IN_AZURE - always
    assert not missing, f"{where} does not set settings the app reads: {sorted(missing)}"
    assert optional == OPTIONAL_IN_AZURE, f"{where}: optional settings differ: {sorted(optional ^ OPTIONAL_IN_AZURE)}"
    unwanted = (always | optional) & NEVER_IN_AZURE
    assert not unwanted, f"{where} sets settings meant to stay unset in Azure: {sorted(unwanted)}"
    unknown = {n for n in always if n not in SETTINGS and not is_platform(n)}
    assert not unknown, f"{where} sets settings the app does not read: {sorted(unknown)}"
    platform_missing = REQUIRED_PLATFORM_IN_AZURE - always
    assert not platform_missing, f"{where} lacks platform settings: {sorted(platform_missing)}"


def test_local_settings_example_lists_every_setting():
    values = json.loads((ROOT / "local.settings.json.example").read_text())
    assert values.get("IsEncrypted") is False
    values = values["Values"]
    # Set by the platform, or the Azure form of a local connection string (UseDevelopmentStorage=true names
    # its own table endpoint; RUNS_TABLE_SERVICE_URL is refused without OUTPUT_STORAGE_ACCOUNT_URL): not in it.
    not_local = {"WEBSITE_AUTH_ENABLED", "RUNS_QUEUE_STORAGE__queueServiceUri", "RUNS_TABLE_SERVICE_URL"}
    missing = set(SETTINGS) - not_local - set(values)
    assert not missing, f"local.settings.json.example lacks: {sorted(missing)}"
    unknown = {n for n in values if (n not in SETTINGS or n in not_local) and not is_platform(n)}
    assert not unknown, f"local.settings.json.example has settings the app does not read: {sorted(unknown)}"
    assert values["RUNS_QUEUE_STORAGE"] == values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    for name, setting in SETTINGS.items():
        if setting.default is not None:
            assert values[name] == setting.default, name
        if setting.secret and name in values:
            assert values[name] in ("", "UseDevelopmentStorage=true"), f"{name}: no real secret in the example"


def test_bicep_sets_every_setting():
    parts = bicep_settings()
    check_azure_settings("Bicep", set(parts["always"]) | set(parts["platform"]), set(parts["optional"]))
    platform = parts["platform"]
    assert platform["AzureWebJobsStorage__credential"] == "'managedidentity'"
    assert platform["RUNS_QUEUE_STORAGE__credential"] == "'managedidentity'"
    assert platform["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "'ClientId=${identityClientId};Authorization=AAD'"
    for path in (MAIN, API):
        for secret in ("callbackSigningSecret", "openAiWebhookSecret"):
            pattern = rf"@secure\(\)\n(@description\([^\n]*\)\n)?param {secret} string = ''"
            assert re.search(pattern, path.read_text()), f"{path.name}: {secret} must be @secure, empty by default"
    api = API.read_text()
    # Secrets never pass through the AVM site module's plain appSettingsKeyValuePairs parameter.
    assert "appSettingsKeyValuePairs:" not in strip_bicep(api)
    assert "properties: union(appSettings, platformAppSettings, givenSecretAppSettings)" in api


def test_script_sets_every_setting(tmp_path):
    plain = script_settings(dry_run_commands(tmp_path))
    # The optional ones appear only when given: test_dry_run_options and the secret-file test.
    check_azure_settings("scripts/deploy.sh", set(plain), OPTIONAL_IN_AZURE)


def test_the_app_takes_the_script_settings_and_derives_the_table_endpoint(tmp_path):
    """What scripts/deploy.sh sets is a whole configuration the app accepts, and its runs table endpoint
    follows from OUTPUT_STORAGE_ACCOUNT_URL: that is why no deploy path sets RUNS_TABLE_SERVICE_URL."""
    from code_interpreter_files.settings import load_settings

    settings = load_settings(script_settings(dry_run_commands(tmp_path)))
    assert settings.table_service_url == "https://stciftestout.table.core.windows.net"
    assert settings.runs_table == SETTINGS["RUNS_TABLE"].default
    assert settings.run_retention_days == int(str(SETTINGS["RUN_RETENTION_DAYS"].default))
    assert settings.container_lifetime_minutes == int(str(SETTINGS["CONTAINER_LIFETIME_MINUTES"].default))


@pytest.mark.parametrize("suffix", ["core.windows.net", "core.chinacloudapi.cn", "core.usgovcloudapi.net"])
def test_the_app_derives_the_table_endpoint_from_the_bicep_account_url(suffix):
    """main.bicep's OUTPUT_STORAGE_ACCOUNT_URL, in each cloud's storage suffix (environment().suffixes.storage)."""
    from code_interpreter_files.setting_rules import table_url_for

    main = MAIN.read_text()
    assert (
        "var outputStorageAccountUrl = 'https://${outputStorageAccountName}.blob.${environment().suffixes.storage}'"
        in main
    )
    assert bicep_object_keys(main, "appSettings")["OUTPUT_STORAGE_ACCOUNT_URL"] == "outputStorageAccountUrl"
    assert table_url_for(f"https://stoutabc123.blob.{suffix}") == f"https://stoutabc123.table.{suffix}"


def test_bicep_defaults_and_ranges_match_the_app():
    main = MAIN.read_text()
    params = bicep_params(main)
    own = {**bicep_object_keys(main, "appSettings"), **bicep_object_keys(main, "optionalAppSettings")}
    ranged = 0
    for name, setting in SETTINGS.items():
        if name not in own:
            continue
        param = re.fullmatch(r"string\((\w+)\)", own[name]) or re.fullmatch(r"(\w+)", own[name])
        if not param or param.group(1) not in params:
            assert setting.default is None, f"{name}: a computed value, yet the table has a default"
            continue
        p = params[param.group(1)]
        if setting.default is not None:
            assert p["default"] == setting.default, f"{name}: Bicep default {p['default']} is not {setting.default}"
        if setting.low is not None:
            assert (p.get("minValue"), p.get("maxValue")) == (setting.low, setting.high), f"{name}: Bicep range"
            ranged += 1
        if setting.choices:
            allowed = set(p.get("allowed", ())) - ({""} if setting.azure == "optional" else set())
            assert allowed == set(setting.choices), f"{name}: Bicep @allowed {allowed}"
    assert ranged == sum(1 for s in SETTINGS.values() if s.low is not None)


def test_bicep_outputs_agree_with_the_settings():
    main = MAIN.read_text()
    own = bicep_object_keys(main, "appSettings")
    outputs = dict(re.findall(r"^output (\w+) \w+ = (.+)$", main, re.M))
    for name, expr in outputs.items():
        if name in SETTINGS:
            assert own[name] == expr, f"output {name} = {expr} but the app setting is {own[name]}"
    wanted = {"OUTPUT_STORAGE_ACCOUNT_URL", "OUTPUT_CONTAINER", "INPUT_CONTAINER", "RUNS_TABLE", "RUNS_QUEUE"}
    assert wanted <= set(outputs)
    assert {"RUNS_QUEUE_STORAGE__queueServiceUri", "AZURE_OPENAI_ENDPOINT"} <= set(outputs)
    assert outputs["HOST_STORAGE_ACCOUNT_NAME"] == "storage.outputs.name"
    assert outputs["OUTPUT_STORAGE_ACCOUNT_NAME"] == "outputStorage.outputs.name"
    assert outputs["LOG_ANALYTICS_WORKSPACE_NAME"] == "logAnalytics.outputs.name"


def test_memory_budget_fits_the_instance():
    """docs/deploy.md: the worker's copy budget is at most a quarter of the instance memory."""
    params = bicep_params(MAIN.read_text())
    assert int(str(params["copyMemoryMB"]["default"])) * 4 <= int(str(params["instanceMemoryMB"]["default"]))
    assert params["instanceMemoryMB"]["default"] == "2048" and params["httpPerInstanceConcurrency"]["default"] == "16"
    assert re.search(r"triggers: \{\s+http: \{\s+perInstanceConcurrency: httpPerInstanceConcurrency", API.read_text())
    assert "httpPerInstanceConcurrency: httpPerInstanceConcurrency" in MAIN.read_text()
    text = SCRIPT.read_text()
    assert "INSTANCE_MEMORY_MB=2048" in text and "HTTP_PER_INSTANCE_CONCURRENCY=16" in text
    assert "COPY_MEMORY_MB=512" in text


def test_local_settings_example_is_a_valid_configuration():
    """Its empty values mean "not set" to the app (only the endpoint placeholder needs a real value)."""
    values = json.loads((ROOT / "local.settings.json.example").read_text())["Values"]
    values["AZURE_OPENAI_ENDPOINT"] = "https://aoai.openai.azure.com"
    from code_interpreter_files.settings import load_settings

    assert load_settings(values)
    with pytest.raises(Exception, match="CALLBACK_SIGNING_SECRET"):
        load_settings({**values, "CALLBACK_ALLOWED_HOSTS": "hooks.example.com"})
