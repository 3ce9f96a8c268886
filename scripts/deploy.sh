#!/usr/bin/env bash
# Deploy Code Interpreter Files to Azure with the Azure CLI (no azd needed).
#
# Creates or updates (idempotent): resource group, user-assigned managed identity,
# two storage accounts with shared-key access disabled (HOST: the Functions host, the
# deployment package and the runs queue; OUTPUT: the output and input containers, the runs
# table, a backstop lifecycle rule), Log Analytics + Application Insights (local auth disabled), the role
# assignments (least privilege, see docs/deploy.md), a Flex Consumption function app
# (Python 3.11) running as the identity, its app settings; then publishes the code with
# Azure Functions Core Tools.
#
# Before creating anything it checks what can fail: the login, the region (Flex
# Consumption), the Azure OpenAI account (and its endpoint), the storage account names.
# If a later step fails it says what it had created; running it again continues.
#
# Usage:
#   scripts/deploy.sh --name <app> --location <region> \
#       --openai-resource-id /subscriptions/.../providers/Microsoft.CognitiveServices/accounts/<aoai> \
#       [--resource-group <rg>] [--openai-deployment <name>] \
#       [--run-retention-days <n>] [--output-backstop-days <n>] \
#       [--openai-endpoint <url>] [--openai-api-version v1|preview|latest] \
#       [--storage-account <host account>] [--output-storage-account <output account>] \
#       [--callback-allowed-hosts <host,host>] [--owner-tag <tag>] [--skip-publish] [--dry-run]
#
# Every option can also come from the environment: AZURE_FUNCTION_APP_NAME, AZURE_LOCATION,
# AZURE_RESOURCE_GROUP, AZURE_OPENAI_RESOURCE_ID, AZURE_OPENAI_DEPLOYMENT, AZURE_OPENAI_ENDPOINT,
# AZURE_OPENAI_API_VERSION, RUN_RETENTION_DAYS, OUTPUT_BACKSTOP_DAYS, AZURE_STORAGE_ACCOUNT,
# AZURE_OUTPUT_STORAGE_ACCOUNT, CALLBACK_ALLOWED_HOSTS, OWNER_TAG.
#
# What removes what: the app's timer deletes each run (files, record, catalog row) after
# --run-retention-days (default 30; 0 keeps runs for ever). The output container's lifecycle
# rule is only a backstop for files the app never saw (runs of versions before the catalog):
# --output-backstop-days (default 60) must be longer, and the rule is off while runs are kept.
# Secrets come ONLY from the environment (never a command-line option, never printed):
# CALLBACK_SIGNING_SECRET (required with --callback-allowed-hosts) and AZURE_OPENAI_WEBHOOK_SECRET.
#
# --dry-run prints every command (one per line, prefixed "+ ") without running anything;
# it needs neither az nor a login. Values only known after creation are shown as <...>.
# It ends with what to type next (scripts/postdeploy.sh): export CI_FILES_URL=https://<host>, the
# `az functionapp keys list` line that fills CI_FILES_KEY, and a first `ci-files run`.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
info() { printf '==> %s\n' "$*" >&2; }

NAME=${AZURE_FUNCTION_APP_NAME:-}
LOCATION=${AZURE_LOCATION:-}
RESOURCE_GROUP=${AZURE_RESOURCE_GROUP:-}
OPENAI_RESOURCE_ID=${AZURE_OPENAI_RESOURCE_ID:-}
OPENAI_DEPLOYMENT=${AZURE_OPENAI_DEPLOYMENT:-gpt-4.1-mini}
OPENAI_ENDPOINT=${AZURE_OPENAI_ENDPOINT:-}
OPENAI_API_VERSION=${AZURE_OPENAI_API_VERSION:-}
RUN_RETENTION_DAYS=${RUN_RETENTION_DAYS:-30}
OUTPUT_BACKSTOP_DAYS=${OUTPUT_BACKSTOP_DAYS:-60}
STORAGE_ACCOUNT=${AZURE_STORAGE_ACCOUNT:-}
OUTPUT_STORAGE_ACCOUNT=${AZURE_OUTPUT_STORAGE_ACCOUNT:-}
CALLBACK_HOSTS=${CALLBACK_ALLOWED_HOSTS:-}
OWNER=${OWNER_TAG:-}
CALLBACK_SECRET=${CALLBACK_SIGNING_SECRET:-}
WEBHOOK_SECRET=${AZURE_OPENAI_WEBHOOK_SECRET:-}
DRY_RUN=false
SKIP_PUBLISH=false

need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) need_value "$@"; NAME=$2; shift 2 ;;
    --location) need_value "$@"; LOCATION=$2; shift 2 ;;
    --resource-group) need_value "$@"; RESOURCE_GROUP=$2; shift 2 ;;
    --openai-resource-id) need_value "$@"; OPENAI_RESOURCE_ID=$2; shift 2 ;;
    --openai-deployment) need_value "$@"; OPENAI_DEPLOYMENT=$2; shift 2 ;;
    --openai-endpoint) need_value "$@"; OPENAI_ENDPOINT=$2; shift 2 ;;
    --openai-api-version) need_value "$@"; OPENAI_API_VERSION=$2; shift 2 ;;
    --run-retention-days) need_value "$@"; RUN_RETENTION_DAYS=$2; shift 2 ;;
    --output-backstop-days) need_value "$@"; OUTPUT_BACKSTOP_DAYS=$2; shift 2 ;;
    --output-retention-days) die "--output-retention-days is replaced: --run-retention-days (the app deletes runs; default 30) and --output-backstop-days (the lifecycle rule, a backstop; default 60, longer)" ;;
    --storage-account) need_value "$@"; STORAGE_ACCOUNT=$2; shift 2 ;;
    --output-storage-account) need_value "$@"; OUTPUT_STORAGE_ACCOUNT=$2; shift 2 ;;
    --callback-allowed-hosts) need_value "$@"; CALLBACK_HOSTS=$2; shift 2 ;;
    --owner-tag) need_value "$@"; OWNER=$2; shift 2 ;;
    --skip-publish) SKIP_PUBLISH=true; shift ;;
    --dry-run) DRY_RUN=true; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
done

# ---- inputs (checked before anything runs) --------------------------------------------
[[ -n $NAME ]] || die "--name is required (the function app name, globally unique)"
[[ $NAME =~ ^[A-Za-z0-9][A-Za-z0-9-]{0,58}[A-Za-z0-9]$ ]] || die "--name must be 2-60 letters, digits or hyphens"
[[ -n $LOCATION ]] || die "--location is required (see: az functionapp list-flexconsumption-locations)"
[[ -n $OPENAI_RESOURCE_ID ]] || die "--openai-resource-id is required (resource id of an existing Azure OpenAI account)"
openai_id_pattern='^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.CognitiveServices/accounts/([^/]+)$'
[[ $OPENAI_RESOURCE_ID =~ $openai_id_pattern ]] \
  || die "--openai-resource-id must look like /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.CognitiveServices/accounts/<name>"
OPENAI_SUBSCRIPTION=${BASH_REMATCH[1]}
OPENAI_RESOURCE_GROUP=${BASH_REMATCH[2]}
OPENAI_ACCOUNT=${BASH_REMATCH[3]}
[[ -n $OPENAI_DEPLOYMENT ]] || die "--openai-deployment must not be empty"
[[ -z $OPENAI_ENDPOINT || $OPENAI_ENDPOINT =~ ^https://[^/?#]+/?$ ]] \
  || die "--openai-endpoint must look like https://<resource>.openai.azure.com"
[[ -z $OPENAI_API_VERSION || $OPENAI_API_VERSION =~ ^(v1|preview|latest)$ ]] \
  || die "--openai-api-version must be v1, preview or latest (the v1 API takes no dated versions)"
[[ -z ${OUTPUT_RETENTION_DAYS:-} ]] \
  || die "OUTPUT_RETENTION_DAYS is replaced: RUN_RETENTION_DAYS (the app deletes runs; default 30) and OUTPUT_BACKSTOP_DAYS (the lifecycle rule, a backstop; default 60, longer); unset it"
if ! [[ $RUN_RETENTION_DAYS =~ ^[0-9]{1,4}$ ]] || ((10#$RUN_RETENTION_DAYS > 3650)); then
  die "--run-retention-days must be a whole number of days from 0 to 3650 (0 keeps runs for ever)"
fi
if ! [[ $OUTPUT_BACKSTOP_DAYS =~ ^[0-9]{1,5}$ ]] || ((10#$OUTPUT_BACKSTOP_DAYS < 1)); then
  die "--output-backstop-days must be a whole number of days from 1 to 99999"
fi
RUN_RETENTION_DAYS=$((10#$RUN_RETENTION_DAYS))
OUTPUT_BACKSTOP_DAYS=$((10#$OUTPUT_BACKSTOP_DAYS))
((RUN_RETENTION_DAYS == 0 || OUTPUT_BACKSTOP_DAYS > RUN_RETENTION_DAYS)) \
  || die "--output-backstop-days ($OUTPUT_BACKSTOP_DAYS) must exceed --run-retention-days ($RUN_RETENTION_DAYS): the lifecycle rule is a backstop behind the app's retention sweep"
[[ -z $OWNER || $OWNER =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || die "--owner-tag must be 1-64 letters, digits, '_', '.' or '-'"
CALLBACK_HOSTS=$(printf '%s' "$CALLBACK_HOSTS" | tr '[:upper:]' '[:lower:]' | tr -d ' ')
[[ -z $CALLBACK_HOSTS || $CALLBACK_HOSTS =~ ^[a-z0-9.-]+(,[a-z0-9.-]+)*$ ]] \
  || die "--callback-allowed-hosts must be comma-separated host names (no scheme, port or path)"
[[ -z $CALLBACK_HOSTS || -n $CALLBACK_SECRET ]] \
  || die "--callback-allowed-hosts needs CALLBACK_SIGNING_SECRET in the environment (whsec_<base64>)"
[[ -z $CALLBACK_SECRET || $CALLBACK_SECRET =~ ^whsec_[A-Za-z0-9+/=]+$ ]] \
  || die "CALLBACK_SIGNING_SECRET must look like whsec_<base64>"
[[ -z $WEBHOOK_SECRET || $WEBHOOK_SECRET =~ ^[A-Za-z0-9_+/=.-]+$ ]] \
  || die "AZURE_OPENAI_WEBHOOK_SECRET must be the secret Azure OpenAI showed (letters, digits, _+/=.-)"

RESOURCE_GROUP=${RESOURCE_GROUP:-rg-$NAME}
lower_name=$(printf '%s' "$NAME" | tr '[:upper:]' '[:lower:]' | tr -cd 'a-z0-9')
STORAGE_ACCOUNT=${STORAGE_ACCOUNT:-$(printf 'st%s' "$lower_name" | cut -c1-24)}
OUTPUT_STORAGE_ACCOUNT=${OUTPUT_STORAGE_ACCOUNT:-$(printf 'st%s' "$lower_name" | cut -c1-21)out}
[[ $STORAGE_ACCOUNT =~ ^[a-z0-9]{3,24}$ ]] || die "storage account name '$STORAGE_ACCOUNT' is invalid; pass --storage-account"
[[ $OUTPUT_STORAGE_ACCOUNT =~ ^[a-z0-9]{3,24}$ ]] \
  || die "storage account name '$OUTPUT_STORAGE_ACCOUNT' is invalid; pass --output-storage-account"
[[ $STORAGE_ACCOUNT != "$OUTPUT_STORAGE_ACCOUNT" ]] \
  || die "--storage-account and --output-storage-account must differ (host secrets and outputs are kept apart)"
IDENTITY_NAME="id-$NAME"
LOG_ANALYTICS_NAME="log-$NAME"
APP_INSIGHTS_NAME="appi-$NAME"
DEPLOYMENT_CONTAINER="app-package"
OUTPUT_CONTAINER="code-interpreter-outputs"
INPUT_CONTAINER="code-interpreter-inputs"
RUNS_QUEUE="code-interpreter-runs"
RUNS_TABLE="codeinterpreterruns"
CONTAINER_LIFETIME_MINUTES=60
# Flex Consumption instance size and HTTP concurrency: COPY_MEMORY_MB is one worker's budget of
# copy bytes in flight, shared by all its concurrent requests (docs/deploy.md, "Memory").
INSTANCE_MEMORY_MB=2048
HTTP_PER_INSTANCE_CONCURRENCY=16
COPY_MEMORY_MB=512

# ---- command runner -----------------------------------------------------------------
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@,+%\<\>-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
print_cmd() {
  local line="+" arg
  for arg in "$@"; do line+=" $(quote "$arg")"; done
  printf '%s\n' "$line"
}
# run CMD...: print, then execute unless --dry-run.
run() {
  print_cmd "$@"
  if ! $DRY_RUN; then "$@"; fi
}
# create WHAT CMD...: run CMD and remember WHAT as created (or updated), for the error report.
CREATED=()
create() {
  local what=$1
  shift
  run "$@"
  CREATED+=("$what")
}
# capture VAR PLACEHOLDER CMD...: print, then store CMD's output in VAR (PLACEHOLDER on --dry-run).
capture() {
  local var=$1 placeholder=$2 value
  shift 2
  print_cmd "$@"
  if $DRY_RUN; then value=$placeholder; else value=$("$@") || return; fi
  printf -v "$var" '%s' "$value"
}
# exists CMD...: print, then succeed if CMD succeeds (always "missing" on --dry-run).
exists() {
  print_cmd "$@"
  if $DRY_RUN; then return 1; fi
  "$@" >/dev/null 2>&1
}

SECRET_FILE=""
on_exit() {
  local status=$?
  [[ -z $SECRET_FILE ]] || rm -f "$SECRET_FILE"
  if [[ $status -ne 0 ]] && ! $DRY_RUN; then
    if [[ ${#CREATED[@]} -eq 0 ]]; then
      printf 'stopped: nothing was created.\n' >&2
    else
      printf 'stopped after creating or updating:\n' >&2
      printf '  - %s\n' "${CREATED[@]}" >&2
      printf 'Run the same command again to continue (every step is idempotent), or remove it all: az group delete --name %s\n' \
        "$RESOURCE_GROUP" >&2
    fi
  fi
  return "$status"
}
trap on_exit EXIT

# ---- prerequisites: nothing is created before all of these pass ------------------------
cd "$(dirname "$0")/.."
if ! $DRY_RUN; then
  command -v az >/dev/null 2>&1 \
    || die "the Azure CLI (az) is not installed: https://learn.microsoft.com/cli/azure/install-azure-cli"
  az account show --output none >/dev/null 2>&1 \
    || die "not logged in to Azure: run 'az login' (and 'az account set --subscription <id>')"
  if ! $SKIP_PUBLISH; then
    command -v func >/dev/null 2>&1 \
      || die "Azure Functions Core Tools (func) is not installed: 'npm install -g azure-functions-core-tools@4', or rerun with --skip-publish"
  fi
fi

capture SUBSCRIPTION_ID "<subscription-id>" az account show --query id --output tsv
RG_ID="/subscriptions/$SUBSCRIPTION_ID/resourceGroups/$RESOURCE_GROUP"
STORAGE_ID="$RG_ID/providers/Microsoft.Storage/storageAccounts/$STORAGE_ACCOUNT"
OUTPUT_STORAGE_ID="$RG_ID/providers/Microsoft.Storage/storageAccounts/$OUTPUT_STORAGE_ACCOUNT"
RUNS_TABLE_ID="$OUTPUT_STORAGE_ID/tableServices/default/tables/$RUNS_TABLE"
IDENTITY_ID="$RG_ID/providers/Microsoft.ManagedIdentity/userAssignedIdentities/$IDENTITY_NAME"
LOG_ANALYTICS_ID="$RG_ID/providers/Microsoft.OperationalInsights/workspaces/$LOG_ANALYTICS_NAME"
APP_INSIGHTS_ID="$RG_ID/providers/Microsoft.Insights/components/$APP_INSIGHTS_NAME"

info "checking the region: Flex Consumption in $LOCATION"
flex_locations=""
capture flex_locations "$LOCATION" az functionapp list-flexconsumption-locations --query '[].name' --output tsv
wanted_location=$(printf '%s' "$LOCATION" | tr '[:upper:]' '[:lower:]' | tr -d ' ')
grep -qxF "$wanted_location" <<<"$(printf '%s\n' "$flex_locations" | tr '[:upper:]' '[:lower:]' | tr -d ' \r')" \
  || die "region '$LOCATION' does not offer Flex Consumption (az functionapp list-flexconsumption-locations --output table)"

# The Azure OpenAI account may live in another resource group or subscription: its id gives
# all three (`az cognitiveservices account show` has no --ids).
openai_show=(az cognitiveservices account show --subscription "$OPENAI_SUBSCRIPTION"
  --resource-group "$OPENAI_RESOURCE_GROUP" --name "$OPENAI_ACCOUNT")
if [[ -z $OPENAI_ENDPOINT ]]; then
  info "checking the Azure OpenAI account $OPENAI_ACCOUNT and reading its endpoint"
  openai_subdomain=""
  capture openai_subdomain "<openai-custom-subdomain>" \
    "${openai_show[@]}" --query properties.customSubDomainName --output tsv \
    || die "cannot read the Azure OpenAI account $OPENAI_RESOURCE_ID (does it exist, and may you read it?)"
  [[ -n $openai_subdomain ]] || die "the Azure OpenAI account has no custom subdomain; pass --openai-endpoint"
  OPENAI_ENDPOINT="https://$openai_subdomain.openai.azure.com"
else
  info "checking the Azure OpenAI account $OPENAI_ACCOUNT (the role assignment needs it)"
  capture openai_found "$OPENAI_RESOURCE_ID" "${openai_show[@]}" --query id --output tsv \
    || die "cannot read the Azure OpenAI account $OPENAI_RESOURCE_ID (does it exist, and may you read it?)"
fi

# A storage account name is global: one that is taken by someone else fails only at creation.
for account in "$STORAGE_ACCOUNT" "$OUTPUT_STORAGE_ACCOUNT"; do
  if ! exists az storage account show --resource-group "$RESOURCE_GROUP" --name "$account" --query id --output tsv; then
    name_available=""
    capture name_available "true" az storage account check-name --name "$account" --query nameAvailable --output tsv
    [[ $name_available == true ]] \
      || die "storage account name '$account' is taken; pass --storage-account / --output-storage-account"
  fi
done

APP_EXISTS=false
if exists az functionapp show --resource-group "$RESOURCE_GROUP" --name "$NAME" --query id --output tsv; then
  APP_EXISTS=true
fi

# ---- resources ----------------------------------------------------------------------------
info "resource group $RESOURCE_GROUP"
create "resource group $RESOURCE_GROUP" az group create --name "$RESOURCE_GROUP" --location "$LOCATION" --output none

info "user-assigned managed identity $IDENTITY_NAME (used for everything)"
create "managed identity $IDENTITY_NAME" \
  az identity create --resource-group "$RESOURCE_GROUP" --name "$IDENTITY_NAME" --location "$LOCATION" --output none
capture IDENTITY_PRINCIPAL_ID "<identity-principal-id>" \
  az identity show --resource-group "$RESOURCE_GROUP" --name "$IDENTITY_NAME" --query principalId --output tsv
capture IDENTITY_CLIENT_ID "<identity-client-id>" \
  az identity show --resource-group "$RESOURCE_GROUP" --name "$IDENTITY_NAME" --query clientId --output tsv

info "storage accounts: host $STORAGE_ACCOUNT, output $OUTPUT_STORAGE_ACCOUNT (shared-key access disabled)"
for account in "$STORAGE_ACCOUNT" "$OUTPUT_STORAGE_ACCOUNT"; do
  create "storage account $account" az storage account create --resource-group "$RESOURCE_GROUP" --name "$account" \
    --location "$LOCATION" --sku Standard_LRS --kind StorageV2 \
    --allow-shared-key-access false --allow-blob-public-access false \
    --min-tls-version TLS1_2 --https-only true --output none
done
# Containers through Azure Resource Manager: no account key and no data-plane role for the
# person deploying (an --auth-mode login data-plane call would need one, and a fresh role
# assignment can take minutes to apply). The runs queue is created by the app on first use
# (its identity holds Storage Queue Data Contributor on the host account).
create "container $DEPLOYMENT_CONTAINER" az storage container-rm create --resource-group "$RESOURCE_GROUP" \
  --storage-account "$STORAGE_ACCOUNT" --name "$DEPLOYMENT_CONTAINER" --public-access off --output none
for container in "$OUTPUT_CONTAINER" "$INPUT_CONTAINER"; do
  create "container $container" az storage container-rm create --resource-group "$RESOURCE_GROUP" \
    --storage-account "$OUTPUT_STORAGE_ACCOUNT" --name "$container" --public-access off --output none
done
# The runs table (run records, the catalog, tombstones), also through ARM: azure-cli has no ARM
# command for tables (only the data-plane `az storage table`), so a PUT of the table resource.
# Created here, not by the app, so that the identity's role can be scoped to this one table.
create "table $RUNS_TABLE" az rest --method put --url "$RUNS_TABLE_ID?api-version=2023-05-01" --output none
# The BACKSTOP: the app's retention sweep deletes runs; this rule only what it never saw, later.
backstop_enabled=true
((RUN_RETENTION_DAYS > 0)) || backstop_enabled=false # runs kept for ever: so are their files
lifecycle_policy=$(printf '{"rules":[{"name":"delete-expired-outputs","enabled":%s,"type":"Lifecycle","definition":{"filters":{"blobTypes":["blockBlob"],"prefixMatch":["%s/"]},"actions":{"baseBlob":{"delete":{"daysAfterModificationGreaterThan":%s}}}}}]}' \
  "$backstop_enabled" "$OUTPUT_CONTAINER" "$OUTPUT_BACKSTOP_DAYS")
create "lifecycle rule on $OUTPUT_STORAGE_ACCOUNT" az storage account management-policy create \
  --resource-group "$RESOURCE_GROUP" --account-name "$OUTPUT_STORAGE_ACCOUNT" --policy "$lifecycle_policy" --output none

info "Log Analytics $LOG_ANALYTICS_NAME + Application Insights $APP_INSIGHTS_NAME"
create "Log Analytics workspace $LOG_ANALYTICS_NAME" az monitor log-analytics workspace create \
  --resource-group "$RESOURCE_GROUP" --workspace-name "$LOG_ANALYTICS_NAME" --location "$LOCATION" \
  --retention-time 30 --output none
# Workspace-based Application Insights through ARM (built-in `az resource`, no CLI extension);
# local auth disabled: telemetry only with Entra ID (the identity), no instrumentation key.
app_insights_body=$(printf '{"location":"%s","kind":"web","properties":{"Application_Type":"web","WorkspaceResourceId":"%s","DisableLocalAuth":true}}' \
  "$LOCATION" "$LOG_ANALYTICS_ID")
create "Application Insights $APP_INSIGHTS_NAME" az resource create --resource-group "$RESOURCE_GROUP" \
  --name "$APP_INSIGHTS_NAME" --resource-type Microsoft.Insights/components --api-version 2020-02-02 \
  --is-full-object --properties "$app_insights_body" --output none
capture APP_INSIGHTS_CONNECTION_STRING "<app-insights-connection-string>" \
  az resource show --ids "$APP_INSIGHTS_ID" --api-version 2020-02-02 --query properties.ConnectionString --output tsv

info "role assignments for the identity (least privilege; reasons in infra/rbac.bicep)"
assign_role() { # ROLE SCOPE
  create "role '$1' on ${2##*/}" az role assignment create --assignee-object-id "$IDENTITY_PRINCIPAL_ID" \
    --assignee-principal-type ServicePrincipal --role "$1" --scope "$2" --output none
}
# HOST account: the Functions host (AzureWebJobsStorage__*: its own containers, host keys,
# leases) and the deployment package need Owner; nothing of the app's data lives there.
assign_role "Storage Blob Data Owner" "$STORAGE_ID"
# HOST account: the runs queue (the queue trigger reads and deletes, the app sends, the host
# creates <queue>-poison), so account scope.
assign_role "Storage Queue Data Contributor" "$STORAGE_ID"
# OUTPUT account: write/read/delete blobs in the output container, read the input container ...
assign_role "Storage Blob Data Contributor" "$OUTPUT_STORAGE_ID/blobServices/default/containers/$OUTPUT_CONTAINER"
assign_role "Storage Blob Data Reader" "$OUTPUT_STORAGE_ID/blobServices/default/containers/$INPUT_CONTAINER"
# ... the runs table only (records, catalog, tombstones; no other table, no table SAS) ...
assign_role "Storage Table Data Contributor" "$RUNS_TABLE_ID"
# ... and the user delegation key for the read-only SAS links (an account-level action).
assign_role "Storage Blob Delegator" "$OUTPUT_STORAGE_ID"
# Responses API + Code Interpreter container files with Entra ID tokens, no API key.
assign_role "Cognitive Services OpenAI User" "$OPENAI_RESOURCE_ID"
# Telemetry to App Insights with local auth disabled.
assign_role "Monitoring Metrics Publisher" "$APP_INSIGHTS_ID"

info "Flex Consumption function app $NAME (Python 3.11, ${INSTANCE_MEMORY_MB} MB instances)"
if $APP_EXISTS; then
  # Already there: make sure the deployment storage uses the identity.
  create "deployment storage of $NAME" az functionapp deployment config set --resource-group "$RESOURCE_GROUP" \
    --name "$NAME" --deployment-storage-name "$STORAGE_ACCOUNT" \
    --deployment-storage-container-name "$DEPLOYMENT_CONTAINER" \
    --deployment-storage-auth-type UserAssignedIdentity --deployment-storage-auth-value "$IDENTITY_ID" --output none
else
  create "function app $NAME" az functionapp create --resource-group "$RESOURCE_GROUP" --name "$NAME" \
    --flexconsumption-location "$LOCATION" --runtime python --runtime-version 3.11 \
    --storage-account "$STORAGE_ACCOUNT" --assign-identity "$IDENTITY_ID" \
    --deployment-storage-name "$STORAGE_ACCOUNT" --deployment-storage-container-name "$DEPLOYMENT_CONTAINER" \
    --deployment-storage-auth-type UserAssignedIdentity --deployment-storage-auth-value "$IDENTITY_ID" \
    --app-insights "$APP_INSIGHTS_NAME" --instance-memory "$INSTANCE_MEMORY_MB" --maximum-instance-count 100 \
    --https-only true --output none
fi
create "scale settings of $NAME" az functionapp scale config set --resource-group "$RESOURCE_GROUP" --name "$NAME" \
  --instance-memory "$INSTANCE_MEMORY_MB" --trigger-type http \
  --trigger-settings "perInstanceConcurrency=$HTTP_PER_INSTANCE_CONCURRENCY" --output none

info "app settings"
# The app's own settings (defaults spelled out). Deliberately NOT set: AZURE_OPENAI_API_KEY,
# OUTPUT_STORAGE_CONNECTION_STRING and RUNS_QUEUE_STORAGE (key-based local alternatives;
# Azure uses the identity), RUNS_TABLE_SERVICE_URL (the app derives the table endpoint from
# OUTPUT_STORAGE_ACCOUNT_URL). Optional ones are set only when given.
app_settings=(
  "AZURE_OPENAI_ENDPOINT=$OPENAI_ENDPOINT"
  "AZURE_OPENAI_DEPLOYMENT=$OPENAI_DEPLOYMENT"
  "AZURE_OPENAI_TOKEN_SCOPE=https://ai.azure.com/.default"
  "OUTPUT_STORAGE_ACCOUNT_URL=https://$OUTPUT_STORAGE_ACCOUNT.blob.core.windows.net"
  "OUTPUT_CONTAINER=$OUTPUT_CONTAINER"
  "INPUT_CONTAINER=$INPUT_CONTAINER"
  "SAS_TTL_MINUTES=60"
  "SAS_TTL_MAX_MINUTES=1440"
  "MAX_FILES_PER_RUN=20"
  "MAX_FILE_BYTES=536870912"
  "MAX_INPUT_FILES=10"
  "MAX_INPUT_BYTES=536870912"
  "RUN_WAIT_SECONDS=180"
  "COPY_CONCURRENCY=4"
  "COPY_MEMORY_MB=$COPY_MEMORY_MB"
  "RUN_EVENTS=stream"
  "RUN_EVENTS_IDLE_SECONDS=30"
  "RUNS_TABLE=$RUNS_TABLE"
  "RUN_RETENTION_DAYS=$RUN_RETENTION_DAYS"
  "CONTAINER_LIFETIME_MINUTES=$CONTAINER_LIFETIME_MINUTES"
  "RUNS_QUEUE=$RUNS_QUEUE"
  "RUNS_QUEUE_STORAGE__queueServiceUri=https://$STORAGE_ACCOUNT.queue.core.windows.net"
)
[[ -z $OPENAI_API_VERSION ]] || app_settings+=("AZURE_OPENAI_API_VERSION=$OPENAI_API_VERSION")
[[ -z $CALLBACK_HOSTS ]] || app_settings+=("CALLBACK_ALLOWED_HOSTS=$CALLBACK_HOSTS")
[[ -z $OWNER ]] || app_settings+=("OWNER_TAG=$OWNER")
# Platform settings: host storage, the queue trigger's connection and App Insights through the
# identity; AZURE_CLIENT_ID selects the user-assigned identity for azure-identity.
platform_settings=(
  "AzureWebJobsStorage__accountName=$STORAGE_ACCOUNT"
  "AzureWebJobsStorage__credential=managedidentity"
  "AzureWebJobsStorage__clientId=$IDENTITY_CLIENT_ID"
  "RUNS_QUEUE_STORAGE__credential=managedidentity"
  "RUNS_QUEUE_STORAGE__clientId=$IDENTITY_CLIENT_ID"
  "APPLICATIONINSIGHTS_CONNECTION_STRING=$APP_INSIGHTS_CONNECTION_STRING"
  "APPLICATIONINSIGHTS_AUTHENTICATION_STRING=ClientId=$IDENTITY_CLIENT_ID;Authorization=AAD"
  "AZURE_CLIENT_ID=$IDENTITY_CLIENT_ID"
)
create "app settings of $NAME" az functionapp config appsettings set --resource-group "$RESOURCE_GROUP" --name "$NAME" \
  --settings "${app_settings[@]}" "${platform_settings[@]}" --output none
# Secrets go through a private file (az reads `@file`): never on a command line, never printed.
if [[ -n $CALLBACK_SECRET || -n $WEBHOOK_SECRET ]]; then
  secret_json="{"
  [[ -z $CALLBACK_SECRET ]] || secret_json+="\"CALLBACK_SIGNING_SECRET\": \"$CALLBACK_SECRET\""
  [[ -z $CALLBACK_SECRET || -z $WEBHOOK_SECRET ]] || secret_json+=", "
  [[ -z $WEBHOOK_SECRET ]] || secret_json+="\"AZURE_OPENAI_WEBHOOK_SECRET\": \"$WEBHOOK_SECRET\""
  secret_json+="}"
  if $DRY_RUN; then
    SECRET_FILE_ARG="@<secret-settings-file>"
  else
    SECRET_FILE=$(mktemp)
    printf '%s\n' "$secret_json" >"$SECRET_FILE"
    SECRET_FILE_ARG="@$SECRET_FILE"
  fi
  unset secret_json
  create "secret app settings of $NAME" az functionapp config appsettings set --resource-group "$RESOURCE_GROUP" \
    --name "$NAME" --settings "$SECRET_FILE_ARG" --output none
fi
# `az functionapp create` writes a key-based AzureWebJobsStorage connection string; it would win
# over the identity-based settings above (and cannot work: shared keys are disabled).
run az functionapp config appsettings delete --resource-group "$RESOURCE_GROUP" --name "$NAME" \
  --setting-names AzureWebJobsStorage --output none

if $SKIP_PUBLISH; then
  info "skipping publish (--skip-publish)"
else
  info "publishing the code (remote build; .funcignore decides what ships)"
  run func azure functionapp publish "$NAME" --python
fi

capture HOSTNAME_ "<app-host-name>" \
  az functionapp show --resource-group "$RESOURCE_GROUP" --name "$NAME" --query defaultHostName --output tsv
info "done: POST https://$HOSTNAME_/api/runs"
CI_FILES_URL="https://$HOSTNAME_" AZURE_RESOURCE_GROUP=$RESOURCE_GROUP AZURE_FUNCTION_NAME=$NAME \
  "$BASH" scripts/postdeploy.sh >&2
