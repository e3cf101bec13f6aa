// Data-plane roles for one principal at storage-account scope (docs §3.2), and optionally Monitoring
// Metrics Publisher on the Application Insights component (Entra-authenticated telemetry, docs §3.3).
//
// Role assignment names are guid(scope, principal, role), so redeploying is idempotent. An assignment that
// already exists under another name (made by hand) makes the deployment fail with RoleAssignmentExists:
// delete the manual one or leave the principal out.

@description('Storage account to grant the data roles on.')
param storageAccountName string

@description('Object (principal) id to grant the roles to.')
param principalId string

@description('Kind of principal.')
@allowed([
  'ServicePrincipal'
  'User'
  'Group'
])
param principalType string = 'ServicePrincipal'

@description('Application Insights component (used only when grantMetricsPublisher is true).')
param appInsightsName string

@description('Also grant Monitoring Metrics Publisher on the Application Insights component.')
param grantMetricsPublisher bool = false

@description('Free text recorded on each assignment.')
param descriptionSuffix string = ''

var storageRoles = [
  {
    name: 'Storage Blob Data Owner' // host, Flex package, exports, user-delegation keys
    id: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  }
  {
    name: 'Storage Queue Data Contributor' // trigger, creating <queue>-poison, Go enqueue
    id: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  }
  {
    name: 'Storage Table Data Contributor' // job table
    id: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  }
]

var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource storageRoleAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in storageRoles: {
    name: guid(storage.id, principalId, role.id)
    scope: storage
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.id)
      principalId: principalId
      principalType: principalType
      description: '${role.name} for the FHIR $export service${descriptionSuffix}'
    }
  }
]

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grantMetricsPublisher) {
  name: guid(appInsights.id, principalId, monitoringMetricsPublisherRoleId)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
    principalId: principalId
    principalType: principalType
    description: 'Monitoring Metrics Publisher for the FHIR $export service${descriptionSuffix}'
  }
}
