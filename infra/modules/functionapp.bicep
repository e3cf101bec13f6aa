// Flex Consumption (FC1, Linux) plan + Function App running the Go custom handler.
//
// Flex specifics (docs §3.1):
// - the runtime is functionAppConfig.runtime = { name: 'custom', version: '1.0' }, NOT the
//   FUNCTIONS_WORKER_RUNTIME app setting;
// - the package lives in a blob container (functionAppConfig.deployment.storage), read with the app's
//   system-assigned identity; no WEBSITE_RUN_FROM_PACKAGE / WEBSITE_CONTENT* settings;
// - one app per Flex plan.
//
// App settings are written by a separate Microsoft.Web/sites/config 'appsettings' resource so that
// EXPORT_BASE_URL can use the site's real default host name (a site cannot reference its own properties).
// That resource REPLACES the whole app-settings collection on every deployment: settings added by hand in
// the portal are removed by the next `az deployment group create`. Put extra settings in
// `additionalAppSettings` instead.

@description('Function App name (globally unique, becomes <name>.azurewebsites.net unless a unique default host name is assigned).')
param name string

@description('Flex Consumption plan name.')
param planName string

@description('Azure region (must support Flex Consumption).')
param location string

@description('Resource tags.')
param tags object = {}

@description('Storage account used for AzureWebJobsStorage, the deployment package and the export data.')
param storageAccountName string

@description('Blob endpoint of the storage account, with trailing slash.')
param blobEndpoint string

@description('Blob service URI without trailing slash.')
param blobServiceUri string

@description('Queue service URI without trailing slash.')
param queueServiceUri string

@description('Table service URI without trailing slash.')
param tableServiceUri string

@description('Blob container holding the deployment package.')
param deploymentContainer string

@description('Application Insights component name (local auth disabled).')
param appInsightsName string

@description('Maximum instance count for the Flex plan (Flex: 40..1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Instance memory size in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('FHIR server base URL the exporter reads from.')
param fhirServerUrl string

@description('How the exporter authenticates to the FHIR server: none, or azure (managed-identity token, scope "<FHIR origin>/.default").')
@allowed([
  'none'
  'azure'
])
param fhirAuth string

@description('Blob container for export files.')
param exportContainer string

@description('Table for job state.')
param jobTable string

@description('Queue for work items.')
param workQueue string

@description('Roll NDJSON parts at this many bytes.')
param exportMaxFileBytes int

@description('Extra app settings merged over the generated ones (name -> string value).')
param additionalAppSettings object = {}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true // Linux
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      // Bulk Data IG §1.1 / Inferno: the API host must refuse TLS < 1.2.
      minTlsVersion: '1.2'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${blobEndpoint}${deploymentContainer}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
  }
}

var exportBaseUrl = 'https://${site.properties.defaultHostName}'

var generatedAppSettings = {
  // Identity-based host storage (docs §3.2). The Go handler reads the same *ServiceUri settings.
  AzureWebJobsStorage__accountName: storageAccountName
  AzureWebJobsStorage__blobServiceUri: blobServiceUri
  AzureWebJobsStorage__queueServiceUri: queueServiceUri
  AzureWebJobsStorage__tableServiceUri: tableServiceUri
  AzureWebJobsStorage__credential: 'managedidentity'
  // Entra-authenticated telemetry (component has DisableLocalAuth: true).
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD'
  // The exporter's own settings.
  FHIR_SERVER_URL: fhirServerUrl
  FHIR_AUTH: fhirAuth
  EXPORT_CONTAINER: exportContainer
  EXPORT_TABLE: jobTable
  EXPORT_QUEUE: workQueue
  EXPORT_MAX_FILE_BYTES: string(exportMaxFileBytes)
  EXPORT_BASE_URL: exportBaseUrl
}

resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsettings'
  properties: union(generatedAppSettings, additionalAppSettings)
}

output name string = site.name
output id string = site.id
output defaultHostName string = site.properties.defaultHostName
output exportBaseUrl string = exportBaseUrl
output principalId string = site.identity.principalId
output planName string = plan.name
