// ALL role assignments of the deployment, each to the app's user-assigned identity and
// each at the narrowest scope that works. main.bicep deploys this file twice: in the app's
// resource group (storage + monitoring) and in the Azure OpenAI account's resource group.
// Every section is skipped when its resource name is empty.

@description('Principal (object) id of the user-assigned managed identity.')
param principalId string

@description('Storage account behind AzureWebJobsStorage__* and the deployment package container.')
param hostStorageAccountName string = ''

@description('Storage account holding the output container (the same account by default).')
param outputStorageAccountName string = ''

param applicationInsightsName string = ''

@description('Azure OpenAI account in THIS resource group.')
param openAiAccountName string = ''

// Built-in role definition ids.
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var cognitiveServicesOpenAiUser = '5e0bd9bd-7b93-4f28-af87-19fc36ad61bd'
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

// Placeholders keep the `existing` references well-formed when a section is skipped.
resource hostStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = if (!empty(hostStorageAccountName)) {
  name: empty(hostStorageAccountName) ? 'unused' : hostStorageAccountName
}

resource outputStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = if (!empty(outputStorageAccountName)) {
  name: empty(outputStorageAccountName) ? 'unused' : outputStorageAccountName
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
resource hostStorageBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(hostStorageAccountName)) {
  name: guid(hostStorage.id, principalId, storageBlobDataOwner)
  scope: hostStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Storage Blob Data Contributor on the OUTPUT storage account: the app writes generated files
// and deletes them (DELETE /api/runs/...). It must be at ACCOUNT scope, because getting a user
// delegation key (to sign the read-only SAS links) is an account-level action
// (Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action).
// When host and output share one account (the default) this is covered by Owner above and
// is kept explicit so splitting the accounts later needs no RBAC change.
resource outputStorageBlobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(outputStorageAccountName)) {
  name: guid(outputStorage.id, principalId, storageBlobDataContributor)
  scope: outputStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
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
