"""Bicep / azd files (no compiler here: structural checks)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.deploy.bicep_text import API, BICEP_FILES, INFRA, MAIN, bicep_object_keys, bicep_params, strip_bicep
from tests.deploy.contract import BACKSTOP_DAYS, ROLES, SETTINGS
from tests.deploy.deploy_script import ROOT


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
            ("Storage Table Data Contributor", "runsTable"),
            ("Storage Blob Delegator", "outputStorage"),
            ("Cognitive Services OpenAI User", "openAi"),
            ("Monitoring Metrics Publisher", "appInsights"),
        ]
    )
    assert "'${outputAccount}/default/${outputContainerName}'" in text
    assert "'${outputAccount}/default/${inputContainerName}'" in text
    # The table role's scope is the one runs table, not the account.
    assert re.search(
        r"^resource runsTable 'Microsoft\.Storage/storageAccounts/tableServices/tables@[\d-]+' existing = "
        r"if \(!empty\(outputStorageAccountName\)\) \{\n  name: '\$\{outputAccount\}/default/\$\{runsTableName\}'\n\}",
        text,
        re.M,
    )


def test_host_and_output_storage_are_separate_accounts():
    main = MAIN.read_text()
    assert "var outputStorageAccountName = 'stout${resourceToken}'" in main
    rbac = re.search(r"module rbac './rbac.bicep' = \{.*?\n\}", main, re.S).group(0)
    assert "hostStorageAccountName: storage.outputs.name" in rbac
    assert "outputStorageAccountName: outputStorage.outputs.name" in rbac
    assert "runsTableName: runsTableName" in rbac
    host = re.search(r"module storage 'br/public:[^']+' = \{.*?\n\}", main, re.S).group(0)
    output = re.search(r"module outputStorage 'br/public:[^']+' = \{.*?\n\}", main, re.S).group(0)
    assert "outputContainerName" not in host and "inputContainerName" not in host
    assert "{ name: runsQueueName }" in host and "deploymentContainerName" in host
    assert "{ name: outputContainerName, publicAccess: 'None' }" in output
    assert "{ name: inputContainerName, publicAccess: 'None' }" in output
    # The runs table is created in the output account (the app's role is scoped to it), never the host's.
    assert re.search(r"tableServices: \{\s+tables: \[\s+\{ name: runsTableName \}\s+\]\s+\}", output)
    assert "tableServices" not in host
    assert "daysAfterModificationGreaterThan: outputLifecycleDays" in output
    for account in (host, output):
        assert "allowSharedKeyAccess: false" in account


def test_the_runs_table_is_the_apps_setting():
    main = MAIN.read_text()
    params = bicep_params(main)
    assert params["runsTableName"]["default"] == SETTINGS["RUNS_TABLE"].default
    assert bicep_object_keys(main, "appSettings")["RUNS_TABLE"] == "runsTableName"
    assert "RUNS_TABLE_SERVICE_URL" not in strip_bicep(main), "the app derives it from OUTPUT_STORAGE_ACCOUNT_URL"


def test_lifecycle_rule_is_a_backstop_behind_the_retention():
    """What removes what: the retention sweep deletes runs after RUN_RETENTION_DAYS; the lifecycle rule only
    what it never saw, later (its period exceeds the retention), and nothing while runs are kept for ever."""
    main = MAIN.read_text()
    params = bicep_params(main)
    retention, backstop = params["runRetentionDays"], params["outputBackstopDays"]
    assert retention["default"] == SETTINGS["RUN_RETENTION_DAYS"].default
    assert backstop["default"] == str(BACKSTOP_DAYS)
    assert int(str(backstop["default"])) > int(str(retention["default"])), "the backstop outlasts the retention"
    assert backstop.get("minValue") == 1
    assert "var retentionIsOn = runRetentionDays > 0" in main
    # backstop_goes_on (tests/deploy/contract.py) is this condition; the hook and the script are checked with it.
    assert (
        "var outputLifecycleDays = !retentionIsOn || outputBackstopDays > runRetentionDays ? outputBackstopDays : "
        "fail('outputBackstopDays (${outputBackstopDays}) must exceed runRetentionDays (${runRetentionDays})"
    ) in main
    output = re.search(r"module outputStorage 'br/public:[^']+' = \{.*?\n\}", main, re.S).group(0)
    rule = re.search(r"managementPolicyRules: \[.*?\n    \]", output, re.S).group(0)
    assert "enabled: retentionIsOn" in rule and "daysAfterModificationGreaterThan: outputLifecycleDays" in rule
    assert "prefixMatch: ['${outputContainerName}/']" in rule  # _webhooks/ markers too: the sweep removes them first


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
    assert not re.search(r"^param outputRetentionDays ", main, re.M), (
        "replaced by runRetentionDays + outputBackstopDays"
    )
    assert re.search(r"^param createOpenAi bool = false$", main, re.M)
    assert re.search(r"^param openAiResourceId string", main, re.M)
    assert "prefixMatch: ['${outputContainerName}/']" in main
    assert "disableLocalAuth: true" in main
    assert re.search(r"name: 'FC1'\s+tier: 'FlexConsumption'", main)
    assert re.search(r"^output FUNCTION_URL string = 'https://\$\{[^}]+\}/api/runs'$", main, re.M)
    # The client's base URL (azd env get-value CI_FILES_URL; the postdeploy hook prints it): no /api.
    assert re.search(r"^output CI_FILES_URL string = 'https://\$\{api\.outputs\.defaultHostname\}'$", main, re.M)
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
    defaults = bicep_params(main)
    for name, mapping in params.items():
        assert re.search(rf"^param {name} ", main, re.M), f"main.parameters.json: unknown parameter {name}"
        # ${NAME=default}: azd's default when the environment lacks NAME must be the template's own.
        given = re.fullmatch(r"\$\{(\w+)(?:=([^}]*))?\}", mapping["value"])
        assert given, f"{name}: {mapping['value']}"
        if given.group(2) is not None:
            assert given.group(2) == defaults[name]["default"], f"{name}: azd default {given.group(2)!r}"
    assert params["runRetentionDays"]["value"] == "${RUN_RETENTION_DAYS=30}"
    assert params["outputBackstopDays"]["value"] == f"${{OUTPUT_BACKSTOP_DAYS={BACKSTOP_DAYS}}}"
    required = re.findall(r"^param (\w+) \w+$", main, re.M)  # no default value
    assert set(required) <= set(params), "azd must supply every parameter without a default"
