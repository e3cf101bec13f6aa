package httpapi_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/export"
)

// TestDownloadGzipFollowsAcceptEncoding checks that a client asking for gzip
// gets a gzip stream that decompresses to exactly the plain file, that a
// client refusing it (q=0, identity only, no header) gets the plain file
// with its length, and that every answer says it varies by Accept-Encoding.
func TestDownloadGzipFollowsAcceptEncoding(t *testing.T) {
	t.Parallel()
	var file strings.Builder
	for i := range 500 {
		fmt.Fprintf(&file, `{"resourceType":"Patient","id":"p%d","active":true}`+"\n", i)
	}
	tests := []struct {
		name           string
		acceptEncoding []string // header lines
		gzipped        bool
	}{
		{"no header", nil, false},
		{"gzip", []string{"gzip"}, true},
		{"client default list", []string{"gzip, deflate, br, identity"}, true},
		{"x-gzip", []string{"x-gzip"}, true},
		{"upper case with q", []string{"GZIP;q=0.5"}, true},
		{"star", []string{"*"}, true},
		{"gzip refused with q=0", []string{"gzip;q=0"}, false},
		{"gzip q=0 beats star", []string{"*, gzip;q=0"}, false},
		{"identity only", []string{"identity"}, false},
		{"br only", []string{"br"}, false},
		{"identity preferred", []string{"gzip;q=0.5, identity;q=1"}, false},
		{"second header line", []string{"br", "gzip;q=0.8"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.engine.files = map[string]string{testJobID + "/Patient-1.ndjson": file.String()}
			h := hdr()
			for _, v := range tc.acceptEncoding {
				h.Add("Accept-Encoding", v)
			}
			r := b.call("GET", "/jobs/"+testJobID+"/files/Patient-1.ndjson", h, "")
			if r.Code != 200 {
				t.Fatalf("status %d, want 200; body %s", r.Code, r.Body)
			}
			if got := r.Header().Get("Vary"); got != "Accept-Encoding" {
				t.Errorf("Vary %q, want Accept-Encoding", got)
			}
			if ct := r.Header().Get("Content-Type"); ct != "application/fhir+ndjson" {
				t.Errorf("Content-Type %q", ct)
			}
			body := r.Body.Bytes()
			if !tc.gzipped {
				if ce := r.Header().Get("Content-Encoding"); ce != "" {
					t.Errorf("Content-Encoding %q on a plain download", ce)
				}
				if cl := r.Header().Get("Content-Length"); cl != fmt.Sprint(file.Len()) {
					t.Errorf("Content-Length %q, want %d", cl, file.Len())
				}
				if string(body) != file.String() {
					t.Errorf("plain body differs from the file (%d bytes, want %d)", len(body), file.Len())
				}
				return
			}
			if ce := r.Header().Get("Content-Encoding"); ce != "gzip" {
				t.Fatalf("Content-Encoding %q, want gzip", ce)
			}
			if cl := r.Header().Get("Content-Length"); cl != "" {
				t.Errorf("Content-Length %q on a gzip stream (it would be the uncompressed size)", cl)
			}
			zr, err := gzip.NewReader(bytes.NewReader(body))
			if err != nil {
				t.Fatalf("body is not gzip: %v", err)
			}
			plain, err := io.ReadAll(zr)
			if err != nil {
				t.Fatalf("reading the gzip stream: %v", err)
			}
			if string(plain) != file.String() {
				t.Errorf("gzip body decompresses to %d bytes that differ from the %d-byte file", len(plain), file.Len())
			}
			if len(body) >= file.Len() {
				t.Errorf("gzip body is %d bytes, not smaller than the %d-byte file", len(body), file.Len())
			}
		})
	}
}

// TestGzipDownloadAuditCountsBytesSent checks that the audit line of a gzip
// download counts the compressed bytes that went to the client.
func TestGzipDownloadAuditCountsBytesSent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	data := strings.Repeat(`{"resourceType":"Patient","id":"x"}`+"\n", 200)
	b.engine.files = map[string]string{testJobID + "/Patient-1.ndjson": data}
	b.engine.status = completedStatus([]export.OutputFile{{Type: "Patient", Name: "Patient-1.ndjson", Count: 200}}, nil)
	r := b.call("GET", "/jobs/"+testJobID+"/files/Patient-1.ndjson", hdr("Accept-Encoding", "gzip"), "")
	if r.Header().Get("Content-Encoding") != "gzip" {
		t.Fatalf("no gzip answer: %v", r.Header())
	}
	found := false
	for _, l := range b.logs.lines(t) {
		if l["audit"] == true && l["action"] == "download" {
			found = true
			if l["bytes"] != float64(r.Body.Len()) {
				t.Errorf("audit bytes %v, want the %d bytes sent (the file has %d)", l["bytes"], r.Body.Len(), len(data))
			}
		}
	}
	if !found {
		t.Error("no download audit line")
	}
}

// TestGzipDownloadStreams checks that a gzip download reaches the client
// while the file is still being read: the compressed stream is not held
// back until the end.
func TestGzipDownloadStreams(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pr, pw := io.Pipe()
	b.engine.open = func(jobID, name string) (io.ReadCloser, int64, error) { return pr, -1, nil }
	srv := httptest.NewServer(b.handler)
	defer srv.Close()
	defer pw.Close()
	// Data that does not compress, so a megabyte of it must leave the
	// compressor in full blocks.
	rnd := rand.New(rand.NewPCG(1, 2))
	raw := make([]byte, 768<<10)
	for i := range raw {
		raw[i] = byte(rnd.Uint32())
	}
	chunk := []byte(base64.StdEncoding.EncodeToString(raw) + "\n")
	go func() { _, _ = pw.Write(chunk) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/jobs/"+testJobID+"/files/Patient-1.ndjson", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("no response before the file was complete (the handler buffers?): %v", err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("Content-Encoding %q, want gzip", resp.Header.Get("Content-Encoding"))
	}
	zr, err := gzip.NewReader(resp.Body)
	if err != nil {
		t.Fatalf("the gzip header did not arrive before the file was complete: %v", err)
	}
	first := make([]byte, 256<<10)
	if _, err := io.ReadFull(zr, first); err != nil {
		t.Fatalf("the first part did not arrive before the file was complete (the handler buffers?): %v", err)
	}
	if !bytes.Equal(first, chunk[:len(first)]) {
		t.Error("the first part differs from the file")
	}
	go func() { _, _ = pw.Write(chunk); _ = pw.Close() }()
	rest, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("reading the rest: %v", err)
	}
	if got, want := len(first)+len(rest), 2*len(chunk); got != want {
		t.Errorf("decompressed %d bytes, want %d", got, want)
	}
}
