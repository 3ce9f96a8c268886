# azd preprovision hook for Windows: the same checks as scripts/preprovision.sh.
$ErrorActionPreference = 'Stop'
$resourceId = "$env:AZURE_OPENAI_RESOURCE_ID"
$create = "$env:CREATE_OPENAI".ToLower()
if ($create -eq '') { $create = 'false' }
if ($create -ne 'true' -and $create -ne 'false') {
  Write-Error "CREATE_OPENAI must be true or false, not '$env:CREATE_OPENAI'"; exit 1
}
if ($create -eq 'true' -and $resourceId -ne '') {
  Write-Error "set only one of AZURE_OPENAI_RESOURCE_ID and CREATE_OPENAI=true"; exit 1
}
if ($create -eq 'false' -and $resourceId -eq '') {
  Write-Error "set AZURE_OPENAI_RESOURCE_ID to an existing Azure OpenAI account (azd env set AZURE_OPENAI_RESOURCE_ID /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.CognitiveServices/accounts/<name>), or let azd create one: azd env set CREATE_OPENAI true"; exit 1
}
if ($resourceId -ne '' -and $resourceId -notmatch '^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.CognitiveServices/accounts/[^/]+$') {
  Write-Error "AZURE_OPENAI_RESOURCE_ID must look like /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.CognitiveServices/accounts/<name>"; exit 1
}
