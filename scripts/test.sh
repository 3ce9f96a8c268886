#!/usr/bin/env bash
# One command: install everything the tests need on a clean machine, then run them.
#   Python venv (.venv) from requirements-dev.txt, azure-cli's own venv (.azcli-venv, cached) from
#   requirements-azcli.txt, Node packages (Azurite 3.37.0 on Node 22) from
#   package-lock.json, shellcheck from Debian when missing. The tests start Azurite, the managed
#   identity endpoint and the Responses emulator themselves; tests/test_offline.py runs
#   `scripts/start.sh --offline` on this checkout (a free port), a prompt with `ci-files`, then Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
npm ci --no-audit --no-fund --loglevel=error
# azure-cli for tests/deploy/test_az_commands.py, in its own venv (it pins its own azure-* libraries; ~700 MB):
# made again only when missing or when requirements-azcli.txt changed.
azcli_stamp=$(sha256sum requirements-azcli.txt | cut -d' ' -f1)
if [[ ! -x .azcli-venv/bin/python || $(cat .azcli-venv/requirements.sha256 2>/dev/null) != "$azcli_stamp" ]]; then
  rm -rf .azcli-venv && python3 -m venv .azcli-venv
  .azcli-venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-azcli.txt
  printf '%s\n' "$azcli_stamp" >.azcli-venv/requirements.sha256
fi
if ! command -v shellcheck >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq shellcheck >/dev/null) || echo "warning: could not install shellcheck" >&2
fi

.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
