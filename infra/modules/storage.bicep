// Host storage account of the $export service: Functions host storage (AzureWebJobsStorage, identity-based),
// the Flex Consumption deployment package container, the job table and the work-item queue (plus its
// poison queue). Export files do NOT live here: they go to their own account (export-storage.bicep), so
// that the app identity's write role on PHI is scoped to that account and a `_container` can never land
// next to the host's keys (azure-webjobs-secrets) or the deployment package.
//
// Shared-key access is disabled, so every client (the Functions host, the Go handler, az CLI, Storage
// Explorer) must authenticate with Microsoft Entra ID (roles are granted by storage-rbac.bicep).

@description('Storage account name (3-24 lowercase letters and digits, globally unique).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Storage SKU.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
])
param skuName string = 'Standard_LRS'

@description('Blob container that holds the Flex Consumption deployment package.')
param deploymentContainer string = 'app-package'

@description('Table for export job state.')
param jobTable string

@description('Queue for export work items. The Functions host creates "<name>-poison" on demand; it is created here too so that the RBAC role needed to create it is not the only safeguard.')
param workQueue string

@description('"Enabled", or "Disabled" for networkMode=private (private endpoints only).')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Enabled'

@description('Storage firewall (networkAcls), built by main.bicep from networkMode.')
param networkAcls object = {
  defaultAction: 'Allow'
  bypass: 'AzureServices'
}

@description('Log Analytics workspace that receives the blob, queue and table logs (StorageRead/Write/Delete), which the "storage refused the identity" alert reads; empty = none.')
param logAnalyticsId string = ''

@description('Resource tags.')
param tags object = {}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    // Identity-based access only (docs §3.2).
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    publicNetworkAccess: publicNetworkAccess
    networkAcls: networkAcls
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource deploymentContainerResource 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainer
  properties: {
    publicAccess: 'None'
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource jobTableResource 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: jobTable
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource workQueueResource 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: workQueue
}

resource poisonQueueResource 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: '${workQueue}-poison'
}

// Resource logs of the three services the host and the handler use. The queue's polling makes StorageRead
// the bulk of it (one row per poll, about every 2 s per instance while idle): see infra/README.md for the cost.
var storageLogCategories = [
  {
    category: 'StorageRead'
    enabled: true
  }
  {
    category: 'StorageWrite'
    enabled: true
  }
  {
    category: 'StorageDelete'
    enabled: true
  }
]

resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(logAnalyticsId)) {
  name: 'host-blob-logs'
  scope: blobService
  properties: {
    workspaceId: logAnalyticsId
    logs: storageLogCategories
  }
}

resource queueDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(logAnalyticsId)) {
  name: 'host-queue-logs'
  scope: queueService
  properties: {
    workspaceId: logAnalyticsId
    logs: storageLogCategories
  }
}

resource tableDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(logAnalyticsId)) {
  name: 'host-table-logs'
  scope: tableService
  properties: {
    workspaceId: logAnalyticsId
    logs: storageLogCategories
  }
}

// primaryEndpoints.* end with '/'; app settings get the form without the trailing slash
// (as in the Functions docs: https://<account>.blob.core.windows.net).
var blobEndpoint = storage.properties.primaryEndpoints.blob
var queueEndpoint = storage.properties.primaryEndpoints.queue
var tableEndpoint = storage.properties.primaryEndpoints.table

output name string = storage.name
output id string = storage.id
@description('Blob endpoint with trailing slash, e.g. https://x.blob.core.windows.net/')
output blobEndpoint string = blobEndpoint
output blobServiceUri string = endsWith(blobEndpoint, '/') ? substring(blobEndpoint, 0, length(blobEndpoint) - 1) : blobEndpoint
output queueServiceUri string = endsWith(queueEndpoint, '/') ? substring(queueEndpoint, 0, length(queueEndpoint) - 1) : queueEndpoint
output tableServiceUri string = endsWith(tableEndpoint, '/') ? substring(tableEndpoint, 0, length(tableEndpoint) - 1) : tableEndpoint
output deploymentContainerUrl string = '${blobEndpoint}${deploymentContainerResource.name}'
