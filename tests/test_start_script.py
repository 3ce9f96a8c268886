"""scripts/start.sh in a scratch copy of the repo, with a stand-in `func` on PATH (Core Tools cannot be
installed here): the steps in order, Azurite's blob, queue and table really serving while `func` runs and
stopped after, idempotent, refusing without the Azure OpenAI settings, --dry-run changing nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from local_azure.azurite import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]

# Stands in for Core Tools: answers `--version`, and for `start` records what it finds running.
FAKE_FUNC = r"""#!/usr/bin/env python3
import json, os, shutil, sys, urllib.error, urllib.request
if sys.argv[1:] == ["--version"]:
    print("4.0.7030")
    sys.exit(0)
def answers(port, path):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/devstoreaccount1{path}", timeout=5)
    except urllib.error.HTTPError as error:
        return error.headers.get("Server", "")  # Azurite answers 403 without credentials, naming itself
    return "ok"
record = {
    "argv": sys.argv[1:],
    "blob": answers(os.environ["AZURITE_BLOB_PORT"], "?comp=list"),
    "queue": answers(os.environ["AZURITE_QUEUE_PORT"], "?comp=list"),
    "table": answers(os.environ["AZURITE_TABLE_PORT"], "/Tables"),
    "python": shutil.which("python"),
    "virtual_env": os.environ.get("VIRTUAL_ENV"),
    "output_storage": os.environ.get("OUTPUT_STORAGE_CONNECTION_STRING", ""),
}
with open(os.environ["FUNC_RECORD"], "a") as out:
    out.write(json.dumps(record) + "\n")
"""


def serving(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """The files start.sh uses, a light requirements.txt (the real one takes minutes), the repo's node_modules."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "scripts" / "start.sh", repo / "scripts" / "start.sh")
    shutil.copy(REPO_ROOT / "local.settings.json.example", repo / "local.settings.json.example")
    (repo / "requirements.txt").write_text("# the app's requirements would be here\n")
    (repo / "requirements-local.txt").write_text("-r requirements.txt\nsetuptools==80.9.0\n")
    shutil.copy(REPO_ROOT / "pyproject.toml", repo / "pyproject.toml")
    shutil.copytree(
        REPO_ROOT / "ci_files_client", repo / "ci_files_client", ignore=shutil.ignore_patterns("__pycache__")
    )
    (repo / "node_modules").symlink_to(REPO_ROOT / "node_modules")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "func").write_text(FAKE_FUNC)
    (bin_dir / "func").chmod(0o755)
    return repo


def start(repo: Path, *args: str, func: bool = True, **settings: str) -> subprocess.CompletedProcess[str]:
    # A developer's shell: none of the test session's settings (its CA in SSL_CERT_FILE would break pip).
    dropped = ("AZURE_OPENAI_", "VIRTUAL_ENV", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    # Without the test's own venv on PATH: the script must find Python 3.11 by itself.
    path = [p for p in env["PATH"].split(os.pathsep) if Path(p) != Path(sys.executable).parent]
    if func:
        path.insert(0, str(repo.parent / "bin"))
    env.update(PATH=os.pathsep.join(path), FUNC_RECORD=str(repo.parent / "func.jsonl"), **settings)
    return subprocess.run(
        ["bash", str(repo / "scripts" / "start.sh"), *args],
        cwd=repo.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def steps(output: str) -> list[str]:
    return re.findall(r"^\[(\d)/5\]", output, re.MULTILINE)


def test_start_runs_func_with_azurite_up_then_stops_it(scratch: Path) -> None:
    ports = {name: str(free_port()) for name in ("AZURITE_BLOB_PORT", "AZURITE_QUEUE_PORT", "AZURITE_TABLE_PORT")}
    settings = {
        "AZURE_OPENAI_ENDPOINT": "https://example.openai.azure.com",
        "AZURE_OPENAI_DEPLOYMENT": "gpt-4.1",
        "AZURE_OPENAI_API_KEY": "not-a-real-key",
        **ports,
    }
    first = start(scratch, "--", "--port", "7077", **settings)

    assert first.returncode == 0, first.stdout + first.stderr
    assert steps(first.stdout) == ["1", "2", "3", "4", "5"]
    record = json.loads((scratch.parent / "func.jsonl").read_text())
    assert record["argv"] == ["start", "--port", "7077"]
    # The three services answered while func ran.
    assert record["blob"].startswith("Azurite-Blob/") and record["queue"].startswith("Azurite-Queue/"), record
    assert record["table"].startswith("Azurite-Table/"), record
    assert record["virtual_env"] == str(scratch / ".venv")
    assert record["python"] == str(scratch / ".venv" / "bin" / "python")
    assert (scratch / ".venv" / "bin" / "ci-files").exists()  # the client is ready for the second terminal
    assert f"BlobEndpoint=http://127.0.0.1:{ports['AZURITE_BLOB_PORT']}/" in record["output_storage"]
    assert f"TableEndpoint=http://127.0.0.1:{ports['AZURITE_TABLE_PORT']}/" in record["output_storage"]
    assert "Stopped Azurite (blob, queue and table)." in first.stdout
    assert not any(serving(int(port)) for port in ports.values())
    assert {p.name for p in (scratch / ".azurite").iterdir()} >= {"blob.log", "queue.log", "table.log"}
    created = json.loads((scratch / "local.settings.json").read_text())["Values"]
    assert created["OUTPUT_STORAGE_CONNECTION_STRING"] == created["RUNS_QUEUE_STORAGE"] == "UseDevelopmentStorage=true"

    (scratch / "local.settings.json").write_text(json.dumps({"Values": {"MINE": "1"}}))
    again = start(scratch, **settings)
    assert again.returncode == 0, again.stdout + again.stderr
    assert ".venv is up to date with requirements-local.txt and pyproject.toml" in again.stdout
    assert "local.settings.json exists: kept as it is" in again.stdout
    assert json.loads((scratch / "local.settings.json").read_text()) == {"Values": {"MINE": "1"}}
    assert len((scratch.parent / "func.jsonl").read_text().splitlines()) == 2
    assert not serving(int(ports["AZURITE_BLOB_PORT"]))


def test_start_refuses_without_the_openai_settings(scratch: Path) -> None:
    refused = start(scratch, AZURE_OPENAI_API_KEY="k")  # the example's endpoint is a <placeholder>

    assert refused.returncode == 1
    missing = [line for line in refused.stderr.splitlines() if line.startswith("missing: ")]
    assert missing == [
        "missing: AZURE_OPENAI_ENDPOINT is not set: set it in local.settings.json (Values) or the environment, "
        "e.g. AZURE_OPENAI_ENDPOINT=https://<resource>.openai.azure.com"
    ]
    assert steps(refused.stdout) == ["1", "2"]
    assert not (scratch.parent / "func.jsonl").exists() and not (scratch / ".azurite").exists()


def test_start_names_a_missing_func_and_dry_run_changes_nothing(scratch: Path) -> None:
    settings = {"AZURE_OPENAI_ENDPOINT": "https://e.openai.azure.com", "AZURE_OPENAI_DEPLOYMENT": "d"}
    dry = start(scratch, "--dry-run", AZURE_OPENAI_API_KEY="k", **settings)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert steps(dry.stdout) == ["1", "2", "3", "4", "5"]
    assert "would run: func start" in dry.stdout and "would run: " in dry.stdout.split("[4/5]")[1]
    untouched = ["ci_files_client", "local.settings.json.example", "node_modules", "pyproject.toml"]
    assert sorted(p.name for p in scratch.iterdir()) == [
        *untouched,
        "requirements-local.txt",
        "requirements.txt",
        "scripts",
    ]
    no_func = start(scratch, func=False, AZURE_OPENAI_API_KEY="k", **settings)
    assert no_func.returncode == 1
    assert "missing: Azure Functions Core Tools 4 (`func`). Install it: `npm install -g" in no_func.stderr
    assert "Or try it all without Azure: scripts/start.sh --offline" in no_func.stderr

    assert not (scratch.parent / "func.jsonl").exists()


def test_offline_needs_neither_func_nor_azure_settings(scratch: Path) -> None:
    """--offline --dry-run: no Core Tools, no Azure OpenAI settings, nothing changed; what it would start."""
    dry = start(scratch, "--offline", "--dry-run", "--port", "7099", func=False)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert steps(dry.stdout) == ["1", "2", "3", "4", "5"] and dry.stderr == ""
    assert (
        "Functions Core Tools: not installed; --offline runs the app on the project's minimal local host" in dry.stdout
    )
    assert "would run: .venv/bin/python -m pip install -r requirements-local.txt" in dry.stdout
    assert "would run: .venv/bin/python -m pip install --no-build-isolation --no-deps -e ." in dry.stdout
    assert "would run: .venv/bin/python -m local_azure.offline --port 7099" in dry.stdout
    assert not (scratch / ".venv").exists() and not (scratch / "local.settings.json").exists()
    refused = start(scratch, "--offline", "--", "--cors", "*", func=False)
    assert refused.returncode == 2 and "--offline takes no func start arguments" in refused.stderr


def test_start_script_is_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (scripts/test.sh installs it)")
    result = subprocess.run(["shellcheck", str(REPO_ROOT / "scripts" / "start.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
