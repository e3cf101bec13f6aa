package bulkclient

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func TestPercentReadsTheLeadingIntegerAsTheSMARTClientDoes(t *testing.T) {
	for header, want := range map[string]int{
		"43% (16,531 of 38,483 resources)": 43,
		"16531 of 38483 resources":         16531, // the old header: read as 16531%
		"  7% complete":                    7,
		"12.5%":                            12,
		"+5":                               5,
		"-3%":                              -3,
		"0% (planning the export)":         0,
	} {
		if got, ok := Percent(header); !ok || got != want {
			t.Errorf("Percent(%q) = %d, %v; want %d", header, got, ok, want)
		}
	}
	for _, header := range []string{"", "in progress", "% done", "- 5"} {
		if got, ok := Percent(header); ok {
			t.Errorf("Percent(%q) = %d, want no percentage", header, got)
		}
	}
}

// TestWaitRefusesAProgressThatIsNotARunningPercentage: a running export whose
// X-Progress a percentage-reading client would take as done, or as nothing,
// fails the wait.
func TestWaitRefusesAProgressThatIsNotARunningPercentage(t *testing.T) {
	for _, tc := range []struct {
		progress string
		ok       bool
	}{
		{"43% (16,531 of 38,483 resources)", true},
		{"99% (10 of 10 resources)", true},
		{"100% (10 of 10 resources)", false},
		{"16531 of 38483 resources", false},
		{"", false},
		{"in progress", false},
	} {
		t.Run(tc.progress, func(t *testing.T) {
			var polls atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if polls.Add(1) == 1 {
					w.Header().Set("Retry-After", "1")
					w.Header().Set("X-Progress", tc.progress)
					w.WriteHeader(http.StatusAccepted)
					return
				}
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprint(w, `{"transactionTime":"2024-03-01T00:00:00Z","request":"x","requiresAccessToken":false,"output":[],"error":[]}`)
			}))
			defer srv.Close()
			var seen []int
			c := &Client{Base: srv.URL, Progress: func(p int, _ string) { seen = append(seen, p) }}
			_, _, err := c.Wait(context.Background(), srv.URL)
			if tc.ok && (err != nil || len(seen) != 1) {
				t.Errorf("err %v, progress seen %v", err, seen)
			}
			if !tc.ok && (err == nil || !strings.Contains(err.Error(), "X-Progress")) {
				t.Errorf("err %v, want the X-Progress refused", err)
			}
		})
	}
}

// pagedServer is an export server whose status answers come from manifest
// (by request URI and how often it was asked); its kick-off answers
// /jobs/1 and its files are served from files. It records every request in
// order.
type pagedServer struct {
	*httptest.Server
	mu       sync.Mutex
	log      []string
	polls    map[string]int
	files    map[string]string // path -> content
	manifest func(base, path string, poll int) (int, string)
}

func newPagedServer(t *testing.T, files map[string]string, manifest func(base, path string, poll int) (int, string)) *pagedServer {
	s := &pagedServer{polls: map[string]int{}, files: files, manifest: manifest}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.log = append(s.log, r.URL.RequestURI())
		s.polls[r.URL.RequestURI()]++
		n := s.polls[r.URL.RequestURI()]
		s.mu.Unlock()
		if body, ok := s.files[r.URL.Path]; ok {
			w.Header().Set("Content-Type", "application/fhir+ndjson")
			fmt.Fprint(w, body)
			return
		}
		if r.URL.Path == "/$export" {
			w.Header().Set("Content-Location", s.URL+"/jobs/1")
			w.WriteHeader(http.StatusAccepted)
			return
		}
		code, body := s.manifest(s.URL, r.URL.RequestURI(), n)
		w.Header().Set("Retry-After", "1")
		w.Header().Set("X-Progress", "50% (running)")
		if body != "" {
			w.Header().Set("Content-Type", "application/json")
		}
		w.WriteHeader(code)
		fmt.Fprint(w, body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *pagedServer) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.log)
}

func manifestJSON(base string, output, deleted, errs []string, next string) string {
	list := func(typ string, names []string) string {
		var items []string
		for _, n := range names {
			items = append(items, fmt.Sprintf(`{"type":%q,"url":"%s/files/%s","count":1}`, typ, base, n))
		}
		return "[" + strings.Join(items, ",") + "]"
	}
	out := `{"transactionTime":"2024-03-01T00:00:00Z","request":"x","requiresAccessToken":false,"output":` + list("Patient", output) +
		`,"deleted":` + list("Bundle", deleted) + `,"error":` + list("OperationOutcome", errs)
	if next != "" {
		out += fmt.Sprintf(`,"link":[{"relation":"next","url":"%s%s"}]`, base, next)
	}
	return out + "}"
}

var pagedFiles = map[string]string{
	"/files/Patient-1.ndjson":           `{"resourceType":"Patient","id":"a"}` + "\n",
	"/files/Patient-2.ndjson":           `{"resourceType":"Patient","id":"b"}` + "\n",
	"/files/Patient-deleted-1.ndjson":   `{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"Patient/c"}}]}` + "\n",
	"/files/Patient-errors-1.ndjson":    `{"resourceType":"OperationOutcome","issue":[]}` + "\n",
	"/files/Observation-deleted.ndjson": `{"resourceType":"Observation","id":"x"}` + "\n",
}

// TestExportDownloadsPartialManifestsWhileTheExportRuns: the files of a 202
// page are downloaded before the export completes, the pages are followed
// by their next links, a 202 manifest without a next link waits (as the
// SMART client does), and deleted and error files land apart from output.
func TestExportDownloadsPartialManifestsWhileTheExportRuns(t *testing.T) {
	t.Parallel()
	srv := newPagedServer(t, pagedFiles, func(base, path string, poll int) (int, string) {
		switch {
		case path == "/jobs/1" && poll == 1:
			return http.StatusAccepted, manifestJSON(base, []string{"Patient-1.ndjson"}, nil, nil, "") // not yet linked: wait
		case path == "/jobs/1":
			return http.StatusAccepted, manifestJSON(base, []string{"Patient-1.ndjson"}, nil, nil, "/jobs/1?page=2")
		case path == "/jobs/1?page=2" && poll == 1:
			return http.StatusAccepted, ""
		case path == "/jobs/1?page=2":
			return http.StatusOK, manifestJSON(base, []string{"Patient-2.ndjson"}, []string{"Patient-deleted-1.ndjson"}, []string{"Patient-errors-1.ndjson"}, "")
		}
		return http.StatusNotFound, ""
	})
	c := &Client{Base: srv.URL}
	res, err := c.Export(context.Background(), "/$export?allowPartialManifests=true")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Pages) != 2 || res.Pages[0].Status != http.StatusAccepted || res.Pages[1].Status != http.StatusOK {
		t.Fatalf("pages %+v, want a 202 page then a 200 page", res.Pages)
	}
	if len(res.Resources["Patient"]) != 2 || len(res.Deleted) != 1 || len(res.Errors) != 1 || res.Early != 1 {
		t.Errorf("patients %d, deleted %d, errors %d, early %d; want 2, 1, 1, 1", len(res.Resources["Patient"]), len(res.Deleted), len(res.Errors), res.Early)
	}
	if len(res.Manifest.Output) != 2 || len(res.Manifest.Deleted) != 1 || len(res.Manifest.Error) != 1 {
		t.Errorf("the union manifest %+v", res.Manifest)
	}
	reqs := srv.requests()
	first, final := slices.Index(reqs, "/files/Patient-1.ndjson"), slices.Index(reqs, "/jobs/1?page=2")
	if first < 0 || final < 0 || first > final {
		t.Errorf("requests %q: the partial page's file was not fetched before the export completed", reqs)
	}
	if n := strings.Count(strings.Join(reqs, " "), "/jobs/1 "); n != 2 {
		t.Errorf("the polling URL was asked %d times, want 2 (a 202 manifest without a link is polled again)", n)
	}
}

// TestFollowRefusesAFileListedTwice: pages that list a file again would make
// a client import it twice.
func TestFollowRefusesAFileListedTwice(t *testing.T) {
	t.Parallel()
	srv := newPagedServer(t, pagedFiles, func(base, path string, poll int) (int, string) {
		if path == "/jobs/1" {
			return http.StatusAccepted, manifestJSON(base, []string{"Patient-1.ndjson"}, nil, nil, "/jobs/1?page=2")
		}
		return http.StatusOK, manifestJSON(base, []string{"Patient-1.ndjson", "Patient-2.ndjson"}, nil, nil, "")
	})
	c := &Client{Base: srv.URL}
	_, _, err := c.Wait(context.Background(), srv.URL+"/jobs/1")
	if err == nil || !strings.Contains(err.Error(), "Patient-1.ndjson is listed by page") {
		t.Errorf("err %v, want the repeated file refused", err)
	}
}

// TestDownloadAllChecksDeletedAndErrorFiles: deleted files must be Bundles
// and error files OperationOutcomes, as the manifest says and the IG wants.
func TestDownloadAllChecksDeletedAndErrorFiles(t *testing.T) {
	t.Parallel()
	srv := newPagedServer(t, pagedFiles, func(string, string, int) (int, string) { return http.StatusNotFound, "" })
	c := &Client{Base: srv.URL}
	file := func(typ, name string) ManifestFile { return ManifestFile{Type: typ, URL: srv.URL + "/files/" + name} }
	for _, tc := range []struct {
		name string
		m    Manifest
		want string
	}{
		{"deleted file of another type", Manifest{Deleted: []ManifestFile{file("Patient", "Patient-1.ndjson")}}, "hold Bundles"},
		{"deleted file holding a resource", Manifest{Deleted: []ManifestFile{file("Bundle", "Observation-deleted.ndjson")}}, "is a Observation in a Bundle file"},
		{"error file holding a resource", Manifest{Error: []ManifestFile{file("OperationOutcome", "Patient-1.ndjson")}}, "is a Patient in a OperationOutcome file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := c.DownloadAll(context.Background(), tc.m, &Result{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err %v, want %q", err, tc.want)
			}
		})
	}
	res := &Result{}
	m := Manifest{Deleted: []ManifestFile{file("Bundle", "Patient-deleted-1.ndjson")}, Error: []ManifestFile{file("OperationOutcome", "Patient-errors-1.ndjson")}}
	if err := c.DownloadAll(context.Background(), m, res); err != nil || len(res.Deleted) != 1 || len(res.Errors) != 1 || len(res.Resources) != 0 {
		t.Errorf("err %v, deleted %d, errors %d, output types %d; want 1, 1, 0", err, len(res.Deleted), len(res.Errors), len(res.Resources))
	}
}

// TestWaitKeepsEmptyListsApartFromMissingOnes: the manifest Wait returns
// says whether the server sent "deleted": [] or no deleted key at all,
// which clients that crash on a missing list care about.
func TestWaitKeepsEmptyListsApartFromMissingOnes(t *testing.T) {
	t.Parallel()
	for body, wantDeleted := range map[string]bool{
		`{"transactionTime":"t","request":"x","requiresAccessToken":false,"output":[],"deleted":[],"error":[]}`: true,
		`{"transactionTime":"t","request":"x","requiresAccessToken":false,"output":[],"error":[]}`:              false,
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, body)
		}))
		m, _, err := (&Client{Base: srv.URL}).Wait(context.Background(), srv.URL)
		srv.Close()
		if err != nil || (m.Deleted != nil) != wantDeleted || m.Output == nil || m.Error == nil {
			t.Errorf("%s: err %v, deleted %v output %v error %v", body, err, m.Deleted, m.Output, m.Error)
		}
	}
}
