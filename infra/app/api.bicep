// Flex Consumption Function App (Linux, Python 3.11) running as the user-assigned identity.
param name string
param location string = resourceGroup().location
param tags object = {}
param appServicePlanId string
param applicationInsightsName string
param storageAccountName string
param deploymentContainerName string
param identityId string
param identityClientId string
param instanceMemoryMB int = 2048
param maximumInstanceCount int = 100
@description('HTTP requests one instance serves at once (triggers.http.perInstanceConcurrency).')
param httpPerInstanceConcurrency int = 16
param serviceName string = 'api'
@description('The app\'s own settings (see main.bicep), secrets excepted.')
param appSettings object
@secure()
@description('CALLBACK_SIGNING_SECRET; empty: not set.')
param callbackSigningSecret string = ''
@secure()
@description('AZURE_OPENAI_WEBHOOK_SECRET; empty: not set.')
param openAiWebhookSecret string = ''

resource stg 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// Platform settings (not read by the app code itself). Flex Consumption sets the worker
// runtime and version through functionAppConfig, so no FUNCTIONS_* settings here.
var platformAppSettings = {
  // Host storage through the identity (no connection string, no keys).
  AzureWebJobsStorage__accountName: stg.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  // The queue trigger's connection RUNS_QUEUE_STORAGE (its __queueServiceUri is an app setting).
  RUNS_QUEUE_STORAGE__credential: 'managedidentity'
  RUNS_QUEUE_STORAGE__clientId: identityClientId
  // Telemetry with Entra ID auth (App Insights local auth is disabled).
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // DefaultAzureCredential / ManagedIdentityCredential pick the user-assigned identity from this.
  AZURE_CLIENT_ID: identityClientId
}

// Secrets: set only when given. They reach this module as secure parameters and go straight
// into the site's appsettings resource below, never through a module's plain parameters
// (the AVM site module's appSettingsKeyValuePairs is not secure: deployment history shows it).
var secretAppSettings = {
  CALLBACK_SIGNING_SECRET: callbackSigningSecret
  AZURE_OPENAI_WEBHOOK_SECRET: openAiWebhookSecret
}
var givenSecretAppSettings = toObject(
  filter(items(secretAppSettings), setting => !empty(setting.value)),
  setting => setting.key,
  setting => setting.value
)

module site 'br/public:avm/res/web/site:0.15.1' = {
  name: '${serviceName}-flex-consumption'
  params: {
    kind: 'functionapp,linux'
    name: name
    location: location
    tags: union(tags, { 'azd-service-name': serviceName })
    serverFarmResourceId: appServicePlanId
    httpsOnly: true
    managedIdentities: {
      systemAssigned: false
      userAssignedResourceIds: [
        identityId
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${stg.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
        // Concurrent requests of one instance share its worker's COPY_MEMORY_MB budget
        // (docs/deploy.md, "Memory and concurrency").
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
    siteConfig: {
      alwaysOn: false
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
    }
  }
}

resource siteRef 'Microsoft.Web/sites@2023-12-01' existing = {
  name: name
}

// All app settings in one resource (it replaces the whole set on every deployment).
resource siteAppSettings 'Microsoft.Web/sites/config@2023-12-01' = {
  name: 'appsettings'
  parent: siteRef
  properties: union(appSettings, platformAppSettings, givenSecretAppSettings)
  dependsOn: [
    site
  ]
}

output name string = site.outputs.name
output defaultHostname string = site.outputs.defaultHostname
