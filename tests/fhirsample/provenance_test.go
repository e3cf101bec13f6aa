package fhirsample

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// provenanceServer serves Patients, Observations and Provenance whose
// targets are written in every form a reference takes: relative, versioned,
// absolute, absolute and versioned, several in one resource, and ids shared
// by two types (Patient/x and Observation/x).
func provenanceServer(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	lu := `"meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00Z"}`
	prov := func(id string, targets ...string) string {
		var refs []string
		for _, r := range targets {
			refs = append(refs, `{"reference":"`+r+`"}`)
		}
		return `{"resourceType":"Provenance","id":"` + id + `",` + lu + `,"recorded":"2024-01-01T00:00:00Z","target":[` + strings.Join(refs, ",") + `]}`
	}
	files := map[string][]string{
		"Patient.ndjson": {
			`{"resourceType":"Patient","id":"x",` + lu + `}`,
			`{"resourceType":"Patient","id":"p1",` + lu + `}`,
		},
		"Observation.ndjson": {
			`{"resourceType":"Observation","id":"x",` + lu + `,"status":"final","subject":{"reference":"Patient/x"}}`,
			`{"resourceType":"Observation","id":"o1",` + lu + `,"status":"final","subject":{"reference":"Patient/p1"}}`,
			`{"resourceType":"Observation","id":"o2",` + lu + `,"status":"final","subject":{"reference":"Patient/p1"}}`,
		},
		"Provenance.ndjson": {
			prov("pv-patient-x", "Patient/x"),
			prov("pv-observation-x", "Observation/x"),
			prov("pv-versioned", "Observation/o1/_history/2"),
			prov("pv-absolute", "https://ehr.example/fhir/Observation/o2"),
			prov("pv-absolute-versioned", "http://ehr.example/fhir/Observation/o2/_history/3"),
			prov("pv-several", "Patient/p1", "Encounter/e1"),
			prov("pv-contained", "#c1"),
		},
	}
	for name, lines := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := New(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	return ts.URL + "/fhir"
}

// TestProvenanceSearchByTarget: the export finds the Provenance of the
// resources it returned with Provenance?target=Type/id,...: a value matches
// the targets that point at that type and id in any form, and no other.
func TestProvenanceSearchByTarget(t *testing.T) {
	base := provenanceServer(t)
	tests := []struct {
		query string
		want  []string
	}{
		{"target=Observation/x", []string{"pv-observation-x"}},
		{"target=Patient/x", []string{"pv-patient-x"}},
		{"target=x", []string{"pv-observation-x", "pv-patient-x"}},
		{"target=Observation/o1", []string{"pv-versioned"}},
		{"target=Observation/o2", []string{"pv-absolute", "pv-absolute-versioned"}},
		{"target=https://other.example/fhir/Observation/o2", []string{"pv-absolute", "pv-absolute-versioned"}},
		{"target=Patient/o2", nil},
		{"target=Observation/x,Patient/p1", []string{"pv-observation-x", "pv-several"}},
		{"target=Encounter/e1", []string{"pv-several"}},
		{"target=Observation/x&target=Patient/x", nil},
		{"target=Observation/o1,Observation/o2&_id=pv-versioned,pv-absolute", []string{"pv-absolute", "pv-versioned"}},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			resources, _ := walkPages(t, base+"/Provenance?"+tt.query)
			var got []string
			for _, r := range resources {
				got = append(got, r.id)
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("Provenance?%s = %v, want %v", tt.query, got, tt.want)
			}
		})
	}
}

// TestProvenanceSearchByTargetPagesEachMatchOnce pages one match at a time
// through a search of several targets, as the export does with a small
// page size: every match once, in file order, total counting them all.
func TestProvenanceSearchByTargetPagesEachMatchOnce(t *testing.T) {
	base := provenanceServer(t)
	query := url.Values{"target": {"Observation/o2,Patient/x,Observation/o1,Encounter/e1"}, "_count": {"1"}}
	resources, pages := walkPages(t, base+"/Provenance?"+query.Encode())
	var got []string
	for _, r := range resources {
		got = append(got, r.id)
	}
	want := []string{"pv-patient-x", "pv-versioned", "pv-absolute", "pv-absolute-versioned", "pv-several"}
	if !slices.Equal(got, want) {
		t.Errorf("paged matches %v, want %v", got, want)
	}
	if len(pages) != len(want) || *pages[0].Total != len(want) {
		t.Errorf("%d pages, total %d; want %d of each", len(pages), *pages[0].Total, len(want))
	}
}

// TestTargetIsDeclaredOnProvenanceOnly: the export checks the
// CapabilityStatement before it relies on the search, so the server lists
// target as a reference parameter of Provenance and of no type without the
// element, and refuses it there as a strict server does.
func TestTargetIsDeclaredOnProvenanceOnly(t *testing.T) {
	base := provenanceServer(t)
	_, body := doRequest(t, http.MethodGet, base+"/metadata", nil, "")
	var cs capabilityStatement
	if err := json.Unmarshal(body, &cs); err != nil {
		t.Fatal(err)
	}
	declared := map[string]string{}
	for _, r := range cs.Rest[0].Resource {
		for _, p := range r.SearchParam {
			if p.Name == "target" {
				declared[r.Type] = p.Type
			}
		}
	}
	if len(declared) != 1 || declared["Provenance"] != "reference" {
		t.Errorf("target is declared on %v; want on Provenance only, as a reference parameter", declared)
	}
	resp, body := doRequest(t, http.MethodGet, base+"/Observation?target=Patient/x", nil, "")
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("Observation?target: status %d, want 400: %s", resp.StatusCode, body)
	}
	if o := decodeOutcome(t, body); !strings.Contains(o.Issue[0].Diagnostics, `"target"`) {
		t.Errorf("the OperationOutcome does not name target: %s", body)
	}
	resp, body = doRequest(t, http.MethodGet, base+"/Provenance?target=Observation/", nil, "")
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("Provenance?target=Observation/: status %d, want 400: %s", resp.StatusCode, body)
	}
}
