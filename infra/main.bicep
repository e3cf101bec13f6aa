// FHIR Bulk Data $export service on Azure Functions (Flex Consumption, Linux, Go custom handler).
//
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.parameters.json
//
// Deploys into one resource group: storage (host storage, package container, export container, job table,
// work queue + poison queue, optional lifecycle policy), Log Analytics + Application Insights (local auth
// off), a Flex Consumption plan and Function App with a system-assigned identity, and the RBAC the app
// needs. See infra/README.md.

targetScope = 'resourceGroup'

// ---------------------------------------------------------------------------------------------------------
// Naming and placement
// ---------------------------------------------------------------------------------------------------------

@description('Prefix for resource names: lowercase letters, digits and hyphens (hyphens are dropped from the storage account name).')
@minLength(2)
@maxLength(11)
param namePrefix string = 'fhirexp'

@description('Azure region for every resource. Must support Flex Consumption (az functionapp list-flexconsumption-locations).')
param location string = resourceGroup().location

@description('Tags applied to every resource.')
param tags object = {}

// ---------------------------------------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------------------------------------

@description('Storage account SKU.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
])
param storageSku string = 'Standard_LRS'

@description('Blob container for NDJSON export files (3-63 lowercase letters, digits, hyphens; not "app-package").')
@minLength(3)
@maxLength(63)
param exportContainer string = 'bulk-export'

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
// Access
// ---------------------------------------------------------------------------------------------------------

@description('Optional object id of a developer or CI principal that also gets the storage data roles (for DefaultAzureCredential / az --auth-mode login). Empty = none.')
param deployerPrincipalId string = ''

@description('Principal type of deployerPrincipalId.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param deployerPrincipalType string = 'User'

@description('Optional resource id of an Azure Health Data Services FHIR service (/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.HealthcareApis/workspaces/<ws>/fhirservices/<fhir>). When set, the app identity gets FHIR Data Reader on it. Empty = skip (see README for the az CLI command).')
param fhirServiceResourceId string = ''

// ---------------------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------------------

var token = toLower(uniqueString(resourceGroup().id))
var prefix = toLower(namePrefix)
var prefixAlnum = replace(prefix, '-', '')
var storageAccountName = take('${prefixAlnum}${token}', 24)
var functionAppName = '${prefix}-func-${token}'
var planName = '${prefix}-plan-${token}'
var appInsightsName = '${prefix}-appi-${token}'
var logAnalyticsName = '${prefix}-log-${token}'
var deploymentContainer = 'app-package'

// Parts of the FHIR service id: ['', 'subscriptions', sub, 'resourceGroups', rg, 'providers',
// 'Microsoft.HealthcareApis', 'workspaces', ws, 'fhirservices', fhir]. A harmless stand-in keeps the
// expressions valid when the parameter is empty (the module is then skipped).
var fhirIdPlaceholder = '${resourceGroup().id}/providers/Microsoft.HealthcareApis/workspaces/none/fhirservices/none'
var fhirIdForParsing = empty(fhirServiceResourceId) ? fhirIdPlaceholder : fhirServiceResourceId
var fhirIdParts = split(fhirIdForParsing, '/')

// ---------------------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------------------

module storage 'modules/storage.bicep' = {
  name: 'storage-${token}'
  params: {
    name: storageAccountName
    location: location
    tags: tags
    skuName: storageSku
    deploymentContainer: deploymentContainer
    exportContainer: exportContainer
    jobTable: jobTable
    workQueue: workQueue
    exportRetentionDays: exportRetentionDays
  }
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
    appInsightsName: monitoring.outputs.appInsightsName
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    fhirServerUrl: fhirServerUrl
    fhirAuth: fhirAuth
    exportContainer: exportContainer
    jobTable: jobTable
    workQueue: workQueue
    exportMaxFileBytes: exportMaxFileBytes
    additionalAppSettings: additionalAppSettings
  }
}

// The app's system-assigned identity: blob owner / queue contributor / table contributor on the account,
// Monitoring Metrics Publisher on Application Insights.
module appRbac 'modules/rbac.bicep' = {
  name: 'rbac-app-${token}'
  params: {
    storageAccountName: storage.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
    principalId: functionApp.outputs.principalId
    principalType: 'ServicePrincipal'
    grantMetricsPublisher: true
    descriptionSuffix: ' (Function App identity)'
  }
}

// Optional developer / CI principal: the same storage data roles.
module deployerRbac 'modules/rbac.bicep' = if (!empty(deployerPrincipalId)) {
  name: 'rbac-deployer-${token}'
  params: {
    storageAccountName: storage.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
    grantMetricsPublisher: false
    descriptionSuffix: ' (developer/CI)'
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
output deploymentContainerUrl string = storage.outputs.deploymentContainerUrl
output exportContainer string = exportContainer
output jobTable string = jobTable
output workQueue string = workQueue
output appInsightsName string = monitoring.outputs.appInsightsName
output logAnalyticsName string = monitoring.outputs.logAnalyticsName
