"""The azd hooks (azure.yaml, scripts/preprovision.*), run offline."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from tests.deploy.deploy_script import HOOK, OPENAI_ID, ROOT


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
