// FHIR Bulk Data $export service on Azure Functions (Flex Consumption, Linux, Go custom handler).
//
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.parameters.json \
//     -p authClientId=<api app id> fhirServiceResourceId=<FHIR service resource id>
//
// Deploys into one resource group: a host storage account (host storage, package container, job table,
// work queue + poison queue), an export storage account (export containers + lifecycle rule, the only place
// PHI rests), Log Analytics + Application Insights (local auth off), a user-assigned identity with the roles
// the app needs (granted before the app exists), a Flex Consumption plan and Function App using it, App
// Service Authentication (Entra ID) in front of it, diagnostic settings (storage and FHIR audit logs), a
// workbook, alert rules and an availability test, and, depending on networkMode, a virtual network with
// storage firewalls or private endpoints. `azd up` deploys the same template through infra/azd.bicep.
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

@description('azd environment name (infra/azd.bicep passes AZURE_ENV_NAME). When set, resource names use azd\'s token uniqueString(subscription().id, environmentName, location) and every resource gets the azd-env-name tag; empty (the az CLI path) = names from the resource group id, as before.')
@maxLength(64)
param environmentName string = ''

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

// The load on the source FHIR server: at most
//   maximumInstanceCount x min(sourceConcurrency, 2 x (queueBatchSize + queueNewBatchThreshold))
// requests in flight at once (a work item has at most two: a page and the one read ahead; EXPORT_SOURCE_CONCURRENCY caps one
// instance's requests, and lowers itself while the source answers 429/503). With the defaults below:
// 40 x min(2, 2 x (4 + 2)) = 80. Output maxSourceRequestsInFlight states the figure of a deployment.
@description('Flex Consumption maximum instance count of the app (all its functions). 40 is the floor Flex Consumption has long documented; lower values need a region/platform that accepts them (not verified here).')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Queue messages (work items) one instance fetches at once (host.json extensions.queues.batchSize, written as the app setting AzureFunctionsJobHost__extensions__queues__batchSize).')
@minValue(1)
@maxValue(32)
param queueBatchSize int = 4

@description('One instance fetches more messages when this few are still running (host.json newBatchThreshold, overridden the same way).')
@minValue(0)
@maxValue(32)
param queueNewBatchThreshold int = 2

@description('Requests in flight to the source FHIR server from one instance (EXPORT_SOURCE_CONCURRENCY).')
@minValue(1)
@maxValue(256)
param sourceConcurrency int = 2

@description('Always-ready instances for the HTTP functions (Flex "http" group): no cold start on kick-off, status and downloads, at a baseline cost per instance. 0 = none.')
@minValue(0)
@maxValue(20)
param alwaysReadyHttpInstances int = 0

@description('Flex Consumption instance memory in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Base URL of the FHIR server to export from. Empty = derived from fhirServiceResourceId: https://<workspace>-<fhirservice>.fhir.azurehealthcareapis.com (Azure Health Data Services) or https://<name>.azurehealthcareapis.com (Azure API for FHIR), in the public cloud.')
param fhirServerUrl string = ''

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

@description('Resource id of the source FHIR service: Azure Health Data Services (/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.HealthcareApis/workspaces/<ws>/fhirservices/<fhir>) or Azure API for FHIR (/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.HealthcareApis/services/<name>). The app identity gets FHIR Data Reader on it, and its AuditLogs go to Log Analytics. Required with fhirAuth=azure (the deployment fails with a message otherwise); empty only with fhirAuth=none.')
param fhirServiceResourceId string = ''

@description('With fhirAuth=azure, grant FHIR Data Reader on fhirServiceResourceId (needs the right to assign roles there). false = someone else grants it (infra/README.md, "FHIR Data Reader without Bicep"), and the deployment says so in its output.')
param grantFhirRole bool = true

@description('Send the FHIR service\'s AuditLogs to this deployment\'s Log Analytics workspace. Turn off if the service already has a diagnostic setting sending AuditLogs to this workspace (Azure refuses a second one for the same category and destination).')
param fhirAuditLogs bool = true

// ---------------------------------------------------------------------------------------------------------
// Monitoring
// ---------------------------------------------------------------------------------------------------------

@description('Log Analytics retention in days (handler traces, storage and FHIR audit logs).')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 90

@description('Email address the alert rules notify (action group). Empty = rules fire in the Portal only.')
param alertEmail string = ''

@description('Stalled-job alert: minutes an active job may go without progress (longer than EXPORT_INVOCATION_BUDGET, 8 min).')
@minValue(10)
@maxValue(720)
param stallAlertMinutes int = 20

@description('Standard availability test on /metadata.')
param availabilityTest bool = true

@description('Resource logs (StorageRead/Write/Delete) of both storage accounts to Log Analytics: the record of who read exported files, and the source of the "storage refused the identity" alert.')
param storageDiagnostics bool = true

// ---------------------------------------------------------------------------------------------------------
// Names and derived values
// ---------------------------------------------------------------------------------------------------------

// azd's resource token when deployed by azd; the resource group's otherwise, so that redeploying an
// existing az CLI deployment keeps its names.
var token = empty(environmentName) ? toLower(uniqueString(resourceGroup().id)) : toLower(uniqueString(subscription().id, environmentName, location))
var exportToken = empty(environmentName) ? toLower(uniqueString(resourceGroup().id, 'exports')) : toLower(uniqueString(subscription().id, environmentName, location, 'exports'))
var allTags = empty(environmentName) ? tags : union(tags, {
  'azd-env-name': environmentName
})
var prefix = toLower(namePrefix)
var prefixAlnum = replace(prefix, '-', '')
var storageAccountName = take('${prefixAlnum}${token}', 24)
var exportStorageAccountName = take('${prefixAlnum}${exportToken}', 24)
var functionAppName = '${prefix}-func-${token}'
var planName = '${prefix}-plan-${token}'
var appInsightsName = '${prefix}-appi-${token}'
var logAnalyticsName = '${prefix}-log-${token}'
var vnetName = '${prefix}-vnet-${token}'
var identityName = '${prefix}-id-${token}'
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

// The FHIR service id, read by segment NAME rather than by position, so that both shapes work:
//   /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.HealthcareApis/workspaces/<ws>/fhirservices/<name>
//   /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.HealthcareApis/services/<name>
// The segment after "subscriptions" is the subscription, after "resourceGroups" the group (both matched
// case-insensitively, as Azure writes ids in either case); "providers" must follow the group, and the
// namespace after it must be Microsoft.HealthcareApis; the type after it ("workspaces" or "services")
// decides the shape. Anything else fails the deployment with a message, before any resource is created.
// handler/internal/config/fhirid_test.go mirrors these steps in Go and runs them on both shapes.
// A harmless stand-in keeps the expressions valid when the parameter is empty.
var fhirIdPlaceholder = '${resourceGroup().id}/providers/Microsoft.HealthcareApis/services/none'
var fhirId = empty(fhirServiceResourceId) ? fhirIdPlaceholder : trim(fhirServiceResourceId)
var fhirIdParts = split(fhirId, '/')
var fhirIdLower = split(toLower(fhirId), '/')
var fhirSubIndex = indexOf(fhirIdLower, 'subscriptions')
var fhirRgIndex = indexOf(fhirIdLower, 'resourcegroups')
var fhirProvidersIndex = fhirRgIndex + 2
// Ternaries (ARM if(), which evaluates only the branch taken) guard every index.
var fhirIdShapeOk = (fhirSubIndex >= 0 && fhirRgIndex == fhirSubIndex + 2 && length(fhirIdLower) > fhirProvidersIndex + 3) ? (fhirIdLower[fhirProvidersIndex] == 'providers' && fhirIdLower[fhirProvidersIndex + 1] == 'microsoft.healthcareapis') : false
var fhirType = fhirIdShapeOk ? fhirIdLower[fhirProvidersIndex + 2] : ''
var fhirIsWorkspace = (fhirType == 'workspaces' && length(fhirIdLower) == fhirProvidersIndex + 6) ? fhirIdLower[fhirProvidersIndex + 4] == 'fhirservices' : false
var fhirIsApiForFhir = fhirType == 'services' && length(fhirIdLower) == fhirProvidersIndex + 4
var fhirIdValid = fhirIsWorkspace || fhirIsApiForFhir
// Read only from a valid id (every index below exists then); the stand-in values are never used.
var fhirSubscription = fhirIdValid ? fhirIdParts[fhirSubIndex + 1] : subscription().subscriptionId
var fhirResourceGroup = fhirIdValid ? fhirIdParts[fhirRgIndex + 1] : resourceGroup().name
var fhirWorkspaceName = fhirIsWorkspace ? fhirIdParts[fhirProvidersIndex + 3] : ''
var fhirServiceName = fhirIsWorkspace ? fhirIdParts[fhirProvidersIndex + 5] : (fhirIsApiForFhir ? fhirIdParts[fhirProvidersIndex + 3] : 'none')
var fhirIdChecked = empty(fhirServiceResourceId) ? (fhirAuth == 'azure' ? fail('fhirServiceResourceId is required with fhirAuth=azure: give the resource id of the Azure Health Data Services FHIR service (.../Microsoft.HealthcareApis/workspaces/<ws>/fhirservices/<name>) or of Azure API for FHIR (.../Microsoft.HealthcareApis/services/<name>), so that the app identity gets FHIR Data Reader on it. Without it every export would get 403 from the FHIR service.') : '') : (fhirIdValid ? fhirId : fail('fhirServiceResourceId is not the resource id of a FHIR service: expected .../providers/Microsoft.HealthcareApis/workspaces/<ws>/fhirservices/<name> or .../providers/Microsoft.HealthcareApis/services/<name>'))
// FHIR URL as Microsoft documents it for each kind (public cloud): https://<ws>-<name>.fhir.azurehealthcareapis.com
// for Azure Health Data Services, https://<name>.azurehealthcareapis.com for Azure API for FHIR. Service
// names are lowercase already; toLower keeps a mixed-case id from producing a different host name.
var derivedFhirUrl = fhirIsWorkspace ? 'https://${toLower(fhirWorkspaceName)}-${toLower(fhirServiceName)}.fhir.azurehealthcareapis.com' : 'https://${toLower(fhirServiceName)}.azurehealthcareapis.com'
var effectiveFhirUrl = !empty(fhirServerUrl) ? fhirServerUrl : (empty(fhirIdChecked) ? fail('fhirServerUrl is required when fhirServiceResourceId is empty') : derivedFhirUrl)
// fhirIdChecked first: it is what fails a deployment with fhirAuth=azure and no (or a wrong) id.
var grantFhir = !empty(fhirIdChecked) && fhirAuth == 'azure' && grantFhirRole

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
    tags: allTags
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
    logAnalyticsId: storageDiagnostics ? monitoring.outputs.logAnalyticsId : ''
    name: storageAccountName
    location: location
    tags: allTags
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
    logAnalyticsId: storageDiagnostics ? monitoring.outputs.logAnalyticsId : ''
    name: exportStorageAccountName
    location: location
    tags: allTags
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
    tags: allTags
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
    tags: allTags
    retentionInDays: logRetentionDays
  }
}

// The app's identity, created first: every role below is granted to it before the Function App exists, so
// the host's first start finds its storage, monitoring and FHIR roles in place (no "retry in a few minutes"
// on the first deployment, apart from Entra ID's own propagation delay). A user-assigned identity adds no
// role: it holds exactly the roles the system-assigned one held.
resource appIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: identityName
  location: location
  tags: allTags
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp-${token}'
  params: {
    name: functionAppName
    planName: planName
    location: location
    tags: allTags
    storageAccountName: storage.outputs.name
    blobEndpoint: storage.outputs.blobEndpoint
    blobServiceUri: storage.outputs.blobServiceUri
    queueServiceUri: storage.outputs.queueServiceUri
    tableServiceUri: storage.outputs.tableServiceUri
    deploymentContainer: deploymentContainer
    exportBlobServiceUri: exportStorage.outputs.blobServiceUri
    appInsightsName: monitoring.outputs.appInsightsName
    identityId: appIdentity.id
    identityClientId: appIdentity.properties.clientId
    maximumInstanceCount: maximumInstanceCount
    alwaysReadyHttpInstances: alwaysReadyHttpInstances
    queueBatchSize: queueBatchSize
    queueNewBatchThreshold: queueNewBatchThreshold
    sourceConcurrency: sourceConcurrency
    instanceMemoryMB: instanceMemoryMB
    virtualNetworkSubnetId: withVnet ? appSubnetId : ''
    fhirServerUrl: effectiveFhirUrl
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
  // The roles first (see appIdentity).
  dependsOn: [
    network
    privateEndpoints
    appHostRbac
    appExportRbac
    appMonitoringRbac
    fhirRbac
  ]
}

// The app's identity on the host account. Storage Blob Data Owner, not Contributor: Microsoft
// documents Blob Data Owner as the minimum role for identity-based AzureWebJobsStorage ("No extension (host
// only)"; the host creates its own containers and keeps leases and keys there). Queue Data Contributor for
// the trigger and for creating <queue>-poison; Table Data Contributor for the job table. No export data
// lives on this account.
module appHostRbac 'modules/storage-rbac.bicep' = {
  name: 'rbac-app-host-${token}'
  params: {
    storageAccountName: storage.outputs.name
    principalId: appIdentity.properties.principalId
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
    principalId: appIdentity.properties.principalId
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
    principalId: appIdentity.properties.principalId
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

// FHIR Data Reader on the source FHIR service (Azure Health Data Services or Azure API for FHIR), possibly in
// another resource group or subscription, and its AuditLogs to Log Analytics.
module fhirRbac 'modules/fhir-rbac.bicep' = if (grantFhir) {
  name: 'rbac-fhir-${token}'
  scope: resourceGroup(fhirSubscription, fhirResourceGroup)
  params: {
    kind: fhirIsWorkspace ? 'workspaces' : 'services'
    workspaceName: fhirWorkspaceName
    fhirServiceName: fhirServiceName
    principalId: appIdentity.properties.principalId
    logAnalyticsId: fhirAuditLogs ? monitoring.outputs.logAnalyticsId : ''
  }
}

// The workbook, the alert rules (and their action group) and the availability test on /metadata.
module operations 'modules/operations.bicep' = {
  name: 'operations-${token}'
  params: {
    location: location
    tags: allTags
    namePrefix: prefix
    token: token
    appInsightsId: monitoring.outputs.appInsightsId
    logAnalyticsId: monitoring.outputs.logAnalyticsId
    appPrincipalId: appIdentity.properties.principalId
    appBaseUrl: functionApp.outputs.exportBaseUrl
    alertEmail: alertEmail
    stallMinutes: stallAlertMinutes
    availabilityTest: availabilityTest
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
@description('Object id of the app\'s user-assigned identity (the principal every role is granted to).')
output functionAppPrincipalId string = appIdentity.properties.principalId
output functionAppIdentityClientId string = appIdentity.properties.clientId
output fhirServerUrl string = effectiveFhirUrl
@description('Whether this deployment granted FHIR Data Reader; false with fhirAuth=azure means someone must grant it (infra/README.md).')
output fhirRoleGranted bool = grantFhir
@description('Most requests in flight to the source FHIR server: maximumInstanceCount x min(sourceConcurrency, 2 x (queueBatchSize + queueNewBatchThreshold)).')
output maxSourceRequestsInFlight int = maximumInstanceCount * min(sourceConcurrency, 2 * (queueBatchSize + queueNewBatchThreshold))
output workbookId string = operations.outputs.workbookId
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
