// FHIR Data Reader for the exporter's identity on its source FHIR service, and the service's audit logs to
// Log Analytics. Deployed by main.bicep with `scope: resourceGroup(<sub>, <rg>)` read from the FHIR service's
// resource id, so it works across resource groups and subscriptions, provided the deploying principal may
// write role assignments and diagnostic settings there (Owner, or User Access Administrator / Role Based
// Access Control Administrator plus Monitoring Contributor).
//
// Two kinds of FHIR service (main.bicep tells them apart by the id's resource type, not by its length):
// - Azure Health Data Services: Microsoft.HealthcareApis/workspaces/<workspace>/fhirservices/<name>;
// - Azure API for FHIR: Microsoft.HealthcareApis/services/<name>.
// FHIR Data Reader (4c8d0bbc-75d3-4935-991f-5f3c56d81508) is the same built-in role for both.

@description('"workspaces" (Azure Health Data Services FHIR service) or "services" (Azure API for FHIR).')
@allowed([
  'workspaces'
  'services'
])
param kind string

@description('Azure Health Data Services workspace name (kind = workspaces); ignored otherwise.')
param workspaceName string = ''

@description('FHIR service name: the fhirservices child of the workspace, or the Azure API for FHIR service.')
param fhirServiceName string

@description('Object (principal) id of the exporter\'s user-assigned identity.')
param principalId string

@description('Log Analytics workspace that receives the FHIR service\'s AuditLogs; empty = none.')
param logAnalyticsId string = ''

var fhirDataReaderRoleId = '4c8d0bbc-75d3-4935-991f-5f3c56d81508'
var isWorkspace = kind == 'workspaces'

// `existing` references only build resource ids here (no read), so the one of the other kind is harmless.
resource workspace 'Microsoft.HealthcareApis/workspaces@2024-03-31' existing = {
  name: isWorkspace ? workspaceName : 'none'
}

resource workspaceFhir 'Microsoft.HealthcareApis/workspaces/fhirservices@2024-03-31' existing = {
  parent: workspace
  name: fhirServiceName
}

resource apiForFhir 'Microsoft.HealthcareApis/services@2024-03-31' existing = {
  name: fhirServiceName
}

resource workspaceFhirReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (isWorkspace) {
  name: guid(workspaceFhir.id, principalId, fhirDataReaderRoleId)
  scope: workspaceFhir
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', fhirDataReaderRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'FHIR Data Reader for the FHIR $export service'
  }
}

resource apiForFhirReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!isWorkspace) {
  name: guid(apiForFhir.id, principalId, fhirDataReaderRoleId)
  scope: apiForFhir
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', fhirDataReaderRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'FHIR Data Reader for the FHIR $export service'
  }
}

// Who read what from the FHIR service (the exporter included): the AuditLogs category of both kinds.
resource workspaceFhirAudit 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (isWorkspace && !empty(logAnalyticsId)) {
  name: 'fhir-export-audit'
  scope: workspaceFhir
  properties: {
    workspaceId: logAnalyticsId
    logs: [
      {
        category: 'AuditLogs'
        enabled: true
      }
    ]
  }
}

resource apiForFhirAudit 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!isWorkspace && !empty(logAnalyticsId)) {
  name: 'fhir-export-audit'
  scope: apiForFhir
  properties: {
    workspaceId: logAnalyticsId
    logs: [
      {
        category: 'AuditLogs'
        enabled: true
      }
    ]
  }
}
