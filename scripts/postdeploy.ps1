# azd postdeploy hook for Windows: prints what scripts/postdeploy.sh prints.
$ErrorActionPreference = 'Stop'
$url = "$env:CI_FILES_URL"
$group = "$env:AZURE_RESOURCE_GROUP"
$app = "$env:AZURE_FUNCTION_NAME"
if ($url -eq '' -or $group -eq '' -or $app -eq '') {
  Write-Error "postdeploy needs CI_FILES_URL, AZURE_RESOURCE_GROUP and AZURE_FUNCTION_NAME (see: azd env get-values)"; exit 1
}
Write-Output ""
Write-Output "The app runs at $url (health: $url/api/health). Point the client at it (copy and paste):"
Write-Output ""
Write-Output "`$env:CI_FILES_URL = '$url'"
Write-Output "`$env:CI_FILES_KEY = (az functionapp keys list --resource-group $group --name $app --query functionKeys.default --output tsv)"
Write-Output 'ci-files run "Create test.txt containing hello world"'
