// Flex Consumption (FC1, Linux) plan + Function App running the Go custom handler, with App Service
// Authentication (Entra ID) in front of it and basic-auth publishing turned off.
//
// Flex specifics (docs §3.1):
// - the runtime is functionAppConfig.runtime = { name: 'custom', version: '1.0' }, NOT the
//   FUNCTIONS_WORKER_RUNTIME app setting;
// - the package lives in a blob container (functionAppConfig.deployment.storage), read with the app's
//   user-assigned identity; no WEBSITE_RUN_FROM_PACKAGE / WEBSITE_CONTENT* settings;
// - one app per Flex plan; VNet integration through properties.virtualNetworkSubnetId (a subnet delegated
//   to Microsoft.App/environments).
//
// The identity is user-assigned and created (with its roles) before this module runs: main.bicep makes the
// module depend on the role assignments, so the host's first start already has its storage, monitoring and
// FHIR roles (role assignments can still take a few minutes to propagate in Entra ID).
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

@description('Host storage account (AzureWebJobsStorage, deployment package, job table, work queue).')
param storageAccountName string

@description('Blob endpoint of the host storage account, with trailing slash.')
param blobEndpoint string

@description('Host blob service URI without trailing slash.')
param blobServiceUri string

@description('Host queue service URI without trailing slash.')
param queueServiceUri string

@description('Host table service URI without trailing slash.')
param tableServiceUri string

@description('Blob container holding the deployment package.')
param deploymentContainer string

@description('Blob service URI of the export storage account, without trailing slash (EXPORT_STORAGE__blobServiceUri).')
param exportBlobServiceUri string

@description('Application Insights component name (local auth disabled).')
param appInsightsName string

@description('Maximum instance count for the Flex app (all its functions together).')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Always-ready instances for the HTTP functions (Flex "http" group); 0 = none (cold starts possible, no baseline cost).')
@minValue(0)
param alwaysReadyHttpInstances int = 0

@description('Queue messages one instance fetches at once (host.json extensions.queues.batchSize, overridden by app setting).')
@minValue(1)
@maxValue(32)
param queueBatchSize int = 4

@description('Fetch the next batch when this few messages are still running (host.json newBatchThreshold).')
@minValue(0)
param queueNewBatchThreshold int = 2

@description('Requests in flight to the source FHIR server from one instance (EXPORT_SOURCE_CONCURRENCY).')
@minValue(1)
param sourceConcurrency int = 8

@description('Resource id of the app\'s user-assigned identity.')
param identityId string

@description('Client id of the app\'s user-assigned identity (AzureWebJobsStorage__clientId, EXPORT_STORAGE__clientId, FHIR_AUTH_CLIENT_ID).')
param identityClientId string

@description('Instance memory size in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Subnet for Flex VNet integration (delegated to Microsoft.App/environments); empty = no VNet integration.')
param virtualNetworkSubnetId string = ''

@description('FHIR server base URL the exporter reads from.')
param fhirServerUrl string

@description('How the exporter authenticates to the FHIR server: none, or azure (managed-identity token, scope "<FHIR origin>/.default").')
@allowed([
  'none'
  'azure'
])
param fhirAuth string

@description('Default export container (EXPORT_CONTAINER).')
param exportContainer string

@description('Every container a kick-off may name in _container (EXPORT_CONTAINERS); includes exportContainer.')
param exportContainers array

@description('Table for job state.')
param jobTable string

@description('Queue for work items.')
param workQueue string

@description('Roll NDJSON parts at this many bytes.')
param exportMaxFileBytes int

@description('How manifests link files: "proxy" (through the app, with the owner\'s token) or "sas" (user-delegation SAS URLs on the export account).')
@allowed([
  'proxy'
  'sas'
])
param exportDownloads string

@description('Lifetime of SAS download URLs (EXPORT_SAS_TTL, e.g. "10m"); empty = the handler\'s default.')
param exportSasTtl string = ''

@description('Unfinished jobs one client may have (EXPORT_MAX_ACTIVE_JOBS_PER_CLIENT).')
@minValue(1)
param maxActiveJobsPerClient int = 5

@description('Microsoft Entra tenant that issues the clients\' tokens (AUTH_TENANT_ID).')
param authTenantId string

@description('Application (client) id of the API app registration that represents this service.')
param authClientId string

@description('Accepted token audiences (AUTH_AUDIENCE, and Easy Auth allowedAudiences): the API\'s client id and its app ID URI.')
@minLength(1)
param authAudiences array

@description('App role a client needs to export (AUTH_ROLE).')
param authRole string

@description('Token endpoint published in /.well-known/smart-configuration (AUTH_TOKEN_ENDPOINT); empty = not published.')
param authTokenEndpoint string = ''

@description('Client application ids Easy Auth lets through (defaultAuthorizationPolicy.allowedApplications); empty = any client with a valid token (the handler checks the app role).')
param authAllowedClientApplications array = []

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
  // azd finds the app of the "export" service in azure.yaml by this tag.
  tags: union(tags, {
    'azd-service-name': 'export'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    virtualNetworkSubnetId: empty(virtualNetworkSubnetId) ? null : virtualNetworkSubnetId
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
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        // "http" is the scale group of every HTTP-triggered function (kick-off, status, downloads).
        alwaysReady: alwaysReadyHttpInstances > 0 ? [
          {
            name: 'http'
            instanceCount: alwaysReadyHttpInstances
          }
        ] : []
      }
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
  }
}

// No FTP and no SCM (Kudu) basic-auth publishing: deployments authenticate with Microsoft Entra ID
// (az functionapp deploy / azd with a signed-in principal that holds Website Contributor or more).
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

var loginEndpoint = environment().authentication.loginEndpoint // 'https://login.microsoftonline.com/'

// App Service Authentication ("Easy Auth"): the outer wall. It rejects requests without a valid Entra ID
// token for this API (401) before they reach the Functions host, except the two discovery documents, which
// the Bulk Data / SMART specs require to be public. The handler validates the bearer token itself again
// (AUTH_MODE=entra): Easy Auth's X-MS-CLIENT-PRINCIPAL headers are only trustworthy where Easy Auth is on,
// the app role / SMART scope check and job ownership are the handler's, and the same binary also runs
// without Easy Auth (handler serve, the emulated host). No token store: the API never calls anything on
// the client's behalf.
resource authSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'Return401'
      excludedPaths: [
        '/metadata'
        '/.well-known/smart-configuration'
      ]
    }
    httpSettings: {
      requireHttps: true
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: authClientId
          // v2 issuer of the tenant; the API registration should request v2 access tokens
          // (api.requestedAccessTokenVersion = 2), see infra/README.md.
          openIdIssuer: '${loginEndpoint}${authTenantId}/v2.0'
        }
        validation: {
          allowedAudiences: authAudiences
          defaultAuthorizationPolicy: empty(authAllowedClientApplications) ? {} : {
            allowedApplications: authAllowedClientApplications
          }
        }
      }
    }
    login: {
      tokenStore: {
        enabled: false
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
  AzureWebJobsStorage__clientId: identityClientId
  // Entra-authenticated telemetry (component has DisableLocalAuth: true), with the user-assigned identity.
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // host.json's queue batch settings, overridden here so that the load on the source is a deployment
  // parameter: at most maximumInstanceCount x min(EXPORT_SOURCE_CONCURRENCY, 2 x (batchSize + newBatchThreshold))
  // requests in flight to the source FHIR server (a work item has at most a page and the next one in flight).
  AzureFunctionsJobHost__extensions__queues__batchSize: string(queueBatchSize)
  AzureFunctionsJobHost__extensions__queues__newBatchThreshold: string(queueNewBatchThreshold)
  EXPORT_SOURCE_CONCURRENCY: string(sourceConcurrency)
  // Who may call: Entra ID bearer tokens for this API with the app role (never AUTH_MODE=none here).
  AUTH_MODE: 'entra'
  AUTH_TENANT_ID: authTenantId
  AUTH_AUDIENCE: join(authAudiences, ',')
  AUTH_ROLE: authRole
  // The exporter's own settings.
  FHIR_SERVER_URL: fhirServerUrl
  FHIR_AUTH: fhirAuth
  FHIR_AUTH_CLIENT_ID: identityClientId
  // Exports go to their own account, reached with the managed identity.
  EXPORT_STORAGE__blobServiceUri: exportBlobServiceUri
  EXPORT_STORAGE__clientId: identityClientId
  EXPORT_CONTAINER: exportContainer
  EXPORT_CONTAINERS: join(exportContainers, ',')
  EXPORT_DOWNLOADS: exportDownloads
  EXPORT_MAX_ACTIVE_JOBS_PER_CLIENT: string(maxActiveJobsPerClient)
  EXPORT_TABLE: jobTable
  EXPORT_QUEUE: workQueue
  EXPORT_MAX_FILE_BYTES: string(exportMaxFileBytes)
  EXPORT_BASE_URL: exportBaseUrl
  // Behind the Functions front end, which sets X-Forwarded-*.
  EXPORT_TRUST_FORWARDED: 'true'
}

// Written only when given, so that an empty parameter leaves the handler's own default in force.
var sasTtlSetting = empty(exportSasTtl) ? {} : {
  EXPORT_SAS_TTL: exportSasTtl
}
var tokenEndpointSetting = empty(authTokenEndpoint) ? {} : {
  AUTH_TOKEN_ENDPOINT: authTokenEndpoint
}

resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsettings'
  properties: union(generatedAppSettings, sasTtlSetting, tokenEndpointSetting, additionalAppSettings)
}

output name string = site.name
output id string = site.id
output defaultHostName string = site.properties.defaultHostName
output exportBaseUrl string = exportBaseUrl
output planName string = plan.name
