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
# What removes what (docs/deploy.md): the app's retention sweep deletes runs after RUN_RETENTION_DAYS
# (0: never); the output container's lifecycle rule is a backstop, so OUTPUT_BACKSTOP_DAYS must be longer.
if ("$env:OUTPUT_RETENTION_DAYS" -ne '') {
  Write-Error "OUTPUT_RETENTION_DAYS is replaced: runs are deleted by the app after RUN_RETENTION_DAYS (default 30, 0 keeps them), and the lifecycle rule is only a backstop after OUTPUT_BACKSTOP_DAYS (default 60, longer than the retention). Set those, then: azd env set OUTPUT_RETENTION_DAYS ''"; exit 1
}
$retention = "$env:RUN_RETENTION_DAYS"
if ($retention -eq '') { $retention = '30' }
$backstop = "$env:OUTPUT_BACKSTOP_DAYS"
if ($backstop -eq '') { $backstop = '60' }
if ($retention -notmatch '^[0-9]{1,4}$' -or [int]$retention -gt 3650) {
  Write-Error "RUN_RETENTION_DAYS must be a whole number of days from 0 to 3650, not '$retention'"; exit 1
}
if ($backstop -notmatch '^[0-9]{1,5}$' -or [int]$backstop -lt 1) {
  Write-Error "OUTPUT_BACKSTOP_DAYS must be a whole number of days from 1 to 99999, not '$backstop'"; exit 1
}
if ([int]$retention -gt 0 -and [int]$backstop -le [int]$retention) {
  Write-Error "OUTPUT_BACKSTOP_DAYS ($backstop) must exceed RUN_RETENTION_DAYS ($retention): the lifecycle rule is a backstop behind the app's retention sweep"; exit 1
}
