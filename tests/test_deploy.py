"""Offline checks of the deployment: scripts/deploy.sh, infra/ (Bicep), azure.yaml, .funcignore,
openapi.yaml + tests/openapi_contract.py and the README's Deploy section. Nothing here talks to Azure."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pathspec
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "deploy.sh"
INFRA = ROOT / "infra"
BASH = shutil.which("bash") or "/bin/bash"

try:
    from tests import openapi_contract
except ImportError:  # tests/ run as a plain folder
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import openapi_contract  # type: ignore[no-redef]

assert_matches_openapi = openapi_contract.assert_matches_openapi

# Read by the app but deliberately NOT set in Azure: key-based local-development alternatives
# (the Azure deployment uses the managed identity for Azure OpenAI and for Blob Storage).
READ_BUT_UNSET_IN_AZURE = {"AZURE_OPENAI_API_KEY", "OUTPUT_STORAGE_CONNECTION_STRING"}

# Platform settings that are not the app's own but may (or must) be set.
PLATFORM_EXACT = {
    "AZURE_CLIENT_ID",  # read by azure-identity: picks the user-assigned managed identity
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
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
}
# Default values the script and Bicep spell out (must agree with the app's defaults).
DEFAULT_VALUES = {
    "AZURE_OPENAI_API_VERSION": "",  # unset in the app = the GA v1 API
    "OUTPUT_CONTAINER": "code-interpreter-outputs",
    "SAS_TTL_MINUTES": "60",
    "SAS_TTL_MAX_MINUTES": "1440",
    "MAX_FILES_PER_RUN": "20",
    "MAX_FILE_BYTES": "536870912",
    "RUN_WAIT_SECONDS": "180",
    "COPY_CONCURRENCY": "4",
}

APP = "cif-test"
RG = "rg-cif-test"
STORAGE = "stciftest"
OPENAI_ID = "/subscriptions/1111/resourceGroups/rg-ai/providers/Microsoft.CognitiveServices/accounts/aoai-test"
SUB = "<subscription-id>"
STORAGE_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Storage/storageAccounts/{STORAGE}"
APPI_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Insights/components/appi-{APP}"
IDENTITY_ID = (
    f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-{APP}"
)
BASE_ARGS = ["--name", APP, "--location", "eastus2", "--openai-resource-id", OPENAI_ID]


def is_platform(name: str) -> bool:
    return name in PLATFORM_EXACT or name.startswith(PLATFORM_PREFIXES)


def app_setting_names() -> tuple[str, ...]:
    from code_interpreter_files.settings import SETTING_NAMES

    assert SETTING_NAMES and all(isinstance(n, str) for n in SETTING_NAMES)
    return tuple(SETTING_NAMES)


# ---------------------------------------------------------------------------------------
# scripts/deploy.sh
# ---------------------------------------------------------------------------------------


def fake_tools(tmp_path: Path, *, az: str | None = None, func: bool = False) -> Path:
    """A PATH with the few tools the script needs, plus optional fake az/func (never the real ones)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("tr", "cut", "sed", "dirname", "cat"):
        real = shutil.which(tool)
        if real and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(real)
    scripts = {"az": az, "func": '#!/bin/sh\necho "func $*" >> "$FAKE_LOG"\n' if func else None}
    for name, body in scripts.items():
        if body is not None:
            path = bin_dir / name
            path.write_text(body)
            path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir


# A stand-in az: logs every call; answers queries with fake values; `functionapp show` without
# --query fails unless FAKE_APP_EXISTS=1; `account show` fails if FAKE_LOGGED_OUT=1.
FAKE_AZ = """#!/bin/sh
echo "az $*" >> "$FAKE_LOG"
case "$*" in
  "account show --output none") [ "${FAKE_LOGGED_OUT:-0}" = 1 ] && exit 1; exit 0 ;;
  *--query*) echo "fake-$(echo "$*" | sed 's/.*--query \\([^ ]*\\).*/\\1/')"; exit 0 ;;
  "functionapp show --resource-group"*) [ "${FAKE_APP_EXISTS:-0}" = 1 ] && exit 0; exit 3 ;;
esac
exit 0
"""


def run_script(tmp_path: Path, args: list[str], bin_dir: Path | None = None, **env: str):
    bin_dir = bin_dir or fake_tools(tmp_path)
    log = tmp_path / "calls.log"
    log.touch()
    clean_env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "FAKE_LOG": str(log), **env}
    proc = subprocess.run(
        [BASH, str(SCRIPT), *args], capture_output=True, text=True, env=clean_env, timeout=60, cwd=tmp_path
    )
    return proc, log.read_text().splitlines()


def dry_run_commands(tmp_path: Path, *extra: str) -> list[list[str]]:
    # A fake az/func that would log any call proves --dry-run runs nothing.
    bin_dir = fake_tools(tmp_path, az=FAKE_AZ, func=True)
    proc, calls = run_script(tmp_path, ["--dry-run", *BASE_ARGS, *extra], bin_dir)
    assert proc.returncode == 0, proc.stderr
    assert calls == [], f"--dry-run executed commands: {calls}"
    lines = proc.stdout.splitlines()
    assert lines and all(line.startswith("+ ") for line in lines), proc.stdout
    return [shlex.split(line[2:]) for line in lines]


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
    _, cmd = one(cmds, "az", "functionapp", "config", "appsettings", "set")
    start = cmd.index("--settings") + 1
    end = next((i for i in range(start, len(cmd)) if cmd[i].startswith("--")), len(cmd))
    pairs = [item.split("=", 1) for item in cmd[start:end]]
    assert all(len(p) == 2 for p in pairs), pairs
    return dict(pairs)


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian package: shellcheck)")
    proc = subprocess.run(["shellcheck", "--severity=style", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_script_is_strict_and_executable():
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(SCRIPT, os.X_OK), "scripts/deploy.sh must be executable"


def test_dry_run_command_sequence(tmp_path):
    cmds = dry_run_commands(tmp_path, "--output-retention-days", "3", "--openai-deployment", "my-dep")
    order = [
        ("az", "group", "create"),
        ("az", "identity", "create"),
        ("az", "storage", "account", "create"),
        ("az", "storage", "container-rm", "create"),
        ("az", "storage", "account", "management-policy", "create"),
        ("az", "monitor", "log-analytics", "workspace", "create"),
        ("az", "monitor", "app-insights", "component", "create"),
        ("az", "role", "assignment", "create"),
        ("az", "functionapp", "create"),
        ("az", "functionapp", "config", "appsettings", "set"),
        ("az", "functionapp", "config", "appsettings", "delete"),
        ("func", "azure", "functionapp", "publish"),
    ]
    positions = []
    for prefix in order:
        found = find(cmds, *prefix)
        assert found, f"missing step: {' '.join(prefix)}"
        positions.append((found[0][0], found[-1][0]))
    for (name_a, (_, last_a)), (name_b, (first_b, _)) in zip(
        zip(order, positions, strict=True), zip(order[1:], positions[1:], strict=True), strict=False
    ):
        assert last_a < first_b, f"{' '.join(name_a)} must come before {' '.join(name_b)}"

    _, group = one(cmds, "az", "group", "create")
    assert opt(group, "--name") == RG and opt(group, "--location") == "eastus2"

    _, storage = one(cmds, "az", "storage", "account", "create")
    assert opt(storage, "--name") == STORAGE
    assert opt(storage, "--allow-shared-key-access") == "false"
    assert opt(storage, "--allow-blob-public-access") == "false"

    containers = {opt(c, "--name") for _, c in find(cmds, "az", "storage", "container-rm", "create")}
    assert containers == {"app-package", "code-interpreter-outputs"}

    _, policy_cmd = one(cmds, "az", "storage", "account", "management-policy", "create")
    rule = json.loads(opt(policy_cmd, "--policy"))["rules"][0]
    assert rule["enabled"] is True and rule["type"] == "Lifecycle"
    assert rule["definition"]["filters"]["prefixMatch"] == ["code-interpreter-outputs/"]
    assert rule["definition"]["actions"]["baseBlob"]["delete"] == {"daysAfterModificationGreaterThan": 3}

    _, appi = one(cmds, "az", "monitor", "app-insights", "component", "create")
    assert opt(appi, "--workspace").endswith(f"/workspaces/log-{APP}")
    _, local_auth = one(cmds, "az", "resource", "update")
    assert opt(local_auth, "--ids") == APPI_ID and opt(local_auth, "--set") == "properties.DisableLocalAuth=true"

    _, create = one(cmds, "az", "functionapp", "create")
    assert opt(create, "--name") == APP and opt(create, "--resource-group") == RG
    assert opt(create, "--flexconsumption-location") == "eastus2"
    assert opt(create, "--runtime") == "python" and opt(create, "--runtime-version") == "3.11"
    assert opt(create, "--assign-identity") == IDENTITY_ID  # user-assigned, not [system]
    assert opt(create, "--deployment-storage-name") == STORAGE
    assert opt(create, "--deployment-storage-container-name") == "app-package"
    assert opt(create, "--deployment-storage-auth-type") == "UserAssignedIdentity"
    assert opt(create, "--deployment-storage-auth-value") == IDENTITY_ID
    assert "--consumption-plan-location" not in create and "--plan" not in create

    _, delete = one(cmds, "az", "functionapp", "config", "appsettings", "delete")
    assert opt(delete, "--setting-names") == "AzureWebJobsStorage"

    _, publish = one(cmds, "func", "azure", "functionapp", "publish")
    assert publish[4] == APP

    settings = script_settings(cmds)
    assert settings["AZURE_OPENAI_DEPLOYMENT"] == "my-dep"
    assert settings["AZURE_OPENAI_ENDPOINT"] == "https://<openai-custom-subdomain>.openai.azure.com"
    assert settings["OUTPUT_STORAGE_ACCOUNT_URL"] == f"https://{STORAGE}.blob.core.windows.net"
    assert settings["AzureWebJobsStorage__accountName"] == STORAGE
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == settings["AZURE_CLIENT_ID"] == "<identity-client-id>"
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "ClientId=<identity-client-id>;Authorization=AAD"
    for name, value in DEFAULT_VALUES.items():
        assert settings[name] == value, name


def test_dry_run_role_assignments(tmp_path):
    cmds = dry_run_commands(tmp_path)
    roles = set()
    for _, cmd in find(cmds, "az", "role", "assignment", "create"):
        assert opt(cmd, "--assignee-object-id") == "<identity-principal-id>"
        assert opt(cmd, "--assignee-principal-type") == "ServicePrincipal"
        roles.add((opt(cmd, "--role"), opt(cmd, "--scope")))
    assert roles == {
        ("Storage Blob Data Owner", STORAGE_ID),
        ("Storage Blob Data Contributor", STORAGE_ID),
        ("Cognitive Services OpenAI User", OPENAI_ID),
        ("Monitoring Metrics Publisher", APPI_ID),
    }
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
        "--skip-publish",
        "--openai-endpoint",
        "https://x.openai.azure.com",
        "--openai-api-version",
        "2025-04-01-preview",
    )
    assert not find(cmds, "func")
    assert not find(cmds, "az", "cognitiveservices")
    assert opt(one(cmds, "az", "group", "create")[1], "--name") == "my-rg"
    assert opt(one(cmds, "az", "storage", "account", "create")[1], "--name") == "mystore1"
    settings = script_settings(cmds)
    assert settings["AZURE_OPENAI_ENDPOINT"] == "https://x.openai.azure.com"
    assert settings["AZURE_OPENAI_API_VERSION"] == "2025-04-01-preview"


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
    )
    assert proc.returncode == 0, proc.stderr
    assert "--flexconsumption-location westus3" in proc.stdout
    assert '"daysAfterModificationGreaterThan":14' in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--location", "eastus2", "--openai-resource-id", OPENAI_ID], "--name is required"),
        (["--name", APP, "--openai-resource-id", OPENAI_ID], "--location is required"),
        (["--name", APP, "--location", "eastus2"], "--openai-resource-id is required"),
        ([*BASE_ARGS[:4], "--openai-resource-id", "/subscriptions/x/oops"], "--openai-resource-id must look like"),
        ([*BASE_ARGS, "--output-retention-days", "0"], "--output-retention-days"),
        ([*BASE_ARGS, "--bogus"], "unknown option: --bogus"),
        ([*BASE_ARGS, "--name"], "--name needs a value"),
    ],
)
def test_invalid_inputs(tmp_path, args, message):
    proc, _ = run_script(tmp_path, ["--dry-run", *args])
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
        tmp_path, [*BASE_ARGS, "--skip-publish"], fake_tools(tmp_path, az=FAKE_AZ), FAKE_APP_EXISTS="1"
    )
    assert proc.returncode == 0, proc.stderr
    assert not any(c.startswith("az functionapp create") for c in calls)
    update = [c for c in calls if c.startswith("az functionapp deployment config set")]
    assert len(update) == 1 and "--deployment-storage-auth-type UserAssignedIdentity" in update[0]
    assert any(c.startswith("az functionapp config appsettings set") for c in calls)


# ---------------------------------------------------------------------------------------
# App settings: the app, local.settings.json.example, Bicep and the script agree
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


def bicep_settings() -> dict[str, str]:
    own = bicep_object_keys((INFRA / "main.bicep").read_text(), "appSettings")
    platform = bicep_object_keys((INFRA / "app" / "api.bicep").read_text(), "platformAppSettings")
    assert not set(own) & set(platform)
    return {**own, **platform}


def check_azure_settings(where: str, names: set[str]) -> None:
    app_names = set(app_setting_names())
    missing = app_names - READ_BUT_UNSET_IN_AZURE - names
    assert not missing, f"{where} does not set settings the app reads: {sorted(missing)}"
    unwanted = names & READ_BUT_UNSET_IN_AZURE
    assert not unwanted, f"{where} sets key-based settings meant to stay unset in Azure: {sorted(unwanted)}"
    unknown = {n for n in names if n not in app_names and not is_platform(n)}
    assert not unknown, f"{where} sets settings the app does not read: {sorted(unknown)}"
    platform_missing = REQUIRED_PLATFORM_IN_AZURE - names
    assert not platform_missing, f"{where} lacks platform settings: {sorted(platform_missing)}"


def test_read_but_unset_names_are_real_settings():
    assert READ_BUT_UNSET_IN_AZURE <= set(app_setting_names())
    assert not any(is_platform(n) for n in app_setting_names()), "an app setting looks like a platform one"


def test_local_settings_example_lists_every_setting():
    path = ROOT / "local.settings.json.example"
    assert path.exists(), "local.settings.json.example is missing"
    data = json.loads(path.read_text())
    assert data.get("IsEncrypted") is False
    values = data["Values"]
    missing = set(app_setting_names()) - set(values)
    assert not missing, f"local.settings.json.example lacks: {sorted(missing)}"
    unknown = {n for n in values if n not in app_setting_names() and not is_platform(n)}
    assert not unknown, f"local.settings.json.example has settings the app does not read: {sorted(unknown)}"


def test_bicep_sets_every_setting():
    settings = bicep_settings()
    check_azure_settings("Bicep", set(settings))
    assert settings["AzureWebJobsStorage__credential"] == "'managedidentity'"
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "'ClientId=${identityClientId};Authorization=AAD'"


def test_script_sets_every_setting(tmp_path):
    check_azure_settings("scripts/deploy.sh", set(script_settings(dry_run_commands(tmp_path))))


def test_bicep_and_script_defaults_agree():
    main = (INFRA / "main.bicep").read_text()
    own = bicep_object_keys(main, "appSettings")
    for name, value in DEFAULT_VALUES.items():
        expr = own[name]
        param = re.fullmatch(r"string\((\w+)\)", expr)
        if param:
            found = re.search(rf"^param {param.group(1)} int = (\d+)$", main, re.M)
        else:
            found = re.search(rf"^param {expr} string = '([^']*)'$", main, re.M)
        assert found and found.group(1) == value, f"{name}: Bicep default is not {value}"


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


def test_all_role_assignments_live_in_rbac_bicep_with_reasons():
    for path in BICEP_FILES:
        if path.name != "rbac.bicep":
            assert "Microsoft.Authorization/roleAssignments" not in path.read_text(), path
    text = (INFRA / "rbac.bicep").read_text()
    roles = {
        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
        "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
        "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd": "Cognitive Services OpenAI User",
        "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
    }
    for guid, name in roles.items():
        assert re.search(rf"'{guid}'\s*$", text, re.M), f"{name} role id missing"
    blocks = re.split(r"\n(?=resource \w+ 'Microsoft\.Authorization/roleAssignments)", text)[1:]
    assert len(blocks) == 4
    comments = text.split("\n\n")
    for name in roles.values():
        assert any(c.lstrip().startswith("//") and name in c for c in comments), f"no reason given for {name}"
    assert text.count("principalType: 'ServicePrincipal'") == 4


def test_bicep_key_settings():
    main = (INFRA / "main.bicep").read_text()
    api = (INFRA / "app" / "api.bicep").read_text()
    assert "targetScope = 'subscription'" in main
    assert re.search(r"^param outputRetentionDays int = 7$", main, re.M)
    assert re.search(r"^param createOpenAi bool = false$", main, re.M)
    assert re.search(r"^param openAiResourceId string", main, re.M)
    assert "allowSharedKeyAccess: false" in main
    assert "daysAfterModificationGreaterThan: outputRetentionDays" in main
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
    assert "'azd-service-name': serviceName" in (INFRA / "app" / "api.bicep").read_text()
    main = (INFRA / "main.bicep").read_text()
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
            assert anonymous == (path == "/api/health"), f"{method} {path}: function key auth"


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
        }
    ],
    "failed_files": [{"filename": "big.csv", "file_id": "cfile_2", "code": "file_too_large", "message": "too big"}],
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
# README "Deploy" section
# ---------------------------------------------------------------------------------------


def test_deploy_docs_cover_the_essentials():
    readme = (ROOT / "README.md").read_text()
    text = readme[readme.index("## Deploy") : readme.index("## Troubleshooting")]
    for needle in (
        "azd up",
        "scripts/deploy.sh",
        "--openai-resource-id",
        "Storage Blob Data Owner",
        "Storage Blob Data Contributor",
        "Cognitive Services OpenAI User",
        "Monitoring Metrics Publisher",
        "az functionapp keys list",
        "az functionapp function keys list",
        "curl",
        "x-functions-key",
        "func azure functionapp logstream",
        "traces",
        "outputRetentionDays",
    ):
        assert needle in text, f"the README's Deploy section does not mention {needle!r}"
