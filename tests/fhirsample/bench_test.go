package fhirsample

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkSearchPages pages through every Observation of the bundled data
// set the way the export service does (_sort=_lastUpdated, a _lastUpdated
// bound, 1,000 a page, next links) over HTTP. MB/s counts the Bundle bytes
// served: the sample server's cost per byte, which `make bench` needs below
// the service's.
func BenchmarkSearchPages(b *testing.B) {
	srv, err := New(testDataDir, Options{})
	if err != nil {
		b.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	first := ts.URL + "/fhir/Observation?_count=1000&_sort=_lastUpdated&_lastUpdated=le2030-01-01T00:00:00Z"
	want := srv.Counts()["Observation"]
	b.ResetTimer() // loading is not searching
	var served int64
	b.ReportAllocs()
	for b.Loop() {
		served = 0
		n := 0
		for next := first; next != ""; {
			resp, err := http.Get(next)
			if err != nil {
				b.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK {
				b.Fatalf("%s: %d %v", next, resp.StatusCode, err)
			}
			served += int64(len(body))
			// The client does as little as it can, so that the figure is
			// the server's: it counts the entries by their closing bytes
			// and cuts the next link out of the Bundle's links.
			n += bytes.Count(body, []byte(entrySuffix))
			next = ""
			if i := bytes.Index(body, []byte(`{"relation":"next","url":"`)); i >= 0 {
				rest := body[i+len(`{"relation":"next","url":"`):]
				next = string(rest[:bytes.IndexByte(rest, '"')])
			}
		}
		if n != want {
			b.Fatalf("paged %d Observations, want %d", n, want)
		}
	}
	b.SetBytes(served)
}
