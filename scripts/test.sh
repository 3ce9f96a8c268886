#!/usr/bin/env bash
# One command: install everything the tests need on a clean machine, then run them.
#   Python venv (.venv) from requirements-dev.txt, Node packages (Azurite 3.37.0 on Node 22) from
#   package-lock.json, shellcheck from Debian when missing. The tests start Azurite, the managed
#   identity endpoint and the Responses emulator themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
npm ci --no-audit --no-fund --loglevel=error
if ! command -v shellcheck >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq shellcheck >/dev/null) || echo "warning: could not install shellcheck" >&2
fi

.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
