package auth

import (
	"strings"
	"testing"

	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/tests/oidcissuer"
)

// TestExportRights runs real tokens through Authenticate, so the claim forms
// (scp or scope, string or list, roles) are proved together with the rules.
func TestExportRights(t *testing.T) {
	f := setup(t, oidcissuer.Options{}, Config{Role: "Exporter"})
	cases := []struct {
		name   string
		claims oidcissuer.Claims
		all    bool
		types  string   // AllowedTypes, comma separated
		ok     []string // a _type that must be allowed (nil: no check; all: any)
		denied []string // a _type that must be refused, naming the types outside; [] is no _type
	}{
		{name: "configured role", claims: oidcissuer.Claims{"roles": []string{"Reader", "Exporter"}}, all: true, ok: []string{"Observation"}},
		// The role grants every type whatever scopes the token also holds
		// (README: a token with the role and narrow scopes exports all).
		{name: "configured role with narrow scopes", claims: oidcissuer.Claims{"roles": []string{"Exporter"}, "scope": "system/Patient.rs"},
			all: true, ok: []string{"Observation", "Patient"}},
		{name: "default role is not the configured one", claims: oidcissuer.Claims{"roles": []string{DefaultRole}}, denied: []string{}},
		{name: "no role no scope", claims: oidcissuer.Claims{}, denied: []string{}},
		{name: "v1 all", claims: oidcissuer.Claims{"scope": "openid system/*.read"}, all: true},
		{name: "v1 star star", claims: oidcissuer.Claims{"scope": "system/*.*"}, all: true},
		{name: "v2 all", claims: oidcissuer.Claims{"scope": "system/*.rs"}, all: true},
		{name: "v2 cruds", claims: oidcissuer.Claims{"scp": "system/*.cruds"}, all: true},
		{name: "v2 types", claims: oidcissuer.Claims{"scope": "system/Patient.rs system/Observation.cruds"},
			types: "Observation,Patient", ok: []string{"Patient", "Observation"}, denied: []string{"Patient", "Condition"}},
		{name: "v1 types as list in scp", claims: oidcissuer.Claims{"scp": []string{"system/Observation.read", "system/Encounter.read"}},
			types: "Encounter,Observation", ok: []string{"Encounter"}, denied: []string{"Condition"}},
		{name: "v1 and v2 mixed", claims: oidcissuer.Claims{"scope": "system/Patient.read", "scp": "system/Observation.rs"},
			types: "Observation,Patient", ok: []string{"Observation", "Patient"}},
		{name: "read without search", claims: oidcissuer.Claims{"scope": "system/*.r system/Observation.rd"}, denied: []string{}},
		{name: "search without read", claims: oidcissuer.Claims{"scope": "system/*.s"}, denied: []string{}},
		{name: "write only", claims: oidcissuer.Claims{"scope": "system/*.write system/*.cud"}, denied: []string{}},
		{name: "v2 permissions out of order", claims: oidcissuer.Claims{"scope": "system/*.sr"}, denied: []string{}},
		{name: "query restricts the type", claims: oidcissuer.Claims{"scope": "system/Observation.rs?category=laboratory system/Patient.rs"},
			types: "Patient", ok: []string{"Patient"}, denied: []string{"Observation"}},
		{name: "patient and user scopes", claims: oidcissuer.Claims{"scope": "patient/*.read user/*.rs launch/patient"}, denied: []string{}},
		{name: "not a type", claims: oidcissuer.Claims{"scope": "system/observation.rs system/Obs-ervation.rs"}, denied: []string{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			claims := oidcissuer.Claims{"aud": audience, "azp": "c1", "roles": nil}
			for k, v := range tc.claims {
				claims[k] = v
			}
			p, err := f.auth(f.mint(claims))
			if err != nil {
				t.Fatal(err)
			}
			all, types := p.AllowedTypes()
			if all != tc.all || strings.Join(types, ",") != tc.types {
				t.Errorf("AllowedTypes = %v %q, want %v %q", all, types, tc.all, tc.types)
			}
			if tc.all {
				tc.ok = append(tc.ok, "Observation", "MedicationRequest")
			}
			if err := p.CanExport(tc.ok); tc.ok != nil && err != nil {
				t.Errorf("CanExport(%q) = %v, want allowed", tc.ok, err)
			}
			if tc.denied == nil {
				return
			}
			err = p.CanExport(tc.denied)
			if !fault.Is(err, fault.Forbidden) {
				t.Fatalf("CanExport(%q) = %v, want forbidden", tc.denied, err)
			}
			for _, typ := range tc.denied {
				if !strings.Contains(tc.types, typ) && !strings.Contains(err.Error(), typ) {
					t.Errorf("refusal %q does not name %s", err, typ)
				}
			}
			if !strings.Contains(err.Error(), "Exporter") {
				t.Errorf("refusal %q does not name the role that would do", err)
			}
		})
	}
}

func TestCanExportNamesFewTypes(t *testing.T) {
	p := Principal{Scopes: []string{"system/Patient.rs"}, role: DefaultRole}
	err := p.CanExport([]string{"A1", "B1", "C1", "D1", "E1", "F1", "G1", "Patient"})
	if !fault.Is(err, fault.Forbidden) || !strings.Contains(err.Error(), "A1, B1, C1, D1, E1, and 2 more") {
		t.Errorf("err = %v", err)
	}
}
