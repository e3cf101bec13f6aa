// Private endpoints and private DNS for networkMode = private.
//
// One private endpoint per (storage account, sub-resource) in `endpoints`, each registered in the matching
// privatelink DNS zone (privatelink.<blob|queue|table>.<storage suffix>), and the zones linked to the
// virtual network so that the Function App (VNet-integrated) resolves <account>.blob.core.windows.net to
// the private address. Clients outside this network (and networks linked to these zones) cannot reach the
// accounts at all once public network access is disabled.

@description('Azure region of the private endpoints.')
param location string

@description('Resource tags.')
param tags object = {}

@description('Virtual network to link the private DNS zones to.')
param vnetId string

@description('Subnet for the private endpoints.')
param subnetId string

@description('Private endpoints: [{ name: string, resourceId: storage account id, groupId: "blob" | "queue" | "table" }].')
param endpoints array

var suffix = environment().suffixes.storage

resource blobZone 'Microsoft.Network/privateDnsZones@2020-06-01' = {
  name: 'privatelink.blob.${suffix}'
  location: 'global'
  tags: tags
}

resource queueZone 'Microsoft.Network/privateDnsZones@2020-06-01' = {
  name: 'privatelink.queue.${suffix}'
  location: 'global'
  tags: tags
}

resource tableZone 'Microsoft.Network/privateDnsZones@2020-06-01' = {
  name: 'privatelink.table.${suffix}'
  location: 'global'
  tags: tags
}

resource blobZoneLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = {
  parent: blobZone
  name: 'export-vnet'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnetId
    }
  }
}

resource queueZoneLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = {
  parent: queueZone
  name: 'export-vnet'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnetId
    }
  }
}

resource tableZoneLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = {
  parent: tableZone
  name: 'export-vnet'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnetId
    }
  }
}

var zoneIds = {
  blob: blobZone.id
  queue: queueZone.id
  table: tableZone.id
}

resource privateEndpoints 'Microsoft.Network/privateEndpoints@2023-11-01' = [
  for ep in endpoints: {
    name: ep.name
    location: location
    tags: tags
    properties: {
      subnet: {
        id: subnetId
      }
      privateLinkServiceConnections: [
        {
          name: ep.name
          properties: {
            privateLinkServiceId: ep.resourceId
            groupIds: [
              ep.groupId
            ]
          }
        }
      ]
    }
  }
]

resource dnsZoneGroups 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2023-11-01' = [
  for (ep, i) in endpoints: {
    parent: privateEndpoints[i]
    name: 'default'
    properties: {
      privateDnsZoneConfigs: [
        {
          name: ep.groupId
          properties: {
            privateDnsZoneId: zoneIds[ep.groupId]
          }
        }
      ]
    }
  }
]
