"""Every `az` command the deploy script can run, and every `az` line of the deploy docs, through azure-cli's
own command loader and argument parser (tests/deploy/az_cli_check.py), offline and without a login.

azure-cli (pinned in requirements-azcli.txt) lives in its own virtual environment, .azcli-venv, that
scripts/test.sh creates; it runs as ONE subprocess for all command lines (loading the CLI takes seconds).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.deploy_script import (
    BASE_ARGS,
    OPENAI_ID,
    ROOT,
    SCRIPT,
    SECRETS_ENV,
    dry_run_commands,
    real_run_argv,
)

AZCLI_VENV = ROOT / ".azcli-venv"
AZCLI_PYTHON = AZCLI_VENV / "bin" / "python"
CHECKER = Path(__file__).resolve().parent / "az_cli_check.py"
AZCLI_VERSION = re.search(r"^azure-cli==(\S+)$", (ROOT / "requirements-azcli.txt").read_text(), re.M)
DOCS = [ROOT / "README.md", ROOT / "docs" / "deploy.md"]

# Extension commands the docs may show (with a word that they need the extension); never the script.
ALLOWED_UNCHECKED = {"monitor app-insights query", "monitor log-analytics query"}

ALL_OPTIONS = [
    "--resource-group",
    "my-rg",
    "--storage-account",
    "mystore1",
    "--output-storage-account",
    "mystore1out",
    "--openai-endpoint",
    "https://x.openai.azure.com",
    "--openai-api-version",
    "preview",
    "--openai-deployment",
    "my-dep",
    "--run-retention-days",
    "3",
    "--output-backstop-days",
    "10",
    "--callback-allowed-hosts",
    "hooks.example.com,Other.Example.org",
    "--owner-tag",
    "team-a",
]


def script_branches(tmp_path: Path) -> dict[str, list[list[str]]]:
    """Every branch of scripts/deploy.sh: its az command lines, without the leading "az"."""
    branches: dict[str, list[list[str]]] = {}

    def dry(name: str, *args: str, **env: str) -> None:
        folder = tmp_path / re.sub(r"\W+", "-", name)
        folder.mkdir()
        branches[name] = [c[1:] for c in dry_run_commands(folder, *args, **env) if c[0] == "az"]

    def real(name: str, args: list[str], **env: str) -> None:
        folder = tmp_path / re.sub(r"\W+", "-", name)
        folder.mkdir()
        proc, calls = real_run_argv(folder, args, **env)
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
        branches[name] = calls

    dry("dry-run: new app, endpoint looked up, publish")
    dry("dry-run: endpoint given, every option, secrets, skip publish", *ALL_OPTIONS, "--skip-publish", **SECRETS_ENV)
    real("real run: new app (stand-in az)", BASE_ARGS)
    # The az commands the script tells its user to run (the function key; the clean-up after a failure).
    advice = []
    for name, env in {"done": {}, "failed": {"FAKE_FAIL": "functionapp create"}}.items():
        folder = tmp_path / f"advice-{name}"
        folder.mkdir()
        proc, _ = real_run_argv(folder, BASE_ARGS, **env)
        assert (proc.returncode == 0) == (name == "done"), proc.stderr
        told = re.findall(r"(?:^|: )(az [a-z][^\n]*)$", proc.stderr, re.M)
        told += re.findall(r"\$\((az [a-z][^)\n]*)\)", proc.stderr)  # export CI_FILES_KEY="$(az ...)"
        advice += [shlex.split(m)[1:] for m in told]
    branches["commands the script advises"] = advice
    real(
        "real run: existing app and storage, every option, secrets (stand-in az)",
        [*BASE_ARGS, *ALL_OPTIONS, "--skip-publish"],
        FAKE_APP_EXISTS="1",
        FAKE_STORAGE_EXISTS="1",
        **SECRETS_ENV,
    )
    return branches


def code_blocks(text: str) -> list[str]:
    """Shell code blocks (```bash, sh, shell), also indented ones inside lists."""
    blocks = re.findall(r"^[ \t]*```(?:bash|sh|shell)\n(.*?)^[ \t]*```", text, re.M | re.S)
    return [textwrap.dedent(body) for body in blocks]


def shell_commands(block: str) -> list[list[str]]:
    """The `az ...` command lines of a shell snippet, as the shell would split them (no expansion)."""
    text = block.replace("\\\n", " ")
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        logical.append(pending)
        pending = ""
    assert not pending, f"unbalanced quotes in:\n{block}"
    commands = []
    for line in logical:
        lexer = shlex.shlex(line, posix=True, punctuation_chars="();|&")
        lexer.whitespace_split = True
        segment: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set("();|&"):
                words = list(segment)
                while words and re.fullmatch(r"\w+=\S*", words[0]):
                    words.pop(0)  # VAR=value before the command, or VAR=$( ... )
                if words and words[0] == "az":
                    commands.append(words[1:])
                segment = []
            else:
                segment.append(token)
    return commands


def doc_commands() -> dict[str, list[list[str]]]:
    found = {}
    for path in DOCS:
        if path.exists():
            found[path.name] = [c for block in code_blocks(path.read_text()) for c in shell_commands(block)]
    return found


# Lines the check must refuse, and why. The first is the line that broke real deployments (issue 15).
MUST_FAIL = {
    "old --ids lookup": (
        ["cognitiveservices", "account", "show", "--ids", OPENAI_ID, "--query", "properties.customSubDomainName"]
        + ["--output", "tsv"],
        "the following arguments are required: --resource-group/-g, --name/-n",
    ),
    "abbreviated option": (
        ["group", "create", "--name", "rg", "--location", "eastus2", "--tag", "a=b"],
        "unrecognized arguments: --tag a=b",
    ),
    "unknown option": (
        ["group", "create", "--name", "rg", "--location", "eastus2", "--colour", "red"],
        "unrecognized arguments: --colour red",
    ),
    "value outside choices": (
        ["storage", "account", "create", "--resource-group", "rg", "--name", "st1", "--sku", "Standard_XYZ"],
        "'Standard_XYZ' is not a valid value for '--sku'",
    ),
    "missing required argument": (["identity", "create", "--name", "id-x"], "--resource-group/-g"),
    "unknown command": (["functionapp", "teleport", "--name", "x"], "unknown command: az functionapp teleport"),
    "invalid value type": (
        ["functionapp", "scale", "config", "set", "--resource-group", "rg", "--name", "x"]
        + ["--maximum-instance-count", "many"],
        "invalid",
    ),
}


def run_checker(lines: list[list[str]]) -> list[dict[str, Any]]:
    if not AZCLI_PYTHON.exists():
        pytest.fail(
            f"{AZCLI_PYTHON} is missing: scripts/test.sh creates it "
            "(python3 -m venv .azcli-venv && .azcli-venv/bin/pip install -r requirements-azcli.txt)"
        )
    config = AZCLI_VENV / "az-config"  # azure-cli's command index cache; never a login
    config.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(config),
        "AZURE_CONFIG_DIR": str(config),
        "AZURE_CORE_COLLECT_TELEMETRY": "no",
        "AZURE_CORE_NO_COLOR": "true",
        "AZURE_CORE_ONLY_SHOW_ERRORS": "true",
    }
    proc = subprocess.run(
        [str(AZCLI_PYTHON), str(CHECKER)],
        input=json.dumps(lines),
        capture_output=True,
        text=True,
        env=env,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout)
    assert len(results) == len(lines)
    return results


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every command line of every source, checked in one azure-cli process."""
    branches = script_branches(tmp_path_factory.mktemp("branches"))
    docs = doc_commands()
    unique: dict[tuple[str, ...], None] = {}
    must_fail = [line for line, _ in MUST_FAIL.values()]
    for lines in [*branches.values(), *docs.values(), must_fail]:
        for line in lines:
            unique[tuple(line)] = None
    keys = list(unique)
    results = dict(zip(keys, run_checker([list(k) for k in keys]), strict=True))
    return {"branches": branches, "docs": docs, "results": results}


def command_words(line: list[str]) -> str:
    words = []
    for word in line:
        if word.startswith("-"):
            break
        words.append(word)
    return " ".join(words)


def describe(line: list[str], result: dict[str, Any]) -> str:
    return f"az {shlex.join(line)}\n    -> {result['status']}: {result['reason']}"


def report_not_fully_checked(where: str, lines: list[list[str]], results: dict) -> None:
    for line in lines:
        result = results[tuple(line)]
        if result["status"] in ("unchecked", "parsed"):
            message = f"{where}: not fully checked offline ({result['reason']}): az {result['command']}"
            print(message)
            warnings.warn(message, stacklevel=2)


def test_azure_cli_version_is_pinned():
    assert AZCLI_VERSION, "requirements-azcli.txt must pin azure-cli==<version>"


def test_script_branches_are_distinct(checked):
    """The branches really take different paths (otherwise the coverage below means little)."""
    names = {name: {command_words(c) for c in lines} for name, lines in checked["branches"].items()}
    new = names["dry-run: new app, endpoint looked up, publish"]
    real_new = names["real run: new app (stand-in az)"]
    existing = names["real run: existing app and storage, every option, secrets (stand-in az)"]
    advice = names["commands the script advises"]
    assert advice == {"functionapp keys list", "group delete"}
    assert {"cognitiveservices account show", "functionapp create", "storage account check-name"} <= new
    assert "storage account check-name" not in existing and "functionapp create" not in existing
    assert "functionapp deployment config set" in existing
    assert real_new == new
    lookups = [
        c for lines in checked["branches"].values() for c in lines if command_words(c).startswith("cognitiveservices")
    ]
    assert {tuple(c[c.index("--query") :]) for c in lookups} == {
        ("--query", "properties.customSubDomainName", "--output", "tsv"),  # endpoint looked up
        ("--query", "id", "--output", "tsv"),  # endpoint given: only checks the account exists
    }


@pytest.mark.parametrize(
    "branch",
    [
        "dry-run: new app, endpoint looked up, publish",
        "dry-run: endpoint given, every option, secrets, skip publish",
        "real run: new app (stand-in az)",
        "real run: existing app and storage, every option, secrets (stand-in az)",
        "commands the script advises",
    ],
)
def test_every_script_command_passes_the_azure_cli_parser(checked, branch):
    lines = checked["branches"][branch]
    assert lines, f"{branch}: no az command"
    results = checked["results"]
    bad = [describe(line, results[tuple(line)]) for line in lines if results[tuple(line)]["status"] == "error"]
    assert not bad, f"{branch}: azure-cli refuses:\n" + "\n".join(bad)
    extension = [line for line in lines if results[tuple(line)]["status"] == "unchecked"]
    assert not extension, f"{branch}: the script must not need a CLI extension: {extension}"
    report_not_fully_checked(branch, lines, results)


@pytest.mark.parametrize("doc", [p.name for p in DOCS])
def test_every_doc_command_passes_the_azure_cli_parser(checked, doc):
    lines = checked["docs"].get(doc, [])
    if doc == "deploy.md":
        assert len(lines) >= 10, "docs/deploy.md shows the deploy, keys and logs commands"
    results = checked["results"]
    bad = [describe(line, results[tuple(line)]) for line in lines if results[tuple(line)]["status"] == "error"]
    assert not bad, f"{doc}: azure-cli refuses:\n" + "\n".join(bad)
    for line in lines:
        result = results[tuple(line)]
        if result["status"] == "unchecked":
            assert result["command"] in ALLOWED_UNCHECKED, describe(line, result)
    report_not_fully_checked(doc, lines, results)


@pytest.mark.parametrize("case", sorted(MUST_FAIL))
def test_the_check_refuses_bad_lines(checked, case):
    line, reason = MUST_FAIL[case]
    result = checked["results"][tuple(line)]
    assert result["status"] == "error", describe(line, result)
    assert reason in result["reason"], describe(line, result)


def test_extension_commands_are_reported_not_passed():
    line = ["monitor", "app-insights", "query", "--app", "a", "--analytics-query", "traces"]
    (result,) = run_checker([line])
    assert result == {
        "status": "unchecked",
        "command": "monitor app-insights query",
        "reason": "needs the CLI extension application-insights",
    }


def test_every_az_command_in_the_script_is_exercised(checked):
    """Each `az <command>` written in scripts/deploy.sh appears in at least one checked branch."""
    text = SCRIPT.read_text()
    written = set()
    for match in re.finditer(r"(?:^|[\s(\"])az ((?:[a-z][a-z-]* )+)--", text, re.M):
        line = text[text.rfind("\n", 0, match.start()) + 1 : text.find("\n", match.end())]
        if not re.search(r"\b(die|info) ", line):  # a hint inside an error message, never run
            written.add(match.group(1).strip())
    assert {"cognitiveservices account show", "functionapp create", "role assignment create"} <= written
    checked_names = {r["command"] for r in checked["results"].values() if r["status"] in ("ok", "parsed")}
    missing = written - checked_names
    assert not missing, f"az commands of the script that no branch ran: {sorted(missing)}"


def test_doc_extraction_reads_continuations_subshells_and_comments():
    block = textwrap.dedent(
        """\
        # a comment: az group delete --name gone
        HOST=$(az functionapp show -g "$RG" -n "$APP" --query defaultHostName -o tsv)
        az rest --method post \\
          --body '{"query": "AppTraces
          | take 1"}'
        echo done && az account show --output none
        """
    )
    assert shell_commands(block) == [
        ["functionapp", "show", "-g", "$RG", "-n", "$APP", "--query", "defaultHostName", "-o", "tsv"],
        ["rest", "--method", "post", "--body", '{"query": "AppTraces\n  | take 1"}'],
        ["account", "show", "--output", "none"],
    ]
