#!/usr/bin/env bash
# Start Code Interpreter Files locally with one command.
#
#   scripts/start.sh --offline [--port 7071] [--dry-run]     everything on this machine, no Azure at all
#   scripts/start.sh [--port 7071] [--dry-run] [-- <extra `func start` arguments>]   with your Azure OpenAI
#
# --offline runs the whole service here: Azurite (blob, queue, table), a managed identity endpoint, an
# offline stand-in for Azure OpenAI (no model: it creates files, plots and summarises CSV inputs, and
# says what else it understands) and the app on http://localhost:7071, under `func start` when Azure
# Functions Core Tools 4 are installed, else under the project's minimal local host
# (local_azure/funchost.py: no function keys, one process). Needs Python 3.11 and Node.js 20+ only.
#
# 1. checks the prerequisites and says how to get what is missing: Python 3.11, Node.js 20+ with npm
#    (for Azurite); without --offline also Azure Functions Core Tools 4 (`func`) and `az login` or
#    an API key;
# 2. without --offline: creates local.settings.json from local.settings.json.example when it is
#    missing (storage on Azurite) and refuses to go on while AZURE_OPENAI_ENDPOINT or
#    AZURE_OPENAI_DEPLOYMENT is unset (in local.settings.json or the environment);
# 3. creates .venv and installs requirements-local.txt (the app's requirements.txt, the `ci-files`
#    client's and the offline services' libraries, pinned) and the client (again only when those
#    files or pyproject.toml changed); Node packages (Azurite) from package-lock.json;
# 4. without --offline: starts Azurite's blob, queue and table services in the background, data under
#    .azurite/ (reuses ones already listening), and stops them when this script ends;
# 5. --offline: runs local_azure/offline.py (it starts and stops everything); otherwise `func start`
#    with .venv active.
#
# Safe to run again. --dry-run checks and prints what it would do, changing nothing. Ctrl-C stops all.
# Ports: --port (the app's, 7071); AZURITE_BLOB_PORT, AZURITE_QUEUE_PORT and AZURITE_TABLE_PORT (10000, 10001, 10002; with
# --offline free ones unless set); other ports than those of UseDevelopmentStorage=true are handed to
# the app as connection strings.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DRY_RUN=false
OFFLINE=false
PORT=""
FUNC_ARGS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) DRY_RUN=true ;;
    --offline) OFFLINE=true ;;
    --port)
      [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || { printf 'error: --port needs a port number, e.g. --port 7072\n' >&2; exit 2; }
      PORT=$2
      shift
      ;;
    -h | --help) usage; exit 0 ;;
    --) shift; FUNC_ARGS=("$@"); break ;;
    *) printf 'error: unknown option %s (see --help)\n' "$1" >&2; exit 2 ;;
  esac
  shift
done
if $OFFLINE && [[ ${#FUNC_ARGS[@]} -gt 0 ]]; then
  printf 'error: --offline takes no func start arguments (use --port for the port)\n' >&2
  exit 2
fi
if [[ -n $PORT ]] && ! $OFFLINE; then
  FUNC_ARGS+=(--port "$PORT")
fi

BLOB_PORT=${AZURITE_BLOB_PORT:-10000}
QUEUE_PORT=${AZURITE_QUEUE_PORT:-10001}
TABLE_PORT=${AZURITE_TABLE_PORT:-10002}
AZURITE_DIR="$ROOT/.azurite"
NODE_BIN="$ROOT/node_modules/.bin"
STEPS=5
STEP=0
PROBLEMS=0
STARTED_PIDS=()

step() { STEP=$((STEP + 1)); printf '[%d/%d] %s\n' "$STEP" "$STEPS" "$*"; }
info() { printf '      %s\n' "$*"; }
problem() { PROBLEMS=$((PROBLEMS + 1)); printf 'missing: %s\n' "$*" >&2; }
would() { printf '      would run: %s\n' "$*"; }

# shellcheck disable=SC2317  # called by the EXIT trap
stop_azurite() {
  local pid
  # ${a[@]+...}: an empty array under `set -u` in the bash 3.2 of macOS.
  for pid in ${STARTED_PIDS[@]+"${STARTED_PIDS[@]}"}; do
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  if [[ ${#STARTED_PIDS[@]} -gt 0 ]]; then
    printf 'Stopped Azurite (blob, queue and table).\n'
  fi
  STARTED_PIDS=()
}
trap stop_azurite EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A setting from the environment, else from local.settings.json's Values; placeholders (<...>) count as unset.
setting() {
  local name=$1 value=${!1:-}
  local file=local.settings.json
  [[ -f $file ]] || file=local.settings.json.example # what a --dry-run would copy
  if [[ -z $value && -f $file ]]; then
    value=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("Values", {}).get(sys.argv[2]) or "")' \
      "$file" "$name" 2>/dev/null || true)
  fi
  [[ $value == *"<"* ]] && value=""
  printf '%s' "$value"
}

# ---------------------------------------------------------------------------------------------
step "Checking prerequisites"
PYTHON=""
for candidate in python3.11 python3 python; do
  if command -v "$candidate" >/dev/null 2>&1 &&
    [[ $("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) == 3.11 ]]; then
    PYTHON=$(command -v "$candidate")
    break
  fi
done
if [[ -n $PYTHON ]]; then
  info "Python 3.11: $PYTHON"
else
  problem "Python 3.11 (the Functions runtime's version). Install it: \`sudo apt install python3.11 python3.11-venv\`, \`brew install python@3.11\`, or \`winget install Python.Python.3.11\`"
  PYTHON=python3
fi
if $OFFLINE && ! command -v func >/dev/null 2>&1; then
  info "Functions Core Tools: not installed; --offline runs the app on the project's minimal local host"
elif ! command -v func >/dev/null 2>&1; then
  problem "Azure Functions Core Tools 4 (\`func\`). Install it: \`npm install -g azure-functions-core-tools@4\`, \`brew tap azure/functions && brew install azure-functions-core-tools@4\`, or \`winget install Microsoft.Azure.FunctionsCoreTools\`. Or try it all without Azure: scripts/start.sh --offline"
elif [[ $(func --version 2>/dev/null) != 4.* ]]; then
  problem "Azure Functions Core Tools 4: \`func --version\` says $(func --version 2>/dev/null || echo nothing). Install version 4: \`npm install -g azure-functions-core-tools@4\`"
else
  info "Functions Core Tools: $(func --version)"
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  problem "Node.js 20 or later with npm (runs Azurite). Install it: \`nvm install 22\`, \`brew install node@22\`, or your system's nodejs and npm packages"
elif [[ $(node -p 'process.versions.node.split(".")[0]') -lt 20 ]]; then
  problem "Node.js 20 or later (runs Azurite); found $(node --version). Install a newer one: \`nvm install 22\`"
else
  info "Node.js: $(node --version)"
fi

# ---------------------------------------------------------------------------------------------
if $OFFLINE; then
  step "Settings: none to set (storage, model and identity come from the offline services)"
  info "the rest as in local.settings.json.example"
fi
$OFFLINE || step "Settings (local.settings.json)"
if $OFFLINE; then
  : # local_azure/offline.py hands the app its settings
elif [[ -f local.settings.json ]]; then
  info "local.settings.json exists: kept as it is"
elif $DRY_RUN; then
  would "cp local.settings.json.example local.settings.json (storage: UseDevelopmentStorage=true)"
else
  "$PYTHON" - <<'EOF'
import json
settings = json.load(open("local.settings.json.example"))
values = settings.setdefault("Values", {})
for name in ("AzureWebJobsStorage", "OUTPUT_STORAGE_CONNECTION_STRING", "RUNS_QUEUE_STORAGE"):
    values[name] = "UseDevelopmentStorage=true"  # Azurite, started below
values["OUTPUT_STORAGE_ACCOUNT_URL"] = ""
with open("local.settings.json", "w") as out:
    json.dump(settings, out, indent=2)
    out.write("\n")
EOF
  info "created local.settings.json from local.settings.json.example (storage on Azurite)"
fi
$OFFLINE || for name in AZURE_OPENAI_ENDPOINT AZURE_OPENAI_DEPLOYMENT; do
  case $name in # (no associative arrays: macOS still ships bash 3.2)
    AZURE_OPENAI_ENDPOINT) example="https://<resource>.openai.azure.com" ;;
    *) example="<your model deployment name, e.g. gpt-4.1>" ;;
  esac
  if [[ -z $(setting "$name") ]]; then
    problem "$name is not set: set it in local.settings.json (Values) or the environment, e.g. $name=$example"
  else
    info "$name is set"
  fi
done
if $OFFLINE; then
  : # no Azure OpenAI
elif [[ -n $(setting AZURE_OPENAI_API_KEY) ]]; then
  info "Azure OpenAI: API key"
elif ! command -v az >/dev/null 2>&1; then
  problem "a way to call Azure OpenAI: set AZURE_OPENAI_API_KEY in local.settings.json, or install the Azure CLI and run \`az login\`"
elif ! az account show --output none >/dev/null 2>&1; then
  problem "an Azure sign-in: run \`az login\` (your account needs the Cognitive Services OpenAI User role), or set AZURE_OPENAI_API_KEY in local.settings.json"
else
  info "Azure OpenAI: your \`az login\` identity"
fi
if [[ $PROBLEMS -gt 0 ]]; then
  printf 'Not starting: %d thing(s) missing (listed above).\n' "$PROBLEMS" >&2
  $DRY_RUN || exit 1
  info "(--dry-run: the rest of what a run would do)"
fi

# ---------------------------------------------------------------------------------------------
step "Python environment (.venv: requirements-local.txt, pinned: the app, the ci-files client, the offline services)"
WANT=$("$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(b"".join(open(f, "rb").read() for f in sys.argv[1:])).hexdigest())' \
  requirements.txt requirements-local.txt pyproject.toml)
HAVE=$(cat .venv/.requirements.sha256 2>/dev/null || true)
if [[ -x .venv/bin/python && $WANT == "$HAVE" ]]; then
  info ".venv is up to date with requirements-local.txt and pyproject.toml"
elif $DRY_RUN; then
  [[ -x .venv/bin/python ]] || would "$PYTHON -m venv .venv"
  would ".venv/bin/python -m pip install -r requirements-local.txt"
  would ".venv/bin/python -m pip install --no-build-isolation --no-deps -e ."
else
  [[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-local.txt
  # The client, built with the pinned setuptools just installed: no build tool fetched unpinned.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
  printf '%s\n' "$WANT" >.venv/.requirements.sha256
  info "installed requirements-local.txt and the ci-files client into .venv"
fi

# ---------------------------------------------------------------------------------------------
if $OFFLINE; then
  step "Azurite and Node 22 (node_modules, from package-lock.json)"
else
  step "Azurite (blob on $BLOB_PORT, queue on $QUEUE_PORT, table on $TABLE_PORT, data in .azurite/)"
fi
if [[ ! -x $NODE_BIN/azurite-blob ]]; then
  if $DRY_RUN; then would "npm ci --no-audit --no-fund"; else npm ci --no-audit --no-fund --loglevel=error; fi
elif $OFFLINE; then
  info "installed"
fi
if $OFFLINE; then
  OFFLINE_CMD=(.venv/bin/python -m local_azure.offline --port "${PORT:-7071}")
  step "Starting the service offline on http://localhost:${PORT:-7071} (Ctrl-C stops everything)"
  if $DRY_RUN; then
    would "${OFFLINE_CMD[*]}"
    [[ $PROBLEMS -eq 0 ]] && exit 0
    exit 1
  fi
  trap - EXIT INT TERM
  exec "${OFFLINE_CMD[@]}"
fi
start_azurite() { # service port
  local service=$1 port=$2
  if listening "$port"; then
    info "$service: something already listens on $port (an Azurite from another start?): using it"
    return
  fi
  local cmd=("$NODE_BIN/azurite-$service" "--${service}Host" 127.0.0.1 "--${service}Port" "$port"
    --location "$AZURITE_DIR" --skipApiVersionCheck --disableTelemetry --silent)
  if $DRY_RUN; then
    would "${cmd[*]} &"
    return
  fi
  mkdir -p "$AZURITE_DIR"
  # Node 22 from node_modules first (the pinned Azurite wants it); `&` keeps it out of Ctrl-C's reach.
  PATH="$NODE_BIN:$PATH" "${cmd[@]}" >"$AZURITE_DIR/$service.log" 2>&1 &
  STARTED_PIDS+=("$!")
  local tries=0
  until listening "$port"; do
    tries=$((tries + 1))
    if [[ $tries -gt 150 ]] || ! kill -0 "$!" 2>/dev/null; then
      printf 'error: Azurite %s did not start on port %s; its log (.azurite/%s.log):\n' "$service" "$port" "$service" >&2
      tail -n 20 "$AZURITE_DIR/$service.log" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
  info "$service: started (pid $!), log in .azurite/$service.log"
}
start_azurite blob "$BLOB_PORT"
start_azurite queue "$QUEUE_PORT"
start_azurite table "$TABLE_PORT"  # the runs table: run records, the catalog, tombstones
if [[ $BLOB_PORT != 10000 || $QUEUE_PORT != 10001 || $TABLE_PORT != 10002 ]]; then
  # The well-known development account of Azurite (a public, documented key).
  ACCOUNT_KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
  CONNECTION="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=$ACCOUNT_KEY;BlobEndpoint=http://127.0.0.1:$BLOB_PORT/devstoreaccount1;QueueEndpoint=http://127.0.0.1:$QUEUE_PORT/devstoreaccount1;TableEndpoint=http://127.0.0.1:$TABLE_PORT/devstoreaccount1;"
  export AzureWebJobsStorage="$CONNECTION" OUTPUT_STORAGE_CONNECTION_STRING="$CONNECTION" RUNS_QUEUE_STORAGE="$CONNECTION"
  info "other ports than UseDevelopmentStorage=true's: the app gets connection strings to them"
fi

# ---------------------------------------------------------------------------------------------
FUNC_LINE="func start${FUNC_ARGS[*]+ ${FUNC_ARGS[*]}}"
step "$FUNC_LINE (Ctrl-C stops it and Azurite)"
if $DRY_RUN; then
  would "$FUNC_LINE  (with .venv active)"
  info "then, in another terminal: ci-files run \"Create test.txt containing hello world\""
  [[ $PROBLEMS -eq 0 ]] && exit 0
  exit 1
fi
export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
info "then, in another terminal: .venv/bin/ci-files run \"Create test.txt containing hello world\""
status=0
func start ${FUNC_ARGS[@]+"${FUNC_ARGS[@]}"} || status=$?
exit "$status"
