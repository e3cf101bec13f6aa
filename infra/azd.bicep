// Entry point for `azd up` / `azd provision` (azure.yaml: infra.module = azd). azd deploys at subscription
// scope by convention: this file creates the resource group rg-<environmentName>, tagged azd-env-name, and
// deploys main.bicep into it with the same parameters the az CLI path uses. Parameter values come from
// infra/azd.parameters.json, where ${AZURE_ENV_NAME}, ${AZURE_LOCATION} and the other ${...} are azd
// environment values (azd env set NAME value).

targetScope = 'subscription'

@description('azd environment name (AZURE_ENV_NAME): names the resource group and seeds the resource token.')
@minLength(1)
@maxLength(64)
param environmentName string

@description('Azure region (AZURE_LOCATION). Must support Flex Consumption.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Resource group to create or reuse; empty = rg-<environmentName>.')
param resourceGroupName string = ''

@description('See main.bicep.')
@minLength(36)
@maxLength(36)
param authClientId string

@description('See main.bicep.')
param fhirServiceResourceId string = ''

@description('See main.bicep: empty = derived from fhirServiceResourceId.')
param fhirServerUrl string = ''

@description('See main.bicep.')
@allowed([
  'none'
  'azure'
])
param fhirAuth string = 'azure'

@description('See main.bicep.')
param alertEmail string = ''

@description('See main.bicep.')
param deployerPrincipalId string = ''

@description('See main.bicep.')
@allowed([
  'public'
  'trustedServices'
  'private'
])
param networkMode string = 'public'

@description('See main.bicep.')
param maximumInstanceCount int = 40

@description('See main.bicep.')
param sourceConcurrency int = 2

@description('See main.bicep.')
param alwaysReadyHttpInstances int = 0

var tags = {
  'azd-env-name': environmentName
}

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
  location: location
  tags: tags
}

module app 'main.bicep' = {
  name: 'fhir-export'
  scope: rg
  params: {
    environmentName: environmentName
    location: location
    tags: tags
    authClientId: authClientId
    fhirServiceResourceId: fhirServiceResourceId
    fhirServerUrl: fhirServerUrl
    fhirAuth: fhirAuth
    alertEmail: alertEmail
    deployerPrincipalId: deployerPrincipalId
    networkMode: networkMode
    maximumInstanceCount: maximumInstanceCount
    sourceConcurrency: sourceConcurrency
    alwaysReadyHttpInstances: alwaysReadyHttpInstances
  }
}

// azd stores these in .azure/<env>/.env; the hooks and the README's commands read them.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_SUBSCRIPTION_ID string = subscription().subscriptionId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = app.outputs.functionAppName
output EXPORT_BASE_URL string = app.outputs.exportBaseUrl
output AUTH_TOKEN_SCOPE string = app.outputs.authTokenScope
output FHIR_SERVER_URL string = app.outputs.fhirServerUrl
output FHIR_ROLE_GRANTED bool = app.outputs.fhirRoleGranted
output MAX_SOURCE_REQUESTS_IN_FLIGHT int = app.outputs.maxSourceRequestsInFlight
output STORAGE_ACCOUNT_NAME string = app.outputs.storageAccountName
output EXPORT_STORAGE_ACCOUNT_NAME string = app.outputs.exportStorageAccountName
output APPLICATIONINSIGHTS_NAME string = app.outputs.appInsightsName
output WORKBOOK_ID string = app.outputs.workbookId
