package httpapi_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/httpapi"
)

// trustForwarded is EXPORT_TRUST_FORWARDED=true.
func trustForwarded(o *httpapi.Options) { o.TrustForwarded = true }

const testJobID = "01900000000000000000000000070000000000000000"

// typeFilterBody is a POST kick-off whose Parameters hold one _typeFilter
// parameter per query.
func typeFilterBody(queries ...string) string {
	var ps []string
	for _, q := range queries {
		ps = append(ps, fmt.Sprintf(`{"name":"_typeFilter","valueString":%q}`, q))
	}
	return `{"resourceType":"Parameters","parameter":[` + strings.Join(ps, ",") + `]}`
}

func repeatQueries(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("Patient?_id=p%d", i)
	}
	return out
}

// TestKickOffInputLimits: oversized requests are refused with an
// OperationOutcome before the engine is called, so nothing is created and
// the source is never asked (the 600 KB _typeFilter and 10,000
// queries).
func TestKickOffInputLimits(t *testing.T) {
	t.Parallel()
	post := hdr("Content-Type", fhirJSON)
	tests := []struct {
		name     string
		method   string
		target   string
		body     string
		want     int
		wantDiag string
	}{
		{name: "600 KB _typeFilter in a POST", method: "POST", target: "/$export",
			body: typeFilterBody("Patient?name=" + strings.Repeat("a", 600<<10)), want: 400, wantDiag: "_typeFilter values hold"},
		{name: "10,000 _typeFilter queries in a POST", method: "POST", target: "/$export",
			body: typeFilterBody(repeatQueries(10000)...), want: 400, wantDiag: "_typeFilter queries"},
		{name: "51 queries joined in one value", method: "POST", target: "/$export",
			body: typeFilterBody(strings.Join(repeatQueries(51), ",")), want: 400, wantDiag: "_typeFilter queries"},
		{name: "query string over 8 KiB", target: "/$export?_typeFilter=" + url.QueryEscape("Patient?name="+strings.Repeat("a", 8<<10)),
			want: 400, wantDiag: "query string is"},
		{name: "10,000 queries in the query string", target: "/$export?_typeFilter=" + strings.Join(repeatQueries(10000), "&_typeFilter="),
			want: 400, wantDiag: "query string is"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			method := tc.method
			if method == "" {
				method = http.MethodGet
			}
			var h http.Header
			if method == "POST" {
				h = post
			}
			rec := b.call(method, tc.target, h, tc.body)
			code, diag := checkOutcome(t, rec, tc.want)
			if code != "too-long" || !strings.Contains(diag, tc.wantDiag) {
				t.Errorf("code %q diagnostics %q; want too-long mentioning %q", code, diag, tc.wantDiag)
			}
			if len(diag) > 1000 {
				t.Errorf("diagnostics are %d bytes: the request was echoed", len(diag))
			}
			if len(b.engine.requests) != 0 {
				t.Errorf("the engine was called %d times", len(b.engine.requests))
			}
		})
	}

	// The limits leave room for real use: 50 queries are accepted.
	b := setup(t)
	rec := b.call("POST", "/$export", post, typeFilterBody(repeatQueries(50)...))
	if rec.Code != http.StatusAccepted {
		t.Fatalf("50 queries: status %d, want 202; body %s", rec.Code, rec.Body)
	}
	if got := len(b.engine.lastRequest(t).TypeFilters); got != 50 {
		t.Errorf("50 queries: the engine got %d filters", got)
	}
}

// TestTypeFilterAllowList: a _typeFilter may use a type's search parameters
// and the underscore parameters that select resources, nothing else.
func TestTypeFilterAllowList(t *testing.T) {
	t.Parallel()
	refused := []string{
		"Observation?_offset=10", "Observation?_total=accurate", "Observation?_query=everything",
		"Observation?_type=Patient", "Observation?_getpagesoffset=100", "Observation?_getpages=x",
		"Observation?_unknown=1", "Observation?_filter=code eq x", "Observation?_count=5",
		"Observation?_has:Observation:patient:_count=5", "Observation?_has:Nope:patient:code=x",
		"Observation?_has:Observation=x", "Observation?subject._query=x", "Observation?-code=x",
		"Observation?code:_in=x",
	}
	for _, q := range refused {
		t.Run("refused "+q, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			rec := b.call("GET", "/$export?_typeFilter="+url.QueryEscape(q), nil, "")
			_, diag := checkOutcome(t, rec, http.StatusBadRequest)
			if !strings.Contains(diag, "_typeFilter") {
				t.Errorf("diagnostics %q do not name _typeFilter", diag)
			}
			if len(b.engine.requests) != 0 {
				t.Errorf("the engine was called")
			}
		})
	}
	accepted := []string{
		"Observation?_id=o1", "Observation?_lastUpdated=gt2020-01-01", "Observation?_tag=http://t|x",
		"Observation?_profile=http://p", "Observation?_security=R", "Observation?_source=http://s",
		"Patient?_list=l1", "Patient?_has:Observation:patient:code=1234-5", "Observation?code:in=http://vs",
		"Observation?subject:Patient.name=Smith", "Observation?value-quantity=5", "Patient?general-practitioner=Practitioner/1",
		"Observation?_text=cough", "Observation?_content=cough",
	}
	for _, q := range accepted {
		t.Run("accepted "+q, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			rec := b.call("GET", "/$export?_typeFilter="+url.QueryEscape(q), nil, "")
			if rec.Code != http.StatusAccepted {
				t.Fatalf("status %d, want 202; body %s", rec.Code, rec.Body)
			}
			if got := b.engine.lastRequest(t).TypeFilters; len(got) != 1 {
				t.Errorf("the engine got filters %+v", got)
			}
		})
	}
}

// TestGroupIDOfDots: "." and ".." are path segments; they never reach the
// source as /Group/.. (the source's base).
func TestGroupIDOfDots(t *testing.T) {
	t.Parallel()
	for _, path := range []string{"/Group/./$export", "/Group/../$export", "/Group/.../$export", "/Group/%2E%2E/$export"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			_, diag := checkOutcome(t, b.call("GET", path, nil, ""), http.StatusBadRequest)
			if !strings.Contains(diag, "Group id") {
				t.Errorf("diagnostics %q do not name the Group id", diag)
			}
			if len(b.engine.requests) != 0 {
				t.Errorf("the engine was called")
			}
		})
	}
	b := setup(t)
	if rec := b.call("GET", "/Group/a.b/$export", nil, ""); rec.Code != http.StatusAccepted {
		t.Errorf("Group id a.b: status %d, want 202", rec.Code)
	}
}

// TestEchoedValuesAreCut: a client value repeated in an error is cut to
// about 200 characters.
func TestEchoedValuesAreCut(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("Q", 5000)
	for _, target := range []string{
		"/$export?_type=" + long,
		"/$export?_typeFilter=" + url.QueryEscape("Observation?_"+long+"=1"),
		"/$export?_container=" + strings.ToLower(long),
		"/$export?" + long + "=1",
		"/Group/" + long + "/$export",
	} {
		b := setup(t)
		_, diag := checkOutcome(t, b.call("GET", target, nil, ""), http.StatusBadRequest)
		if !strings.Contains(diag, "QQQQ") && !strings.Contains(diag, "qqqq") {
			t.Errorf("%.40s: diagnostics %q do not echo the value at all", target, diag)
		}
		if len(diag) > 600 {
			t.Errorf("%.40s: diagnostics are %d bytes, want the value cut to about 200", target, len(diag))
		}
	}
}

// TestErrorBodiesHideInternals: SDK text, storage URLs and Go type names
// stay in the log; the client gets a message of its own.
func TestErrorBodiesHideInternals(t *testing.T) {
	t.Parallel()
	sdk := errors.New(`PUT https://acct.blob.core.windows.net/exports/x?comp=block: RESPONSE 403: AuthorizationPermissionMismatch *azcore.ResponseError`)
	tests := []struct {
		name    string
		kickErr error
		status  *export.Status
		want    int
		wantMsg string
	}{
		{name: "destination refused at kick-off",
			kickErr: fault.Wrap(fault.Forbidden, sdk, "the service's identity may not write to the destination container %q", "exports"),
			want:    403, wantMsg: "may not write to the destination container"},
		{name: "internal", kickErr: fmt.Errorf("record job: %w", fault.Wrap(fault.Internal, sdk, "create job")),
			want: 500, wantMsg: "internal error"},
		{name: "unavailable", kickErr: fault.Wrap(fault.Unavailable, sdk, "storage at https://acct.table.core.windows.net"),
			want: 503, wantMsg: "unavailable"},
		{name: "plain error", kickErr: sdk, want: 500, wantMsg: "internal error"},
		{name: "failed job refused by storage",
			status: &export.Status{Phase: export.Failed, Failure: &fault.Error{Kind: fault.Forbidden, Msg: "exporting Patient failed: " + sdk.Error()}},
			want:   500, wantMsg: "refused the service's identity"},
		{name: "failed job the source rejected",
			status: &export.Status{Phase: export.Failed, Failure: &fault.Error{Kind: fault.Permanent, Msg: "exporting Patient failed: the source answered 400 for https://fhir.example/Patient?x=1: unknown parameter x"}},
			want:   500, wantMsg: "unknown parameter x"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.engine.kickErr = tc.kickErr
			b.engine.status = tc.status
			target := "/$export"
			if tc.status != nil {
				target = "/jobs/" + testJobID
			}
			_, diag := checkOutcome(t, b.call("GET", target, nil, ""), tc.want)
			if !strings.Contains(diag, tc.wantMsg) {
				t.Errorf("diagnostics %q do not say %q", diag, tc.wantMsg)
			}
			for _, leak := range []string{"https://", "core.windows.net", "azcore", "RESPONSE 403", "AuthorizationPermissionMismatch"} {
				if strings.Contains(diag, leak) {
					t.Errorf("diagnostics %q carry %q", diag, leak)
				}
			}
			var logged bool
			for _, l := range b.logs.lines(t) {
				if e, _ := l["error"].(string); strings.Contains(e, "core.windows.net") || strings.Contains(e, "fhir.example") {
					logged = true
				}
			}
			if !logged {
				t.Errorf("the request's log line does not keep the full error")
			}
		})
	}

	// A JSON body of the wrong shape is described in JSON's terms.
	b := setup(t)
	_, diag := checkOutcome(t, b.call("POST", "/$export", hdr("Content-Type", fhirJSON), `[1,2]`), http.StatusBadRequest)
	for _, leak := range []string{"Go ", "struct", "map[", "json.RawMessage"} {
		if strings.Contains(diag, leak) {
			t.Errorf("POST [1,2]: diagnostics %q carry %q", diag, leak)
		}
	}
	if !strings.Contains(diag, "array") {
		t.Errorf("POST [1,2]: diagnostics %q do not say the body is an array", diag)
	}
}

// TestSecurityHeaders: nosniff on every answer, no-store on everything a
// client's export hands out (statuses, manifests, files, errors).
func TestSecurityHeaders(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.engine.jobID = testJobID
	b.engine.files = map[string]string{testJobID + "/Patient-1.ndjson": "{}\n"}
	b.engine.status = completedStatus([]export.OutputFile{{Type: "Patient", Name: "Patient-1.ndjson", Count: 1}}, nil)
	for _, tc := range []struct{ method, target string }{
		{"GET", "/"},
		{"GET", "/metadata"},
		{"GET", "/$export"},
		{"GET", "/jobs/" + testJobID},
		{"GET", "/jobs/" + testJobID + "/files/Patient-1.ndjson"},
		{"GET", "/jobs/" + testJobID + "/files/Nope-1.ndjson"},
		{"DELETE", "/jobs/" + testJobID},
		{"GET", "/nowhere"},
	} {
		rec := b.call(tc.method, tc.target, nil, "")
		if rec.Code >= 500 {
			t.Errorf("%s %s: status %d", tc.method, tc.target, rec.Code)
		}
		if got := rec.Header().Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("%s %s (%d): X-Content-Type-Options = %q, want nosniff", tc.method, tc.target, rec.Code, got)
		}
		if got := rec.Header().Get("Cache-Control"); got != "no-store" {
			t.Errorf("%s %s (%d): Cache-Control = %q, want no-store", tc.method, tc.target, rec.Code, got)
		}
	}
}

// TestAuditLines: one audit line per kick-off, manifest, download, cancel
// and refused request, with the client, job, types and bytes.
func TestAuditLines(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.engine.jobID = testJobID
	b.engine.files = map[string]string{testJobID + "/Patient-1.ndjson": "{\"resourceType\":\"Patient\"}\n"}
	b.engine.status = completedStatus([]export.OutputFile{{Type: "Patient", Name: "Patient-1.ndjson", Count: 1}}, nil)
	b.call("GET", "/$export?_type=Patient,Observation", nil, "")
	b.call("GET", "/metadata", nil, "")
	b.call("GET", "/jobs/"+testJobID, nil, "")
	b.call("GET", "/jobs/"+testJobID+"/files/Patient-1.ndjson", nil, "")
	b.call("DELETE", "/jobs/"+testJobID, nil, "")
	b.call("GET", "/jobs/"+testJobID+"/files/Nope-1.ndjson", nil, "")

	var got []string
	for _, l := range b.logs.lines(t) {
		if l["audit"] != true {
			continue
		}
		got = append(got, fmt.Sprintf("%v %v %v", l["action"], l["outcome"], l["status"]))
		if _, ok := l["client"]; !ok {
			t.Errorf("audit line without client: %v", l)
		}
		switch l["action"] {
		case "kickoff":
			if fmt.Sprint(l["types"]) != "[Patient Observation]" || l["job"] != testJobID {
				t.Errorf("kick-off audit line %v lacks the types or the job", l)
			}
		case "download":
			if l["bytes"] != float64(len(b.engine.files[testJobID+"/Patient-1.ndjson"])) && l["status"] == float64(200) {
				t.Errorf("download audit line %v does not count the bytes sent", l)
			}
		}
	}
	want := []string{"kickoff ok 202", "manifest ok 200", "download ok 200", "cancel ok 202", "download refused 404"}
	if strings.Join(got, "; ") != strings.Join(want, "; ") {
		t.Errorf("audit lines:\n got %q\nwant %q", got, want)
	}
}
