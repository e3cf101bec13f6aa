package fhirsample

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// historyBundle is the part of a history Bundle the tests look at.
type historyBundle struct {
	ResourceType string `json:"resourceType"`
	Type         string `json:"type"`
	Total        int    `json:"total"`
	Link         []struct {
		Relation string `json:"relation"`
		URL      string `json:"url"`
	} `json:"link"`
	Entry []struct {
		Resource json.RawMessage `json:"resource"`
		Request  struct{ Method, URL string }
		Response struct{ LastModified string }
	} `json:"entry"`
}

// walkHistory follows next links from u and returns the entries as
// "METHOD Type/id instant", and the number of pages.
func walkHistory(t *testing.T, u string) (entries []string, pages int) {
	t.Helper()
	for u != "" {
		resp, body := doRequest(t, http.MethodGet, u, nil, "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %s", u, resp.StatusCode, body)
		}
		var b historyBundle
		if err := json.Unmarshal(body, &b); err != nil || b.ResourceType != "Bundle" || b.Type != "history" {
			t.Fatalf("GET %s: not a history Bundle (%v): %.200s", u, err, body)
		}
		pages++
		for _, e := range b.Entry {
			if (e.Request.Method == "DELETE") != (len(e.Resource) == 0) {
				t.Errorf("entry %s %s: a DELETE entry has no resource and every other entry has one", e.Request.Method, e.Request.URL)
			}
			entries = append(entries, e.Request.Method+" "+e.Request.URL+" "+e.Response.LastModified)
		}
		u = ""
		for _, l := range b.Link {
			if l.Relation == "next" {
				u = l.URL
			}
		}
	}
	return entries, pages
}

type sampleObs struct {
	id          string
	lastUpdated time.Time
}

func observations(t *testing.T, n int) []sampleObs {
	t.Helper()
	var out []sampleObs
	for _, line := range dataLines(t, "Observation")[:n] {
		var r struct {
			ID   string
			Meta struct{ LastUpdated time.Time }
		}
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, sampleObs{r.ID, r.Meta.LastUpdated})
	}
	return out
}

func TestDeletionsAreGoneFromSearchAndInTheHistoryNewestFirst(t *testing.T) {
	obs := observations(t, 2)
	gone, recreated := obs[0], obs[1]
	deletedAt := gone.lastUpdated.Add(time.Hour)
	recreatedDeletedAt := recreated.lastUpdated.Add(-time.Hour)
	neverLoadedAt := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	_, ts := newTestServer(t, Options{Deletions: []Deletion{
		{Type: "Observation", ID: gone.id, At: deletedAt},
		{Type: "Observation", ID: recreated.id, At: recreatedDeletedAt},
		{Type: "Observation", ID: "never-loaded", At: neverLoadedAt},
	}})
	base := ts.URL + "/fhir"

	if b := getBundle(t, base+"/Observation?_id="+gone.id+","+recreated.id); *b.Total != 1 || !strings.Contains(string(b.Entry[0].Resource), recreated.id) {
		t.Errorf("search for both ids found %d; want only the re-created one", *b.Total)
	}
	if resp, _ := doRequest(t, http.MethodGet, base+"/Observation/"+gone.id, nil, ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("read of a deleted resource: %d, want 404", resp.StatusCode)
	}

	// The type history since the earliest of the three instants, 100 a page.
	since := recreated.lastUpdated
	if recreatedDeletedAt.Before(since) {
		since = recreatedDeletedAt
	}
	if deletedAt.Before(since) {
		since = deletedAt
	}
	entries, pages := walkHistory(t, base+"/Observation/_history?_count=100&_since="+since.UTC().Format(time.RFC3339Nano))
	if pages < 2 {
		t.Errorf("%d pages of 100; want the history paged", pages)
	}
	var deletes []string
	var instants []time.Time
	for _, e := range entries {
		f := strings.Fields(e)
		at, err := time.Parse(time.RFC3339Nano, f[2])
		if err != nil {
			t.Fatalf("entry %q: lastModified: %v", e, err)
		}
		if at.Before(since) {
			t.Errorf("entry %q is before _since %s", e, since)
		}
		instants = append(instants, at)
		if f[0] == "DELETE" {
			deletes = append(deletes, f[1]+" "+at.UTC().Format(time.RFC3339Nano))
		}
	}
	if !slices.IsSortedFunc(instants, func(a, b time.Time) int { return b.Compare(a) }) {
		t.Errorf("history not newest first: %v", entries)
	}
	wantDeletes := []string{
		"Observation/never-loaded " + neverLoadedAt.Format(time.RFC3339Nano),
		"Observation/" + gone.id + " " + deletedAt.UTC().Format(time.RFC3339Nano),
		"Observation/" + recreated.id + " " + recreatedDeletedAt.UTC().Format(time.RFC3339Nano),
	}
	slices.SortFunc(wantDeletes, func(a, b string) int { return strings.Compare(strings.Fields(b)[1], strings.Fields(a)[1]) })
	if !slices.Equal(deletes, wantDeletes) {
		t.Errorf("DELETE entries %v, want %v", deletes, wantDeletes)
	}

	// The re-created resource's own history: the current version, then the deletion.
	entries, _ = walkHistory(t, base+"/Observation/"+recreated.id+"/_history?_since="+recreatedDeletedAt.UTC().Format(time.RFC3339Nano))
	want := []string{
		"PUT Observation/" + recreated.id + " " + recreated.lastUpdated.UTC().Format(time.RFC3339Nano),
		"DELETE Observation/" + recreated.id + " " + recreatedDeletedAt.UTC().Format(time.RFC3339Nano),
	}
	if !slices.Equal(entries, want) {
		t.Errorf("instance history %v, want %v", entries, want)
	}
}

func TestHistoryIsDeclaredAndRefusedWithNoHistory(t *testing.T) {
	for _, noHistory := range []bool{false, true} {
		_, ts := newTestServer(t, Options{NoHistory: noHistory})
		_, body := doRequest(t, http.MethodGet, ts.URL+"/fhir/metadata", nil, "")
		var cs capabilityStatement
		if err := json.Unmarshal(body, &cs); err != nil {
			t.Fatal(err)
		}
		for _, r := range cs.Rest[0].Resource {
			declared := slices.Contains(r.Interaction, capabilityInteraction{Code: "history-type"})
			if declared == noHistory {
				t.Errorf("NoHistory %v: %s declares history-type: %v", noHistory, r.Type, declared)
			}
		}
		resp, _ := doRequest(t, http.MethodGet, ts.URL+"/fhir/Patient/_history", nil, "")
		if want := map[bool]int{false: http.StatusOK, true: http.StatusNotFound}[noHistory]; resp.StatusCode != want {
			t.Errorf("NoHistory %v: GET Patient/_history answered %d, want %d", noHistory, resp.StatusCode, want)
		}
	}
	_, ts := newTestServer(t, Options{})
	if resp, body := doRequest(t, http.MethodGet, ts.URL+"/fhir/Patient/_history?_at=2024", nil, ""); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("an unknown history parameter answered %d %s, want 400", resp.StatusCode, body)
	}
}

func TestParseDeletions(t *testing.T) {
	got, err := ParseDeletions(strings.NewReader("# deleted in the e2e tests\n\nPatient/p-1 2024-06-01T10:00:00.5Z\n"))
	want := []Deletion{{Type: "Patient", ID: "p-1", At: time.Date(2024, 6, 1, 10, 0, 0, 5e8, time.UTC)}}
	if err != nil || len(got) != 1 || got[0].Type != want[0].Type || got[0].ID != want[0].ID || !got[0].At.Equal(want[0].At) {
		t.Errorf("ParseDeletions = %+v, %v; want %+v", got, err, want)
	}
	for _, bad := range []string{"Patient/p-1", "Patient 2024-06-01T10:00:00Z", "patient/p-1 2024-06-01T10:00:00Z", "Patient/p-1 yesterday"} {
		if _, err := ParseDeletions(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseDeletions(%q) accepted it", bad)
		}
	}
	if _, err := New(testDataDir, Options{Deletions: []Deletion{{Type: "Nothing", ID: "x", At: time.Now()}}}); err == nil {
		t.Error("New accepted a deletion of a type that is not loaded")
	}
}
