package azstore

import (
	"context"
	"encoding/xml"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// TestReadURL proves on Azurite what a client holding a download URL can do:
// read that blob without any other credential, and nothing else: not write
// it, not read a sibling, not read it after the URL expired.
func TestReadURL(t *testing.T) {
	a := integration(t)
	ctx := t.Context()
	name := "sas-" + suffix()
	t.Cleanup(func() { _, _ = a.blobs.NewContainerClient(name).Delete(context.Background(), nil) })
	b := a.Blobs()
	if err := b.EnsureContainer(ctx, name); err != nil {
		t.Fatal(err)
	}
	const content = "{\"resourceType\":\"Patient\",\"id\":\"p1\"}\n"
	for _, blob := range []string{"job/Patient-1.ndjson", "job/Patient-2.ndjson"} {
		if err := b.StageBlock(ctx, name, blob, 0, []byte(content)); err != nil {
			t.Fatal(err)
		}
		if _, err := b.CommitBlocks(ctx, name, blob, 1, export.Condition{}); err != nil {
			t.Fatal(err)
		}
	}

	u, err := b.ReadURL(ctx, name, "job/Patient-1.ndjson", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if code, body := send(t, http.MethodGet, u, ""); code != http.StatusOK || body != content {
		t.Fatalf("GET with the URL: %d %q, want 200 and the blob", code, body)
	}
	if code, _ := send(t, http.MethodPut, u, "overwritten\n"); code != http.StatusForbidden {
		t.Errorf("PUT with the URL: %d, want 403", code)
	}
	if code, body := send(t, http.MethodGet, u, ""); code != http.StatusOK || body != content {
		t.Errorf("after the refused PUT: %d %q, want the blob unchanged", code, body)
	}
	sibling := strings.Replace(u, "Patient-1.ndjson", "Patient-2.ndjson", 1)
	if code, _ := send(t, http.MethodGet, sibling, ""); code != http.StatusForbidden {
		t.Errorf("GET of another blob with the URL's signature: %d, want 403", code)
	}
	if code, _ := send(t, http.MethodDelete, u, ""); code != http.StatusForbidden {
		t.Errorf("DELETE with the URL: %d, want 403", code)
	}

	short, err := b.ReadURL(ctx, name, "job/Patient-1.ndjson", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitPast(t, short)
	if code, _ := send(t, http.MethodGet, short, ""); code != http.StatusForbidden {
		t.Errorf("GET with an expired URL: %d, want 403", code)
	}
}

// waitPast waits until the expiry (se) a SAS URL names has passed.
func waitPast(t *testing.T, sasURL string) {
	t.Helper()
	u, err := url.Parse(sasURL)
	if err != nil {
		t.Fatal(err)
	}
	se, err := time.Parse(time.RFC3339, u.Query().Get("se"))
	if err != nil {
		t.Fatalf("the URL has no expiry: %v", err)
	}
	if d := time.Until(se); d > 10*time.Second {
		t.Fatalf("expiry %s is %s away, want a short one", se, d)
	}
	time.Sleep(time.Until(se) + 1100*time.Millisecond)
}

func send(t *testing.T, method, u, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if method == http.MethodPut {
		req.Header.Set("x-ms-blob-type", "BlockBlob")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestReadURLParameters checks the SAS of an HTTPS account signed with the
// account key: read-only, one blob, HTTPS only, expiring after the TTL.
func TestReadURLParameters(t *testing.T) {
	cs := "DefaultEndpointsProtocol=https;AccountName=exportacct;AccountKey=" + testKey + ";EndpointSuffix=core.windows.net"
	b, err := OpenBlobs(BlobOptions{ConnectionString: cs})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 3, 22, 0, 0, 0, time.UTC)
	b.now = func() time.Time { return now }
	got, err := b.ReadURL(t.Context(), "exports", "job1/Patient-1.ndjson", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(got)
	if err != nil {
		t.Fatal(err)
	}
	if u.Scheme != "https" || u.Host != "exportacct.blob.core.windows.net" || u.Path != "/exports/job1/Patient-1.ndjson" {
		t.Errorf("URL %s does not name the blob in the export account", got)
	}
	q := u.Query()
	want := map[string]string{"sp": "r", "sr": "b", "spr": "https", "se": "2026-12-03T22:10:00Z"}
	for k, v := range want {
		if q.Get(k) != v {
			t.Errorf("%s = %q, want %q (URL %s)", k, q.Get(k), v, got)
		}
	}
	if q.Get("sig") == "" || q.Get("st") != "" {
		t.Errorf("URL %s: want a signature and no start time", got)
	}
}

// testKey is a made-up base64 account key.
const testKey = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0wMTIzNDU2Nzg5YWJjZGVm"

// TestDelegationKeyIsCached checks that with a token credential the URL is a
// user-delegation SAS, and that one key serves many URLs until a URL would
// outlive it.
func TestDelegationKeyIsCached(t *testing.T) {
	var mu sync.Mutex
	var asked []string // the Expiry of each key request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("comp") != "userdelegationkey" || r.Method != http.MethodPost {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		var info struct{ Start, Expiry string }
		if err := xml.NewDecoder(r.Body).Decode(&info); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		mu.Lock()
		asked = append(asked, info.Expiry)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/xml")
		io.WriteString(w, `<?xml version="1.0" encoding="utf-8"?><UserDelegationKey>`+
			`<SignedOid>11111111-1111-1111-1111-111111111111</SignedOid><SignedTid>22222222-2222-2222-2222-222222222222</SignedTid>`+
			`<SignedStart>`+info.Start+`</SignedStart><SignedExpiry>`+info.Expiry+`</SignedExpiry>`+
			`<SignedService>b</SignedService><SignedVersion>2025-11-05</SignedVersion><Value>`+testKey+`</Value></UserDelegationKey>`)
	}))
	defer srv.Close()
	b, err := OpenBlobs(BlobOptions{URL: srv.URL + "/", Credential: fakeCredential{}})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 3, 22, 0, 0, 0, time.UTC)
	b.now = func() time.Time { return now }
	b.signer.(*delegationSigner).now = b.now

	for i := range 3 {
		got, err := b.ReadURL(t.Context(), "exports", "job1/Patient-1.ndjson", 10*time.Minute)
		if err != nil {
			t.Fatalf("ReadURL #%d: %v", i+1, err)
		}
		q, _ := url.ParseQuery(got[strings.Index(got, "?")+1:])
		if q.Get("skoid") != "11111111-1111-1111-1111-111111111111" || q.Get("sp") != "r" || q.Get("sr") != "b" || q.Get("sig") == "" {
			t.Fatalf("URL %s is not a read-only user-delegation SAS for one blob", got)
		}
		now = now.Add(5 * time.Minute)
	}
	if len(asked) != 1 {
		t.Fatalf("key requests %v, want one key for three URLs", asked)
	}
	if exp, _ := time.Parse(time.RFC3339, asked[0]); exp.Before(now.Add(10 * time.Minute)) {
		t.Errorf("the key expires at %s, before the URLs it signs", asked[0])
	}
	now = now.Add(2 * time.Hour) // the cached key would end before a new URL
	if _, err := b.ReadURL(t.Context(), "exports", "job1/Patient-1.ndjson", 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	if len(asked) != 2 {
		t.Errorf("key requests %v, want a new key once the cached one would expire first", asked)
	}
}

func TestOpenBlobsOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    BlobOptions
	}{
		{"nothing", BlobOptions{}},
		{"both", BlobOptions{ConnectionString: "UseDevelopmentStorage=true", URL: "https://a.blob.core.windows.net", Credential: fakeCredential{}}},
		{"URL without credential", BlobOptions{URL: "https://a.blob.core.windows.net"}},
	} {
		if _, err := OpenBlobs(tc.o); !fault.Is(err, fault.Invalid) {
			t.Errorf("%s: OpenBlobs = %v, want an invalid error", tc.name, err)
		}
	}
	// A SAS connection string reaches the account but has no key to sign with.
	b, err := OpenBlobs(BlobOptions{ConnectionString: "BlobEndpoint=https://a.blob.core.windows.net;SharedAccessSignature=sv=2025-11-05&sig=x"})
	if err != nil {
		t.Fatal(err)
	}
	if u, err := b.ReadURL(t.Context(), "exports", "j/Patient-1.ndjson", time.Minute); err == nil {
		t.Errorf("ReadURL without an account key = %s, want an error", u)
	}
}
