#!/bin/sh
# What to type next, once the app runs in Azure: the azd postdeploy hook (azure.yaml, after `azd up` or
# `azd deploy`) and the end of scripts/deploy.sh print the client's base URL (CI_FILES_URL: no /api),
# the line that fills CI_FILES_KEY with the app's function key, and a first `ci-files run`.
# azd passes its environment's values as environment variables: CI_FILES_URL, AZURE_RESOURCE_GROUP and
# AZURE_FUNCTION_NAME are outputs of infra/main.bicep (`azd env get-value CI_FILES_URL`).
set -eu

url=${CI_FILES_URL:-}
group=${AZURE_RESOURCE_GROUP:-}
app=${AZURE_FUNCTION_NAME:-}
if [ -z "$url" ] || [ -z "$group" ] || [ -z "$app" ]; then
  printf 'error: postdeploy needs CI_FILES_URL, AZURE_RESOURCE_GROUP and AZURE_FUNCTION_NAME (see: azd env get-values)\n' >&2
  exit 1
fi
printf '\nThe app runs at %s (health: %s/api/health). Point the client at it (copy and paste):\n\n' "$url" "$url"
printf 'export CI_FILES_URL=%s\n' "$url"
# shellcheck disable=SC2016  # the $(...) is for the user's shell, printed as it is
printf 'export CI_FILES_KEY="$(az functionapp keys list --resource-group %s --name %s --query functionKeys.default --output tsv)"\n' "$group" "$app"
printf 'ci-files run "Create test.txt containing hello world"\n\n'
printf '(ci-files: source .venv/bin/activate after scripts/start.sh, or pip install -e . in this folder.)\n'
