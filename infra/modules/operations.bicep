// What an operator watches: a Portal workbook over the handler's JSON log lines, log search alert rules wired
// to an action group, and a standard availability test on /metadata.
//
// Every query lives in infra/monitoring/ (the workbook's JSON and one .kql file per alert) and is loaded here
// with loadTextContent, so that tests/e2e/monitoring_fields_test.go can check each field and message it reads
// against the log lines of an end-to-end run. Rules on the handler's lines are scoped to the Application
// Insights component (table `traces`); the storage rule is scoped to the Log Analytics workspace, where the
// storage accounts' diagnostic settings send StorageBlobLogs/StorageQueueLogs/StorageTableLogs.
//
// API versions as in Microsoft's Azure Verified Modules (Azure/bicep-registry-modules, avm/res/insights/*):
// workbooks 2022-04-01, actionGroups 2023-01-01, scheduledQueryRules 2023-03-15-preview, webtests 2022-06-15.

@description('Azure region.')
param location string

@description('Resource tags.')
param tags object = {}

@description('Prefix for resource names.')
param namePrefix string

@description('Unique token for names.')
param token string

@description('Application Insights component (handler traces, availability results).')
param appInsightsId string

@description('Log Analytics workspace (storage resource logs).')
param logAnalyticsId string

@description('Object (principal) id of the app identity: the storage alert looks for refusals of this identity.')
param appPrincipalId string

@description('HTTPS origin of the app, e.g. https://<app>.azurewebsites.net.')
param appBaseUrl string

@description('Email address alerts go to; empty = the rules fire into the Portal only (no action group).')
param alertEmail string = ''

@description('Stalled-job alert: minutes without progress of an active job. Keep it longer than EXPORT_INVOCATION_BUDGET (8 min), the longest a healthy work item goes without a log line.')
@minValue(10)
param stallMinutes int = 20

@description('Create the availability test on /metadata.')
param availabilityTest bool = true

var actionGroups = empty(alertEmail) ? [] : [
  actionGroup.id
]

resource workbook 'Microsoft.Insights/workbooks@2022-04-01' = {
  name: guid(resourceGroup().id, namePrefix, 'fhir-export-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'FHIR $export (${namePrefix}-${token})'
    category: 'workbook'
    sourceId: appInsightsId
    serializedData: replace(loadTextContent('../monitoring/workbook.json'), '__APP_INSIGHTS_ID__', appInsightsId)
  }
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: '${namePrefix}-ag-${token}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: take('fhirexport', 12)
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

// One rule per query file: name, severity, scope, how often and over what window it runs.
var rules = [
  {
    name: 'job-failed'
    displayName: 'FHIR export: a job failed'
    description: 'A work item failed for a cause retrying cannot fix, or on its last delivery; the job is failed. The alert lists the job, the fault kind and the error.'
    severity: 2
    scope: appInsightsId
    frequency: 'PT5M'
    window: 'PT5M'
    query: loadTextContent('../monitoring/alert-job-failed.kql')
  }
  {
    name: 'poisoned'
    displayName: 'FHIR export: a message reached the poison queue'
    description: 'A work item message was moved to <workQueue>-poison. Its job is failed or will be restarted by the status watchdog; look at the message with az storage message peek.'
    severity: 2
    scope: appInsightsId
    frequency: 'PT5M'
    window: 'PT5M'
    query: loadTextContent('../monitoring/alert-poisoned.kql')
  }
  {
    name: 'source-auth'
    displayName: 'FHIR export: the source FHIR server answered 401/403'
    description: 'The app identity lost its FHIR Data Reader role, or FHIR_SERVER_URL points at a FHIR service it has no role on.'
    severity: 1
    scope: appInsightsId
    frequency: 'PT5M'
    window: 'PT5M'
    query: loadTextContent('../monitoring/alert-source-auth.kql')
  }
  {
    name: 'storage-refused'
    displayName: 'FHIR export: storage refused the app identity'
    description: 'A storage account answered 401/403 to the app\'s user-assigned identity: a missing or removed data role, or a storage firewall that does not admit the app.'
    severity: 1
    scope: logAnalyticsId
    frequency: 'PT5M'
    window: 'PT5M'
    query: replace(loadTextContent('../monitoring/alert-storage-refused.kql'), '__APP_PRINCIPAL_ID__', appPrincipalId)
  }
  {
    name: 'stalled'
    displayName: 'FHIR export: an active job makes no progress'
    description: 'A job accepted in the last day, not completed, failed or cancelled, has logged no progress for ${stallMinutes} minutes.'
    severity: 2
    scope: appInsightsId
    frequency: 'PT15M'
    window: 'P1D'
    query: replace(loadTextContent('../monitoring/alert-stalled.kql'), '__STALL_MINUTES__', string(stallMinutes))
  }
]

resource alertRules 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = [
  for rule in rules: {
    name: '${namePrefix}-alert-${rule.name}-${token}'
    location: location
    tags: tags
    properties: {
      displayName: rule.displayName
      description: rule.description
      severity: rule.severity
      enabled: true
      scopes: [
        rule.scope
      ]
      evaluationFrequency: rule.frequency
      windowSize: rule.window
      criteria: {
        allOf: [
          {
            query: rule.query
            timeAggregation: 'Count'
            operator: 'GreaterThan'
            threshold: 0
            failingPeriods: {
              numberOfEvaluationPeriods: 1
              minFailingPeriodsToAlert: 1
            }
          }
        ]
      }
      autoMitigate: false
      actions: {
        actionGroups: actionGroups
      }
    }
  }
]

// Standard availability test: GET /metadata (anonymous: excluded from App Service Authentication, served by
// the handler without a token) from five regions every 5 minutes, expecting 200 over valid TLS. The
// hidden-link tag ties it to the component, as the Portal does.
var hiddenLinkTag = {
  'hidden-link:${appInsightsId}': 'Resource'
}

resource metadataTest 'Microsoft.Insights/webtests@2022-06-15' = if (availabilityTest) {
  name: '${namePrefix}-webtest-metadata-${token}'
  location: location
  tags: union(tags, hiddenLinkTag)
  kind: 'standard'
  properties: {
    SyntheticMonitorId: '${namePrefix}-webtest-metadata-${token}'
    Name: 'FHIR export /metadata'
    Description: 'CapabilityStatement of the $export service, anonymous'
    Enabled: true
    Frequency: 300
    Timeout: 30
    Kind: 'standard'
    RetryEnabled: true
    // The default locations of Microsoft's webtest module (avm/res/insights/webtest).
    Locations: [
      {
        Id: 'us-il-ch1-azr'
      }
      {
        Id: 'us-fl-mia-edge'
      }
      {
        Id: 'latam-br-gru-edge'
      }
      {
        Id: 'apac-sg-sin-azr'
      }
      {
        Id: 'emea-nl-ams-azr'
      }
    ]
    Request: {
      RequestUrl: '${appBaseUrl}/metadata'
      HttpVerb: 'GET'
      ParseDependentRequests: false
      Headers: [
        {
          key: 'Accept'
          value: 'application/fhir+json'
        }
      ]
    }
    ValidationRules: {
      ExpectedHttpStatusCode: 200
      SSLCheck: true
      SSLCertRemainingLifetimeCheck: 7
    }
  }
}

// Failed availability: a metric alert would need another resource type; the log search rule below reads
// the availabilityResults the test writes into the component.
resource availabilityAlert 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = if (availabilityTest) {
  name: '${namePrefix}-alert-metadata-down-${token}'
  location: location
  tags: tags
  properties: {
    displayName: 'FHIR export: /metadata unavailable'
    description: 'The availability test on /metadata failed from at least two locations.'
    severity: 1
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: loadTextContent('../monitoring/alert-metadata-down.kql')
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: actionGroups
    }
  }
}

output workbookId string = workbook.id
output actionGroupId string = empty(alertEmail) ? '' : actionGroup.id
output alertRuleNames array = [for (rule, i) in rules: alertRules[i].name]
