"""scripts/deploy.sh: --dry-run and, with a stand-in `az`/`func`, real runs (tests/deploy/deploy_script.py).
Nothing here talks to Azure; test_az_commands.py checks every az command line with azure-cli's own parser."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.contract import (
    APPI_ID,
    BACKSTOP_DAYS,
    IDENTITY_ID,
    OPTIONAL_IN_AZURE,
    OUTPUT_STORAGE_ID,
    RUNS_TABLE_ID,
    SETTINGS,
    STORAGE_ID,
    backstop_goes_on,
)
from tests.deploy.deploy_script import (
    APP,
    BASE_ARGS,
    FAKE_AZ,
    HOOK,
    OPENAI_ID,
    OUTPUT_STORAGE,
    POSTDEPLOY,
    RG,
    SCRIPT,
    SECRETS_ENV,
    STORAGE,
    create_calls,
    dry_run_commands,
    fake_tools,
    find,
    one,
    opt,
    real_run_argv,
    run_script,
    script_settings,
)


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian package: shellcheck)")
    for script in (SCRIPT, HOOK, POSTDEPLOY):
        proc = subprocess.run(["shellcheck", "--severity=style", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_script_is_strict_and_executable():
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(SCRIPT, os.X_OK), "scripts/deploy.sh must be executable"
    assert os.access(HOOK, os.X_OK), "scripts/preprovision.sh must be executable"
    assert os.access(POSTDEPLOY, os.X_OK), "scripts/postdeploy.sh must be executable"


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
    ("az", "rest", "--method", "put"),  # the runs table, through ARM
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
    cmds = dry_run_commands(tmp_path, "--output-backstop-days", "45", "--openai-deployment", "my-dep")
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
    assert rule["definition"]["actions"]["baseBlob"]["delete"] == {"daysAfterModificationGreaterThan": 45}

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


def lifecycle_rule(cmds: list[list[str]]) -> dict:
    _, policy_cmd = one(cmds, "az", "storage", "account", "management-policy", "create")
    rules = json.loads(opt(policy_cmd, "--policy"))["rules"]
    assert len(rules) == 1
    return rules[0]


def test_dry_run_creates_the_runs_table_through_arm(tmp_path):
    """The runs table exists before the role scoped to it, created through ARM (no data-plane role needed by
    whoever deploys), in the output account, under the name the app is given."""
    cmds = dry_run_commands(tmp_path)
    index, table = one(cmds, "az", "rest")
    assert opt(table, "--method") == "put"
    assert opt(table, "--url") == f"{RUNS_TABLE_ID}?api-version=2023-05-01"
    assert RUNS_TABLE_ID.endswith(f"/tableServices/default/tables/{script_settings(cmds)['RUNS_TABLE']}")
    assert not find(cmds, "az", "storage", "table"), "data-plane table commands need a data role for the deployer"
    scopes = [(i, opt(c, "--scope")) for i, c in find(cmds, "az", "role", "assignment", "create")]
    assert [i for i, scope in scopes if scope == RUNS_TABLE_ID] and all(index < i for i, _ in scopes)


def test_dry_run_backstop_outlasts_the_retention(tmp_path):
    """What removes what: the app deletes runs after RUN_RETENTION_DAYS; the lifecycle rule, a backstop, later."""
    default = tmp_path / "default"
    default.mkdir()
    cmds = dry_run_commands(default)
    rule = lifecycle_rule(cmds)
    days = rule["definition"]["actions"]["baseBlob"]["delete"]["daysAfterModificationGreaterThan"]
    assert rule["enabled"] is True and days == BACKSTOP_DAYS
    assert days > int(script_settings(cmds)["RUN_RETENTION_DAYS"]) == int(str(SETTINGS["RUN_RETENTION_DAYS"].default))

    forever = tmp_path / "forever"
    forever.mkdir()
    cmds = dry_run_commands(forever, "--run-retention-days", "0")
    assert script_settings(cmds)["RUN_RETENTION_DAYS"] == "0"
    assert lifecycle_rule(cmds)["enabled"] is False, "runs kept for ever: so are their files"


@pytest.mark.parametrize(("retention", "backstop"), [(30, 60), (30, 31), (30, 30), (60, 30), (0, 1), (3650, 3651)])
def test_script_keeps_the_backstop_behind_the_retention(tmp_path, retention, backstop):
    """The script decides as main.bicep's guard does (contract.backstop_goes_on), before anything runs."""
    args = ["--dry-run", *BASE_ARGS, "--run-retention-days", str(retention), "--output-backstop-days", str(backstop)]
    proc, _ = run_script(tmp_path, args)
    assert (proc.returncode == 0) is backstop_goes_on(retention, backstop), proc.stderr
    if proc.returncode:
        assert f"--output-backstop-days ({backstop}) must exceed --run-retention-days ({retention})" in proc.stderr
        assert proc.stdout == ""
    else:
        assert f'"daysAfterModificationGreaterThan":{backstop}' in proc.stdout
        assert f"RUN_RETENTION_DAYS={retention} " in proc.stdout


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
            ("Storage Table Data Contributor", RUNS_TABLE_ID),
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
        RUN_RETENTION_DAYS="14",
        OUTPUT_BACKSTOP_DAYS="21",
        AZURE_OUTPUT_STORAGE_ACCOUNT="outacct",
        OWNER_TAG="from-env",
    )
    assert proc.returncode == 0, proc.stderr
    assert "--flexconsumption-location westus3" in proc.stdout
    assert '"daysAfterModificationGreaterThan":21' in proc.stdout and "RUN_RETENTION_DAYS=14 " in proc.stdout
    assert "--account-name outacct" in proc.stdout and "OWNER_TAG=from-env" in proc.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--location", "eastus2", "--openai-resource-id", OPENAI_ID], {}, "--name is required"),
        (["--name", APP, "--openai-resource-id", OPENAI_ID], {}, "--location is required"),
        (["--name", APP, "--location", "eastus2"], {}, "--openai-resource-id is required"),
        ([*BASE_ARGS[:4], "--openai-resource-id", "/subscriptions/x/oops"], {}, "--openai-resource-id must look like"),
        ([*BASE_ARGS, "--run-retention-days", "3651"], {}, "--run-retention-days must be a whole number"),
        ([*BASE_ARGS, "--run-retention-days", "-1"], {}, "--run-retention-days must be a whole number"),
        ([*BASE_ARGS, "--run-retention-days", "30d"], {}, "--run-retention-days must be a whole number"),
        ([*BASE_ARGS, "--output-backstop-days", "0"], {}, "--output-backstop-days must be a whole number"),
        ([*BASE_ARGS, "--run-retention-days", "90"], {}, "--output-backstop-days (60) must exceed"),
        ([*BASE_ARGS, "--output-retention-days", "7"], {}, "--output-retention-days is replaced: --run-retention-days"),
        (BASE_ARGS, {"OUTPUT_RETENTION_DAYS": "7"}, "OUTPUT_RETENTION_DAYS is replaced: RUN_RETENTION_DAYS"),
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
        "table codeinterpreterruns",
        f"Application Insights appi-{APP}",
        f"role 'Storage Blob Delegator' on {OUTPUT_STORAGE}",
        "role 'Storage Table Data Contributor' on codeinterpreterruns",
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
    # It ends with what to copy and paste: the base URL (no /api), the key's command, a first run.
    tail = proc.stderr.split("done: POST", 1)[1]
    assert "\nexport CI_FILES_URL=https://fake-defaultHostName\n" in tail
    assert (
        '\nexport CI_FILES_KEY="$(az functionapp keys list --resource-group rg-cif-test --name cif-test '
        '--query functionKeys.default --output tsv)"\n' in tail
    )
    assert '\nci-files run "Create test.txt containing hello world"\n' in tail


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
