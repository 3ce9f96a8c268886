#!/bin/sh
# azd preprovision hook (azure.yaml): stop `azd up` / `azd provision` before anything is
# deployed when the Azure OpenAI choice is missing or malformed. Without it the template
# would run with a placeholder account id and fail far later with an unrelated-looking error.
# azd passes the environment's values (azd env set ...) as environment variables.
set -eu

resource_id=${AZURE_OPENAI_RESOURCE_ID:-}
create=$(printf '%s' "${CREATE_OPENAI:-false}" | tr '[:upper:]' '[:lower:]')

fail() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

case $create in
  true | false) ;;
  *) fail "CREATE_OPENAI must be true or false, not '${CREATE_OPENAI:-}'" ;;
esac

if [ "$create" = true ] && [ -n "$resource_id" ]; then
  fail "set only one of AZURE_OPENAI_RESOURCE_ID and CREATE_OPENAI=true (azd env set CREATE_OPENAI false, or azd env set AZURE_OPENAI_RESOURCE_ID '')"
fi
if [ "$create" = false ] && [ -z "$resource_id" ]; then
  fail "set AZURE_OPENAI_RESOURCE_ID to an existing Azure OpenAI account (azd env set AZURE_OPENAI_RESOURCE_ID /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.CognitiveServices/accounts/<name>), or let azd create one: azd env set CREATE_OPENAI true"
fi
if [ -n "$resource_id" ]; then
  printf '%s\n' "$resource_id" \
    | grep -Eq '^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.CognitiveServices/accounts/[^/]+$' \
    || fail "AZURE_OPENAI_RESOURCE_ID must look like /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.CognitiveServices/accounts/<name>"
fi
printf 'Azure OpenAI: %s\n' "${resource_id:-a new account (CREATE_OPENAI=true)}"
