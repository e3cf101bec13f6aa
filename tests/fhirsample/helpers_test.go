package fhirsample

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testDataDir is the bundled Synthea data set; tests never read outside the repository.
const testDataDir = "../data/synthea-r4-10"

// newTestServer loads the bundled data set and serves it over HTTP for the test's lifetime.
func newTestServer(t *testing.T, opts Options) (*Server, *httptest.Server) {
	t.Helper()
	srv, err := New(testDataDir, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	return srv, ts
}

// doRequest sends a request and returns the response with its body read.
func doRequest(t *testing.T, method, url string, header http.Header, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatalf("new request %s %s: %v", method, url, err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body of %s %s: %v", method, url, err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != fhirJSON {
		t.Errorf("%s %s: Content-Type %q, want %q", method, url, ct, fhirJSON)
	}
	return resp, data
}

// testBundle is the part of a searchset Bundle the tests look at.
type testBundle struct {
	ResourceType string `json:"resourceType"`
	Type         string `json:"type"`
	Total        *int   `json:"total"`
	Link         []struct {
		Relation string `json:"relation"`
		URL      string `json:"url"`
	} `json:"link"`
	Entry []struct {
		FullURL  string          `json:"fullUrl"`
		Resource json.RawMessage `json:"resource"`
		Search   struct {
			Mode string `json:"mode"`
		} `json:"search"`
	} `json:"entry"`
}

func (b testBundle) link(relation string) string {
	for _, l := range b.Link {
		if l.Relation == relation {
			return l.URL
		}
	}
	return ""
}

// getBundle fetches a search page and checks it is a 200 searchset Bundle with a total.
func getBundle(t *testing.T, url string) testBundle {
	t.Helper()
	resp, body := doRequest(t, http.MethodGet, url, nil, "")
	return decodeBundle(t, resp, body)
}

func decodeBundle(t *testing.T, resp *http.Response, body []byte) testBundle {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: status %d, body %s", resp.Request.URL, resp.StatusCode, body)
	}
	var b testBundle
	if err := json.Unmarshal(body, &b); err != nil {
		t.Fatalf("%s: decode bundle: %v", resp.Request.URL, err)
	}
	if b.ResourceType != "Bundle" || b.Type != "searchset" || b.Total == nil {
		t.Fatalf("%s: not a searchset Bundle with total: %s", resp.Request.URL, body)
	}
	return b
}

// testOutcome is an OperationOutcome.
type testOutcome struct {
	ResourceType string `json:"resourceType"`
	Issue        []struct {
		Severity    string `json:"severity"`
		Code        string `json:"code"`
		Diagnostics string `json:"diagnostics"`
	} `json:"issue"`
}

func decodeOutcome(t *testing.T, body []byte) testOutcome {
	t.Helper()
	var o testOutcome
	if err := json.Unmarshal(body, &o); err != nil {
		t.Fatalf("decode OperationOutcome: %v (%s)", err, body)
	}
	if o.ResourceType != "OperationOutcome" || len(o.Issue) == 0 || o.Issue[0].Severity != "error" {
		t.Fatalf("not an error OperationOutcome: %s", body)
	}
	return o
}

// pagedResource is what a paging walk records of each entry.
type pagedResource struct {
	id          string
	lastUpdated string
}

// walkPages follows next links from firstURL to the end and returns the entries and pages seen.
func walkPages(t *testing.T, firstURL string) (resources []pagedResource, pages []testBundle) {
	t.Helper()
	for url := firstURL; url != ""; {
		page := getBundle(t, url)
		pages = append(pages, page)
		for _, e := range page.Entry {
			var res struct {
				ID   string `json:"id"`
				Meta struct {
					LastUpdated string `json:"lastUpdated"`
				} `json:"meta"`
			}
			if err := json.Unmarshal(e.Resource, &res); err != nil {
				t.Fatalf("decode entry of %s: %v", url, err)
			}
			resources = append(resources, pagedResource{id: res.ID, lastUpdated: res.Meta.LastUpdated})
		}
		url = page.link("next")
		if len(pages) > 10000 {
			t.Fatalf("paging from %s does not end", firstURL)
		}
	}
	return resources, pages
}

// dataLines returns the non-empty lines of a type's NDJSON file in the bundled data set.
func dataLines(t *testing.T, typeName string) [][]byte {
	t.Helper()
	f, err := os.Open(filepath.Join(testDataDir, typeName+".ndjson"))
	if err != nil {
		t.Fatalf("open test data: %v", err)
	}
	defer f.Close()
	var lines [][]byte
	scanner := bufio.NewScanner(f)
	scanner.Buffer(nil, 16<<20)
	for scanner.Scan() {
		if line := bytes.TrimSpace(scanner.Bytes()); len(line) > 0 {
			lines = append(lines, bytes.Clone(line))
		}
	}
	if err := scanner.Err(); err != nil {
		t.Fatalf("read test data: %v", err)
	}
	return lines
}

// dataTypes lists the resource types of the bundled data set.
func dataTypes(t *testing.T) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(testDataDir, "*.ndjson"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("list test data: %v (%d files)", err, len(paths))
	}
	var types []string
	for _, p := range paths {
		types = append(types, strings.TrimSuffix(filepath.Base(p), ".ndjson"))
	}
	return types
}
