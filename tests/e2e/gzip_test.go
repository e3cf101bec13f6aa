package e2e

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"testing"

	"github.com/azfhir/bulkexport/tests/testproc"
)

// TestGzipDownloadIsThePlainFileCompressed checks every file of an export
// twice: asked with Accept-Encoding: gzip it comes back with
// Content-Encoding: gzip and decompresses to exactly the bytes of the plain
// download; asked without, it comes back plain.
func TestGzipDownloadIsThePlainFileCompressed(t *testing.T) {
	svc := startService(t)
	statusURL, err := svc.client.KickOff(ctx(t), "/$export?_type=Patient,Observation")
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := svc.client.Wait(ctx(t), statusURL)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Output) == 0 {
		t.Fatal("the export has no files to download")
	}
	// Go's transport asks for gzip and decompresses on its own unless told
	// not to; this client shows the bytes as sent.
	raw := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	get := func(url, acceptEncoding string) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx(t), http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if acceptEncoding != "" {
			req.Header.Set("Accept-Encoding", acceptEncoding)
		}
		resp, err := raw.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s (Accept-Encoding %q): %s, %v", url, acceptEncoding, resp.Status, err)
		}
		return resp, body
	}
	for _, f := range m.Output {
		plainResp, plain := get(f.URL, "")
		if ce := plainResp.Header.Get("Content-Encoding"); ce != "" {
			t.Errorf("%s without Accept-Encoding: Content-Encoding %q", f.URL, ce)
		}
		if len(plain) == 0 || !bytes.HasPrefix(plain, []byte(`{"resourceType":"`+f.Type+`"`)) {
			t.Fatalf("%s plain download is not NDJSON of %s: %.80q", f.URL, f.Type, plain)
		}
		gzResp, compressed := get(f.URL, "gzip, deflate, br")
		if ce := gzResp.Header.Get("Content-Encoding"); ce != "gzip" {
			t.Fatalf("%s with Accept-Encoding gzip: Content-Encoding %q", f.URL, ce)
		}
		zr, err := gzip.NewReader(bytes.NewReader(compressed))
		if err != nil {
			t.Fatalf("%s: the gzip download is not gzip: %v", f.URL, err)
		}
		unzipped, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("%s: reading the gzip download: %v", f.URL, err)
		}
		if !bytes.Equal(unzipped, plain) {
			t.Errorf("%s: the gzip download decompresses to %d bytes that differ from the %d-byte plain download", f.URL, len(unzipped), len(plain))
		}
		if len(compressed) >= len(plain) {
			t.Errorf("%s: the gzip download (%d bytes) is not smaller than the plain one (%d)", f.URL, len(compressed), len(plain))
		}
		t.Logf("%s: %d bytes plain, %d gzipped", f.Type, len(plain), len(compressed))
	}
}

// TestSASDownloadIsPlainWhateverTheClientAsks checks what the README
// promises for EXPORT_DOWNLOADS=sas: storage serves the blob as stored,
// plain NDJSON without Content-Encoding, even to a client that asks for
// gzip, so every client can read it.
func TestSASDownloadIsPlainWhateverTheClientAsks(t *testing.T) {
	exportCS, _ := exportAccount(t)
	container := "e2e-gzip-" + testproc.RandomSuffix()
	svc := startService(t, "EXPORT_STORAGE="+exportCS, "EXPORT_DOWNLOADS=sas",
		"EXPORT_CONTAINER="+container, "EXPORT_CONTAINERS="+container)
	t.Cleanup(func() { deleteAzuriteContainer(container) })
	statusURL, err := svc.client.KickOff(ctx(t), "/$export?_type=Patient")
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := svc.client.Wait(ctx(t), statusURL)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Output) == 0 {
		t.Fatal("the export has no files to download")
	}
	raw := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	req, err := http.NewRequestWithContext(ctx(t), http.MethodGet, m.Output[0].URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := raw.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s, %v", m.Output[0].URL, resp.Status, err)
	}
	if ce := resp.Header.Get("Content-Encoding"); ce != "" {
		t.Errorf("SAS download has Content-Encoding %q, want the plain file", ce)
	}
	lines := bytes.Count(body, []byte("\n"))
	if !bytes.HasPrefix(body, []byte(`{"resourceType":"Patient"`)) || m.Output[0].Count == nil || int64(lines) != *m.Output[0].Count {
		t.Errorf("SAS download is not the plain NDJSON of %v Patients (%d lines): %.80q", m.Output[0].Count, lines, body)
	}
}
