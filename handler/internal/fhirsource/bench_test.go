package fhirsource

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/azfhir/bulkexport/handler/internal/export"
)

// benchBundle builds a searchset Bundle of about 5 MB from the Synthea
// Observations in tests/data (or from synthesized ones when they are absent)
// and returns it with its number of entries.
func benchBundle(b *testing.B) ([]byte, int) {
	b.Helper()
	const target = 5 << 20
	var resources [][]byte
	if f, err := os.Open(filepath.Join("..", "..", "..", "tests", "data", "synthea-r4-10", "Observation.ndjson")); err == nil {
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			if line := bytes.TrimSpace(sc.Bytes()); len(line) > 0 {
				resources = append(resources, bytes.Clone(line))
			}
		}
		_ = f.Close()
		if err := sc.Err(); err != nil {
			b.Fatal(err)
		}
	}
	if len(resources) == 0 {
		for i := range 1000 {
			resources = append(resources, fmt.Appendf(nil, `{"resourceType":"Observation","id":"obs-%d","meta":{"lastUpdated":"2024-03-13T12:22:38.852Z"},"status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8302-2","display":"Body Height"}],"text":"Body Height"},"subject":{"reference":"Patient/p-%d"},"effectiveDateTime":"2011-02-02T16:30:49-05:00","valueQuantity":{"value":%d.2,"unit":"cm","system":"http://unitsofmeasure.org","code":"cm"}}`, i, i%50, 150+i%50))
		}
	}
	var buf bytes.Buffer
	buf.WriteString(`{"resourceType":"Bundle","type":"searchset","link":[{"relation":"self","url":"http://source/fhir/Observation?_count=5000"}],"entry":[`)
	n := 0
	for buf.Len() < target {
		if n > 0 {
			buf.WriteByte(',')
		}
		r := resources[n%len(resources)]
		fmt.Fprintf(&buf, `{"fullUrl":"http://source/fhir/Observation/%d","resource":%s,"search":{"mode":"match"}}`, n, r)
		n++
	}
	buf.WriteString(`],"link":[{"relation":"next","url":"http://source/fhir/Observation?_count=5000&ct=next"}]}`)
	return buf.Bytes(), n
}

// BenchmarkPage measures the throughput of Page over a realistic ~5 MB
// Bundle: "decode" is the streaming decoder alone (it validates and compacts
// every resource, the engine's whole per-byte JSON work), "http" the whole
// call against a local httptest source, and "jsonCompact" json.Compact of the
// same bytes in memory: the floor the issue names, one pass with encoding/json.
func BenchmarkPage(b *testing.B) {
	bundle, entries := benchBundle(b)
	b.Run("jsonCompact", func(b *testing.B) {
		var out bytes.Buffer
		b.SetBytes(int64(len(bundle)))
		b.ReportAllocs()
		for b.Loop() {
			out.Reset()
			if err := json.Compact(&out, bundle); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode", func(b *testing.B) {
		b.SetBytes(int64(len(bundle)))
		b.ReportAllocs()
		for b.Loop() {
			n, err := decodePage(bytes.NewReader(bundle), func(string) error { return nil }, func(export.Entry) error { return nil })
			if err != nil || n != entries {
				b.Fatalf("decoded %d entries, %v; want %d", n, err, entries)
			}
		}
	})
	b.Run("http", func(b *testing.B) {
		var page []byte
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/fhir+json")
			_, _ = w.Write(page)
		}))
		defer srv.Close()
		page = bytes.ReplaceAll(bundle, []byte("http://source"), []byte(srv.URL))
		c, err := New(Options{BaseURL: srv.URL + "/fhir"})
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		b.SetBytes(int64(len(page)))
		b.ReportAllocs()
		for b.Loop() {
			n := 0
			next, err := c.Page(ctx, srv.URL+"/fhir/Observation", func(export.Entry) error { n++; return nil })
			if err != nil || n != entries || next == "" {
				b.Fatalf("visited %d entries, next %q, %v; want %d and a next link", n, next, err, entries)
			}
		}
	})
}
