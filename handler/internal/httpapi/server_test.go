package httpapi_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/httpapi"
)

func TestRouting(t *testing.T) {
	t.Parallel()
	tests := []struct {
		method, target string
		want           int
		allow          string
	}{
		{"GET", "/nope", 404, ""},
		{"GET", "/Patient", 404, ""},
		{"GET", "/Patient/$export/", 404, ""},
		{"GET", "/Observation/$export", 404, ""},
		{"GET", "/Group/$export", 404, ""},
		{"GET", "/jobs", 404, ""},
		{"GET", "/jobs/", 404, ""},
		{"GET", "/jobs/j1/files", 404, ""},
		{"GET", "/jobs/j1/files/", 404, ""},
		{"GET", "/$EXPORT", 404, ""},
		{"PUT", "/$export", 405, "GET, POST"},
		{"DELETE", "/Patient/$export", 405, "GET, POST"},
		{"PATCH", "/Group/g1/%24export", 405, "GET, POST"},
		{"POST", "/jobs/j1", 405, "GET, DELETE"},
		{"DELETE", "/jobs/j1/files/Patient-1.ndjson", 405, "GET"},
		{"POST", "/metadata", 405, "GET, HEAD"},
		{"POST", "/", 405, "GET, HEAD"},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.target, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			rec := b.call(tc.method, tc.target, nil, "")
			code, _ := checkOutcome(t, rec, tc.want)
			if got := rec.Header().Get("Allow"); got != tc.allow {
				t.Errorf("Allow = %q, want %q", got, tc.allow)
			}
			if tc.want == 404 && code != "not-found" {
				t.Errorf("code = %q, want not-found", code)
			}
		})
	}
}

func TestReadinessProbe(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for range 3 {
		if rec := b.call("GET", "/", hdr("X-Azure-Functions-InvocationId", "probe"), ""); rec.Code != http.StatusOK {
			t.Fatalf("GET / = %d, want 200", rec.Code)
		}
	}
	if rec := b.call("HEAD", "/", nil, ""); rec.Code != http.StatusOK {
		t.Fatalf("HEAD / = %d, want 200", rec.Code)
	}
	if lines := b.logs.lines(t); len(lines) != 0 {
		t.Errorf("GET / was logged: %v", lines)
	}
}

func TestMetadata(t *testing.T) {
	t.Parallel()
	b := setup(t, trustForwarded)
	rec := b.call("GET", "/metadata", hdr("X-Forwarded-Proto", "https", "X-Forwarded-Host", "fhir.example.org"), "")
	if rec.Code != http.StatusOK {
		t.Fatalf("status = %d; body %s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/fhir+json") {
		t.Errorf("Content-Type = %q", ct)
	}
	var cs struct {
		ResourceType   string   `json:"resourceType"`
		Status         string   `json:"status"`
		Date           string   `json:"date"`
		Kind           string   `json:"kind"`
		FHIRVersion    string   `json:"fhirVersion"`
		Format         []string `json:"format"`
		Instantiates   []string `json:"instantiates"`
		Software       struct{ Name, Version string }
		Implementation struct{ Description, URL string }
		Rest           []struct {
			Mode      string
			Operation []struct{ Name, Definition string }
			Resource  []struct {
				Type      string
				Operation []struct{ Name, Definition string }
			}
		}
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &cs); err != nil {
		t.Fatal(err)
	}
	check := func(what, got, want string) {
		t.Helper()
		if got != want {
			t.Errorf("%s = %q, want %q", what, got, want)
		}
	}
	check("resourceType", cs.ResourceType, "CapabilityStatement")
	check("status", cs.Status, "active")
	check("kind", cs.Kind, "instance")
	check("fhirVersion", cs.FHIRVersion, "4.0.1")
	check("format", strings.Join(cs.Format, ","), "json")
	check("instantiates", strings.Join(cs.Instantiates, ","), "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data")
	check("implementation.url", cs.Implementation.URL, "https://fhir.example.org")
	check("software.version", cs.Software.Version, "1.2.3")
	if cs.Date == "" || cs.Implementation.Description == "" || cs.Software.Name == "" {
		t.Errorf("date, implementation.description or software.name missing: %s", rec.Body)
	}
	if len(cs.Rest) != 1 || cs.Rest[0].Mode != "server" {
		t.Fatalf("rest = %+v, want one server entry", cs.Rest)
	}
	ops := map[string]string{}
	for _, o := range cs.Rest[0].Operation {
		ops["system "+o.Name] = o.Definition
	}
	for _, r := range cs.Rest[0].Resource {
		for _, o := range r.Operation {
			ops[r.Type+" "+o.Name] = o.Definition
		}
	}
	want := map[string]string{
		"system export":  "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
		"Patient export": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
		"Group export":   "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
	}
	if len(ops) != len(want) {
		t.Errorf("operations = %v, want %v", ops, want)
	}
	for k, v := range want {
		check(k, ops[k], v)
	}
}

func TestPanicBecomesOperationOutcome(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ method, target string }{
		{"GET", "/$export"},
		{"POST", "/Patient/$export?_type=Patient"},
		{"GET", "/jobs/01900000000000000000000000010000000000000000"},
		{"DELETE", "/jobs/01900000000000000000000000010000000000000000"},
		{"GET", "/jobs/01900000000000000000000000010000000000000000/files/Patient-1.ndjson"},
	} {
		t.Run(tc.method+" "+tc.target, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.engine.panicMsg = "boom"
			body := ""
			h := http.Header{}
			if tc.method == "POST" {
				body = `{"resourceType":"Parameters"}`
				h.Set("Content-Type", fhirJSON)
			}
			rec := b.call(tc.method, tc.target, h, body)
			code, diag := checkOutcome(t, rec, http.StatusInternalServerError)
			if code != "exception" || strings.Contains(diag, "boom") {
				t.Errorf("code %q diagnostics %q: want exception, without the panic value", code, diag)
			}
			var sawPanic, sawAccess bool
			for _, l := range b.logs.lines(t) {
				if l["panic"] == "boom" && l["stack"] != "" {
					sawPanic = true
				}
				if l["message"] == "request" && l["status"] == float64(500) {
					sawAccess = true
				}
			}
			if !sawPanic || !sawAccess {
				t.Errorf("logs lack the panic (%v) or the 500 access line (%v)", sawPanic, sawAccess)
			}
		})
	}
	t.Run("through a real server", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.engine.panicMsg = "boom"
		srv := httptest.NewServer(b.handler)
		defer srv.Close()
		for range 2 { // the server keeps serving
			resp, err := http.Get(srv.URL + "/jobs/01900000000000000000000000010000000000000000")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 500 {
				t.Fatalf("status = %d, want 500", resp.StatusCode)
			}
		}
	})
}

func TestLogging(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.engine.jobID = "019000000000000000000000002a0000000000000000"
	b.engine.status = &export.Status{Phase: export.InProgress}
	b.call("GET", "/$export", hdr("X-Azure-Functions-InvocationId", "inv-1"), "")
	b.call("GET", "/jobs/019000000000000000000000002a0000000000000000", hdr("X-Azure-Functions-InvocationId", "inv-2"), "")
	b.call("GET", "/$export?_type=Nope", nil, "")
	b.call("GET", "/", nil, "")

	var access, engine []map[string]any
	for _, l := range b.logs.lines(t) {
		switch l["message"] {
		case "request":
			access = append(access, l)
		case "engine kick-off", "engine status":
			engine = append(engine, l)
		}
	}
	if len(access) != 3 {
		t.Fatalf("%d access lines, want 3 (none for GET /): %v", len(access), access)
	}
	want := []map[string]any{
		{"method": "GET", "path": "/$export", "status": float64(202), "job": "019000000000000000000000002a0000000000000000", "invocationId": "inv-1"},
		{"method": "GET", "path": "/jobs/019000000000000000000000002a0000000000000000", "status": float64(202), "job": "019000000000000000000000002a0000000000000000", "invocationId": "inv-2"},
		{"method": "GET", "path": "/$export", "status": float64(400)},
	}
	for i, w := range want {
		for k, v := range w {
			if access[i][k] != v {
				t.Errorf("access line %d: %s = %v, want %v (%v)", i, k, access[i][k], v, access[i])
			}
		}
		if _, ok := access[i]["duration"]; !ok {
			t.Errorf("access line %d has no duration", i)
		}
	}
	if e, ok := access[2]["error"].(string); !ok || !strings.Contains(e, "Nope") {
		t.Errorf("400 line lacks the error: %v", access[2])
	}
	// The engine sees a request-scoped logger.
	if len(engine) != 2 || engine[0]["invocationId"] != "inv-1" || engine[1]["invocationId"] != "inv-2" || engine[1]["job"] != "019000000000000000000000002a0000000000000000" {
		t.Errorf("engine log lines lack request fields: %v", engine)
	}
}

func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		opts httpapi.Options
		ok   bool
	}{
		{httpapi.Options{Auth: noAuth}, true},
		{httpapi.Options{}, false}, // no Auth: there is no open default
		{httpapi.Options{BaseURL: "https://x.azurewebsites.net", DefaultContainer: "exports", Auth: noAuth}, true},
		{httpapi.Options{BaseURL: "https://x.azurewebsites.net/api/", Auth: noAuth}, true},
		{httpapi.Options{Auth: noAuth, TokenEndpoint: "/token"}, false},
		{httpapi.Options{BaseURL: "x.azurewebsites.net"}, false},
		{httpapi.Options{BaseURL: "ftp://x"}, false},
		{httpapi.Options{BaseURL: "https://x/?a=b"}, false},
		{httpapi.Options{DefaultContainer: "Exports"}, false},
	} {
		if err := tc.opts.Validate(); (err == nil) != tc.ok {
			t.Errorf("Validate(%+v) = %v, want ok=%v", tc.opts, err, tc.ok)
		}
	}
}

func TestNoDefaultContainer(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *httpapi.Options) { o.DefaultContainer, o.Containers = "", []string{"mine"} })
	_, diag := checkOutcome(t, b.call("GET", "/$export", nil, ""), 400)
	if !strings.Contains(diag, "_container") {
		t.Errorf("diagnostics %q do not name _container", diag)
	}
	if rec := b.call("GET", "/$export?_container=mine", nil, ""); rec.Code != 202 {
		t.Errorf("with _container: %d", rec.Code)
	}
}

// panicReader yields some bytes, then panics, as a broken storage client might.
type panicReader struct{ sent bool }

func (r *panicReader) Read(p []byte) (int, error) {
	if !r.sent {
		r.sent = true
		return copy(p, "{\"resourceType\":\"Patient\"}\n"), nil
	}
	panic("storage client bug")
}

func (r *panicReader) Close() error { return nil }

func TestPanicMidDownloadAbortsTheResponse(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.engine.open = func(jobID, name string) (io.ReadCloser, int64, error) { return &panicReader{}, 1000, nil }
	srv := httptest.NewServer(b.handler)
	defer srv.Close()
	// The status line was already committed, so the only honest answer is a
	// broken connection: the client must see an error, not a short 200.
	resp, err := http.Get(srv.URL + "/jobs/01900000000000000000000000010000000000000000/files/Patient-1.ndjson")
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Fatal("a download that panicked midway read as complete")
	}
	// The process lives on and answers the next request.
	resp, err = http.Get(srv.URL + "/metadata")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("after the panic: %v %v", resp, err)
	}
	resp.Body.Close()
	// The client may see the broken connection before the handler logs.
	var logged bool
	for deadline := time.Now().Add(5 * time.Second); !logged && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, l := range b.logs.lines(t) {
			if l["message"] == "request" && l["path"] == "/jobs/01900000000000000000000000010000000000000000/files/Patient-1.ndjson" {
				logged = l["status"] == float64(200) && l["error"] != nil
			}
		}
	}
	if !logged {
		t.Errorf("the aborted download has no access line with its error: %v", b.logs.lines(t))
	}
}

// TestIDsThatCannotNameAJobNeverReachTheEngine: the API answers 404 for any
// id the engine could not have made (export.ValidJobID), without a lookup.
func TestIDsThatCannotNameAJobNeverReachTheEngine(t *testing.T) {
	t.Parallel()
	for _, id := range []string{"job-1", "019000000000000000000000000", "0190000000000000000000000001a", "019000000000000000000000000A", "..", "a%20b"} {
		for _, tc := range []struct{ method, target string }{
			{"GET", "/jobs/" + id},
			{"DELETE", "/jobs/" + id},
			{"GET", "/jobs/" + id + "/files/Patient-1.ndjson"},
		} {
			t.Run(tc.method+" "+tc.target, func(t *testing.T) {
				t.Parallel()
				b := setup(t)
				b.engine.panicMsg = "the engine was called" // any call answers 500
				checkOutcome(t, b.call(tc.method, tc.target, nil, ""), http.StatusNotFound)
			})
		}
	}
}
