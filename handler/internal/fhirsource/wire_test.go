package fhirsource

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/azfhir/bulkexport/handler/internal/export"
)

// A search of many pages arrives gzipped (the client asks for it, and
// decodes it), and every page reuses one connection.
func TestPagesAreAskedForGzippedAndShareOneConnection(t *testing.T) {
	t.Parallel()
	const pages = 30
	var plain, conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var n int
		fmt.Sscan(r.URL.Query().Get("page"), &n)
		next := ""
		if n+1 < pages {
			next = fmt.Sprintf(`{"relation":"next","url":"http://%s/fhir/Observation?page=%d"},`, r.Host, n+1)
		}
		body := fmt.Sprintf(`{"resourceType":"Bundle","type":"searchset","link":[%s{"relation":"self","url":"x"}],"entry":[`+
			`{"resource":{"resourceType":"Observation","id":"o%d","status":"final","valueString":%q},"search":{"mode":"match"}}]}`,
			next, n, strings.Repeat("x", 5000))
		w.Header().Set("Content-Type", "application/fhir+json")
		if !strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			plain.Add(1)
			_, _ = w.Write([]byte(body))
			return
		}
		w.Header().Set("Content-Encoding", "gzip")
		gz := gzip.NewWriter(w)
		_, _ = gz.Write([]byte(body))
		_ = gz.Close()
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c, err := New(Options{BaseURL: srv.URL + "/fhir"})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	next := srv.URL + "/fhir/Observation?page=0"
	for next != "" {
		next, err = c.Page(context.Background(), next, func(en export.Entry) error {
			var r struct{ ID string }
			if err := json.Unmarshal(en.Resource, &r); err != nil {
				return err
			}
			ids = append(ids, r.ID)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(ids) != pages || ids[0] != "o0" || ids[pages-1] != fmt.Sprintf("o%d", pages-1) {
		t.Fatalf("got %d resources (%v), want one from each of %d pages", len(ids), ids, pages)
	}
	if n := plain.Load(); n != 0 {
		t.Errorf("%d pages were asked for without Accept-Encoding: gzip", n)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for %d pages asked one after another, want 1 reused", n, pages)
	}
}
