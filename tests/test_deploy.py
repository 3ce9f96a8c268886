"""Offline checks of the deployment: scripts/deploy.sh, infra/ (Bicep), azure.yaml and its hook, .funcignore,
openapi.yaml + tests/openapi_contract.py and docs/deploy.md. Nothing here talks to Azure.
(tests/test_az_commands.py checks every az command line with azure-cli's own parser.)"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pathspec
import pytest
import yaml

from tests.deploy_script import (
    APP,
    BASE_ARGS,
    FAKE_AZ,
    OPENAI_ID,
    OUTPUT_STORAGE,
    RG,
    ROOT,
    SCRIPT,
    SECRETS_ENV,
    STORAGE,
    dry_run_commands,
    fake_tools,
    real_run_argv,
    run_script,
)

INFRA = ROOT / "infra"
HOOK = ROOT / "scripts" / "preprovision.sh"

try:
    from tests import openapi_contract
except ImportError:  # tests/ run as a plain folder
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import openapi_contract  # type: ignore[no-redef]

assert_matches_openapi = openapi_contract.assert_matches_openapi


# ---------------------------------------------------------------------------------------
# The settings table (the session contract): names, the defaults the deploy files spell out,
# the app's valid ranges, and where each is set. Deploy files are checked against it; the app
# is checked against it too (names from settings.SETTING_NAMES, ranges by loading settings).
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    default: str | None = None  # what Bicep and the script set by default (None: computed, or unset)
    low: int | None = None
    high: int | None = None
    choices: tuple[str, ...] = ()
    azure: str = "always"  # always | optional (set only when given) | never (local only) | platform
    secret: bool = False


SETTINGS: dict[str, Setting] = {
    "AZURE_OPENAI_ENDPOINT": Setting(),
    "AZURE_OPENAI_DEPLOYMENT": Setting(),
    "AZURE_OPENAI_API_VERSION": Setting(choices=("v1", "preview", "latest"), azure="optional"),
    "AZURE_OPENAI_API_KEY": Setting(azure="never", secret=True),
    "AZURE_OPENAI_TOKEN_SCOPE": Setting("https://ai.azure.com/.default"),
    "OUTPUT_STORAGE_ACCOUNT_URL": Setting(),
    "OUTPUT_STORAGE_CONNECTION_STRING": Setting(azure="never", secret=True),
    "OUTPUT_CONTAINER": Setting("code-interpreter-outputs"),
    "INPUT_CONTAINER": Setting("code-interpreter-inputs"),
    "SAS_TTL_MINUTES": Setting("60", 1, 10015),
    "SAS_TTL_MAX_MINUTES": Setting("1440", 1, 10015),
    "MAX_FILES_PER_RUN": Setting("20", 1, 1000),
    "MAX_FILE_BYTES": Setting("536870912", 1, 4398046511104),
    "RUN_WAIT_SECONDS": Setting("180", 1, 210),
    "COPY_CONCURRENCY": Setting("4", 1, 64),
    "COPY_MEMORY_MB": Setting("512", 16, 16384),
    "RUN_EVENTS": Setting("stream", choices=("stream", "poll")),
    "RUN_EVENTS_IDLE_SECONDS": Setting("30", 1, 600),
    "RUNS_QUEUE": Setting("code-interpreter-runs"),
    "RUNS_QUEUE_STORAGE__queueServiceUri": Setting(),
    "RUNS_QUEUE_STORAGE": Setting(azure="never", secret=True),
    "MAX_INPUT_FILES": Setting("10", 1, 50),
    "MAX_INPUT_BYTES": Setting("536870912", 1, 8589934592),
    "CALLBACK_ALLOWED_HOSTS": Setting(azure="optional"),
    "CALLBACK_SIGNING_SECRET": Setting(azure="optional", secret=True),
    "AZURE_OPENAI_WEBHOOK_SECRET": Setting(azure="optional", secret=True),
    "OWNER_TAG": Setting(azure="optional"),
    "WEBSITE_AUTH_ENABLED": Setting(azure="platform"),  # set by App Service authentication, never by us
}
SET_IN_AZURE = {n for n, s in SETTINGS.items() if s.azure == "always"}
OPTIONAL_IN_AZURE = {n for n, s in SETTINGS.items() if s.azure == "optional"}
NEVER_IN_AZURE = {n for n, s in SETTINGS.items() if s.azure in ("never", "platform")}

# Platform settings that are not the app's own but may (or must) be set.
PLATFORM_EXACT = {
    "AZURE_CLIENT_ID",  # read by azure-identity: picks the user-assigned managed identity
    "RUNS_QUEUE_STORAGE__credential",  # the queue trigger's identity-based connection (host)
    "RUNS_QUEUE_STORAGE__clientId",
}
PLATFORM_PREFIXES = (
    "AzureWebJobs",  # Functions host storage (AzureWebJobsStorage__* in Azure, Azurite locally)
    "APPLICATIONINSIGHTS_",  # telemetry connection + Entra ID auth of the host
    "FUNCTIONS_",  # worker runtime (local only; Flex Consumption sets it via functionAppConfig)
    "DEPLOYMENT_STORAGE",  # Flex Consumption deployment storage
)
# Platform settings the identity-based Azure deployment must set.
REQUIRED_PLATFORM_IN_AZURE = {
    "AZURE_CLIENT_ID",
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "RUNS_QUEUE_STORAGE__credential",
    "RUNS_QUEUE_STORAGE__clientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
}

SUB = "<subscription-id>"
RG_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}"
STORAGE_ID = f"{RG_ID}/providers/Microsoft.Storage/storageAccounts/{STORAGE}"
OUTPUT_STORAGE_ID = f"{RG_ID}/providers/Microsoft.Storage/storageAccounts/{OUTPUT_STORAGE}"
APPI_ID = f"{RG_ID}/providers/Microsoft.Insights/components/appi-{APP}"
IDENTITY_ID = f"{RG_ID}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-{APP}"


def is_platform(name: str) -> bool:
    return name in PLATFORM_EXACT or name.startswith(PLATFORM_PREFIXES)


def app_setting_names() -> tuple[str, ...]:
    from code_interpreter_files.settings import SETTING_NAMES

    assert SETTING_NAMES and all(isinstance(n, str) for n in SETTING_NAMES)
    return tuple(SETTING_NAMES)


def test_the_table_and_the_app_read_the_same_settings():
    app = set(app_setting_names())
    assert app == set(SETTINGS), (
        f"the app reads settings the table lacks: {sorted(app - set(SETTINGS))}; "
        f"the table has settings the app does not read: {sorted(set(SETTINGS) - app)}"
    )
    assert not any(is_platform(n) for n in SETTINGS), "an app setting looks like a platform one"


# The smallest valid configuration (local style), to load the app's settings around it.
BASE_ENV = {
    "AZURE_OPENAI_ENDPOINT": "https://aoai.openai.azure.com",
    "AZURE_OPENAI_DEPLOYMENT": "dep",
    "OUTPUT_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true",
    "RUNS_QUEUE_STORAGE": "UseDevelopmentStorage=true",
}


def load_app_settings(**env: str) -> object:
    from code_interpreter_files.settings import load_settings

    return load_settings({**BASE_ENV, **env})


def refused(name: str, value: str, **env: str) -> bool:
    try:
        load_app_settings(**{name: value, **env})
    except Exception as error:  # the app's settings error: names the setting, never the value
        assert name in str(error), f"{name}={value}: the error does not name it: {error}"
        return True
    return False


RANGED = sorted(n for n, s in SETTINGS.items() if s.low is not None)


@pytest.mark.parametrize("name", RANGED)
def test_the_app_accepts_exactly_the_table_range(name):
    """Loads the app's own settings at and past each bound: the table (and so Bicep) match the app."""
    setting = SETTINGS[name]
    related = {"SAS_TTL_MAX_MINUTES": str(SETTINGS["SAS_TTL_MAX_MINUTES"].high)} if name == "SAS_TTL_MINUTES" else {}
    assert setting.low is not None and setting.high is not None
    assert not refused(name, str(setting.low), **related)
    assert not refused(name, str(setting.high), **related)
    assert refused(name, str(setting.low - 1), **related)
    assert refused(name, str(setting.high + 1), **related)


def test_the_app_accepts_the_table_defaults():
    defaults = {n: s.default for n, s in SETTINGS.items() if s.default is not None}
    assert load_app_settings(**defaults)
    for name in ("AZURE_OPENAI_API_VERSION", "RUN_EVENTS"):
        for choice in SETTINGS[name].choices:
            assert not refused(name, choice)
        assert refused(name, "2025-04-01-preview")


# ---------------------------------------------------------------------------------------
# scripts/deploy.sh
# ---------------------------------------------------------------------------------------


def opt(cmd: list[str], flag: str) -> str:
    assert flag in cmd, f"{flag} missing in: {shlex.join(cmd)}"
    return cmd[cmd.index(flag) + 1]


def find(cmds: list[list[str]], *prefix: str) -> list[tuple[int, list[str]]]:
    return [(i, c) for i, c in enumerate(cmds) if c[: len(prefix)] == list(prefix)]


def one(cmds: list[list[str]], *prefix: str) -> tuple[int, list[str]]:
    found = find(cmds, *prefix)
    assert len(found) == 1, f"expected one `{' '.join(prefix)}`, got {len(found)}"
    return found[0]


def script_settings(cmds: list[list[str]]) -> dict[str, str]:
    found = find(cmds, "az", "functionapp", "config", "appsettings", "set")
    assert found
    cmd = found[0][1]
    start = cmd.index("--settings") + 1
    end = next((i for i in range(start, len(cmd)) if cmd[i].startswith("--")), len(cmd))
    pairs = [item.split("=", 1) for item in cmd[start:end]]
    assert all(len(p) == 2 for p in pairs), pairs
    return dict(pairs)


def create_calls(calls: list[str]) -> list[str]:
    verbs = (" create ", " set ", " update ", " delete ", " publish ")
    return [c for c in calls if any(v in f"{c} " for v in verbs)]


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian package: shellcheck)")
    for script in (SCRIPT, HOOK):
        proc = subprocess.run(["shellcheck", "--severity=style", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_script_is_strict_and_executable():
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(SCRIPT, os.X_OK), "scripts/deploy.sh must be executable"
    assert os.access(HOOK, os.X_OK), "scripts/preprovision.sh must be executable"


ORDER = [
    ("az", "account", "show"),
    ("az", "functionapp", "list-flexconsumption-locations"),
    ("az", "cognitiveservices", "account", "show"),
    ("az", "storage", "account", "check-name"),
    ("az", "functionapp", "show"),
    # nothing above creates anything; everything below may
    ("az", "group", "create"),
    ("az", "identity", "create"),
    ("az", "storage", "account", "create"),
    ("az", "storage", "container-rm", "create"),
    ("az", "storage", "account", "management-policy", "create"),
    ("az", "monitor", "log-analytics", "workspace", "create"),
    ("az", "resource", "create"),
    ("az", "role", "assignment", "create"),
    ("az", "functionapp", "create"),
    ("az", "functionapp", "scale", "config", "set"),
    ("az", "functionapp", "config", "appsettings", "set"),
    ("az", "functionapp", "config", "appsettings", "delete"),
    ("func", "azure", "functionapp", "publish"),
]


def test_dry_run_command_sequence(tmp_path):
    cmds = dry_run_commands(tmp_path, "--output-retention-days", "3", "--openai-deployment", "my-dep")
    positions = []
    for prefix in ORDER:
        found = find(cmds, *prefix)
        assert found, f"missing step: {' '.join(prefix)}"
        positions.append(found[0][0])
    assert positions == sorted(positions), [" ".join(p) for _, p in sorted(zip(positions, ORDER, strict=True))]
    first_create = one(cmds, "az", "group", "create")[0]
    assert all(c[-2:] == ["--output", "tsv"] for c in cmds[:first_create]), "only look-ups before creating"

    _, lookup = one(cmds, "az", "cognitiveservices", "account", "show")
    assert "--ids" not in lookup
    assert (opt(lookup, "--subscription"), opt(lookup, "--resource-group"), opt(lookup, "--name")) == (
        "1111",
        "rg-ai",
        "aoai-test",
    )
    assert opt(lookup, "--query") == "properties.customSubDomainName"

    _, group = one(cmds, "az", "group", "create")
    assert opt(group, "--name") == RG and opt(group, "--location") == "eastus2"

    accounts = [c for _, c in find(cmds, "az", "storage", "account", "create")]
    assert [opt(c, "--name") for c in accounts] == [STORAGE, OUTPUT_STORAGE]
    for account in accounts:
        assert opt(account, "--allow-shared-key-access") == "false"
        assert opt(account, "--allow-blob-public-access") == "false"

    containers = {
        (opt(c, "--storage-account"), opt(c, "--name")) for _, c in find(cmds, "az", "storage", "container-rm")
    }
    assert containers == {
        (STORAGE, "app-package"),
        (OUTPUT_STORAGE, "code-interpreter-outputs"),
        (OUTPUT_STORAGE, "code-interpreter-inputs"),
    }

    _, policy_cmd = one(cmds, "az", "storage", "account", "management-policy", "create")
    assert opt(policy_cmd, "--account-name") == OUTPUT_STORAGE
    rule = json.loads(opt(policy_cmd, "--policy"))["rules"][0]
    assert rule["enabled"] is True and rule["type"] == "Lifecycle"
    assert rule["definition"]["filters"]["prefixMatch"] == ["code-interpreter-outputs/"]
    assert rule["definition"]["actions"]["baseBlob"]["delete"] == {"daysAfterModificationGreaterThan": 3}

    _, appi = one(cmds, "az", "resource", "create")
    assert opt(appi, "--resource-type") == "Microsoft.Insights/components" and "--is-full-object" in appi
    body = json.loads(opt(appi, "--properties"))
    assert body["kind"] == "web" and body["properties"]["DisableLocalAuth"] is True
    assert body["properties"]["WorkspaceResourceId"].endswith(f"/workspaces/log-{APP}")
    assert not find(cmds, "az", "extension"), "the script needs no CLI extension"

    _, create = one(cmds, "az", "functionapp", "create")
    assert opt(create, "--name") == APP and opt(create, "--resource-group") == RG
    assert opt(create, "--flexconsumption-location") == "eastus2"
    assert opt(create, "--runtime") == "python" and opt(create, "--runtime-version") == "3.11"
    assert opt(create, "--assign-identity") == IDENTITY_ID  # user-assigned, not [system]
    assert opt(create, "--storage-account") == opt(create, "--deployment-storage-name") == STORAGE
    assert opt(create, "--deployment-storage-container-name") == "app-package"
    assert opt(create, "--deployment-storage-auth-type") == "UserAssignedIdentity"
    assert opt(create, "--deployment-storage-auth-value") == IDENTITY_ID
    assert opt(create, "--instance-memory") == "2048"
    assert "--consumption-plan-location" not in create and "--plan" not in create

    _, scale = one(cmds, "az", "functionapp", "scale", "config", "set")
    assert opt(scale, "--trigger-type") == "http"
    assert opt(scale, "--trigger-settings") == "perInstanceConcurrency=16"
    assert opt(scale, "--instance-memory") == "2048"

    _, delete = one(cmds, "az", "functionapp", "config", "appsettings", "delete")
    assert opt(delete, "--setting-names") == "AzureWebJobsStorage"

    _, publish = one(cmds, "func", "azure", "functionapp", "publish")
    assert publish[4] == APP

    settings = script_settings(cmds)
    assert settings["AZURE_OPENAI_DEPLOYMENT"] == "my-dep"
    assert settings["AZURE_OPENAI_ENDPOINT"] == "https://<openai-custom-subdomain>.openai.azure.com"
    assert settings["OUTPUT_STORAGE_ACCOUNT_URL"] == f"https://{OUTPUT_STORAGE}.blob.core.windows.net"
    assert settings["RUNS_QUEUE_STORAGE__queueServiceUri"] == f"https://{STORAGE}.queue.core.windows.net"
    assert settings["AzureWebJobsStorage__accountName"] == STORAGE
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["RUNS_QUEUE_STORAGE__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == settings["AZURE_CLIENT_ID"] == "<identity-client-id>"
    assert settings["RUNS_QUEUE_STORAGE__clientId"] == "<identity-client-id>"
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "ClientId=<identity-client-id>;Authorization=AAD"
    for name, setting in SETTINGS.items():
        if setting.default is not None:
            assert settings[name] == setting.default, name
    assert not set(settings) & OPTIONAL_IN_AZURE, "optional settings are set only when given"


def test_dry_run_role_assignments(tmp_path):
    cmds = dry_run_commands(tmp_path)
    roles = []
    for _, cmd in find(cmds, "az", "role", "assignment", "create"):
        assert opt(cmd, "--assignee-object-id") == "<identity-principal-id>"
        assert opt(cmd, "--assignee-principal-type") == "ServicePrincipal"
        roles.append((opt(cmd, "--role"), opt(cmd, "--scope")))
    containers = f"{OUTPUT_STORAGE_ID}/blobServices/default/containers"
    assert sorted(roles) == sorted(
        [
            ("Storage Blob Data Owner", STORAGE_ID),
            ("Storage Queue Data Contributor", STORAGE_ID),
            ("Storage Blob Data Contributor", f"{containers}/code-interpreter-outputs"),
            ("Storage Blob Data Reader", f"{containers}/code-interpreter-inputs"),
            ("Storage Blob Delegator", OUTPUT_STORAGE_ID),
            ("Cognitive Services OpenAI User", OPENAI_ID),
            ("Monitoring Metrics Publisher", APPI_ID),
        ]
    )
    # Role assignments exist before the app starts using the identity.
    first_app = one(cmds, "az", "functionapp", "create")[0]
    assert all(i < first_app for i, _ in find(cmds, "az", "role", "assignment", "create"))


def test_dry_run_options(tmp_path):
    cmds = dry_run_commands(
        tmp_path,
        "--resource-group",
        "my-rg",
        "--storage-account",
        "mystore1",
        "--output-storage-account",
        "mystore2",
        "--skip-publish",
        "--openai-endpoint",
        "https://x.openai.azure.com",
        "--openai-api-version",
        "preview",
        "--callback-allowed-hosts",
        "Hooks.Example.com, b.example.org",
        "--owner-tag",
        "team-a",
        **SECRETS_ENV,
    )
    assert not find(cmds, "func")
    _, lookup = one(cmds, "az", "cognitiveservices", "account", "show")
    assert opt(lookup, "--query") == "id"  # the endpoint is given: only check the account exists
    assert opt(one(cmds, "az", "group", "create")[1], "--name") == "my-rg"
    assert [opt(c, "--name") for _, c in find(cmds, "az", "storage", "account", "create")] == ["mystore1", "mystore2"]
    settings = script_settings(cmds)
    assert settings["AZURE_OPENAI_ENDPOINT"] == "https://x.openai.azure.com"
    assert settings["AZURE_OPENAI_API_VERSION"] == "preview"
    assert settings["CALLBACK_ALLOWED_HOSTS"] == "hooks.example.com,b.example.org"
    assert settings["OWNER_TAG"] == "team-a"
    assert settings["OUTPUT_STORAGE_ACCOUNT_URL"] == "https://mystore2.blob.core.windows.net"
    assert settings["RUNS_QUEUE_STORAGE__queueServiceUri"] == "https://mystore1.queue.core.windows.net"
    sets = [c for _, c in find(cmds, "az", "functionapp", "config", "appsettings", "set")]
    assert len(sets) == 2 and opt(sets[1], "--settings") == "@<secret-settings-file>"
    for secret in SECRETS_ENV.values():
        assert secret not in json.dumps(cmds)


def test_secrets_reach_az_only_through_a_private_file(tmp_path):
    files_log = tmp_path / "files.log"
    proc, calls = real_run_argv(
        tmp_path,
        [*BASE_ARGS, "--skip-publish", "--callback-allowed-hosts", "hooks.example.com"],
        FAKE_FILES_LOG=str(files_log),
        **SECRETS_ENV,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(files_log.read_text()) == {
        "CALLBACK_SIGNING_SECRET": SECRETS_ENV["CALLBACK_SIGNING_SECRET"],
        "AZURE_OPENAI_WEBHOOK_SECRET": SECRETS_ENV["AZURE_OPENAI_WEBHOOK_SECRET"],
    }
    everything = proc.stdout + proc.stderr + json.dumps(calls)
    for secret in SECRETS_ENV.values():
        assert secret not in everything
    file_args = [a for c in calls for a in c if a.startswith("@")]
    assert len(file_args) == 1 and not Path(file_args[0][1:]).exists(), "the secret file is removed"


def test_inputs_from_environment(tmp_path):
    bin_dir = fake_tools(tmp_path)
    proc, _ = run_script(
        tmp_path,
        ["--dry-run"],
        bin_dir,
        AZURE_FUNCTION_APP_NAME=APP,
        AZURE_LOCATION="westus3",
        AZURE_OPENAI_RESOURCE_ID=OPENAI_ID,
        OUTPUT_RETENTION_DAYS="14",
        AZURE_OUTPUT_STORAGE_ACCOUNT="outacct",
        OWNER_TAG="from-env",
    )
    assert proc.returncode == 0, proc.stderr
    assert "--flexconsumption-location westus3" in proc.stdout
    assert '"daysAfterModificationGreaterThan":14' in proc.stdout
    assert "--account-name outacct" in proc.stdout and "OWNER_TAG=from-env" in proc.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--location", "eastus2", "--openai-resource-id", OPENAI_ID], {}, "--name is required"),
        (["--name", APP, "--openai-resource-id", OPENAI_ID], {}, "--location is required"),
        (["--name", APP, "--location", "eastus2"], {}, "--openai-resource-id is required"),
        ([*BASE_ARGS[:4], "--openai-resource-id", "/subscriptions/x/oops"], {}, "--openai-resource-id must look like"),
        ([*BASE_ARGS, "--output-retention-days", "0"], {}, "--output-retention-days"),
        ([*BASE_ARGS, "--openai-api-version", "2025-04-01-preview"], {}, "v1, preview or latest"),
        ([*BASE_ARGS, "--openai-endpoint", "x.openai.azure.com"], {}, "--openai-endpoint must look like"),
        ([*BASE_ARGS, "--callback-allowed-hosts", "https://a.example.com"], SECRETS_ENV, "host names"),
        ([*BASE_ARGS, "--callback-allowed-hosts", "a.example.com"], {}, "needs CALLBACK_SIGNING_SECRET"),
        (BASE_ARGS, {"CALLBACK_SIGNING_SECRET": "not-whsec"}, "whsec_<base64>"),
        (BASE_ARGS, {"AZURE_OPENAI_WEBHOOK_SECRET": 'a"b'}, "AZURE_OPENAI_WEBHOOK_SECRET must be"),
        ([*BASE_ARGS, "--owner-tag", "a b"], {}, "--owner-tag must be"),
        ([*BASE_ARGS, "--storage-account", "same1", "--output-storage-account", "same1"], {}, "must differ"),
        ([*BASE_ARGS, "--bogus"], {}, "unknown option: --bogus"),
        ([*BASE_ARGS, "--name"], {}, "--name needs a value"),
    ],
)
def test_invalid_inputs(tmp_path, args, env, message):
    proc, _ = run_script(tmp_path, ["--dry-run", *args], **env)
    assert proc.returncode != 0
    assert message in proc.stderr and proc.stdout == ""


def test_missing_az(tmp_path):
    proc, _ = run_script(tmp_path, BASE_ARGS)
    assert proc.returncode != 0
    assert "Azure CLI (az) is not installed" in proc.stderr
    assert proc.stdout == ""


def test_not_logged_in(tmp_path):
    proc, calls = run_script(tmp_path, BASE_ARGS, fake_tools(tmp_path, az=FAKE_AZ, func=True), FAKE_LOGGED_OUT="1")
    assert proc.returncode != 0
    assert "not logged in" in proc.stderr and "az login" in proc.stderr
    assert calls == ["az account show --output none"]


def test_missing_func(tmp_path):
    proc, calls = run_script(tmp_path, BASE_ARGS, fake_tools(tmp_path, az=FAKE_AZ))
    assert proc.returncode != 0
    assert "Azure Functions Core Tools (func) is not installed" in proc.stderr
    assert calls == ["az account show --output none"]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (BASE_ARGS, {"FAKE_NO_OPENAI": "1"}, "cannot read the Azure OpenAI account"),
        ([*BASE_ARGS, "--openai-endpoint", "https://x.openai.azure.com"], {"FAKE_NO_OPENAI": "1"}, "cannot read"),
        ([*BASE_ARGS[:2], "--location", "marsnorth", *BASE_ARGS[4:]], {}, "does not offer Flex Consumption"),
        (BASE_ARGS, {"FAKE_NAME_AVAILABLE": "false"}, "is taken"),
    ],
)
def test_a_failing_prerequisite_stops_before_anything_is_created(tmp_path, args, env, message):
    proc, calls = run_script(tmp_path, args, fake_tools(tmp_path, az=FAKE_AZ, func=True), **env)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "stopped: nothing was created." in proc.stderr
    assert calls and create_calls(calls) == [], create_calls(calls)


def test_a_failure_later_says_what_was_created(tmp_path):
    proc, calls = run_script(
        tmp_path, BASE_ARGS, fake_tools(tmp_path, az=FAKE_AZ, func=True), FAKE_FAIL="functionapp create"
    )
    assert proc.returncode != 0
    report = proc.stderr[proc.stderr.index("stopped after creating or updating:") :]
    for what in (
        f"resource group {RG}",
        f"managed identity id-{APP}",
        f"storage account {STORAGE}",
        f"storage account {OUTPUT_STORAGE}",
        "container code-interpreter-inputs",
        f"Application Insights appi-{APP}",
        f"role 'Storage Blob Delegator' on {OUTPUT_STORAGE}",
    ):
        assert f"  - {what}\n" in report, what
    assert f"function app {APP}" not in report and "app settings" not in report
    assert f"az group delete --name {RG}" in report
    assert not any(c.startswith("az functionapp config appsettings") for c in calls)


def test_real_run_matches_dry_run(tmp_path):
    """With a fake az, a real run executes exactly the commands --dry-run printed."""
    (tmp_path / "dry").mkdir()
    (tmp_path / "real").mkdir()
    dry = dry_run_commands(tmp_path / "dry")
    real = tmp_path / "real"
    proc, calls = run_script(real, BASE_ARGS, fake_tools(real, az=FAKE_AZ, func=True))
    assert proc.returncode == 0, proc.stderr
    executed = [shlex.split(c) for c in calls[1:]]  # [0] is the prerequisite login check
    # Placeholders become the fake az's answers; compare the command shapes.
    assert [c[:4] for c in executed] == [c[:4] for c in dry]
    assert "done: POST https://fake-defaultHostName/api/runs" in proc.stderr


def test_rerun_on_existing_app_updates_instead_of_creating(tmp_path):
    proc, calls = run_script(
        tmp_path,
        [*BASE_ARGS, "--skip-publish"],
        fake_tools(tmp_path, az=FAKE_AZ),
        FAKE_APP_EXISTS="1",
        FAKE_STORAGE_EXISTS="1",
    )
    assert proc.returncode == 0, proc.stderr
    assert not any(c.startswith("az functionapp create") for c in calls)
    assert not any(c.startswith("az storage account check-name") for c in calls), "its own accounts are not taken"
    update = [c for c in calls if c.startswith("az functionapp deployment config set")]
    assert len(update) == 1 and "--deployment-storage-auth-type UserAssignedIdentity" in update[0]
    assert any(c.startswith("az functionapp scale config set") for c in calls)
    assert any(c.startswith("az functionapp config appsettings set") for c in calls)


# ---------------------------------------------------------------------------------------
# azd preprovision hook
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "ok", "message"),
    [
        ({}, False, "set AZURE_OPENAI_RESOURCE_ID"),
        ({"CREATE_OPENAI": "false", "AZURE_OPENAI_RESOURCE_ID": ""}, False, "CREATE_OPENAI true"),
        ({"AZURE_OPENAI_RESOURCE_ID": OPENAI_ID}, True, OPENAI_ID),
        ({"CREATE_OPENAI": "true"}, True, "a new account"),
        ({"CREATE_OPENAI": "True"}, True, "a new account"),
        ({"CREATE_OPENAI": "yes"}, False, "CREATE_OPENAI must be true or false"),
        ({"CREATE_OPENAI": "true", "AZURE_OPENAI_RESOURCE_ID": OPENAI_ID}, False, "set only one"),
        ({"AZURE_OPENAI_RESOURCE_ID": "/subscriptions/x/oops"}, False, "must look like"),
    ],
)
def test_preprovision_hook(env, ok, message):
    proc = subprocess.run(
        ["sh", str(HOOK)], capture_output=True, text=True, env={"PATH": os.environ["PATH"], **env}, timeout=30
    )
    assert (proc.returncode == 0) is ok, proc.stderr
    assert message in (proc.stdout if ok else proc.stderr)


def test_azure_yaml_runs_the_hook():
    hooks = yaml.safe_load((ROOT / "azure.yaml").read_text())["hooks"]["preprovision"]
    assert hooks["posix"] == {"shell": "sh", "run": "scripts/preprovision.sh", "continueOnError": False}
    assert hooks["windows"] == {"shell": "pwsh", "run": "scripts/preprovision.ps1", "continueOnError": False}
    assert (ROOT / "scripts" / "preprovision.ps1").exists()


# ---------------------------------------------------------------------------------------
# App settings: the table, local.settings.json.example, Bicep and the script agree
# ---------------------------------------------------------------------------------------


def bicep_object_keys(text: str, var_name: str) -> dict[str, str]:
    """Top-level keys (and raw values) of `var <var_name> = { ... }` in a Bicep file."""
    match = re.search(rf"^var {var_name} = \{{\n", text, re.M)
    assert match, f"var {var_name} not found"
    keys: dict[str, str] = {}
    depth = 1
    for line in text[match.end() :].splitlines():
        stripped = re.sub(r"\s*//[^']*$", "", line).strip()  # drop a trailing comment, not '...//...'
        if stripped.startswith("//"):
            continue
        if depth == 1:
            key = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.*)$", stripped)
            if key:
                keys[key.group(1)] = key.group(2)
        depth += stripped.count("{") - stripped.count("}")
        if depth == 0:
            return keys
    raise AssertionError(f"var {var_name}: unbalanced braces")


MAIN = INFRA / "main.bicep"
API = INFRA / "app" / "api.bicep"


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
    # Set by the platform, or the Azure form of a local connection string: not in the example.
    not_local = {"WEBSITE_AUTH_ENABLED", "RUNS_QUEUE_STORAGE__queueServiceUri"}
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


def bicep_params(text: str) -> dict[str, dict[str, object]]:
    """Each `param` of a Bicep file with its default and @minValue/@maxValue/@allowed decorators."""
    params: dict[str, dict[str, object]] = {}
    decorators: dict[str, object] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if m := re.fullmatch(r"@(minValue|maxValue)\((\d+)\)", line):
            decorators[m.group(1)] = int(m.group(2))
        elif m := re.fullmatch(r"@allowed\(\[(.*)\]\)", line):
            decorators["allowed"] = tuple(re.findall(r"'([^']*)'", m.group(1)))
        elif m := re.match(r"param (\w+) (\w+)(?: = (.*))?$", line):
            default = m.group(3).strip("'") if m.group(3) is not None else None
            params[m.group(1)] = {"type": m.group(2), "default": default, **decorators}
            decorators = {}
        elif line and not line.startswith("@"):
            decorators = {}
    return params


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
    assert {"OUTPUT_STORAGE_ACCOUNT_URL", "OUTPUT_CONTAINER", "INPUT_CONTAINER", "RUNS_QUEUE"} <= set(outputs)
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


# ---------------------------------------------------------------------------------------
# Bicep / azd (no compiler here: structural checks)
# ---------------------------------------------------------------------------------------

BICEP_FILES = sorted(INFRA.rglob("*.bicep"))


def strip_bicep(text: str) -> str:
    text = re.sub(r"'''.*?'''", "''", text, flags=re.S)
    text = re.sub(r"'(?:[^'\\\n]|\\.)*'", "''", text)
    return re.sub(r"//[^\n]*", "", text)


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_bicep_brackets_balance(path):
    text = strip_bicep(path.read_text())
    for open_, close in ("{}", "[]", "()"):
        assert text.count(open_) == text.count(close), f"{path.name}: unbalanced {open_}{close}"


def test_bicep_modules_pinned_and_local_modules_exist():
    for path in BICEP_FILES:
        for ref in re.findall(r"^module \w+ '([^']+)'", path.read_text(), re.M):
            if ref.startswith("br/public:"):
                assert re.fullmatch(r"br/public:avm/res/[a-z-]+/[a-z-]+:\d+\.\d+\.\d+", ref), ref
            else:
                assert (path.parent / ref).exists(), f"{path.name}: module {ref} not found"


ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1": "Storage Blob Data Reader",
    "db58b8e5-c6ad-4a2a-8342-4190687cbf4a": "Storage Blob Delegator",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd": "Cognitive Services OpenAI User",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
}
ASSIGNMENT = r"resource \w+ 'Microsoft\.Authorization/roleAssignments"


def test_all_role_assignments_live_in_rbac_bicep_with_reasons():
    for path in BICEP_FILES:
        if path.name != "rbac.bicep":
            assert "Microsoft.Authorization/roleAssignments" not in path.read_text(), path
    text = (INFRA / "rbac.bicep").read_text()
    variables = dict(re.findall(r"^var (\w+) = '([0-9a-f-]{36})'\s*$", text, re.M))
    assert set(variables.values()) == set(ROLES), "role ids"
    scopes = []
    for reason, block in re.findall(rf"\n\n((?://[^\n]*\n)+)({ASSIGNMENT}.*?\n\}})", text, re.S):
        role = ROLES[variables[re.search(r"roleDefinitions', (\w+)\)", block).group(1)]]
        assert role in reason, f"the comment above an assignment must give its reason and name {role}"
        assert "principalType: 'ServicePrincipal'" in block
        scopes.append((role, re.search(r"^  scope: (\w+)$", block, re.M).group(1)))
    assert len(scopes) == len(re.findall(ASSIGNMENT, text)), "every assignment has its reason above it"
    assert sorted(scopes) == sorted(
        [
            ("Storage Blob Data Owner", "hostStorage"),
            ("Storage Queue Data Contributor", "hostStorage"),
            ("Storage Blob Data Contributor", "outputContainer"),
            ("Storage Blob Data Reader", "inputContainer"),
            ("Storage Blob Delegator", "outputStorage"),
            ("Cognitive Services OpenAI User", "openAi"),
            ("Monitoring Metrics Publisher", "appInsights"),
        ]
    )
    assert "'${outputAccount}/default/${outputContainerName}'" in text
    assert "'${outputAccount}/default/${inputContainerName}'" in text


def test_host_and_output_storage_are_separate_accounts():
    main = MAIN.read_text()
    assert "var outputStorageAccountName = 'stout${resourceToken}'" in main
    rbac = re.search(r"module rbac './rbac.bicep' = \{.*?\n\}", main, re.S).group(0)
    assert "hostStorageAccountName: storage.outputs.name" in rbac
    assert "outputStorageAccountName: outputStorage.outputs.name" in rbac
    host = re.search(r"module storage 'br/public:[^']+' = \{.*?\n\}", main, re.S).group(0)
    output = re.search(r"module outputStorage 'br/public:[^']+' = \{.*?\n\}", main, re.S).group(0)
    assert "outputContainerName" not in host and "inputContainerName" not in host
    assert "{ name: runsQueueName }" in host and "deploymentContainerName" in host
    assert "{ name: outputContainerName, publicAccess: 'None' }" in output
    assert "{ name: inputContainerName, publicAccess: 'None' }" in output
    assert "daysAfterModificationGreaterThan: outputRetentionDays" in output
    for account in (host, output):
        assert "allowSharedKeyAccess: false" in account


def deployment_container_name(app_name: str, token: str) -> str:
    """Python twin of main.bicep's deploymentContainerName expression (asserted verbatim below)."""
    return f"app-package-{app_name.replace('-', '')[:32]}-{token[:7]}".lower()


@pytest.mark.parametrize("app_name", ["func-abc", "My-App-", "a--b", "X" * 60, "ends-with-hyphen-" * 3, "Ab"])
def test_deployment_container_name_is_always_valid(app_name):
    assert (
        "var deploymentContainerName = toLower('app-package-${take(replace(appName, '-', ''), 32)}-"
        "${take(resourceToken, 7)}')" in MAIN.read_text()
    )
    name = deployment_container_name(app_name, "k3xq9zt2mbcde")
    assert re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}", name), name


def test_placeholder_openai_id_names_the_two_settings():
    placeholder = re.search(r"^var openAiIdPlaceholder = '([^']+)'", MAIN.read_text(), re.M).group(1)
    resource_group = placeholder.split("/")[4]
    assert resource_group == "set-AZURE_OPENAI_RESOURCE_ID-or-CREATE_OPENAI-true"
    assert re.fullmatch(r"[-\w._()]{1,90}", resource_group), "a valid resource group name"


def test_bicep_key_settings():
    main = MAIN.read_text()
    api = API.read_text()
    assert "targetScope = 'subscription'" in main
    assert re.search(r"^param outputRetentionDays int = 7$", main, re.M)
    assert re.search(r"^param createOpenAi bool = false$", main, re.M)
    assert re.search(r"^param openAiResourceId string", main, re.M)
    assert "prefixMatch: ['${outputContainerName}/']" in main
    assert "disableLocalAuth: true" in main
    assert re.search(r"name: 'FC1'\s+tier: 'FlexConsumption'", main)
    assert re.search(r"^output FUNCTION_URL string = 'https://\$\{[^}]+\}/api/runs'$", main, re.M)
    assert re.search(r"name: 'python'\s+version: '3.11'", api)
    assert "type: 'UserAssignedIdentity'" in api
    assert "systemAssigned: false" in api
    assert "FUNCTIONS_WORKER_RUNTIME" not in api + main  # not allowed on Flex Consumption


def test_azd_files():
    azure = yaml.safe_load((ROOT / "azure.yaml").read_text())
    service = azure["services"]["api"]
    assert service == {"project": ".", "language": "python", "host": "function"}
    assert "'azd-service-name': serviceName" in API.read_text()
    main = MAIN.read_text()
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    for name in params:
        assert re.search(rf"^param {name} ", main, re.M), f"main.parameters.json: unknown parameter {name}"
    required = re.findall(r"^param (\w+) \w+$", main, re.M)  # no default value
    assert set(required) <= set(params), "azd must supply every parameter without a default"


# ---------------------------------------------------------------------------------------
# What a deployment ships (.funcignore)
# ---------------------------------------------------------------------------------------


def funcignore() -> pathspec.PathSpec:
    return pathspec.GitIgnoreSpec.from_lines((ROOT / ".funcignore").read_text().splitlines())


def shipped_files(spec: pathspec.PathSpec) -> set[str]:
    shipped = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = Path(dirpath).relative_to(ROOT)
        kept = []
        for d in dirnames:
            rel = (rel_dir / d).as_posix()
            # A virtual environment anywhere is never shipped, whatever its name.
            if spec.match_file(rel + "/") or (Path(dirpath) / d / "pyvenv.cfg").exists():
                if not spec.match_file(rel + "/"):
                    shipped.add(rel + "/pyvenv.cfg")  # reported by the assertion below
                continue
            kept.append(d)
        dirnames[:] = kept
        for f in filenames:
            rel = (rel_dir / f).as_posix()
            if not spec.match_file(rel):
                shipped.add(rel)
    return shipped


FORBIDDEN_PREFIXES = ("tests/", "bench/", ".venv/", "venv/", "node_modules/", "infra/", "scripts/", ".git/")


def test_package_contents():
    shipped = shipped_files(funcignore())
    for required in ("function_app.py", "host.json", "requirements.txt"):
        assert required in shipped, f"{required} is not shipped (or does not exist)"
    assert any(p.startswith("code_interpreter_files/") and p.endswith(".py") for p in shipped)
    bad = sorted(
        p
        for p in shipped
        if p.startswith(FORBIDDEN_PREFIXES)
        or "/node_modules/" in p
        or p.endswith("pyvenv.cfg")
        or Path(p).name == "local.settings.json"
        or "__pycache__/" in p
    )
    assert not bad, f"these would be shipped: {bad[:20]}"


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("function_app.py", False),
        ("host.json", False),
        ("requirements.txt", False),
        ("code_interpreter_files/pipeline.py", False),
        ("code_interpreter_files/sub/module.py", False),
        ("tests/test_x.py", True),
        ("bench/run.py", True),
        (".venv/lib/python3.11/site-packages/x.py", True),
        ("venv/bin/python", True),
        ("node_modules/azurite/package.json", True),
        ("code_interpreter_files/node_modules/x.js", True),
        ("local.settings.json", True),
        ("local.settings.json.example", True),
        ("infra/main.bicep", True),
        ("scripts/deploy.sh", True),
        (".git/HEAD", True),
        ("code_interpreter_files/__pycache__/x.cpython-311.pyc", True),
        (".python_packages/lib/site-packages/x.py", True),
        ("docs/deploy.md", True),
        (".azcli-venv/lib/python3.11/site-packages/azure/cli/__main__.py", True),
        ("requirements-azcli.txt", True),
        ("scripts/preprovision.sh", True),
    ],
)
def test_funcignore_patterns(path, ignored):
    assert funcignore().match_file(path) is ignored


# ---------------------------------------------------------------------------------------
# openapi.yaml and the contract helper
# ---------------------------------------------------------------------------------------


def routes_in_function_app() -> set[tuple[str, str]]:
    text = (ROOT / "function_app.py").read_text()
    prefix = json.loads((ROOT / "host.json").read_text())["extensions"]["http"]["routePrefix"]
    routes = set()
    for route, methods in re.findall(r"@app\.route\(route=\"([^\"]+)\", methods=\[([^\]]+)\]", text):
        for method in re.findall(r"\"(\w+)\"", methods):
            routes.add((method.lower(), f"/{prefix}/{route}"))
    return routes


def test_openapi_documents_every_route():
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    documented = {(m, p) for p, ops in spec["paths"].items() for m in ops if m in {"get", "post", "delete", "put"}}
    routes = routes_in_function_app()
    assert routes, "no routes found in function_app.py"
    assert routes == documented
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method == "parameters":
                continue
            anonymous = op.get("security") == []
            # Anonymous: the health probe, and the Azure OpenAI webhook (every request signature-checked).
            assert anonymous == (path in ("/api/health", "/api/openai-webhook")), f"{method} {path}: function key auth"


RUN = {
    "response_id": "resp_abc",
    "status": "completed",
    "text": "Here is your chart.",
    "files": [
        {
            "filename": "chart.png",
            "file_id": "cfile_1",
            "container_id": "cntr_1",
            "blob": "resp_abc/chart.png",
            "url": "https://st.blob.core.windows.net/code-interpreter-outputs/resp_abc/chart.png?sv=1&sig=x",
            "bytes": 1234,
            "content_type": "image/png",
            "sha256": "0" * 64,
            "expires_at": "2030-01-01T00:00:00Z",
            "cited": True,
            "origin": "cited",
        }
    ],
    "failed_files": [{"filename": "big.csv", "file_id": "cfile_2", "code": "file_too_large", "message": "too big"}],
    "incomplete_reason": None,
    "warnings": [],
    "inputs": [{"name": "data.csv", "bytes": 12, "sha256": "1" * 64}],
    "continued_in": None,
}
JSON = {"Content-Type": "application/json"}
ACCEPTED_HEADERS = {**JSON, "Location": "/api/runs/resp_abc", "Retry-After": "5"}


def error(code: str, **extra) -> bytes:
    return json.dumps({"error": {"code": code, "message": "m", **extra}}).encode()


def with_file(**changes) -> bytes:
    return json.dumps({**RUN, "files": [{**RUN["files"][0], **changes}]}).encode()


VALID_ANSWERS = [
    ("POST", "/api/runs", 200, json.dumps(RUN).encode(), JSON, b'{"prompt": "plot"}', None),
    (
        "POST",
        "/api/runs",
        200,
        json.dumps(RUN).encode(),
        {"content-type": "application/json; charset=utf-8"},
        None,
        None,
    ),
    ("POST", "/api/runs", 202, b'{"response_id": "resp_abc", "status": "queued"}', ACCEPTED_HEADERS, None, None),
    ("POST", "/api/runs", 400, error("invalid_json", invocation_id="inv-1"), JSON, b"{oops", None),
    ("POST", "/api/runs", 413, error("payload_too_large"), JSON, None, None),
    ("POST", "/api/runs", 410, error("container_expired"), JSON, None, None),
    ("POST", "/api/runs", 502, error("upstream_error", upstream_status=429), JSON, None, None),
    ("POST", "/api/runs", 503, error("not_configured"), JSON, None, None),
    ("POST", "/api/runs", 504, error("timeout"), JSON, None, None),
    (
        "GET",
        "/api/runs/resp_abc",
        200,
        json.dumps({**RUN, "files": [], "failed_files": []}).encode(),
        JSON,
        None,
        {"sas_ttl_minutes": "30"},
    ),
    (
        "GET",
        "/api/runs/resp_abc",
        202,
        b'{"response_id": "resp_abc", "status": "in_progress"}',
        {**JSON, "Retry-After": "5"},
        None,
        None,
    ),
    ("GET", "/api/runs/bad id", 400, error("invalid_run_id"), JSON, None, None),
    ("GET", "/api/runs/resp_abc", 404, error("run_not_found"), JSON, None, None),
    ("GET", "/api/runs/resp_abc", 409, error("run_cancelled"), JSON, None, None),
    ("GET", "/api/runs/resp_abc", 502, error("run_failed"), JSON, None, None),
    ("DELETE", "/api/runs/resp_abc", 204, b"", {}, None, None),
    ("DELETE", "/api/runs/resp_abc", 404, error("run_not_found"), JSON, None, None),
    (
        "GET",
        "/api/health",
        200,
        b'{"status": "ok", "configured": true, "missing": [], "invalid": []}',
        JSON,
        None,
        None,
    ),
    (
        "GET",
        "/api/health",
        503,
        b'{"status": "not_configured", "configured": false, "missing": ["AZURE_OPENAI_ENDPOINT"], "invalid": []}',
        JSON,
        None,
        None,
    ),
]

BROKEN_ANSWERS = {
    "unknown status": ("POST", "/api/runs", 418, error("internal_error"), JSON),
    "unknown path": ("GET", "/api/nope", 200, b"{}", JSON),
    "unknown method": ("PUT", "/api/runs/resp_abc", 200, json.dumps(RUN).encode(), JSON),
    "202 without Location": (
        "POST",
        "/api/runs",
        202,
        b'{"response_id": "r", "status": "queued"}',
        {**JSON, "Retry-After": "5"},
    ),
    "202 without Retry-After": ("GET", "/api/runs/r", 202, b'{"response_id": "r", "status": "queued"}', JSON),
    "Retry-After not a number": (
        "POST",
        "/api/runs",
        202,
        b'{"response_id": "r", "status": "queued"}',
        {**ACCEPTED_HEADERS, "Retry-After": "soon"},
    ),
    "202 unknown status": ("POST", "/api/runs", 202, b'{"response_id": "r", "status": "done"}', ACCEPTED_HEADERS),
    "missing files": (
        "POST",
        "/api/runs",
        200,
        json.dumps({k: v for k, v in RUN.items() if k != "files"}).encode(),
        JSON,
    ),
    "extra field": ("POST", "/api/runs", 200, json.dumps({**RUN, "debug": 1}).encode(), JSON),
    "bad sha256": ("POST", "/api/runs", 200, with_file(sha256="XYZ"), JSON),
    "bytes as string": ("POST", "/api/runs", 200, with_file(bytes="12"), JSON),
    "bad expires_at": ("POST", "/api/runs", 200, with_file(expires_at="tomorrow"), JSON),
    "cited missing": (
        "POST",
        "/api/runs",
        200,
        json.dumps({**RUN, "files": [{k: v for k, v in RUN["files"][0].items() if k != "cited"}]}).encode(),
        JSON,
    ),
    "failed file without code": (
        "POST",
        "/api/runs",
        200,
        json.dumps({**RUN, "failed_files": [{"filename": "a", "file_id": "b", "message": "m"}]}).encode(),
        JSON,
    ),
    "unknown error code": ("GET", "/api/runs/r", 404, error("nope"), JSON),
    "error without message": ("GET", "/api/runs/r", 404, b'{"error": {"code": "run_not_found"}}', JSON),
    "flat error": ("GET", "/api/runs/r", 404, b'{"code": "run_not_found", "message": "m"}', JSON),
    "not JSON": ("GET", "/api/runs/r", 404, b"Not Found", JSON),
    "text/plain error": ("GET", "/api/runs/r", 404, error("run_not_found"), {"Content-Type": "text/plain"}),
    "204 with body": ("DELETE", "/api/runs/r", 204, b'{"deleted": true}', {}),
    "health ok with missing": (
        "GET",
        "/api/health",
        200,
        b'{"status": "ok", "configured": true, "missing": ["X"], "invalid": []}',
        JSON,
    ),
    "health 503 says ok": (
        "GET",
        "/api/health",
        503,
        b'{"status": "ok", "configured": false, "missing": [], "invalid": []}',
        JSON,
    ),
    "health leaks a value": (
        "GET",
        "/api/health",
        503,
        b'{"status": "not_configured", "configured": false, "missing": [], "invalid": [],'
        b' "values": {"AZURE_OPENAI_API_KEY": "k"}}',
        JSON,
    ),
}


@pytest.mark.parametrize("answer", VALID_ANSWERS, ids=lambda a: f"{a[0]} {a[1]} {a[2]}")
def test_contract_accepts_valid_answers(answer):
    method, path, status, body, headers, request_body, query = answer
    assert_matches_openapi(method, path, status, body, headers=headers, request_body=request_body, query=query)


@pytest.mark.parametrize("name", sorted(BROKEN_ANSWERS))
def test_contract_rejects_broken_answers(name):
    method, path, status, body, headers = BROKEN_ANSWERS[name]
    with pytest.raises(AssertionError) as raised:
        assert_matches_openapi(method, path, status, body, headers=headers)
    message = str(raised.value)
    assert message.startswith(f"{method} {path} -> {status}")
    assert len(message) < 8000


def test_contract_message_points_at_the_field():
    with pytest.raises(AssertionError, match=r"at files/0/sha256: 'XYZ' does not match"):
        assert_matches_openapi("POST", "/api/runs", 200, with_file(sha256="XYZ"), headers=JSON)


def test_contract_spec_is_parsed_once():
    assert openapi_contract._openapi() is openapi_contract._openapi()


# ---------------------------------------------------------------------------------------
# docs/deploy.md (the deploy reference; the README links to it)
# ---------------------------------------------------------------------------------------

DEPLOY_DOC = ROOT / "docs" / "deploy.md"


def test_deploy_docs_cover_the_essentials():
    text = DEPLOY_DOC.read_text()
    for needle in (
        "azd up",
        "scripts/deploy.sh",
        "--openai-resource-id",
        "preprovision",
        *sorted(set(ROLES.values())),
        "az functionapp keys list",
        "az functionapp function keys list",
        "curl",
        "x-functions-key",
        "func azure functionapp logstream",
        "AppTraces",
        "outputRetentionDays",
        "perInstanceConcurrency",
        "COPY_MEMORY_MB",
        "log-analytics",
        "application-insights",
    ):
        assert needle in text, f"docs/deploy.md does not mention {needle!r}"


# Columns of the workspace-based Application Insights tables (Azure Monitor Logs reference:
# AppTraces, AppRequests, AppExceptions), the ones a query here may use.
TABLE_COLUMNS = {
    "AppTraces": {"TimeGenerated", "Message", "SeverityLevel", "Properties", "OperationId", "OperationName"},
    "AppRequests": {"TimeGenerated", "Name", "Url", "ResultCode", "Success", "DurationMs", "OperationId"},
    "AppExceptions": {"TimeGenerated", "ExceptionType", "OuterMessage", "Details", "OperationId", "ProblemId"},
}
KQL_WORDS = {"where", "project", "order", "by", "asc", "desc", "ago", "tostring", "take", "and", "or", "false", "true"}


def workspace_queries(text: str) -> list[str]:
    queries = re.findall(r'"query": "((?:[^"\\]|\\.)*)"', text)
    queries += re.findall(r"`((?:AppTraces|AppRequests|AppExceptions) \|[^`]*)`", text)
    queries += re.findall(r"--analytics-query '((?:AppTraces|AppRequests|AppExceptions)[^']*)'", text)
    return queries


def unknown_columns(query: str) -> set[str]:
    """Names in a query that are neither its table's columns nor KQL words (string literals ignored)."""
    table = query.split("|")[0].strip()
    assert table in TABLE_COLUMNS, f"not a workspace table: {table}"
    code = re.sub(r'\\?"[^"\\]*\\?"', "", query)
    names = set(re.findall(r"\b[A-Za-z_]\w*\b", code)) - {table} - KQL_WORDS
    return {n for n in names if n not in TABLE_COLUMNS[table] and n != "InvocationId"}  # Properties.InvocationId


def test_log_queries_use_the_workspace_schema():
    queries = workspace_queries(DEPLOY_DOC.read_text())
    assert len(queries) >= 4, queries
    for query in queries:
        assert not unknown_columns(query), f"not a column of its table: {sorted(unknown_columns(query))}: {query}"


def test_schema_check_refuses_classic_names():
    assert unknown_columns("AppTraces | where timestamp > ago(1h) | project customDimensions, message") == {
        "timestamp",
        "customDimensions",
        "message",
    }


def test_local_settings_example_is_a_valid_configuration():
    """Its empty values mean "not set" to the app (only the endpoint placeholder needs a real value)."""
    values = json.loads((ROOT / "local.settings.json.example").read_text())["Values"]
    values["AZURE_OPENAI_ENDPOINT"] = "https://aoai.openai.azure.com"
    from code_interpreter_files.settings import load_settings

    assert load_settings(values)
    with pytest.raises(Exception, match="CALLBACK_SIGNING_SECRET"):
        load_settings({**values, "CALLBACK_ALLOWED_HOSTS": "hooks.example.com"})
