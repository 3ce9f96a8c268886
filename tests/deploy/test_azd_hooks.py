"""The azd hooks (azure.yaml, scripts/preprovision.*, scripts/postdeploy.*), run offline."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from tests.deploy.contract import BACKSTOP_DAYS, SETTINGS, backstop_goes_on
from tests.deploy.deploy_script import HOOK, OPENAI_ID, POSTDEPLOY, ROOT


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


def run_hook(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(HOOK)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "AZURE_OPENAI_RESOURCE_ID": OPENAI_ID, **env},
        timeout=30,
    )


@pytest.mark.parametrize(("retention", "backstop"), [(30, 60), (30, 31), (30, 30), (60, 30), (0, 1), (3650, 3651)])
def test_preprovision_hook_keeps_the_backstop_behind_the_retention(retention, backstop):
    """The hook decides as main.bicep's guard does, before anything is deployed."""
    proc = run_hook(RUN_RETENTION_DAYS=str(retention), OUTPUT_BACKSTOP_DAYS=str(backstop))
    assert (proc.returncode == 0) is backstop_goes_on(retention, backstop), proc.stderr
    if proc.returncode:
        assert f"OUTPUT_BACKSTOP_DAYS ({backstop}) must exceed RUN_RETENTION_DAYS ({retention})" in proc.stderr
    elif retention:
        assert f"Runs: deleted after {retention} days (RUN_RETENTION_DAYS); lifecycle backstop after {backstop}" in (
            proc.stdout
        )
    else:
        assert "Runs: kept for ever (RUN_RETENTION_DAYS=0; the lifecycle backstop is off)" in proc.stdout


def test_preprovision_hook_defaults_and_bad_retention_values():
    ok = run_hook()
    assert ok.returncode == 0, ok.stderr
    retention = SETTINGS["RUN_RETENTION_DAYS"].default
    assert f"Runs: deleted after {retention} days (RUN_RETENTION_DAYS); lifecycle backstop after {BACKSTOP_DAYS}" in (
        ok.stdout
    )
    for name, value in [
        ("RUN_RETENTION_DAYS", "3651"),
        ("RUN_RETENTION_DAYS", "-1"),
        ("RUN_RETENTION_DAYS", "30d"),
        ("OUTPUT_BACKSTOP_DAYS", "0"),
        ("OUTPUT_BACKSTOP_DAYS", "1e9"),
    ]:
        bad = run_hook(**{name: value})
        assert bad.returncode == 1 and f"{name} must be a whole number of days" in bad.stderr, (name, value)
    # The setting this replaced stops the deployment with what to set instead (its meaning changed).
    old = run_hook(OUTPUT_RETENTION_DAYS="7")
    assert old.returncode == 1
    assert "OUTPUT_RETENTION_DAYS is replaced" in old.stderr and "RUN_RETENTION_DAYS" in old.stderr
    assert "OUTPUT_BACKSTOP_DAYS" in old.stderr
    ps1 = (ROOT / "scripts" / "preprovision.ps1").read_text()
    for needle in ("OUTPUT_RETENTION_DAYS is replaced", "must exceed RUN_RETENTION_DAYS", "'30'", f"'{BACKSTOP_DAYS}'"):
        assert needle in ps1, needle


def test_azure_yaml_runs_the_hooks():
    every = yaml.safe_load((ROOT / "azure.yaml").read_text())["hooks"]
    hooks = every["preprovision"]
    assert hooks["posix"] == {"shell": "sh", "run": "scripts/preprovision.sh", "continueOnError": False}
    assert hooks["windows"] == {"shell": "pwsh", "run": "scripts/preprovision.ps1", "continueOnError": False}
    assert (ROOT / "scripts" / "preprovision.ps1").exists()
    # A deployed app whose next steps could not be printed is still deployed: not an error.
    after = every["postdeploy"]
    assert after["posix"] == {"shell": "sh", "run": "scripts/postdeploy.sh", "continueOnError": True}
    assert after["windows"] == {"shell": "pwsh", "run": "scripts/postdeploy.ps1", "continueOnError": True}
    ps1 = (ROOT / "scripts" / "postdeploy.ps1").read_text()
    for name in ("CI_FILES_URL", "AZURE_RESOURCE_GROUP", "AZURE_FUNCTION_NAME", "az functionapp keys list"):
        assert name in ps1


def run_postdeploy(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(POSTDEPLOY)], capture_output=True, text=True, env={"PATH": os.environ["PATH"], **env}, timeout=30
    )


def test_postdeploy_prints_what_to_copy_and_paste():
    """What `azd up` ends with: the azd environment's outputs (infra/main.bicep) become the client's settings."""
    outputs = {"CI_FILES_URL": "https://func-abc.azurewebsites.net", "AZURE_RESOURCE_GROUP": "rg-x"}
    proc = run_postdeploy(**outputs, AZURE_FUNCTION_NAME="func-abc")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    assert "export CI_FILES_URL=https://func-abc.azurewebsites.net" in lines
    assert (
        'export CI_FILES_KEY="$(az functionapp keys list --resource-group rg-x --name func-abc '
        '--query functionKeys.default --output tsv)"'
    ) in lines
    assert 'ci-files run "Create test.txt containing hello world"' in lines
    assert "/api/runs" not in proc.stdout, "CI_FILES_URL is the base URL"
    # What a user pastes really sets the variables (the key command's az is not run here).
    pasted = "\n".join(line for line in lines if line.startswith("export CI_FILES_URL"))
    shell = subprocess.run(["sh", "-c", pasted + '\nprintf %s "$CI_FILES_URL"'], capture_output=True, text=True)
    assert shell.stdout == "https://func-abc.azurewebsites.net"

    missing = run_postdeploy(**outputs)
    assert (
        missing.returncode == 1 and "AZURE_FUNCTION_NAME" in missing.stderr and "azd env get-values" in missing.stderr
    )
