"""Run scripts/deploy.sh offline: --dry-run, or a real run against a stand-in `az`/`func` that logs each call.

Shared by the tests of tests/deploy/ (what the script does; test_az_commands.py: whether azure-cli's own
parser accepts every command it can run); also the helpers that read the command lines it prints.
"""

from __future__ import annotations

import shlex
import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "deploy.sh"
HOOK = ROOT / "scripts" / "preprovision.sh"
POSTDEPLOY = ROOT / "scripts" / "postdeploy.sh"
BASH = shutil.which("bash") or "/bin/bash"

APP = "cif-test"
RG = "rg-cif-test"
STORAGE = "stciftest"
OUTPUT_STORAGE = "stciftestout"
OPENAI_ID = "/subscriptions/1111/resourceGroups/rg-ai/providers/Microsoft.CognitiveServices/accounts/aoai-test"
BASE_ARGS = ["--name", APP, "--location", "eastus2", "--openai-resource-id", OPENAI_ID]
# Valid-looking secrets for the optional secret settings (never real ones).
SECRETS_ENV = {
    "CALLBACK_SIGNING_SECRET": "whsec_dGVzdC1zaWduaW5nLXNlY3JldA==",
    "AZURE_OPENAI_WEBHOOK_SECRET": "whsec_dGVzdC13ZWJob29rLXNlY3JldA==",
}

# A stand-in az: logs every call (FAKE_LOG: "az <args>" lines; FAKE_ARGV_LOG: the exact arguments,
# separated by \x1f); answers the checks and queries with fake values. Switches (environment):
# FAKE_LOGGED_OUT, FAKE_APP_EXISTS, FAKE_STORAGE_EXISTS, FAKE_NAME_AVAILABLE, FAKE_NO_OPENAI,
# FAKE_FAIL (a command prefix that fails, e.g. "functionapp create"); FAKE_FILES_LOG gets @file contents.
FAKE_AZ = r"""#!/bin/sh
echo "az $*" >> "$FAKE_LOG"
if [ -n "${FAKE_ARGV_LOG:-}" ]; then
  sep=$(printf '\037'); line=""
  for a in "$@"; do line="$line$a$sep"; done
  printf '%s\n' "$line" >> "$FAKE_ARGV_LOG"
fi
for a in "$@"; do  # the content of an @file argument (how the script hands over secrets)
  case $a in @/*) cat "${a#@}" >> "${FAKE_FILES_LOG:-/dev/null}" ;; esac
done
if [ -n "${FAKE_FAIL:-}" ]; then
  case "$*" in "$FAKE_FAIL"*) echo "ERROR: (Conflict) fake failure" >&2; exit 1 ;; esac
fi
case "$*" in
  "account show --output none") [ "${FAKE_LOGGED_OUT:-0}" = 1 ] && exit 1; exit 0 ;;
  "functionapp list-flexconsumption-locations"*) printf 'eastus2\nwestus3\n'; exit 0 ;;
  "cognitiveservices account show"*)
    [ "${FAKE_NO_OPENAI:-0}" = 1 ] && { echo "ERROR: (ResourceNotFound)" >&2; exit 3; }
    echo aoai-test; exit 0 ;;
  "storage account show"*) [ "${FAKE_STORAGE_EXISTS:-0}" = 1 ] && exit 0; exit 3 ;;
  "storage account check-name"*) echo "${FAKE_NAME_AVAILABLE:-true}"; exit 0 ;;
  "functionapp show --resource-group "*" --query id "*) [ "${FAKE_APP_EXISTS:-0}" = 1 ] && exit 0; exit 3 ;;
  *--query*) echo "fake-$(echo "$*" | sed 's/.*--query \([^ ]*\).*/\1/')"; exit 0 ;;
esac
exit 0
"""
FAKE_FUNC = '#!/bin/sh\necho "func $*" >> "$FAKE_LOG"\n'


def fake_tools(tmp_path: Path, *, az: str | None = None, func: bool = False) -> Path:
    """A PATH with the few tools the script needs, plus optional fake az/func (never the real ones)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("tr", "cut", "sed", "dirname", "cat", "grep", "mktemp", "rm"):
        real = shutil.which(tool)
        if real and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(real)
    for name, body in {"az": az, "func": FAKE_FUNC if func else None}.items():
        if body is not None:
            path = bin_dir / name
            path.write_text(body)
            path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def run_script(
    tmp_path: Path, args: list[str], bin_dir: Path | None = None, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = bin_dir or fake_tools(tmp_path)
    log = tmp_path / "calls.log"
    log.touch()
    clean_env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "FAKE_LOG": str(log), **env}
    proc = subprocess.run(
        [BASH, str(SCRIPT), *args], capture_output=True, text=True, env=clean_env, timeout=60, cwd=tmp_path
    )
    return proc, log.read_text().splitlines()


def real_run_argv(
    tmp_path: Path, args: list[str], **env: str
) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """A real run against the stand-in az/func; every az call's exact arguments (without "az")."""
    argv_log = tmp_path / "argv.log"
    argv_log.touch()
    bin_dir = fake_tools(tmp_path, az=FAKE_AZ, func=True)
    proc, _ = run_script(tmp_path, args, bin_dir, FAKE_ARGV_LOG=str(argv_log), **env)
    calls = [line.split("\x1f")[:-1] for line in argv_log.read_text().splitlines()]
    return proc, calls


def dry_run_commands(tmp_path: Path, *extra: str, **env: str) -> list[list[str]]:
    # A fake az/func that would log any call proves --dry-run runs nothing.
    bin_dir = fake_tools(tmp_path, az=FAKE_AZ, func=True)
    proc, calls = run_script(tmp_path, ["--dry-run", *BASE_ARGS, *extra], bin_dir, **env)
    assert proc.returncode == 0, proc.stderr
    assert calls == [], f"--dry-run executed commands: {calls}"
    lines = proc.stdout.splitlines()
    assert lines and all(line.startswith("+ ") for line in lines), proc.stdout
    return [shlex.split(line[2:]) for line in lines]


# Reading the command lines.


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
