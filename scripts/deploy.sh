#!/usr/bin/env bash
# Deploy Code Interpreter Files to Azure with the Azure CLI (no azd needed).
#
# Creates or updates (idempotent): resource group, user-assigned managed identity,
# storage account (shared-key access disabled) with the deployment and output containers
# and a lifecycle rule, Log Analytics + Application Insights (local auth disabled),
# the role assignments, a Flex Consumption function app (Python 3.11) running as the
# identity, its app settings; then publishes the code with Azure Functions Core Tools.
#
# Usage:
#   scripts/deploy.sh --name <app> --location <region> \
#       --openai-resource-id /subscriptions/.../providers/Microsoft.CognitiveServices/accounts/<aoai> \
#       [--resource-group <rg>] [--openai-deployment <name>] [--output-retention-days <n>] \
#       [--openai-endpoint <url>] [--openai-api-version <v>] [--storage-account <name>] \
#       [--skip-publish] [--dry-run]
#
# Every option can also come from the environment: AZURE_FUNCTION_APP_NAME, AZURE_LOCATION,
# AZURE_RESOURCE_GROUP, AZURE_OPENAI_RESOURCE_ID, AZURE_OPENAI_DEPLOYMENT, AZURE_OPENAI_ENDPOINT,
# AZURE_OPENAI_API_VERSION, OUTPUT_RETENTION_DAYS, AZURE_STORAGE_ACCOUNT.
#
# --dry-run prints every command (one per line, prefixed "+ ") without running anything;
# it needs neither az nor a login. Values only known after creation are shown as <...>.
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
OUTPUT_RETENTION_DAYS=${OUTPUT_RETENTION_DAYS:-7}
STORAGE_ACCOUNT=${AZURE_STORAGE_ACCOUNT:-}
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
    --output-retention-days) need_value "$@"; OUTPUT_RETENTION_DAYS=$2; shift 2 ;;
    --storage-account) need_value "$@"; STORAGE_ACCOUNT=$2; shift 2 ;;
    --skip-publish) SKIP_PUBLISH=true; shift ;;
    --dry-run) DRY_RUN=true; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
done

# ---- inputs ------------------------------------------------------------------------
[[ -n $NAME ]] || die "--name is required (the function app name, globally unique)"
[[ $NAME =~ ^[A-Za-z0-9][A-Za-z0-9-]{0,58}[A-Za-z0-9]$ ]] || die "--name must be 2-60 letters, digits or hyphens"
[[ -n $LOCATION ]] || die "--location is required (see: az functionapp list-flexconsumption-locations)"
[[ -n $OPENAI_RESOURCE_ID ]] || die "--openai-resource-id is required (resource id of an existing Azure OpenAI account)"
[[ $OPENAI_RESOURCE_ID =~ ^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.CognitiveServices/accounts/[^/]+$ ]] \
  || die "--openai-resource-id must look like /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.CognitiveServices/accounts/<name>"
[[ -n $OPENAI_DEPLOYMENT ]] || die "--openai-deployment must not be empty"
[[ $OUTPUT_RETENTION_DAYS =~ ^[1-9][0-9]*$ ]] || die "--output-retention-days must be a whole number >= 1"

RESOURCE_GROUP=${RESOURCE_GROUP:-rg-$NAME}
lower_name=$(printf '%s' "$NAME" | tr '[:upper:]' '[:lower:]' | tr -cd 'a-z0-9')
STORAGE_ACCOUNT=${STORAGE_ACCOUNT:-$(printf 'st%s' "$lower_name" | cut -c1-24)}
[[ $STORAGE_ACCOUNT =~ ^[a-z0-9]{3,24}$ ]] || die "storage account name '$STORAGE_ACCOUNT' is invalid; pass --storage-account"
IDENTITY_NAME="id-$NAME"
LOG_ANALYTICS_NAME="log-$NAME"
APP_INSIGHTS_NAME="appi-$NAME"
DEPLOYMENT_CONTAINER="app-package"
OUTPUT_CONTAINER="code-interpreter-outputs"

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
# capture VAR PLACEHOLDER CMD...: print, then store CMD's output in VAR (PLACEHOLDER on --dry-run).
capture() {
  local var=$1 placeholder=$2 value
  shift 2
  print_cmd "$@"
  if $DRY_RUN; then value=$placeholder; else value=$("$@"); fi
  printf -v "$var" '%s' "$value"
}
# exists CMD...: print, then succeed if CMD succeeds (always "missing" on --dry-run).
exists() {
  print_cmd "$@"
  if $DRY_RUN; then return 1; fi
  "$@" >/dev/null 2>&1
}

# ---- prerequisites --------------------------------------------------------------------
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
IDENTITY_ID="$RG_ID/providers/Microsoft.ManagedIdentity/userAssignedIdentities/$IDENTITY_NAME"
LOG_ANALYTICS_ID="$RG_ID/providers/Microsoft.OperationalInsights/workspaces/$LOG_ANALYTICS_NAME"
APP_INSIGHTS_ID="$RG_ID/providers/Microsoft.Insights/components/$APP_INSIGHTS_NAME"

info "resource group $RESOURCE_GROUP"
run az group create --name "$RESOURCE_GROUP" --location "$LOCATION" --output none

info "user-assigned managed identity $IDENTITY_NAME (used for everything)"
run az identity create --resource-group "$RESOURCE_GROUP" --name "$IDENTITY_NAME" --location "$LOCATION" --output none
capture IDENTITY_PRINCIPAL_ID "<identity-principal-id>" \
  az identity show --resource-group "$RESOURCE_GROUP" --name "$IDENTITY_NAME" --query principalId --output tsv
capture IDENTITY_CLIENT_ID "<identity-client-id>" \
  az identity show --resource-group "$RESOURCE_GROUP" --name "$IDENTITY_NAME" --query clientId --output tsv

info "storage account $STORAGE_ACCOUNT (shared-key access disabled)"
run az storage account create --resource-group "$RESOURCE_GROUP" --name "$STORAGE_ACCOUNT" \
  --location "$LOCATION" --sku Standard_LRS --kind StorageV2 \
  --allow-shared-key-access false --allow-blob-public-access false \
  --min-tls-version TLS1_2 --https-only true --output none
# Containers through Azure Resource Manager: no account key and no data-plane role for the
# person deploying (an --auth-mode login data-plane call would need one, and a fresh role
# assignment can take minutes to apply).
for container in "$DEPLOYMENT_CONTAINER" "$OUTPUT_CONTAINER"; do
  run az storage container-rm create --resource-group "$RESOURCE_GROUP" \
    --storage-account "$STORAGE_ACCOUNT" --name "$container" --public-access off --output none
done
lifecycle_policy=$(printf '{"rules":[{"name":"delete-expired-outputs","enabled":true,"type":"Lifecycle","definition":{"filters":{"blobTypes":["blockBlob"],"prefixMatch":["%s/"]},"actions":{"baseBlob":{"delete":{"daysAfterModificationGreaterThan":%s}}}}}]}' \
  "$OUTPUT_CONTAINER" "$OUTPUT_RETENTION_DAYS")
run az storage account management-policy create --resource-group "$RESOURCE_GROUP" \
  --account-name "$STORAGE_ACCOUNT" --policy "$lifecycle_policy" --output none

info "Log Analytics $LOG_ANALYTICS_NAME + Application Insights $APP_INSIGHTS_NAME"
run az extension add --name application-insights --upgrade --only-show-errors
run az monitor log-analytics workspace create --resource-group "$RESOURCE_GROUP" \
  --workspace-name "$LOG_ANALYTICS_NAME" --location "$LOCATION" --retention-time 30 --output none
run az monitor app-insights component create --resource-group "$RESOURCE_GROUP" \
  --app "$APP_INSIGHTS_NAME" --location "$LOCATION" --kind web --application-type web \
  --workspace "$LOG_ANALYTICS_ID" --output none
# Telemetry only with Entra ID (the identity), no instrumentation-key ingestion.
run az resource update --ids "$APP_INSIGHTS_ID" --set properties.DisableLocalAuth=true --output none
capture APP_INSIGHTS_CONNECTION_STRING "<app-insights-connection-string>" \
  az monitor app-insights component show --resource-group "$RESOURCE_GROUP" --app "$APP_INSIGHTS_NAME" \
  --query connectionString --output tsv

info "role assignments for the identity"
assign_role() { # ROLE SCOPE
  run az role assignment create --assignee-object-id "$IDENTITY_PRINCIPAL_ID" \
    --assignee-principal-type ServicePrincipal --role "$1" --scope "$2" --output none
}
# Host storage (AzureWebJobsStorage__*) and the deployment package: the platform needs Owner.
assign_role "Storage Blob Data Owner" "$STORAGE_ID"
# Output blobs + user delegation key (account-scope action) for the read-only SAS links.
# Covered by Owner while both share this account; explicit so they can be split.
assign_role "Storage Blob Data Contributor" "$STORAGE_ID"
# Responses API + Code Interpreter container files with Entra ID tokens, no API key.
assign_role "Cognitive Services OpenAI User" "$OPENAI_RESOURCE_ID"
# Telemetry to App Insights with local auth disabled.
assign_role "Monitoring Metrics Publisher" "$APP_INSIGHTS_ID"

if [[ -z $OPENAI_ENDPOINT ]]; then
  capture openai_subdomain "<openai-custom-subdomain>" \
    az cognitiveservices account show --ids "$OPENAI_RESOURCE_ID" --query properties.customSubDomainName --output tsv
  [[ -n $openai_subdomain ]] || die "the Azure OpenAI account has no custom subdomain; pass --openai-endpoint"
  OPENAI_ENDPOINT="https://$openai_subdomain.openai.azure.com"
fi

info "Flex Consumption function app $NAME (Python 3.11)"
if exists az functionapp show --resource-group "$RESOURCE_GROUP" --name "$NAME"; then
  # Already there: make sure the deployment storage uses the identity.
  run az functionapp deployment config set --resource-group "$RESOURCE_GROUP" --name "$NAME" \
    --deployment-storage-name "$STORAGE_ACCOUNT" --deployment-storage-container-name "$DEPLOYMENT_CONTAINER" \
    --deployment-storage-auth-type UserAssignedIdentity --deployment-storage-auth-value "$IDENTITY_ID" --output none
else
  run az functionapp create --resource-group "$RESOURCE_GROUP" --name "$NAME" \
    --flexconsumption-location "$LOCATION" --runtime python --runtime-version 3.11 \
    --storage-account "$STORAGE_ACCOUNT" --assign-identity "$IDENTITY_ID" \
    --deployment-storage-name "$STORAGE_ACCOUNT" --deployment-storage-container-name "$DEPLOYMENT_CONTAINER" \
    --deployment-storage-auth-type UserAssignedIdentity --deployment-storage-auth-value "$IDENTITY_ID" \
    --app-insights "$APP_INSIGHTS_NAME" --instance-memory 2048 --maximum-instance-count 100 \
    --https-only true --output none
fi

info "app settings"
# The app's own settings (all values explicit). Deliberately NOT set: AZURE_OPENAI_API_KEY and
# OUTPUT_STORAGE_CONNECTION_STRING (key-based local alternatives; Azure uses the identity).
app_settings=(
  "AZURE_OPENAI_ENDPOINT=$OPENAI_ENDPOINT"
  "AZURE_OPENAI_DEPLOYMENT=$OPENAI_DEPLOYMENT"
  "AZURE_OPENAI_API_VERSION=$OPENAI_API_VERSION"
  "OUTPUT_STORAGE_ACCOUNT_URL=https://$STORAGE_ACCOUNT.blob.core.windows.net"
  "OUTPUT_CONTAINER=$OUTPUT_CONTAINER"
  "SAS_TTL_MINUTES=60"
  "SAS_TTL_MAX_MINUTES=1440"
  "MAX_FILES_PER_RUN=20"
  "MAX_FILE_BYTES=536870912"
  "RUN_WAIT_SECONDS=180"
  "COPY_CONCURRENCY=4"
)
# Platform settings: host storage and App Insights through the identity; AZURE_CLIENT_ID
# selects the user-assigned identity for azure-identity.
platform_settings=(
  "AzureWebJobsStorage__accountName=$STORAGE_ACCOUNT"
  "AzureWebJobsStorage__credential=managedidentity"
  "AzureWebJobsStorage__clientId=$IDENTITY_CLIENT_ID"
  "APPLICATIONINSIGHTS_CONNECTION_STRING=$APP_INSIGHTS_CONNECTION_STRING"
  "APPLICATIONINSIGHTS_AUTHENTICATION_STRING=ClientId=$IDENTITY_CLIENT_ID;Authorization=AAD"
  "AZURE_CLIENT_ID=$IDENTITY_CLIENT_ID"
)
run az functionapp config appsettings set --resource-group "$RESOURCE_GROUP" --name "$NAME" \
  --settings "${app_settings[@]}" "${platform_settings[@]}" --output none
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
info "done: POST https://$HOSTNAME_/api/runs (health: https://$HOSTNAME_/api/health)"
info "function key: az functionapp keys list --resource-group $RESOURCE_GROUP --name $NAME --query functionKeys.default --output tsv"
