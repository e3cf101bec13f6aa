// Export storage account: the only place exported PHI rests. It holds nothing but the export containers
// (EXPORT_CONTAINERS) and a lifecycle rule that deletes their blobs after exportRetentionDays. The app
// identity gets Storage Blob Data Contributor on this account alone (main.bicep), which also carries
// Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action for SAS downloads.
//
// Shared-key access is disabled: a service SAS signed with an account key is impossible here, while a
// user-delegation SAS (signed with a key obtained through Entra ID) is still accepted by Blob storage.

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

@description('Export containers to create (the first is EXPORT_CONTAINER, the default destination).')
@minLength(1)
param containers array

@description('Delete export blobs this many days after their last modification (0 = no lifecycle policy).')
@minValue(0)
param exportRetentionDays int = 7

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

@description('Log Analytics workspace that receives the blob service\'s StorageRead/StorageWrite/StorageDelete logs (who read the exported PHI); empty = none.')
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
    // Bulk Data IG §1.1 / Inferno: the file host must refuse TLS < 1.2 and plain http (SAS downloads are
    // served by this account directly).
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
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

// Every read, write and delete of an export file, with the caller (the app identity, or the SAS of a
// download: StorageBlobLogs.AuthenticationType = DelegationSas) and its IP: the record of who read the PHI.
resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(logAnalyticsId)) {
  name: 'export-blob-audit'
  scope: blobService
  properties: {
    workspaceId: logAnalyticsId
    logs: [
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
  }
}

resource containerResources 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for c in containers: {
    parent: blobService
    name: c
    properties: {
      publicAccess: 'None'
    }
  }
]

// "<container>/" for every export container: the rule covers them all, and nothing else lives here.
var retentionPrefixes = [for c in containers: '${c}/']

// Lifecycle management: expire export files. Covers block and append blobs (only the delete action is
// supported for append blobs). Keep the manifest's Expires (EXPORT_RETENTION, app side) shorter than this
// so that files are not deleted while a client may still be told to download them (IG §1.1 "SHOULD NOT
// delete files a client is still downloading"). The policy runs about once a day, so deletion can lag by
// up to a day beyond exportRetentionDays.
resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = if (exportRetentionDays > 0) {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          enabled: true
          name: 'expire-export-files'
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
                'appendBlob'
              ]
              prefixMatch: retentionPrefixes
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: exportRetentionDays
                }
              }
            }
          }
        }
      ]
    }
  }
  dependsOn: [
    containerResources
  ]
}

var blobEndpoint = storage.properties.primaryEndpoints.blob

output name string = storage.name
output id string = storage.id
@description('Blob service URI without trailing slash, e.g. https://x.blob.core.windows.net (EXPORT_STORAGE__blobServiceUri).')
output blobServiceUri string = endsWith(blobEndpoint, '/') ? substring(blobEndpoint, 0, length(blobEndpoint) - 1) : blobEndpoint
