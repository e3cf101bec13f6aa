package httpapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/auth"
	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/httpapi"
)

// FileURL answers what a SAS signer would, naming the blob and the lifetime
// asked for, and records the call.
func (e *fakeEngine) FileURL(ctx context.Context, job *export.Job, name string, ttl time.Duration) (string, error) {
	e.maybePanic()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.opened = append(e.opened, "url:"+job.ID+"/"+name)
	return "https://exports.blob.example/" + job.Request.Container + "/" + job.ID + "/" + name + "?se=" + url.QueryEscape(ttl.String()) + "&sig=x", nil
}

// TestContainerOutsideTheListIsRefusedBeforeAnything checks that _container
// may name only an EXPORT_CONTAINERS entry, and that a refusal reaches the
// engine not at all (no container, job or source request is made).
func TestContainerOutsideTheListIsRefusedBeforeAnything(t *testing.T) {
	t.Parallel()
	allowTwo := func(o *httpapi.Options) { o.Containers = []string{defaultContainer, "research-exports"} }
	tests := []struct {
		name   string
		opts   func(*httpapi.Options)
		target string
		want   string // the container the engine is asked for; "" for a 400
	}{
		{"default list is the default container", nil, "/$export?_container=" + defaultContainer, defaultContainer},
		{"no _container uses the default", allowTwo, "/$export", defaultContainer},
		{"another listed container", allowTwo, "/$export?_container=research-exports", "research-exports"},
		{"the host's secrets container", allowTwo, "/$export?_container=azure-webjobs-secrets", ""},
		{"the host's leases container", nil, "/$export?_container=azure-webjobs-hosts", ""},
		{"a valid name not in the default list", nil, "/$export?_container=research-exports", ""},
		{"POST body", allowTwo, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var mods []func(*httpapi.Options)
			if tc.opts != nil {
				mods = append(mods, tc.opts)
			}
			b := setup(t, mods...)
			if tc.target == "" {
				body := `{"resourceType":"Parameters","parameter":[{"name":"_container","valueString":"scm-releases"}]}`
				checkOutcome(t, b.call("POST", "/$export", hdr("Content-Type", "application/fhir+json"), body), 400)
			} else if tc.want == "" {
				_, diag := checkOutcome(t, b.call("GET", tc.target, nil, ""), 400)
				if !strings.Contains(diag, "_container") || !strings.Contains(diag, "EXPORT_CONTAINERS") {
					t.Errorf("diagnostics %q do not say that _container is not an allowed destination", diag)
				}
			} else {
				r := b.call("GET", tc.target, nil, "")
				if r.Code != http.StatusAccepted {
					t.Fatalf("status %d, want 202; body %s", r.Code, r.Body)
				}
				if got := b.engine.lastRequest(t).Container; got != tc.want {
					t.Errorf("engine asked to export into %q, want %q", got, tc.want)
				}
				return
			}
			b.engine.mu.Lock()
			defer b.engine.mu.Unlock()
			if len(b.engine.requests) != 0 {
				t.Errorf("the engine got %d kick-offs for a refused container", len(b.engine.requests))
			}
		})
	}
}

// TestSASManifest checks that in sas mode each manifest request gets URLs
// minted for that request, for every output and error file, with the
// configured lifetime, and no access token required.
func TestSASManifest(t *testing.T) {
	t.Parallel()
	files := []export.OutputFile{
		{Type: "Patient", Name: "Patient-1.ndjson", Count: 2},
		{Type: "Observation", Name: "Observation-1.ndjson", Count: 7},
	}
	errs := []export.OutputFile{{Type: "OperationOutcome", Name: "OperationOutcome-1.ndjson", Count: 1}}
	b := setup(t, func(o *httpapi.Options) { o.Downloads, o.SASTTL = httpapi.DownloadsSAS, 90*time.Second })
	st := completedStatus(files, errs)
	st.Job.Request.Container = "research-exports"
	b.engine.status = st
	var m struct {
		RequiresAccessToken *bool `json:"requiresAccessToken"`
		Output, Error       []struct{ Type, URL string }
	}
	for poll := 1; poll <= 2; poll++ {
		rec := b.call("GET", "/jobs/"+st.Job.ID, nil, "")
		if rec.Code != http.StatusOK {
			t.Fatalf("status %d, want 200; body %s", rec.Code, rec.Body)
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		if m.RequiresAccessToken == nil || *m.RequiresAccessToken {
			t.Errorf("requiresAccessToken %v, want false: SAS URLs need no token", m.RequiresAccessToken)
		}
		want := []string{"Patient-1.ndjson", "Observation-1.ndjson", "OperationOutcome-1.ndjson"}
		got := append(m.Output, m.Error...)
		if len(got) != len(want) {
			t.Fatalf("manifest has %d files, want %d", len(got), len(want))
		}
		for i, f := range got {
			prefix := "https://exports.blob.example/research-exports/" + st.Job.ID + "/" + want[i] + "?se=1m30s&"
			if !strings.HasPrefix(f.URL, prefix) {
				t.Errorf("file %d URL %s, want the signed URL of %s valid for 90s", i, f.URL, want[i])
			}
		}
		b.engine.mu.Lock()
		signed := len(b.engine.opened)
		b.engine.mu.Unlock()
		if signed != poll*len(want) {
			t.Errorf("after manifest request %d the engine signed %d URLs, want %d: URLs are minted per request", poll, signed, poll*len(want))
		}
	}
}

// TestProxyManifestNamesTheAPI is the contrast: without sas the URLs are
// this API's file routes and nothing is signed.
func TestProxyManifestNamesTheAPI(t *testing.T) {
	t.Parallel()
	b := setup(t)
	st := completedStatus([]export.OutputFile{{Type: "Patient", Name: "Patient-1.ndjson", Count: 2}}, nil)
	b.engine.status = st
	rec := b.call("GET", "/jobs/"+st.Job.ID, nil, "")
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d; body %s", rec.Code, rec.Body)
	}
	want := "http://example.com/jobs/" + st.Job.ID + "/files/Patient-1.ndjson"
	if !strings.Contains(rec.Body.String(), `"url":"`+want+`"`) {
		t.Errorf("manifest %s does not name %s", rec.Body, want)
	}
	if len(b.engine.opened) != 0 {
		t.Errorf("proxy mode signed URLs: %v", b.engine.opened)
	}
}

func TestDownloadOptionsValidate(t *testing.T) {
	t.Parallel()
	none, err := auth.New(auth.Config{Mode: auth.ModeNone})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		opts httpapi.Options
		ok   bool
	}{
		{httpapi.Options{Downloads: "sas", SASTTL: time.Minute}, true},
		{httpapi.Options{Downloads: "direct"}, false},
		{httpapi.Options{Downloads: "sas", SASTTL: -time.Second}, false},
		{httpapi.Options{DefaultContainer: "exports", Containers: []string{"exports", "more"}}, true},
		{httpapi.Options{DefaultContainer: "exports", Containers: []string{"more"}}, false},
		{httpapi.Options{Containers: []string{"Bad_Name"}}, false},
	} {
		tc.opts.Auth = none
		if err := tc.opts.Validate(); (err == nil) != tc.ok {
			t.Errorf("Validate(%+v) = %v, want ok=%v", tc.opts, err, tc.ok)
		}
	}
}
