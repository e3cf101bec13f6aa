// Data-plane roles for one principal on one storage account, at account scope (docs §3.2). main.bicep calls
// it once per (principal, account) with the roles that pair needs, so that each role is scoped to the
// account it is for: the host's roles on the host account, the export role on the export account.
//
// Role assignment names are guid(scope, principal, role), so redeploying is idempotent. An assignment that
// already exists under another name (made by hand) makes the deployment fail with RoleAssignmentExists:
// delete the manual one or leave the principal out.

@description('Storage account to grant the roles on.')
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

@description('Built-in roles to grant: [{ name: string, id: role definition GUID }].')
param roles array

@description('Free text recorded on each assignment.')
param descriptionSuffix string = ''

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource storageRoleAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in roles: {
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
