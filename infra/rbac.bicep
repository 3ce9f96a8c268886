// ALL role assignments of the deployment, each to the app's user-assigned identity and
// each at the narrowest scope that works. main.bicep deploys this file twice: in the app's
// resource group (storage + monitoring) and in the Azure OpenAI account's resource group.
// Every section is skipped when its resource name is empty.
//
// Least privilege: the app's data (output and input containers, the runs table) lives in an
// account of its own, where the identity holds Storage Blob Data Contributor on the output
// container, Storage Blob Data Reader on the input container, Storage Table Data Contributor on
// the runs table, and Storage Blob Delegator (nothing else) at account scope. Data Owner is held
// only on the host account, which keeps the host's keys, the deployment package and the runs queue.
//
// Why the input and output containers share one account, and why the identity's access to the
// output container cannot be used to read it through an input name: RBAC cannot close that
// path, because the identity must read the output container anyway (its manifests, and a
// conversation's earlier outputs carried into a new container), wherever the inputs live. The
// code closes it: input names reach storage only through input_blobs.BlobReader bound to
// INPUT_CONTAINER when the app starts (no request chooses a container), a name must be a plain
// relative path (naming.blob_path_problem: no '.'/'..' or empty segment, leading '/', backslash,
// control character, or any of them percent-encoded; POST answers 400 invalid_input_name), and
// the reader checks that the path the HTTP stack sends, after yarl resolves dot segments, is
// exactly INPUT_CONTAINER/<name> (tests/test_inputs_http.py reads it from Azurite's own log). The
// output container is read only under names the app wrote into its manifests. One account keeps
// one storage setting (OUTPUT_STORAGE_ACCOUNT_URL, or one connection string locally) for both.

@description('Principal (object) id of the user-assigned managed identity.')
param principalId string

@description('HOST storage account: AzureWebJobsStorage__*, the deployment package container and the runs queue.')
param hostStorageAccountName string = ''

@description('OUTPUT storage account: the output and input containers (a different account from the host one).')
param outputStorageAccountName string = ''

@description('Output container (OUTPUT_CONTAINER) in the output account.')
param outputContainerName string = 'code-interpreter-outputs'

@description('Input container (INPUT_CONTAINER) in the output account.')
param inputContainerName string = 'code-interpreter-inputs'

@description('Runs table (RUNS_TABLE) in the output account.')
param runsTableName string = 'codeinterpreterruns'

param applicationInsightsName string = ''

@description('Azure OpenAI account in THIS resource group.')
param openAiAccountName string = ''

// Built-in role definition ids.
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
var storageBlobDelegator = 'db58b8e5-c6ad-4a2a-8342-4190687cbf4a'
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
var cognitiveServicesOpenAiUser = '5e0bd9bd-7b93-4f28-af87-19fc36ad61bd'
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

// Placeholders keep the `existing` references well-formed when a section is skipped.
var outputAccount = empty(outputStorageAccountName) ? 'unused' : outputStorageAccountName

resource hostStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = if (!empty(hostStorageAccountName)) {
  name: empty(hostStorageAccountName) ? 'unused' : hostStorageAccountName
}

resource outputStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = if (!empty(outputStorageAccountName)) {
  name: outputAccount
}

resource outputContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = if (!empty(outputStorageAccountName)) {
  name: '${outputAccount}/default/${outputContainerName}'
}

resource inputContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = if (!empty(outputStorageAccountName)) {
  name: '${outputAccount}/default/${inputContainerName}'
}

resource runsTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' existing = if (!empty(outputStorageAccountName)) {
  name: '${outputAccount}/default/${runsTableName}'
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = if (!empty(applicationInsightsName)) {
  name: empty(applicationInsightsName) ? 'unused' : applicationInsightsName
}

resource openAi 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = if (!empty(openAiAccountName)) {
  name: empty(openAiAccountName) ? 'unused' : openAiAccountName
}

// Storage Blob Data Owner on the HOST storage account: the Functions host (AzureWebJobsStorage
// through the identity) creates and manages its own containers and blob leases
// (azure-webjobs-hosts, azure-webjobs-secrets), and Flex Consumption reads the deployment
// package from its container with this identity. Owner is what the platform documents for
// identity-based AzureWebJobsStorage; account scope because the host creates containers.
// No app data lives in this account, so Owner here reaches no output or input file.
resource hostStorageBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(hostStorageAccountName)) {
  name: guid(hostStorage.id, principalId, storageBlobDataOwner)
  scope: hostStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Storage Queue Data Contributor on the HOST storage account: the runs queue (RUNS_QUEUE_STORAGE
// connection). The queue trigger reads, updates and deletes messages, the app sends them, and
// the host creates and writes <queue>-poison, a queue that does not exist beforehand: hence
// account scope rather than the one queue. The account holds no other queue of the app.
resource hostStorageQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(hostStorageAccountName)) {
  name: guid(hostStorage.id, principalId, storageQueueDataContributor)
  scope: hostStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Storage Blob Data Contributor on the OUTPUT CONTAINER only: the app writes generated files,
// reads its manifests and deletes a run's files (DELETE /api/runs/...).
resource outputContainerContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(outputStorageAccountName)) {
  name: guid(outputContainer.id, principalId, storageBlobDataContributor)
  scope: outputContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Storage Blob Data Reader on the INPUT CONTAINER only: the app reads the callers' input blobs
// (input_files: properties, then ranged reads) and never writes or deletes them.
resource inputContainerReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(outputStorageAccountName)) {
  name: guid(inputContainer.id, principalId, storageBlobDataReader)
  scope: inputContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReader)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Storage Table Data Contributor on the RUNS TABLE only (not the account): each run's record, the
// run catalog (GET /api/runs) and DELETE's tombstones are entities of this one table, which the app
// queries, inserts, updates with If-Match, upserts and deletes. No other table is read or written,
// and no table SAS is ever signed (the links are blob SAS). The deployment creates the table, so the
// app's create-on-first-use needs no account-level right: its answer (409 exists, or 403 from this
// table-scoped role) is tolerated (run_table.ensure_table).
resource runsTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(outputStorageAccountName)) {
  name: guid(runsTable.id, principalId, storageTableDataContributor)
  scope: runsTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Storage Blob Delegator on the OUTPUT storage account: getting a user delegation key (to sign
// the read-only SAS links) is an account-level action
// (Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action), and this
// role grants that action alone. A SAS signed with the key still grants no more than the
// signer's own data rights, i.e. the two containers above (the app signs output blobs only).
resource outputStorageDelegator 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(outputStorageAccountName)) {
  name: guid(outputStorage.id, principalId, storageBlobDelegator)
  scope: outputStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDelegator)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Cognitive Services OpenAI User on the Azure OpenAI account: call the Responses API and read
// Code Interpreter container files with Entra ID tokens (no API key). It grants inference/data
// access only, no management of the account or its deployments.
resource openAiUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(openAiAccountName)) {
  name: guid(openAi.id, principalId, cognitiveServicesOpenAiUser)
  scope: openAi
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', cognitiveServicesOpenAiUser)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Monitoring Metrics Publisher on Application Insights: its local (key) auth is disabled, so
// the host sends telemetry with the identity (APPLICATIONINSIGHTS_AUTHENTICATION_STRING).
resource appInsightsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(applicationInsightsName)) {
  name: guid(appInsights.id, principalId, monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
