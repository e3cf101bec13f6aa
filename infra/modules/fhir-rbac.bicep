// FHIR Data Reader for the exporter's managed identity on an Azure Health Data Services FHIR service.
// Deployed by main.bicep with `scope: resourceGroup(<sub>, <rg>)` taken from the FHIR service's resource id,
// so it works across resource groups and subscriptions, provided the deploying principal may write role
// assignments there (Owner, User Access Administrator or Role Based Access Control Administrator).

@description('Azure Health Data Services workspace name.')
param workspaceName string

@description('FHIR service name inside the workspace.')
param fhirServiceName string

@description('Object (principal) id of the Function App\'s system-assigned identity.')
param principalId string

var fhirDataReaderRoleId = '4c8d0bbc-75d3-4935-991f-5f3c56d81508'

resource workspace 'Microsoft.HealthcareApis/workspaces@2024-03-31' existing = {
  name: workspaceName
}

resource fhirService 'Microsoft.HealthcareApis/workspaces/fhirservices@2024-03-31' existing = {
  parent: workspace
  name: fhirServiceName
}

resource fhirDataReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(fhirService.id, principalId, fhirDataReaderRoleId)
  scope: fhirService
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', fhirDataReaderRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'FHIR Data Reader for the FHIR $export service'
  }
}

output roleAssignmentId string = fhirDataReader.id
