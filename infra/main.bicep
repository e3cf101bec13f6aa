// FHIR Bulk Data $export service on Azure Functions (Flex Consumption, Linux, Go custom handler).
//
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.parameters.json -p authClientId=<api app id>
//
// Deploys into one resource group: a host storage account (host storage, package container, job table,
// work queue + poison queue), an export storage account (export containers + lifecycle rule, the only place
// PHI rests), Log Analytics + Application Insights (local auth off), a Flex Consumption plan and Function
// App with a system-assigned identity, App Service Authentication (Entra ID) in front of it, the RBAC the
// app needs, and, depending on networkMode, a virtual network with storage firewalls or private endpoints.
// See infra/README.md and docs/security.md.

targetScope = 'resourceGroup'

// ---------------------------------------------------------------------------------------------------------
// Naming and placement
// ---------------------------------------------------------------------------------------------------------

@description('Prefix for resource names: lowercase letters, digits and hyphens (hyphens are dropped from the storage account names).')
@minLength(2)
@maxLength(11)
param namePrefix string = 'fhirexp'

@description('Azure region for every resource. Must support Flex Consumption (az functionapp list-flexconsumption-locations).')
param location string = resourceGroup().location

@description('Tags applied to every resource.')
param tags object = {}

// ---------------------------------------------------------------------------------------------------------
// Authentication (App Service Authentication + the handler's own token check)
// ---------------------------------------------------------------------------------------------------------

@description('Application (client) id of the Entra app registration that represents this API (the one that defines the app role).')
@minLength(36)
@maxLength(36)
param authClientId string

@description('Accepted token audiences besides authClientId (v2 tokens carry the client id, v1 tokens the app ID URI). Empty = "api://<authClientId>".')
param authAudiences array = []

@description('Entra tenant whose tokens are accepted.')
param authTenantId string = subscription().tenantId

@description('App role a client must hold to export (defined on the API app registration, granted to each client).')
param authRole string = 'BulkData.Export'

@description('Token endpoint published in /.well-known/smart-configuration. Empty = the tenant\'s v2 token endpoint; "none" = publish none.')
param authTokenEndpoint string = ''

@description('Optional Easy Auth allow-list of client application ids. Empty = any client with a valid token reaches the handler, which then checks the app role.')
param authAllowedClientApplications array = []

// ---------------------------------------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------------------------------------

@description('SKU of both storage accounts.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
])
param storageSku string = 'Standard_LRS'

@description('Default export container (EXPORT_CONTAINER) in the export account (3-63 lowercase letters, digits, hyphens).')
@minLength(3)
@maxLength(63)
param exportContainer string = 'bulk-export'

@description('Further containers a kick-off may name with _container (all created in the export account, all covered by the lifecycle rule, whose filter takes at most 10 prefixes).')
@maxLength(9)
param additionalExportContainers array = []

@description('Table for export job state (3-63 letters and digits, starting with a letter).')
@minLength(3)
@maxLength(63)
param jobTable string = 'exportjobs'

@description('Queue for export work items (3-56 lowercase letters, digits, hyphens; 56 so that "-poison" still fits in 63).')
@minLength(3)
@maxLength(56)
param workQueue string = 'export-workitems'

@description('Delete export blobs this many days after their last modification; 0 = no lifecycle policy. Keep it longer than the manifest Expires the app advertises.')
@minValue(0)
@maxValue(3650)
param exportRetentionDays int = 7

// ---------------------------------------------------------------------------------------------------------
// Downloads and limits
// ---------------------------------------------------------------------------------------------------------

@description('How manifests link files: "sas" (short-lived read-only user-delegation SAS URLs on the export account), "proxy" (through the app, with the owner\'s token), or "auto" = sas when networkMode is public, proxy otherwise.')
@allowed([
  'auto'
  'sas'
  'proxy'
])
param exportDownloads string = 'auto'

@description('Lifetime of SAS download URLs (EXPORT_SAS_TTL, a Go duration such as "10m"). Empty = the handler\'s default.')
param exportSasTtl string = ''

@description('Unfinished jobs one client may have at a time (EXPORT_MAX_ACTIVE_JOBS_PER_CLIENT).')
@minValue(1)
@maxValue(100)
param maxActiveJobsPerClient int = 5

// ---------------------------------------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------------------------------------

@description('public: storage reachable from any network, Entra ID only. trustedServices: storage firewalls deny by default; the app comes in through VNet integration with a storage service endpoint, trusted Microsoft services and storageAllowedIpRanges are let through. private: storage public access disabled; private endpoints for the host (blob, queue, table) and export (blob) accounts, private DNS, Flex VNet integration.')
@allowed([
  'public'
  'trustedServices'
  'private'
])
param networkMode string = 'public'

@description('trustedServices only: public IPv4 addresses or CIDR ranges let through both storage firewalls (operators, CI, SAS download clients). Not RFC 1918 ranges; /31 and /32 must be written as single addresses.')
param storageAllowedIpRanges array = []

@description('Address space of the virtual network (trustedServices, private).')
param vnetAddressPrefix string = '10.60.0.0/16'

@description('Subnet for Flex VNet integration (delegated to Microsoft.App/environments).')
param appSubnetPrefix string = '10.60.0.0/24'

@description('Subnet for the storage private endpoints (private).')
param privateEndpointSubnetPrefix string = '10.60.1.0/24'

// ---------------------------------------------------------------------------------------------------------
// Function App
// ---------------------------------------------------------------------------------------------------------

@description('Flex Consumption maximum instance count (40..1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Flex Consumption instance memory in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Base URL of the FHIR server to export from, e.g. https://<workspace>-<fhir>.fhir.azurehealthcareapis.com')
@minLength(1)
param fhirServerUrl string

@description('FHIR server authentication: "none", or "azure" = managed-identity token (azidentity) for Azure Health Data Services with scope "<FHIR origin>/.default".')
@allowed([
  'none'
  'azure'
])
param fhirAuth string = 'none'

@description('Roll NDJSON output parts at this many bytes (default 64 MiB).')
@minValue(1048576)
param exportMaxFileBytes int = 67108864

@description('Extra app settings (name -> string) merged over the generated ones.')
param additionalAppSettings object = {}

// ---------------------------------------------------------------------------------------------------------
// Access for people and other principals
// ---------------------------------------------------------------------------------------------------------

@description('Optional object id of a developer or CI principal that gets data roles on the HOST account (blob contributor, queue and table contributor), e.g. for az --auth-mode login or a local handler. Empty (the default) = no data role for anyone but the app.')
param deployerPrincipalId string = ''

@description('Principal type of deployerPrincipalId.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param deployerPrincipalType string = 'User'

@description('Also give deployerPrincipalId Storage Blob Data Reader on the EXPORT account, i.e. read access to exported PHI. Off by default.')
param deployerCanReadExports bool = false

@description('Optional resource id of an Azure Health Data Services FHIR service (/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.HealthcareApis/workspaces/<ws>/fhirservices/<fhir>). When set, the app identity gets FHIR Data Reader on it. Empty = skip (see README for the az CLI command).')
param fhirServiceResourceId string = ''

// ---------------------------------------------------------------------------------------------------------
// Names and derived values
// ---------------------------------------------------------------------------------------------------------

var token = toLower(uniqueString(resourceGroup().id))
var exportToken = toLower(uniqueString(resourceGroup().id, 'exports'))
var prefix = toLower(namePrefix)
var prefixAlnum = replace(prefix, '-', '')
var storageAccountName = take('${prefixAlnum}${token}', 24)
var exportStorageAccountName = take('${prefixAlnum}${exportToken}', 24)
var functionAppName = '${prefix}-func-${token}'
var planName = '${prefix}-plan-${token}'
var appInsightsName = '${prefix}-appi-${token}'
var logAnalyticsName = '${prefix}-log-${token}'
var vnetName = '${prefix}-vnet-${token}'
var deploymentContainer = 'app-package'

var exportContainers = union([exportContainer], additionalExportContainers)
var effectiveAudiences = union([authClientId], empty(authAudiences) ? ['api://${authClientId}'] : authAudiences)
var effectiveTokenEndpoint = authTokenEndpoint == 'none' ? '' : (empty(authTokenEndpoint) ? '${environment().authentication.loginEndpoint}${authTenantId}/oauth2/v2.0/token' : authTokenEndpoint)

// SAS URLs point at the export account's public endpoint: only useful where clients can reach it.
var effectiveDownloads = exportDownloads == 'auto' ? (networkMode == 'public' ? 'sas' : 'proxy') : exportDownloads

var withVnet = networkMode != 'public'
// Computed rather than read from the network module's outputs so that the storage firewalls can name the
// subnet; every module that uses it depends on the network module explicitly.
var appSubnetId = resourceId('Microsoft.Network/virtualNetworks/subnets', vnetName, 'app')

var storageIpRules = [
  for ip in storageAllowedIpRanges: {
    value: ip
    action: 'Allow'
  }
]

// Storage firewall per network mode (both accounts):
// - public: open network, authorization by Entra ID alone (shared keys are off);
// - trustedServices: deny by default; allow the app's integration subnet (service endpoint; IP rules do not
//   apply to same-region traffic), trusted Microsoft services (AzureServices bypass, as the Azure Health
//   Data Services export documentation describes for firewalled export accounts) and the listed IPs;
// - private: public network access disabled, private endpoints only. The AzureServices bypass stays: Microsoft's
//   lifecycle management docs note that firewall rules can block lifecycle requests unless trusted Microsoft
//   services are excepted, and the export account's retention depends on that rule.
var publicAcls = {
  defaultAction: 'Allow'
  bypass: 'AzureServices'
}
var trustedServicesAcls = {
  defaultAction: 'Deny'
  bypass: 'AzureServices'
  ipRules: storageIpRules
  virtualNetworkRules: [
    {
      id: appSubnetId
      action: 'Allow'
    }
  ]
}
var privateAcls = {
  defaultAction: 'Deny'
  bypass: 'AzureServices'
  ipRules: []
  virtualNetworkRules: []
}
var storageNetworkAcls = networkMode == 'private' ? privateAcls : (networkMode == 'trustedServices' ? trustedServicesAcls : publicAcls)
var storagePublicNetworkAccess = networkMode == 'private' ? 'Disabled' : 'Enabled'

// Parts of the FHIR service id: ['', 'subscriptions', sub, 'resourceGroups', rg, 'providers',
// 'Microsoft.HealthcareApis', 'workspaces', ws, 'fhirservices', fhir]. A harmless stand-in keeps the
// expressions valid when the parameter is empty (the module is then skipped).
var fhirIdPlaceholder = '${resourceGroup().id}/providers/Microsoft.HealthcareApis/workspaces/none/fhirservices/none'
var fhirIdForParsing = empty(fhirServiceResourceId) ? fhirIdPlaceholder : fhirServiceResourceId
var fhirIdParts = split(fhirIdForParsing, '/')

// Built-in role definition ids (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
var roles = {
  blobDataOwner: {
    name: 'Storage Blob Data Owner'
    id: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  }
  blobDataContributor: {
    name: 'Storage Blob Data Contributor'
    id: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  }
  blobDataReader: {
    name: 'Storage Blob Data Reader'
    id: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
  }
  queueDataContributor: {
    name: 'Storage Queue Data Contributor'
    id: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  }
  tableDataContributor: {
    name: 'Storage Table Data Contributor'
    id: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  }
}

// ---------------------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------------------

module network 'modules/network.bicep' = if (withVnet) {
  name: 'network-${token}'
  params: {
    name: vnetName
    location: location
    tags: tags
    addressPrefix: vnetAddressPrefix
    appSubnetPrefix: appSubnetPrefix
    privateEndpointSubnetPrefix: privateEndpointSubnetPrefix
    withPrivateEndpointSubnet: networkMode == 'private'
    storageServiceEndpoint: networkMode == 'trustedServices'
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage-${token}'
  params: {
    name: storageAccountName
    location: location
    tags: tags
    skuName: storageSku
    deploymentContainer: deploymentContainer
    jobTable: jobTable
    workQueue: workQueue
    publicNetworkAccess: storagePublicNetworkAccess
    networkAcls: storageNetworkAcls
  }
  dependsOn: [
    network
  ]
}

module exportStorage 'modules/export-storage.bicep' = {
  name: 'export-storage-${token}'
  params: {
    name: exportStorageAccountName
    location: location
    tags: tags
    skuName: storageSku
    containers: exportContainers
    exportRetentionDays: exportRetentionDays
    publicNetworkAccess: storagePublicNetworkAccess
    networkAcls: storageNetworkAcls
  }
  dependsOn: [
    network
  ]
}

// private: blob, queue and table of the host account (host storage, deployment package, job table, work
// queue) and blob of the export account (its only service in use).
module privateEndpoints 'modules/private-endpoints.bicep' = if (networkMode == 'private') {
  name: 'private-endpoints-${token}'
  params: {
    location: location
    tags: tags
    vnetId: resourceId('Microsoft.Network/virtualNetworks', vnetName)
    subnetId: resourceId('Microsoft.Network/virtualNetworks/subnets', vnetName, 'private-endpoints')
    endpoints: [
      {
        name: '${prefix}-pe-host-blob-${token}'
        resourceId: storage.outputs.id
        groupId: 'blob'
      }
      {
        name: '${prefix}-pe-host-queue-${token}'
        resourceId: storage.outputs.id
        groupId: 'queue'
      }
      {
        name: '${prefix}-pe-host-table-${token}'
        resourceId: storage.outputs.id
        groupId: 'table'
      }
      {
        name: '${prefix}-pe-export-blob-${token}'
        resourceId: exportStorage.outputs.id
        groupId: 'blob'
      }
    ]
  }
  dependsOn: [
    network
  ]
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring-${token}'
  params: {
    logAnalyticsName: logAnalyticsName
    appInsightsName: appInsightsName
    location: location
    tags: tags
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp-${token}'
  params: {
    name: functionAppName
    planName: planName
    location: location
    tags: tags
    storageAccountName: storage.outputs.name
    blobEndpoint: storage.outputs.blobEndpoint
    blobServiceUri: storage.outputs.blobServiceUri
    queueServiceUri: storage.outputs.queueServiceUri
    tableServiceUri: storage.outputs.tableServiceUri
    deploymentContainer: deploymentContainer
    exportBlobServiceUri: exportStorage.outputs.blobServiceUri
    appInsightsName: monitoring.outputs.appInsightsName
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    virtualNetworkSubnetId: withVnet ? appSubnetId : ''
    fhirServerUrl: fhirServerUrl
    fhirAuth: fhirAuth
    exportContainer: exportContainer
    exportContainers: exportContainers
    jobTable: jobTable
    workQueue: workQueue
    exportMaxFileBytes: exportMaxFileBytes
    exportDownloads: effectiveDownloads
    exportSasTtl: exportSasTtl
    maxActiveJobsPerClient: maxActiveJobsPerClient
    authTenantId: authTenantId
    authClientId: authClientId
    authAudiences: effectiveAudiences
    authRole: authRole
    authTokenEndpoint: effectiveTokenEndpoint
    authAllowedClientApplications: authAllowedClientApplications
    additionalAppSettings: additionalAppSettings
  }
  dependsOn: [
    network
    privateEndpoints
  ]
}

// The app's system-assigned identity on the host account. Storage Blob Data Owner, not Contributor: Microsoft
// documents Blob Data Owner as the minimum role for identity-based AzureWebJobsStorage ("No extension (host
// only)"; the host creates its own containers and keeps leases and keys there). Queue Data Contributor for
// the trigger and for creating <queue>-poison; Table Data Contributor for the job table. No export data
// lives on this account.
module appHostRbac 'modules/storage-rbac.bicep' = {
  name: 'rbac-app-host-${token}'
  params: {
    storageAccountName: storage.outputs.name
    principalId: functionApp.outputs.principalId
    principalType: 'ServicePrincipal'
    roles: [
      roles.blobDataOwner
      roles.queueDataContributor
      roles.tableDataContributor
    ]
    descriptionSuffix: ' (Function App identity, host storage)'
  }
}

// The app identity on the export account: Storage Blob Data Contributor only (write the files, read them for
// proxy downloads, delete them on cancel). Its actions include
// Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action, so SAS downloads need no
// Storage Blob Delegator assignment; a user-delegation SAS never grants more than this role does.
module appExportRbac 'modules/storage-rbac.bicep' = {
  name: 'rbac-app-export-${token}'
  params: {
    storageAccountName: exportStorage.outputs.name
    principalId: functionApp.outputs.principalId
    principalType: 'ServicePrincipal'
    roles: [
      roles.blobDataContributor
    ]
    descriptionSuffix: ' (Function App identity, export storage)'
  }
}

module appMonitoringRbac 'modules/monitoring-rbac.bicep' = {
  name: 'rbac-app-monitoring-${token}'
  params: {
    appInsightsName: monitoring.outputs.appInsightsName
    principalId: functionApp.outputs.principalId
  }
}

// Optional developer / CI principal: the host account only (jobs, queues, the package), never the exports
// unless deployerCanReadExports asks for it.
module deployerHostRbac 'modules/storage-rbac.bicep' = if (!empty(deployerPrincipalId)) {
  name: 'rbac-deployer-host-${token}'
  params: {
    storageAccountName: storage.outputs.name
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
    roles: [
      roles.blobDataContributor
      roles.queueDataContributor
      roles.tableDataContributor
    ]
    descriptionSuffix: ' (developer/CI, host storage)'
  }
}

module deployerExportRbac 'modules/storage-rbac.bicep' = if (!empty(deployerPrincipalId) && deployerCanReadExports) {
  name: 'rbac-deployer-export-${token}'
  params: {
    storageAccountName: exportStorage.outputs.name
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
    roles: [
      roles.blobDataReader
    ]
    descriptionSuffix: ' (developer/CI, read exported PHI)'
  }
}

// Optional FHIR Data Reader on an Azure Health Data Services FHIR service, possibly in another resource
// group or subscription.
module fhirRbac 'modules/fhir-rbac.bicep' = if (!empty(fhirServiceResourceId)) {
  name: 'rbac-fhir-${token}'
  scope: resourceGroup(fhirIdParts[2], fhirIdParts[4])
  params: {
    workspaceName: fhirIdParts[8]
    fhirServiceName: fhirIdParts[10]
    principalId: functionApp.outputs.principalId
  }
}

// ---------------------------------------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------------------------------------

output functionAppName string = functionApp.outputs.name
output functionAppDefaultHostName string = functionApp.outputs.defaultHostName
@description('FHIR base URL of the exporter (host.json routePrefix is ""): kick-off at <this>/$export, <this>/Patient/$export, <this>/Group/<id>/$export.')
output exportBaseUrl string = functionApp.outputs.exportBaseUrl
output systemExportUrl string = '${functionApp.outputs.exportBaseUrl}/$export'
output functionAppPrincipalId string = functionApp.outputs.principalId
output storageAccountName string = storage.outputs.name
output exportStorageAccountName string = exportStorage.outputs.name
output exportBlobServiceUri string = exportStorage.outputs.blobServiceUri
output deploymentContainerUrl string = storage.outputs.deploymentContainerUrl
output exportContainer string = exportContainer
output exportContainers array = exportContainers
output exportDownloads string = effectiveDownloads
output jobTable string = jobTable
output workQueue string = workQueue
output authAudiences array = effectiveAudiences
@description('Scope a client asks Entra ID for with the client credentials grant: <app ID URI>/.default.')
output authTokenScope string = empty(authAudiences) ? 'api://${authClientId}/.default' : '${authAudiences[0]}/.default'
output networkMode string = networkMode
output appInsightsName string = monitoring.outputs.appInsightsName
output logAnalyticsName string = monitoring.outputs.logAnalyticsName
