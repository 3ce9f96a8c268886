#!/bin/sh
# azd preprovision hook (azure.yaml): stop `azd up` / `azd provision` before anything is
# deployed when the Azure OpenAI choice is missing or malformed (without it the template would
# run with a placeholder account id and fail far later with an unrelated-looking error), or when
# the retention settings contradict each other (main.bicep would stop on the same, later).
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

# What removes what (docs/deploy.md): the app's retention sweep deletes runs after RUN_RETENTION_DAYS
# (0: never); the output container's lifecycle rule is a backstop, so OUTPUT_BACKSTOP_DAYS must be longer.
if [ -n "${OUTPUT_RETENTION_DAYS:-}" ]; then
  fail "OUTPUT_RETENTION_DAYS is replaced: runs are deleted by the app after RUN_RETENTION_DAYS (default 30, 0 keeps them), and the lifecycle rule is only a backstop after OUTPUT_BACKSTOP_DAYS (default 60, longer than the retention). Set those, then: azd env set OUTPUT_RETENTION_DAYS ''"
fi
retention=${RUN_RETENTION_DAYS:-30}
backstop=${OUTPUT_BACKSTOP_DAYS:-60}
case $retention in
  '' | *[!0-9]* | ?????*) fail "RUN_RETENTION_DAYS must be a whole number of days from 0 to 3650, not '$retention'" ;;
esac
[ "$retention" -le 3650 ] || fail "RUN_RETENTION_DAYS must be a whole number of days from 0 to 3650, not '$retention'"
case $backstop in
  '' | *[!0-9]* | ??????*) fail "OUTPUT_BACKSTOP_DAYS must be a whole number of days from 1 to 99999, not '$backstop'" ;;
esac
[ "$backstop" -ge 1 ] || fail "OUTPUT_BACKSTOP_DAYS must be a whole number of days from 1 to 99999, not '$backstop'"
if [ "$retention" -gt 0 ] && [ "$backstop" -le "$retention" ]; then
  fail "OUTPUT_BACKSTOP_DAYS ($backstop) must exceed RUN_RETENTION_DAYS ($retention): the lifecycle rule is a backstop behind the app's retention sweep"
fi

printf 'Azure OpenAI: %s\n' "${resource_id:-a new account (CREATE_OPENAI=true)}"
if [ "$retention" -eq 0 ]; then
  printf 'Runs: kept for ever (RUN_RETENTION_DAYS=0; the lifecycle backstop is off)\n'
else
  printf 'Runs: deleted after %s days (RUN_RETENTION_DAYS); lifecycle backstop after %s days\n' "$retention" "$backstop"
fi
