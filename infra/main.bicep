// Code Interpreter Files: Flex Consumption Function App (Python 3.11) that runs
// Azure OpenAI Responses API + Code Interpreter and copies generated files to Blob Storage.
//
// Identity: ONE user-assigned managed identity is used for everything (host storage,
// deployment package, runs queue, output/input blobs + user delegation SAS, Azure OpenAI,
// App Insights). No shared keys: both storage accounts have shared-key access disabled, App
// Insights has local auth disabled, and a created Azure OpenAI resource has local (key) auth
// disabled.
//
// Storage: TWO accounts, so the app's data never shares an account with the host's secrets.
// HOST (st<token>): the Functions host containers (host keys, leases), the deployment package
// container and the runs queue. OUTPUT (stout<token>): the output container (with a lifecycle
// delete rule as a backstop), the input container and the runs table (RUNS_TABLE: run records,
// the catalog, DELETE's tombstones). All role assignments (least privilege, each with its reason)
// live in ./rbac.bicep.
//
// What removes what: the app's timer `sweep_runs` (every 10 minutes) deletes each run older than
// runRetentionDays the way DELETE does (its blobs, its record and catalog row; a tombstone stays),
// and webhook replay markers (_webhooks/ in the output container) after a day. The lifecycle rule
// is only a BACKSTOP for blobs the sweep never sees (runs of versions before the catalog; files of a
// deletion that stopped after the run's record was removed): its period, outputBackstopDays, must
// exceed runRetentionDays, so that it never deletes a run's files while the run is still listed.
// runRetentionDays = 0 keeps runs for ever, and then the rule is off too.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; used to derive a unique token for resource names.')
param environmentName string

@minLength(1)
@description('Location of all resources (must support Flex Consumption: az functionapp list-flexconsumption-locations).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Resource group name. Default: rg-<environmentName>.')
param resourceGroupName string = ''

@description('Function app name. Default: func-<token>.')
param functionAppName string = ''

@description('Resource id of an EXISTING Azure OpenAI (or AI Services) account. Required unless createOpenAi is true.')
param openAiResourceId string = ''

@description('Create a new Azure OpenAI account with a model deployment instead of using openAiResourceId.')
param createOpenAi bool = false

@description('Override for AZURE_OPENAI_ENDPOINT. Default: https://<custom subdomain>.openai.azure.com of the account.')
param openAiEndpoint string = ''

@description('Model deployment name the app calls (AZURE_OPENAI_DEPLOYMENT).')
param openAiDeploymentName string = 'gpt-4.1-mini'

@description('Only with createOpenAi: model, version, SKU and capacity (thousands of tokens per minute) of the deployment.')
param openAiModelName string = 'gpt-4.1-mini'
param openAiModelVersion string = '2025-04-14'
param openAiDeploymentSku string = 'GlobalStandard'
param openAiDeploymentCapacity int = 30

@description('Only with createOpenAi: location of the Azure OpenAI account (model availability differs by region).')
param openAiLocation string = location

@allowed(['', 'v1', 'preview', 'latest'])
@description('AZURE_OPENAI_API_VERSION: empty (not set) uses the GA v1 API; \'preview\' for preview features. The v1 API takes no dated versions.')
param openAiApiVersion string = ''

@minValue(0)
@maxValue(3650)
@description('RUN_RETENTION_DAYS: the sweep_runs timer deletes runs (files, records, catalog rows) older than this; 0 keeps them for ever.')
param runRetentionDays int = 30

@minValue(1)
@description('BACKSTOP: the output container\'s lifecycle rule deletes blobs this many days after they were last written; must exceed runRetentionDays (unused while runRetentionDays is 0).')
param outputBackstopDays int = 60

@description('Blob container for generated files (OUTPUT_CONTAINER).')
param outputContainerName string = 'code-interpreter-outputs'

@description('Blob container callers put input files in (INPUT_CONTAINER).')
param inputContainerName string = 'code-interpreter-inputs'

@minLength(3)
@maxLength(63)
@description('Storage queue on the host account that finishes runs nobody waits for (RUNS_QUEUE).')
param runsQueueName string = 'code-interpreter-runs'

@minLength(3)
@maxLength(63)
@description('Table in the output account: run records, the run catalog, DELETE\'s tombstones (RUNS_TABLE; letters and digits, starting with a letter).')
param runsTableName string = 'codeinterpreterruns'

@description('AZURE_OPENAI_TOKEN_SCOPE: the Entra ID scope of the Azure OpenAI tokens.')
param openAiTokenScope string = 'https://ai.azure.com/.default'

// The ranges below are the app's own (code_interpreter_files/settings.py): a value outside them
// would deploy and then be refused by the app at its first request.
@minValue(1)
@maxValue(10015)
param sasTtlMinutes int = 60
@minValue(1)
@maxValue(10015)
param sasTtlMaxMinutes int = 1440
@minValue(1)
@maxValue(1000)
param maxFilesPerRun int = 20
@minValue(1)
@maxValue(4398046511104)
param maxFileBytes int = 536870912
@minValue(1)
@maxValue(210)
@description('How long POST /api/runs waits before answering 202; the app allows at most 210 (the HTTP front end cuts at 230 s).')
param runWaitSeconds int = 180
@minValue(1)
@maxValue(64)
param copyConcurrency int = 4
@minValue(16)
@maxValue(16384)
@description('COPY_MEMORY_MB: one worker\'s budget of copy bytes in flight, shared by its concurrent requests; keep it at most a quarter of instanceMemoryMB (docs/deploy.md).')
param copyMemoryMB int = 512
@minValue(1)
@maxValue(50)
param maxInputFiles int = 10
@minValue(1)
@maxValue(8589934592)
param maxInputBytes int = 536870912
@allowed(['stream', 'poll'])
param runEvents string = 'stream'
@minValue(1)
@maxValue(600)
param runEventsIdleSeconds int = 30
@minValue(1)
@maxValue(1440)
@description('CONTAINER_LIFETIME_MINUTES: how long a run\'s Code Interpreter container can hold its files; transient faults are retried this long after the run started.')
param containerLifetimeMinutes int = 60

@description('CALLBACK_ALLOWED_HOSTS: comma-separated host names callbacks may go to; empty turns callbacks off.')
param callbackAllowedHosts string = ''
@secure()
@description('CALLBACK_SIGNING_SECRET (whsec_<base64>); required when callbackAllowedHosts is set. Empty: not set.')
param callbackSigningSecret string = ''
@secure()
@description('AZURE_OPENAI_WEBHOOK_SECRET: the secret of the Azure OpenAI webhook. Empty: not set (the webhook route answers 404).')
param openAiWebhookSecret string = ''
@maxLength(64)
@description('OWNER_TAG: marks the runs of this deployment; empty derives it from the output storage account and container.')
param ownerTag string = ''

@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048
@minValue(1)
@maxValue(1000)
@description('HTTP requests one instance serves at once; they share one worker\'s COPY_MEMORY_MB budget (docs/deploy.md).')
param httpPerInstanceConcurrency int = 16
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var appName = !empty(functionAppName) ? functionAppName : 'func-${resourceToken}'
var storageAccountName = 'st${resourceToken}'
var outputStorageAccountName = 'stout${resourceToken}'
// Always a valid container name: lower case, and no hyphen from the app name (so never '--'
// and never a trailing one); at most 12 + 32 + 1 + 7 = 52 characters.
var deploymentContainerName = toLower('app-package-${take(replace(appName, '-', ''), 32)}-${take(resourceToken, 7)}')

// The backstop must never delete a run's files before the sweep deletes the run (see the header).
// fail() stops the deployment with this message (Bicep 0.33 or later; azd's preprovision hook and
// scripts/deploy.sh check the same before anything is deployed).
var retentionIsOn = runRetentionDays > 0
var outputLifecycleDays = !retentionIsOn || outputBackstopDays > runRetentionDays ? outputBackstopDays : fail('outputBackstopDays (${outputBackstopDays}) must exceed runRetentionDays (${runRetentionDays}): the lifecycle rule is a backstop behind the retention sweep.')

// Parse the existing Azure OpenAI resource id. With neither openAiResourceId nor createOpenAi,
// azd's preprovision hook (scripts/preprovision.sh) stops first; a plain `az deployment` fails
// on this placeholder, whose names ARE the message ("resource group
// 'set-AZURE_OPENAI_RESOURCE_ID-or-CREATE_OPENAI-true' could not be found").
var openAiIdPlaceholder = '/subscriptions/${subscription().subscriptionId}/resourceGroups/set-AZURE_OPENAI_RESOURCE_ID-or-CREATE_OPENAI-true/providers/Microsoft.CognitiveServices/accounts/set-AZURE_OPENAI_RESOURCE_ID-or-CREATE_OPENAI-true'
var openAiIdParts = split(empty(openAiResourceId) ? openAiIdPlaceholder : openAiResourceId, '/')
var openAiSubscriptionId = createOpenAi ? subscription().subscriptionId : openAiIdParts[2]
var openAiAccountName = createOpenAi ? newOpenAiName : last(openAiIdParts)
var newOpenAiName = 'oai-${resourceToken}'

resource rg 'Microsoft.Resources/resourceGroups@2021-04-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : 'rg-${environmentName}'
  location: location
  tags: tags
}

// The one identity the app uses for everything; AZURE_CLIENT_ID points azure-identity at it.
module identity 'br/public:avm/res/managed-identity/user-assigned-identity:0.4.1' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-${resourceToken}'
    location: location
    tags: tags
  }
}

module logAnalytics 'br/public:avm/res/operational-insights/workspace:0.7.0' = {
  name: 'loganalytics'
  scope: rg
  params: {
    name: 'log-${resourceToken}'
    location: location
    tags: tags
    dataRetention: 30
  }
}

module appInsights 'br/public:avm/res/insights/component:0.4.1' = {
  name: 'appinsights'
  scope: rg
  params: {
    name: 'appi-${resourceToken}'
    location: location
    tags: tags
    workspaceResourceId: logAnalytics.outputs.resourceId
    disableLocalAuth: true // telemetry is sent with the identity (Monitoring Metrics Publisher)
  }
}

// HOST storage: the Functions host (AzureWebJobsStorage__*), the deployment package and the runs queue.
module storage 'br/public:avm/res/storage/storage-account:0.8.3' = {
  name: 'storage'
  scope: rg
  params: {
    name: storageAccountName
    location: location
    tags: tags
    skuName: 'Standard_LRS'
    kind: 'StorageV2'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false // identity only
    minimumTlsVersion: 'TLS1_2'
    dnsEndpointType: 'Standard'
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    blobServices: {
      containers: [
        { name: deploymentContainerName, publicAccess: 'None' }
      ]
    }
    queueServices: {
      queues: [
        { name: runsQueueName }
      ]
    }
  }
}

// OUTPUT storage: generated files, the callers' input files and the runs table.
module outputStorage 'br/public:avm/res/storage/storage-account:0.8.3' = {
  name: 'output-storage'
  scope: rg
  params: {
    name: outputStorageAccountName
    location: location
    tags: tags
    skuName: 'Standard_LRS'
    kind: 'StorageV2'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false // identity only; SAS links are user-delegation SAS
    minimumTlsVersion: 'TLS1_2'
    dnsEndpointType: 'Standard'
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    blobServices: {
      // Expired outputs should really be gone, not kept as soft-deleted blobs.
      deleteRetentionPolicyEnabled: false
      containers: [
        { name: outputContainerName, publicAccess: 'None' }
        { name: inputContainerName, publicAccess: 'None' }
      ]
    }
    // Created here, so the identity's role can be scoped to this one table (rbac.bicep).
    tableServices: {
      tables: [
        { name: runsTableName }
      ]
    }
    // The BACKSTOP (header: what removes what); off while runs are kept for ever.
    managementPolicyRules: [
      {
        name: 'delete-expired-outputs'
        enabled: retentionIsOn
        type: 'Lifecycle'
        definition: {
          filters: {
            blobTypes: ['blockBlob']
            prefixMatch: ['${outputContainerName}/']
          }
          actions: {
            baseBlob: {
              delete: {
                daysAfterModificationGreaterThan: outputLifecycleDays
              }
            }
          }
        }
      }
    ]
  }
}

module plan 'br/public:avm/res/web/serverfarm:0.1.1' = {
  name: 'plan'
  scope: rg
  params: {
    name: 'plan-${resourceToken}'
    location: location
    tags: tags
    sku: {
      name: 'FC1'
      tier: 'FlexConsumption'
    }
    reserved: true
  }
}

// Optional: a new Azure OpenAI account (key auth disabled) with one model deployment.
module openAi 'br/public:avm/res/cognitive-services/account:0.8.0' = if (createOpenAi) {
  name: 'openai'
  scope: rg
  params: {
    name: newOpenAiName
    location: openAiLocation
    tags: tags
    kind: 'OpenAI'
    sku: 'S0'
    customSubDomainName: newOpenAiName
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
    deployments: [
      {
        name: openAiDeploymentName
        model: {
          format: 'OpenAI'
          name: openAiModelName
          version: openAiModelVersion
        }
        sku: {
          name: openAiDeploymentSku
          capacity: openAiDeploymentCapacity
        }
      }
    ]
  }
}

resource existingOpenAi 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = if (!createOpenAi) {
  name: last(openAiIdParts)
  scope: resourceGroup(openAiIdParts[2], openAiIdParts[4])
}

// Only the branch taken is evaluated, so the existing account is read only when it is used.
var existingOpenAiEndpoint = createOpenAi ? '' : 'https://${existingOpenAi.properties.customSubDomainName}.openai.azure.com'
var defaultOpenAiEndpoint = createOpenAi ? 'https://${newOpenAiName}.openai.azure.com' : existingOpenAiEndpoint
var resolvedOpenAiEndpoint = !empty(openAiEndpoint) ? openAiEndpoint : defaultOpenAiEndpoint

var outputStorageAccountUrl = 'https://${outputStorageAccountName}.blob.${environment().suffixes.storage}'
var runsQueueServiceUrl = 'https://${storageAccountName}.queue.${environment().suffixes.storage}'

// Every setting the app reads and that is meant to be set in Azure (defaults spelled out).
// Deliberately NOT set: AZURE_OPENAI_API_KEY, OUTPUT_STORAGE_CONNECTION_STRING and
// RUNS_QUEUE_STORAGE (key-based, local-development alternatives; this deployment uses the
// managed identity), and RUNS_TABLE_SERVICE_URL (the app derives https://<account>.table.<suffix>
// from OUTPUT_STORAGE_ACCOUNT_URL). The secrets go to app/api.bicep as secure parameters.
var appSettings = {
  AZURE_OPENAI_ENDPOINT: resolvedOpenAiEndpoint
  AZURE_OPENAI_DEPLOYMENT: openAiDeploymentName
  AZURE_OPENAI_TOKEN_SCOPE: openAiTokenScope
  OUTPUT_STORAGE_ACCOUNT_URL: outputStorageAccountUrl
  OUTPUT_CONTAINER: outputContainerName
  INPUT_CONTAINER: inputContainerName
  SAS_TTL_MINUTES: string(sasTtlMinutes)
  SAS_TTL_MAX_MINUTES: string(sasTtlMaxMinutes)
  MAX_FILES_PER_RUN: string(maxFilesPerRun)
  MAX_FILE_BYTES: string(maxFileBytes)
  MAX_INPUT_FILES: string(maxInputFiles)
  MAX_INPUT_BYTES: string(maxInputBytes)
  RUN_WAIT_SECONDS: string(runWaitSeconds)
  COPY_CONCURRENCY: string(copyConcurrency)
  COPY_MEMORY_MB: string(copyMemoryMB)
  RUN_EVENTS: runEvents
  RUN_EVENTS_IDLE_SECONDS: string(runEventsIdleSeconds)
  RUNS_TABLE: runsTableName
  RUN_RETENTION_DAYS: string(runRetentionDays)
  CONTAINER_LIFETIME_MINUTES: string(containerLifetimeMinutes)
  RUNS_QUEUE: runsQueueName
  RUNS_QUEUE_STORAGE__queueServiceUri: runsQueueServiceUrl
}

// Optional settings: set only when given (an empty value is not the same as unset for the app).
var optionalAppSettings = {
  AZURE_OPENAI_API_VERSION: openAiApiVersion
  CALLBACK_ALLOWED_HOSTS: callbackAllowedHosts
  OWNER_TAG: ownerTag
}
var givenOptionalAppSettings = toObject(
  filter(items(optionalAppSettings), setting => !empty(setting.value)),
  setting => setting.key,
  setting => setting.value
)

module api './app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: appName
    location: location
    tags: tags
    appServicePlanId: plan.outputs.resourceId
    applicationInsightsName: appInsights.outputs.name
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    identityId: identity.outputs.resourceId
    identityClientId: identity.outputs.clientId
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    appSettings: union(appSettings, givenOptionalAppSettings)
    callbackSigningSecret: callbackSigningSecret
    openAiWebhookSecret: openAiWebhookSecret
  }
}

// Role assignments (all defined in rbac.bicep): storage + monitoring in the app's resource group ...
module rbac './rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    hostStorageAccountName: storage.outputs.name
    outputStorageAccountName: outputStorage.outputs.name
    outputContainerName: outputContainerName
    inputContainerName: inputContainerName
    runsTableName: runsTableName
    applicationInsightsName: appInsights.outputs.name
  }
}

// ... and Azure OpenAI wherever that account lives (possibly another resource group/subscription).
module rbacOpenAi './rbac.bicep' = {
  name: 'rbac-openai-${resourceToken}'
  scope: resourceGroup(openAiSubscriptionId, createOpenAi ? rg.name : openAiIdParts[4])
  params: {
    principalId: identity.outputs.principalId
    openAiAccountName: openAiAccountName
  }
  dependsOn: [
    openAi // a created account must exist before its role assignment
  ]
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_NAME string = api.outputs.name
// The client's base URL (ci-files: CI_FILES_URL, without /api); the postdeploy hook prints it.
output CI_FILES_URL string = 'https://${api.outputs.defaultHostname}'
output FUNCTION_URL string = 'https://${api.outputs.defaultHostname}/api/runs'
output HEALTH_URL string = 'https://${api.outputs.defaultHostname}/api/health'
output FUNCTION_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output AZURE_OPENAI_ENDPOINT string = resolvedOpenAiEndpoint
output OUTPUT_STORAGE_ACCOUNT_URL string = outputStorageAccountUrl
output OUTPUT_CONTAINER string = outputContainerName
output INPUT_CONTAINER string = inputContainerName
output RUNS_TABLE string = runsTableName
output RUNS_QUEUE string = runsQueueName
output RUNS_QUEUE_STORAGE__queueServiceUri string = runsQueueServiceUrl
output HOST_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output OUTPUT_STORAGE_ACCOUNT_NAME string = outputStorage.outputs.name
output APPLICATIONINSIGHTS_NAME string = appInsights.outputs.name
output LOG_ANALYTICS_WORKSPACE_NAME string = logAnalytics.outputs.name
