package fhirsample

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

// TestPerformerAndAuthorSearches: the export reaches resources in a
// patient's compartment only as performer or author through these searches,
// and learns that it may from the CapabilityStatement.
func TestPerformerAndAuthorSearches(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"Patient.ndjson": `{"resourceType":"Patient","id":"a","meta":{"lastUpdated":"2024-01-01T00:00:00Z"}}` + "\n" +
			`{"resourceType":"Patient","id":"b","meta":{"lastUpdated":"2024-01-01T00:00:00Z"}}` + "\n",
		"Observation.ndjson": `{"resourceType":"Observation","id":"o1","meta":{"lastUpdated":"2024-01-01T00:00:00Z"},"subject":{"reference":"Patient/b"},"performer":[{"reference":"Patient/a"}]}` + "\n" +
			`{"resourceType":"Observation","id":"o2","meta":{"lastUpdated":"2024-01-01T00:00:00Z"},"subject":{"reference":"Patient/a"}}` + "\n",
		"DocumentReference.ndjson": `{"resourceType":"DocumentReference","id":"d1","meta":{"lastUpdated":"2024-01-01T00:00:00Z"},"subject":{"reference":"Patient/b"},"author":[{"reference":"Patient/a"}]}` + "\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := New(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)

	for _, tc := range []struct{ query, wantID string }{
		{"Observation?performer=Patient/a", "o1"},
		{"DocumentReference?author=Patient/a", "d1"},
	} {
		resp, body := doRequest(t, http.MethodGet, ts.URL+"/fhir/"+tc.query, nil, "")
		var b struct {
			Entry []struct {
				Resource struct{ ID string } `json:"resource"`
			} `json:"entry"`
		}
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &b) != nil || len(b.Entry) != 1 || b.Entry[0].Resource.ID != tc.wantID {
			t.Errorf("GET %s: %d %s; want only %s", tc.query, resp.StatusCode, body, tc.wantID)
		}
	}

	_, body := doRequest(t, http.MethodGet, ts.URL+"/fhir/metadata", nil, "")
	var cs capabilityStatement
	if err := json.Unmarshal(body, &cs); err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, r := range cs.Rest[0].Resource {
		for _, p := range r.SearchParam {
			listed[r.Type+"."+p.Name] = true
		}
	}
	for _, want := range []string{"Observation.performer", "DocumentReference.author"} {
		if !listed[want] {
			t.Errorf("CapabilityStatement does not list %s", want)
		}
	}
	if listed["Patient.performer"] {
		t.Errorf("CapabilityStatement lists Patient.performer, which no Patient has")
	}
}
