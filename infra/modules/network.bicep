// Virtual network for networkMode = trustedServices or private.
//
// - "app" subnet: Flex Consumption VNet integration (outbound traffic of the Function App). Flex needs the
//   subnet delegated to Microsoft.App/environments (as in Azure-Samples/azure-functions-flex-consumption-
//   samples and the Functions quickstarts). In trustedServices mode it also carries the Microsoft.Storage
//   service endpoint, so that both storage firewalls can allow this subnet with a virtual network rule:
//   IP rules cannot admit the app, because requests from the same region reach storage from private Azure
//   addresses that IP rules ignore.
// - "private-endpoints" subnet (private mode only): the storage private endpoints.
//
// Subnets are declared inline so that redeploying the VNet does not delete them.

@description('Virtual network name.')
param name string

@description('Azure region.')
param location string

@description('Resource tags.')
param tags object = {}

@description('Address space of the virtual network.')
param addressPrefix string

@description('Prefix of the app (VNet integration) subnet.')
param appSubnetPrefix string

@description('Prefix of the private endpoint subnet (used only when withPrivateEndpointSubnet).')
param privateEndpointSubnetPrefix string

@description('Create the private endpoint subnet (networkMode = private).')
param withPrivateEndpointSubnet bool

@description('Enable the Microsoft.Storage service endpoint on the app subnet (networkMode = trustedServices).')
param storageServiceEndpoint bool

var appSubnetName = 'app'
var privateEndpointSubnetName = 'private-endpoints'

var storageEndpoints = [
  {
    service: 'Microsoft.Storage'
  }
]

var appSubnet = {
  name: appSubnetName
  properties: {
    addressPrefix: appSubnetPrefix
    delegations: [
      {
        name: 'flex-consumption'
        properties: {
          serviceName: 'Microsoft.App/environments'
        }
      }
    ]
    serviceEndpoints: storageServiceEndpoint ? storageEndpoints : []
    privateEndpointNetworkPolicies: 'Disabled'
    privateLinkServiceNetworkPolicies: 'Enabled'
  }
}

var privateEndpointSubnet = {
  name: privateEndpointSubnetName
  properties: {
    addressPrefix: privateEndpointSubnetPrefix
    privateEndpointNetworkPolicies: 'Disabled'
    privateLinkServiceNetworkPolicies: 'Enabled'
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2023-11-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: withPrivateEndpointSubnet ? [appSubnet, privateEndpointSubnet] : [appSubnet]
  }
}

output id string = vnet.id
output name string = vnet.name
output appSubnetId string = resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, appSubnetName)
output privateEndpointSubnetId string = withPrivateEndpointSubnet ? resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, privateEndpointSubnetName) : ''
