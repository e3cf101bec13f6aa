package config

import (
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
)

// fhirService is what infra/main.bicep reads from fhirServiceResourceId.
type fhirService struct {
	subscription, resourceGroup, workspace, name, url string
}

// parseFHIRServiceID mirrors, step by step, the variables fhirIdLower ...
// derivedFhirUrl and fhirIdChecked of infra/main.bicep, which no compiler
// or deployment checks here: segments are found by name (subscriptions,
// resourceGroups, providers, Microsoft.HealthcareApis, matched without
// case), never by a fixed position, so both the Azure Health Data Services
// id (11 segments) and the Azure API for FHIR id (9) work, whatever the
// resource group is called. TestMainBicepStillParsesFHIRIDsThisWay fails
// when main.bicep stops doing what this function does.
func parseFHIRServiceID(auth, id string) (fhirService, error) {
	if id == "" {
		if auth == "azure" {
			return fhirService{}, errors.New("fhirServiceResourceId is required with fhirAuth=azure")
		}
		return fhirService{}, nil
	}
	id = strings.TrimSpace(id) // Bicep trim()
	parts := strings.Split(id, "/")
	lower := strings.Split(strings.ToLower(id), "/")
	sub := slices.Index(lower, "subscriptions")
	rg := slices.Index(lower, "resourcegroups")
	p := rg + 2 // providers
	shapeOK := sub >= 0 && rg == sub+2 && len(lower) > p+3 &&
		lower[p] == "providers" && lower[p+1] == "microsoft.healthcareapis"
	typ := ""
	if shapeOK {
		typ = lower[p+2]
	}
	isWorkspace := typ == "workspaces" && len(lower) == p+6 && lower[p+4] == "fhirservices"
	isAPIForFHIR := typ == "services" && len(lower) == p+4
	if !isWorkspace && !isAPIForFHIR {
		return fhirService{}, errors.New("fhirServiceResourceId is not the resource id of a FHIR service")
	}
	s := fhirService{subscription: parts[sub+1], resourceGroup: parts[rg+1]}
	if isWorkspace {
		s.workspace, s.name = parts[p+3], parts[p+5]
		s.url = "https://" + strings.ToLower(s.workspace) + "-" + strings.ToLower(s.name) + ".fhir.azurehealthcareapis.com"
	} else {
		s.name = parts[p+3]
		s.url = "https://" + strings.ToLower(s.name) + ".azurehealthcareapis.com"
	}
	return s, nil
}

// TestFHIRServiceIDsOfBothKindsGrantTheRoleAndGiveTheURL: an operator passes
// the FHIR service's resource id as the Portal or `az resource show` prints
// it; the deployment must find the service to grant FHIR Data Reader on, and
// derive the URL Microsoft documents for that kind of service.
func TestFHIRServiceIDsOfBothKindsGrantTheRoleAndGiveTheURL(t *testing.T) {
	const sub = "00000000-1111-2222-3333-444444444444"
	for _, tc := range []struct {
		name, id string
		want     fhirService
	}{
		{
			name: "Azure Health Data Services",
			id:   "/subscriptions/" + sub + "/resourceGroups/health-rg/providers/Microsoft.HealthcareApis/workspaces/myws/fhirservices/myfhir",
			want: fhirService{sub, "health-rg", "myws", "myfhir", "https://myws-myfhir.fhir.azurehealthcareapis.com"},
		},
		{
			name: "Azure API for FHIR (9 segments)",
			id:   "/subscriptions/" + sub + "/resourceGroups/health-rg/providers/Microsoft.HealthcareApis/services/legacyfhir",
			want: fhirService{sub, "health-rg", "", "legacyfhir", "https://legacyfhir.azurehealthcareapis.com"},
		},
		{
			name: "lowercase segment names, as some Azure APIs return them",
			id:   "/subscriptions/" + sub + "/resourcegroups/health-rg/providers/microsoft.healthcareapis/workspaces/myws/fhirservices/myfhir",
			want: fhirService{sub, "health-rg", "myws", "myfhir", "https://myws-myfhir.fhir.azurehealthcareapis.com"},
		},
		{
			name: "a resource group named like a resource type",
			id:   "/subscriptions/" + sub + "/resourceGroups/workspaces/providers/Microsoft.HealthcareApis/services/fhir1",
			want: fhirService{sub, "workspaces", "", "fhir1", "https://fhir1.azurehealthcareapis.com"},
		},
		{
			name: "surrounding spaces from a copy and paste",
			id:   " /subscriptions/" + sub + "/resourceGroups/rg/providers/Microsoft.HealthcareApis/workspaces/ws/fhirservices/f ",
			want: fhirService{sub, "rg", "ws", "f", "https://ws-f.fhir.azurehealthcareapis.com"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseFHIRServiceID("azure", tc.id)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestTheDeploymentRefusesToRunWithoutAFHIRRole: the quick start used to
// deploy an app whose every export got 403 from the FHIR service. Now an
// empty or wrong id with fhirAuth=azure stops the deployment with a message.
func TestTheDeploymentRefusesToRunWithoutAFHIRRole(t *testing.T) {
	const sub = "00000000-1111-2222-3333-444444444444"
	for _, tc := range []struct{ name, auth, id string }{
		{"no id with fhirAuth=azure", "azure", ""},
		{"a storage account id", "azure", "/subscriptions/" + sub + "/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/st"},
		{"the workspace, not its FHIR service", "azure", "/subscriptions/" + sub + "/resourceGroups/rg/providers/Microsoft.HealthcareApis/workspaces/ws"},
		{"a DICOM service of a workspace", "azure", "/subscriptions/" + sub + "/resourceGroups/rg/providers/Microsoft.HealthcareApis/workspaces/ws/dicomservices/d"},
		{"a trailing slash", "azure", "/subscriptions/" + sub + "/resourceGroups/rg/providers/Microsoft.HealthcareApis/services/f/"},
		{"a URL instead of an id", "azure", "https://ws-f.fhir.azurehealthcareapis.com"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, err := parseFHIRServiceID(tc.auth, tc.id); err == nil {
				t.Errorf("accepted %q: %+v", tc.id, got)
			}
		})
	}
	if _, err := parseFHIRServiceID("none", ""); err != nil {
		t.Errorf("fhirAuth=none without an id was refused: %v", err)
	}

	// The quick start's parameters file, deployed as it is, must stop with
	// the message rather than produce an app without a FHIR role.
	raw, err := os.ReadFile("../../../infra/main.parameters.json")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Parameters map[string]struct{ Value any } `json:"parameters"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	auth, _ := file.Parameters["fhirAuth"].Value.(string)
	id, _ := file.Parameters["fhirServiceResourceId"].Value.(string)
	if _, err := parseFHIRServiceID(auth, id); auth == "azure" && err == nil {
		t.Errorf("main.parameters.json (fhirAuth=%q, fhirServiceResourceId=%q) would deploy without a FHIR role", auth, id)
	}
}

// TestMainBicepStillParsesFHIRIDsThisWay ties parseFHIRServiceID to the
// template: each step it mirrors must still be in infra/main.bicep, word for
// word. A change there fails here until the mirror (and its cases) follow.
func TestMainBicepStillParsesFHIRIDsThisWay(t *testing.T) {
	raw, err := os.ReadFile("../../../infra/main.bicep")
	if err != nil {
		t.Fatal(err)
	}
	src := string(raw)
	for _, step := range []string{
		`var fhirId = empty(fhirServiceResourceId) ? fhirIdPlaceholder : trim(fhirServiceResourceId)`,
		`var fhirIdParts = split(fhirId, '/')`,
		`var fhirIdLower = split(toLower(fhirId), '/')`,
		`var fhirSubIndex = indexOf(fhirIdLower, 'subscriptions')`,
		`var fhirRgIndex = indexOf(fhirIdLower, 'resourcegroups')`,
		`var fhirProvidersIndex = fhirRgIndex + 2`,
		`var fhirIdShapeOk = (fhirSubIndex >= 0 && fhirRgIndex == fhirSubIndex + 2 && length(fhirIdLower) > fhirProvidersIndex + 3) ? (fhirIdLower[fhirProvidersIndex] == 'providers' && fhirIdLower[fhirProvidersIndex + 1] == 'microsoft.healthcareapis') : false`,
		`var fhirType = fhirIdShapeOk ? fhirIdLower[fhirProvidersIndex + 2] : ''`,
		`var fhirIsWorkspace = (fhirType == 'workspaces' && length(fhirIdLower) == fhirProvidersIndex + 6) ? fhirIdLower[fhirProvidersIndex + 4] == 'fhirservices' : false`,
		`var fhirIsApiForFhir = fhirType == 'services' && length(fhirIdLower) == fhirProvidersIndex + 4`,
		`var fhirSubscription = fhirIdValid ? fhirIdParts[fhirSubIndex + 1] : subscription().subscriptionId`,
		`var fhirResourceGroup = fhirIdValid ? fhirIdParts[fhirRgIndex + 1] : resourceGroup().name`,
		`var fhirWorkspaceName = fhirIsWorkspace ? fhirIdParts[fhirProvidersIndex + 3] : ''`,
		`var fhirServiceName = fhirIsWorkspace ? fhirIdParts[fhirProvidersIndex + 5] : (fhirIsApiForFhir ? fhirIdParts[fhirProvidersIndex + 3] : 'none')`,
		`var fhirIdChecked = empty(fhirServiceResourceId) ? (fhirAuth == 'azure' ? fail(`,
		`var derivedFhirUrl = fhirIsWorkspace ? 'https://${toLower(fhirWorkspaceName)}-${toLower(fhirServiceName)}.fhir.azurehealthcareapis.com' : 'https://${toLower(fhirServiceName)}.azurehealthcareapis.com'`,
		`var grantFhir = !empty(fhirIdChecked) && fhirAuth == 'azure' && grantFhirRole`,
		`module fhirRbac 'modules/fhir-rbac.bicep' = if (grantFhir) {`,
		`scope: resourceGroup(fhirSubscription, fhirResourceGroup)`,
	} {
		if !strings.Contains(src, step) {
			t.Errorf("infra/main.bicep no longer has\n\t%s\nupdate parseFHIRServiceID and its cases to what the template does now", step)
		}
	}
}
