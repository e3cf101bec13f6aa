package httpapi_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/httpapi"
)

const fhirJSON = "application/fhir+json"

func TestKickOffRejectsBadInput(t *testing.T) {
	t.Parallel()
	bigBody := `{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"` + strings.Repeat("a", 1<<20) + `"}]}`
	tests := []struct {
		name     string
		method   string
		target   string
		header   http.Header
		body     string
		want     int
		wantDiag string // substring of diagnostics naming the parameter or header
		wantCode string // issue code, when it matters
	}{
		{name: "Accept text/html", target: "/$export", header: hdr("Accept", "text/html"), want: 400, wantDiag: "Accept"},
		{name: "Accept only with q=0", target: "/$export", header: hdr("Accept", "application/xml, application/fhir+json;q=0"), want: 400, wantDiag: "Accept"},
		{name: "outputFormat csv", target: "/$export?_outputFormat=text/csv", want: 400, wantDiag: "_outputFormat", wantCode: "not-supported"},
		{name: "outputFormat empty", target: "/$export?_outputFormat=", want: 400, wantDiag: "_outputFormat"},
		{name: "since not an instant", target: "/$export?_since=yesterday", want: 400, wantDiag: "_since"},
		{name: "since date only", target: "/$export?_since=2020-01-01", want: 400, wantDiag: "_since"},
		{name: "since in the future", target: "/$export?_since=2999-01-01T00:00:00Z", want: 400, wantDiag: "future"},
		{name: "since twice, different", target: "/$export?_since=2020-01-01T00:00:00Z&_since=2021-01-01T00:00:00Z", want: 400, wantDiag: "_since"},
		{name: "since comma-joined by the host", target: "/$export?_since=2020-01-01T00:00:00Z,2021-01-01T00:00:00Z", want: 400, wantDiag: "_since"},
		{name: "type unknown", target: "/$export?_type=Patient,Observatoin", want: 400, wantDiag: "Observatoin"},
		{name: "type wrong case", target: "/$export?_type=patient", want: 400, wantDiag: "patient"},
		{name: "type not exportable", target: "/$export?_type=Bundle", want: 400, wantDiag: "Bundle"},
		{name: "type empty", target: "/$export?_type=", want: 400, wantDiag: "_type"},
		{name: "type only commas", target: "/$export?_type=,,", want: 400, wantDiag: "_type"},
		{name: "type outside compartment at Patient level", target: "/Patient/$export?_type=Patient,Organization", want: 400, wantDiag: "Organization"},
		{name: "type outside compartment at Group level", target: "/Group/g1/$export?_type=Practitioner", want: 400, wantDiag: "Practitioner"},
		{name: "typeFilter without ?", target: "/$export?_typeFilter=Observation", want: 400, wantDiag: "_typeFilter"},
		{name: "typeFilter without query", target: "/$export?_typeFilter=Observation%3F", want: 400, wantDiag: "_typeFilter"},
		{name: "typeFilter empty", target: "/$export?_typeFilter=", want: 400, wantDiag: "_typeFilter"},
		{name: "typeFilter unknown type", target: "/$export?_typeFilter=Foo%3Fx%3D1", want: 400, wantDiag: "Foo"},
		{name: "typeFilter second part unknown type", target: "/$export?_typeFilter=Observation%3Fstatus%3Dfinal,Obs%3Fx%3D1", want: 400, wantDiag: "Obs"},
		{name: "typeFilter no name=value", target: "/$export?_typeFilter=Observation%3Fstatus", want: 400, wantDiag: "_typeFilter"},
		{name: "typeFilter empty value", target: "/$export?_typeFilter=Observation%3Fstatus%3D", want: 400, wantDiag: "_typeFilter"},
		{name: "typeFilter bad param name", target: "/$export?_typeFilter=Observation%3Fst%20atus%3Dx", want: 400, wantDiag: "_typeFilter"},
		{name: "typeFilter type not in _type", target: "/$export?_type=Observation&_typeFilter=Condition%3Fcode%3Dx", want: 400, wantDiag: "not in _type"},
		{name: "typeFilter type outside compartment", target: "/Patient/$export?_typeFilter=Organization%3Fname%3Dx", want: 400, wantDiag: "Organization"},
		{name: "typeFilter _include", target: "/$export?_typeFilter=Observation%3F_include%3DObservation%3Apatient", want: 400, wantDiag: "_include"},
		{name: "typeFilter _include:iterate", target: "/$export?_typeFilter=Observation%3Fcode%3Dx%26_include%3Aiterate%3DObservation%3Apatient", want: 400, wantDiag: "_include"},
		{name: "typeFilter _revinclude", target: "/$export?_typeFilter=Patient%3F_revinclude%3DObservation%3Apatient", want: 400, wantDiag: "_revinclude"},
		{name: "typeFilter _sort", target: "/$export?_typeFilter=Observation%3F_sort%3Ddate", want: 400, wantDiag: "_sort"},
		{name: "typeFilter _elements", target: "/$export?_typeFilter=Observation%3F_elements%3Did", want: 400, wantDiag: "_elements"},
		{name: "typeFilter _count", target: "/$export?_typeFilter=Observation%3F_count%3D5", want: 400, wantDiag: "_count"},
		{name: "typeFilter _summary", target: "/$export?_typeFilter=Observation%3F_summary%3Dtrue", want: 400, wantDiag: "_summary"},
		{name: "typeFilter bad double encoding", target: "/$export?_typeFilter=Observation%253Fcode%253D%25zz", want: 400, wantDiag: "_typeFilter"},
		{name: "container uppercase", target: "/$export?_container=Exports", want: 400, wantDiag: "_container"},
		{name: "container too short", target: "/$export?_container=ab", want: 400, wantDiag: "_container"},
		{name: "container too long", target: "/$export?_container=" + strings.Repeat("a", 64), want: 400, wantDiag: "_container"},
		{name: "container leading hyphen", target: "/$export?_container=-abc", want: 400, wantDiag: "_container"},
		{name: "container trailing hyphen", target: "/$export?_container=abc-", want: 400, wantDiag: "_container"},
		{name: "container double hyphen", target: "/$export?_container=a--b", want: 400, wantDiag: "_container"},
		{name: "container underscore", target: "/$export?_container=a_b", want: 400, wantDiag: "_container"},
		{name: "_elements below the top level", target: "/$export?_elements=code.coding", want: 400, wantDiag: "top-level"},
		{name: "_elements type-qualified path", target: "/$export?_elements=Observation.code.coding", want: 400, wantDiag: "top-level"},
		{name: "_elements unknown type", target: "/$export?_elements=Observaton.status", want: 400, wantDiag: "Observaton"},
		{name: "_elements bad name", target: "/$export?_elements=id,Status", want: 400, wantDiag: "Status"},
		{name: "_elements empty", target: "/$export?_elements=", want: 400, wantDiag: "_elements"},
		{name: "_elements too many", target: "/$export?_elements=" + manyElements(201), want: 400, wantDiag: "200", wantCode: "too-long"},
		{name: "patient in a GET query", target: "/Patient/$export?patient=Patient/1", want: 400, wantDiag: "only in a POST", wantCode: "not-supported"},
		{name: "patient in a GET query under handling=lenient", target: "/Group/g1/$export?patient=Patient/1", header: hdr("Prefer", "handling=lenient"), want: 400, wantDiag: "only in a POST"},
		{name: "includeAssociatedData with a value we do not implement", target: "/$export?includeAssociatedData=_custom", want: 400, wantDiag: "includeAssociatedData value \"_custom\"", wantCode: "not-supported"},
		{name: "includeAssociatedData with an empty value", target: "/$export?includeAssociatedData=,", want: 400, wantDiag: "includeAssociatedData has an empty value"},
		{name: "includeAssociatedData with _anonymizationConfig, even lenient", target: "/$export?includeAssociatedData=LatestProvenanceResources&_anonymizationConfig=c.json",
			header: hdr("Prefer", "handling=lenient"), want: 400, wantDiag: "cannot be combined with _anonymizationConfig", wantCode: "not-supported"},
		{name: "until not an instant", target: "/$export?_until=tomorrow", want: 400, wantDiag: "_until"},
		{name: "until before since", target: "/$export?_since=2021-01-01T00:00:00Z&_until=2020-12-31T23:59:59Z", want: 400, wantDiag: "before _since"},
		{name: "until twice, different", target: "/$export?_until=2020-01-01T00:00:00Z&_until=2021-01-01T00:00:00Z", want: 400, wantDiag: "_until"},
		{name: "organizeOutputBy", target: "/$export?organizeOutputBy=Patient", want: 400, wantDiag: "organizeOutputBy"},
		{name: "allowPartialManifests not a boolean", target: "/$export?allowPartialManifests=yes", want: 400, wantDiag: "allowPartialManifests"},
		{name: "allowPartialManifests twice, different", target: "/$export?allowPartialManifests=true&allowPartialManifests=false", want: 400, wantDiag: "allowPartialManifests"},
		{name: "POST allowPartialManifests as a string in a boolean", method: "POST", target: "/$export", header: hdr("Content-Type", fhirJSON),
			body: `{"resourceType":"Parameters","parameter":[{"name":"allowPartialManifests","valueBoolean":"true"}]}`, want: 400, wantDiag: "allowPartialManifests"},
		{name: "unknown parameter", target: "/$export?foo=bar", want: 400, wantDiag: "foo"},
		{name: "unsupported parameter with handling=strict", target: "/$export?foo=bar", header: hdr("Prefer", "respond-async, handling=strict"), want: 400, wantDiag: "foo"},
		{name: "first handling preference wins", target: "/$export?foo=bar", header: hdr("Prefer", "handling=strict", "Prefer", "handling=lenient"), want: 400, wantDiag: "foo"},
		{name: "malformed query", target: "/$export?_type=%zz", want: 400, wantDiag: "_type"},
		{name: "Group id with underscore", target: "/Group/a_b/$export", want: 400, wantDiag: "Group id"},
		{name: "Group id too long", target: "/Group/" + strings.Repeat("g", 65) + "/$export", want: 400, wantDiag: "Group id"},
		{name: "Group id with encoded slash", target: "/Group/a%2Fb/$export", want: 400, wantDiag: "Group id"},
		{name: "Group id empty", target: "/Group//$export", want: 400, wantDiag: "Group id"},

		{name: "POST text/plain", method: "POST", target: "/$export", header: hdr("Content-Type", "text/plain"), body: `{"resourceType":"Parameters"}`, want: 415, wantDiag: "Content-Type"},
		{name: "POST without Content-Type", method: "POST", target: "/$export", body: `{"resourceType":"Parameters"}`, want: 415, wantDiag: "Content-Type"},
		{name: "POST empty body", method: "POST", target: "/$export", header: hdr("Content-Type", fhirJSON), want: 400, wantDiag: "body is missing", wantCode: "required"},
		{name: "POST empty body with query", method: "POST", target: "/$export?_type=Patient", header: hdr("Content-Type", fhirJSON), want: 400, wantDiag: "body is missing"},
		{name: "POST whitespace body", method: "POST", target: "/$export", header: hdr("Content-Type", fhirJSON), body: " \n", want: 400, wantDiag: "body is missing"},
		{name: "POST invalid JSON", method: "POST", target: "/$export", header: hdr("Content-Type", fhirJSON), body: `{"resourceType":`, want: 400, wantDiag: "JSON"},
		{name: "POST JSON array", method: "POST", target: "/$export", header: hdr("Content-Type", fhirJSON), body: `[]`, want: 400, wantDiag: "Parameters"},
		{name: "POST not Parameters", method: "POST", target: "/$export", header: hdr("Content-Type", fhirJSON), body: `{"resourceType":"Patient"}`, want: 400, wantDiag: "Parameters"},
		{name: "POST parameter without name", method: "POST", target: "/$export", header: hdr("Content-Type", fhirJSON), body: `{"resourceType":"Parameters","parameter":[{"valueString":"Patient"}]}`, want: 400, wantDiag: "name"},
		{name: "POST _type as boolean", method: "POST", target: "/$export", header: hdr("Content-Type", fhirJSON), body: `{"resourceType":"Parameters","parameter":[{"name":"_type","valueBoolean":true}]}`, want: 400, wantDiag: "_type"},
		{name: "POST _since without value", method: "POST", target: "/$export", header: hdr("Content-Type", fhirJSON), body: `{"resourceType":"Parameters","parameter":[{"name":"_since"}]}`, want: 400, wantDiag: "_since"},
		{name: "POST _since valueString number", method: "POST", target: "/$export", header: hdr("Content-Type", fhirJSON), body: `{"resourceType":"Parameters","parameter":[{"name":"_since","valueInstant":5}]}`, want: 400, wantDiag: "_since"},
		{name: "POST patient at system level", method: "POST", target: "/$export", header: hdr("Content-Type", fhirJSON), body: patientBody(`{"reference":"Patient/1"}`), want: 400, wantDiag: "Patient and Group level"},
		{name: "POST patient as valueString", method: "POST", target: "/Patient/$export", header: hdr("Content-Type", fhirJSON), body: `{"resourceType":"Parameters","parameter":[{"name":"patient","valueString":"Patient/1"}]}`, want: 400, wantDiag: "valueReference"},
		{name: "POST patient valueReference without reference", method: "POST", target: "/Group/g1/$export", header: hdr("Content-Type", fhirJSON), body: patientBody(`{"identifier":{"value":"1"}}`), want: 400, wantDiag: "reference"},
		{name: "POST patient valueReference not an object", method: "POST", target: "/Group/g1/$export", header: hdr("Content-Type", fhirJSON), body: patientBody(`"Patient/1"`), want: 400, wantDiag: "valueReference"},
		{name: "POST patient reference to another type", method: "POST", target: "/Group/g1/$export", header: hdr("Content-Type", fhirJSON), body: patientBody(`{"reference":"Observation/1"}`), want: 400, wantDiag: "Observation/1", wantCode: "value"},
		{name: "POST patient absolute reference", method: "POST", target: "/Group/g1/$export", header: hdr("Content-Type", fhirJSON), body: patientBody(`{"reference":"http://fhir.example/Patient/1"}`), want: 400, wantDiag: "Patient/[id]"},
		{name: "POST patient id not a FHIR id", method: "POST", target: "/Group/g1/$export", header: hdr("Content-Type", fhirJSON), body: patientBody(`{"reference":"Patient/a_b"}`), want: 400, wantDiag: "Patient/a_b"},
		{name: "POST patient id of dots", method: "POST", target: "/Patient/$export", header: hdr("Content-Type", fhirJSON), body: patientBody(`{"reference":"Patient/.."}`), want: 400, wantDiag: "Patient/.."},
		{name: "POST patient empty reference", method: "POST", target: "/Patient/$export", header: hdr("Content-Type", fhirJSON), body: patientBody(`{"reference":""}`), want: 400, wantDiag: "patient"},
		{name: "POST 1001 patients", method: "POST", target: "/Group/g1/$export", header: hdr("Content-Type", fhirJSON), body: patientBody(patientRefs(1001)...), want: 400, wantDiag: "1000", wantCode: "too-long"},
		{name: "POST bad _type in body", method: "POST", target: "/$export", header: hdr("Content-Type", "application/json"), body: `{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Nope"}]}`, want: 400, wantDiag: "Nope"},
		{name: "POST body too large", method: "POST", target: "/$export", header: hdr("Content-Type", fhirJSON), body: bigBody, want: 413},
		{name: "anonymization ETag without config", target: "/$export?_anonymizationConfigEtag=0x8D1", want: 400, wantDiag: "_anonymizationConfigEtag is given without _anonymizationConfig", wantCode: "required"},
		{name: "anonymization ETag without config, POST", method: "POST", target: "/Group/g1/$export", header: hdr("Content-Type", fhirJSON),
			body: `{"resourceType":"Parameters","parameter":[{"name":"_anonymizationConfigEtag","valueString":"0x8D1"}]}`, want: 400, wantDiag: "without _anonymizationConfig"},
		{name: "anonymization config with .. segment", target: "/$export?_anonymizationConfig=configs/../../secrets.json", want: 400, wantDiag: "not a plain blob name", wantCode: "value"},
		{name: "anonymization config ..", target: "/Patient/$export?_anonymizationConfig=..", want: 400, wantDiag: "not a plain blob name"},
		{name: "anonymization config leading slash", target: "/$export?_anonymizationConfig=/deid.json", want: 400, wantDiag: "not a plain blob name"},
		{name: "anonymization config backslash", target: "/$export?_anonymizationConfig=a%5C..%5Cb.json", want: 400, wantDiag: "not a plain blob name"},
		{name: "anonymization config too long", method: "POST", target: "/$export", header: hdr("Content-Type", fhirJSON),
			body: `{"resourceType":"Parameters","parameter":[{"name":"_anonymizationConfig","valueString":"` + strings.Repeat("a", 1025) + `"}]}`, want: 400, wantDiag: "1024"},
		{name: "anonymization config empty", target: "/$export?_anonymizationConfig=", want: 400, wantDiag: "_anonymizationConfig"},
		{name: "anonymization config twice, different", target: "/$export?_anonymizationConfig=a.json&_anonymizationConfig=b.json", want: 400, wantDiag: "_anonymizationConfig"},
		{name: "anonymization config as boolean", method: "POST", target: "/$export", header: hdr("Content-Type", fhirJSON),
			body: `{"resourceType":"Parameters","parameter":[{"name":"_anonymizationConfig","valueBoolean":true}]}`, want: 400, wantDiag: "_anonymizationConfig"},
		{name: "anonymization collection reference, lenient", target: "/$export?_anonymizationConfig=a.json&_anonymizationConfigCollectionReference=myacr.azurecr.io/deid:v1",
			header: hdr("Prefer", "respond-async, handling=lenient"), want: 400, wantDiag: "_anonymizationConfigCollectionReference is not supported", wantCode: "not-supported"},
		{name: "anonymization ETag with a quote inside", target: "/$export?_anonymizationConfig=a.json&_anonymizationConfigEtag=0x%228D", want: 400, wantDiag: "_anonymizationConfigEtag"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			method := tc.method
			if method == "" {
				method = http.MethodGet
			}
			rec := b.call(method, tc.target, tc.header, tc.body)
			code, diag := checkOutcome(t, rec, tc.want)
			if !strings.Contains(diag, tc.wantDiag) {
				t.Errorf("diagnostics %q do not mention %q", diag, tc.wantDiag)
			}
			if tc.wantCode != "" && code != tc.wantCode {
				t.Errorf("issue code = %q, want %q", code, tc.wantCode)
			}
			if len(b.engine.requests) != 0 {
				t.Errorf("engine was called with %+v", b.engine.requests)
			}
		})
	}
}

func TestKickOffChunkedPostWithDroppedBody(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// What the Functions host forwards for a chunked POST: no Content-Length, no body.
	req := httptest.NewRequest(http.MethodPost, "http://example.com/$export", http.NoBody)
	req.ContentLength = -1
	req.TransferEncoding = []string{"chunked"}
	req.Header.Set("Content-Type", fhirJSON)
	rec := httptest.NewRecorder()
	b.handler.ServeHTTP(rec, req)
	code, diag := checkOutcome(t, rec, http.StatusBadRequest)
	if code != "required" || !strings.Contains(diag, "body is missing") {
		t.Errorf("code %q diagnostics %q; want required / body is missing", code, diag)
	}
}

func TestKickOffEngineErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err        error
		want       int
		code       string
		retryAfter string
		fixed      string // the diagnostics for the service's own trouble, which hide the cause
	}{
		{fault.New(fault.Invalid, "type Foo not allowed"), 400, "invalid", "", ""},
		{fault.New(fault.NotFound, "Group g1 not found on the source"), 404, "not-found", "", ""},
		{fault.New(fault.Forbidden, "storage refuses us"), 403, "forbidden", "", ""},
		{fault.New(fault.Conflict, "lost a race"), 409, "conflict", "", "conflicted"},
		{fault.New(fault.Unavailable, "source unreachable"), 503, "transient", "2", "unavailable"},
		{&fault.Error{Kind: fault.Transient, Msg: "throttled", RetryAfter: 30 * time.Second}, 503, "transient", "5", "unavailable"},
		{fault.New(fault.Permanent, "source rejects the search"), 500, "exception", "", ""},
		{fault.New(fault.Internal, "bug"), 500, "exception", "", "internal error"},
	}
	for _, tc := range tests {
		t.Run(tc.err.Error(), func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.engine.kickErr = tc.err
			rec := b.call("GET", "/$export", nil, "")
			code, diag := checkOutcome(t, rec, tc.want)
			if code != tc.code {
				t.Errorf("code = %q, want %q", code, tc.code)
			}
			switch {
			case tc.fixed != "" && (strings.Contains(diag, tc.err.Error()) || !strings.Contains(diag, tc.fixed)):
				t.Errorf("diagnostics %q: want the fixed text about %q, not the cause %q", diag, tc.fixed, tc.err)
			case tc.fixed == "" && !strings.Contains(diag, tc.err.Error()):
				t.Errorf("diagnostics %q lack the cause %q", diag, tc.err)
			}
			if got := rec.Header().Get("Retry-After"); got != tc.retryAfter {
				t.Errorf("Retry-After = %q, want %q", got, tc.retryAfter)
			}
		})
	}
}

func TestKickOffRequest(t *testing.T) {
	t.Parallel()
	since := time.Date(2019, 12, 31, 23, 0, 0, 0, time.UTC) // 2020-01-01T00:00:00+01:00
	until := time.Date(2021, 6, 1, 0, 0, 0, 0, time.UTC)
	future := time.Date(2999, 1, 1, 0, 0, 0, 0, time.UTC)
	base := export.Request{Level: export.LevelSystem, Container: defaultContainer, OutputFormat: "application/fhir+ndjson", Owner: anonymousOwner}
	with := func(f func(*export.Request)) export.Request {
		r := base
		f(&r)
		return r
	}
	params := func(ps string) string { return `{"resourceType":"Parameters","parameter":[` + ps + `]}` }
	tests := []struct {
		name   string
		method string
		target string
		header http.Header
		body   string
		opts   func(*httpapi.Options)
		want   export.Request
	}{
		{name: "system, no parameters", target: "/$export",
			want: with(func(r *export.Request) { r.RequestURL = "http://example.com/$export" })},
		{name: "percent-encoded $", target: "/%24export?_type=Patient",
			want: with(func(r *export.Request) {
				r.Types = []string{"Patient"}
				r.RequestURL = "http://example.com/$export?_type=Patient"
			})},
		{name: "Patient level, repeated and comma-joined _type", target: "/Patient/%24export?_type=Patient&_type=Observation,%20Condition&_type=Patient",
			want: with(func(r *export.Request) {
				r.Level = export.LevelPatient
				r.Types = []string{"Patient", "Observation", "Condition"}
				r.RequestURL = "http://example.com/Patient/$export?_type=Patient&_type=Observation,%20Condition&_type=Patient"
			})},
		{name: "includeAssociatedData: Relevant includes Latest", target: "/$export?includeAssociatedData=LatestProvenanceResources&includeAssociatedData=RelevantProvenanceResources,LatestProvenanceResources",
			want: with(func(r *export.Request) {
				r.IncludeAssociated = export.RelevantProvenance
				r.RequestURL = "http://example.com/$export?includeAssociatedData=LatestProvenanceResources&includeAssociatedData=RelevantProvenanceResources,LatestProvenanceResources"
			})},
		{name: "includeAssociatedData in a POST body, lenient, with a value we do not implement", method: "POST", target: "/Patient/$export",
			header: hdr("Content-Type", "application/fhir+json", "Prefer", "handling=lenient"),
			body: params(`{"name":"includeAssociatedData","valueCoding":{"system":"http://hl7.org/fhir/uv/bulkdata/CodeSystem/includeAssociatedData","code":"LatestProvenanceResources"}},` +
				`{"name":"includeAssociatedData","valueString":"_other"}`),
			want: with(func(r *export.Request) {
				r.Level = export.LevelPatient
				r.IncludeAssociated = export.LatestProvenance
				r.Lenient = true // the engine drops it with a warning if the source cannot search Provenance by target
				r.Warnings = []string{"includeAssociatedData value _other is not supported and was ignored"}
				r.RequestURL = "http://example.com/Patient/$export"
			})},
		{name: "Group level", target: "/Group/g-1.x/$export?_type=Patient",
			want: with(func(r *export.Request) {
				r.Level = export.LevelGroup
				r.GroupID = "g-1.x"
				r.Types = []string{"Patient"}
				r.RequestURL = "http://example.com/Group/g-1.x/$export?_type=Patient"
			})},
		{name: "_since with + decoded as space", target: "/$export?_since=2020-01-01T00:00:00+01:00",
			want: with(func(r *export.Request) {
				r.Since = &since
				r.RequestURL = "http://example.com/$export?_since=2020-01-01T00:00:00+01:00"
			})},
		{name: "_since encoded by the host", target: "/$export?_since=2020-01-01T00%3A00%3A00%2B01%3A00",
			want: with(func(r *export.Request) {
				r.Since = &since
				r.RequestURL = "http://example.com/$export?_since=2020-01-01T00%3A00%3A00%2B01%3A00"
			})},
		{name: "_until with _since", target: "/$export?_since=2020-01-01T00:00:00+01:00&_until=2021-06-01T00:00:00Z",
			want: with(func(r *export.Request) {
				r.Since = &since
				r.Until = &until
				r.RequestURL = "http://example.com/$export?_since=2020-01-01T00:00:00+01:00&_until=2021-06-01T00:00:00Z"
			})},
		{name: "_until equal to _since", target: "/$export?_since=2021-06-01T00:00:00Z&_until=2021-06-01T00:00:00Z",
			want: with(func(r *export.Request) {
				r.Since = &until
				r.Until = &until
				r.RequestURL = "http://example.com/$export?_since=2021-06-01T00:00:00Z&_until=2021-06-01T00:00:00Z"
			})},
		{name: "POST _until as valueInstant", method: "POST", target: "/$export", header: hdr("Content-Type", fhirJSON),
			body: params(`{"name":"_until","valueInstant":"2021-06-01T02:00:00+02:00"}`),
			want: with(func(r *export.Request) {
				r.Until = &until
				r.RequestURL = "http://example.com/$export"
			})},
		{name: "_until in the future is kept (the engine caps it by the transaction time)", target: "/$export?_until=2999-01-01T00:00:00Z",
			want: with(func(r *export.Request) {
				r.Until = &future
				r.RequestURL = "http://example.com/$export?_until=2999-01-01T00:00:00Z"
			})},
		{name: "_outputFormat with + decoded as space", target: "/$export?_outputFormat=application/fhir+ndjson",
			want: with(func(r *export.Request) {
				r.RequestURL = "http://example.com/$export?_outputFormat=application/fhir+ndjson"
			})},
		{name: "_outputFormat ndjson", target: "/$export?_outputFormat=ndjson",
			want: with(func(r *export.Request) { r.RequestURL = "http://example.com/$export?_outputFormat=ndjson" })},
		{name: "_outputFormat application/ndjson", target: "/$export?_outputFormat=application%2Fndjson",
			want: with(func(r *export.Request) {
				r.RequestURL = "http://example.com/$export?_outputFormat=application%2Fndjson"
			})},
		{name: "_typeFilter v2 comma-joined", target: "/$export?_typeFilter=Observation%3Fstatus%3Dfinal%2CCondition%3Fclinical-status%3Dactive",
			want: with(func(r *export.Request) {
				r.TypeFilters = []export.TypeFilter{{Type: "Observation", Query: "status=final"}, {Type: "Condition", Query: "clinical-status=active"}}
				r.RequestURL = "http://example.com/$export?_typeFilter=Observation%3Fstatus%3Dfinal%2CCondition%3Fclinical-status%3Dactive"
			})},
		{name: "_typeFilter repeated, value with a comma", target: "/$export?_typeFilter=Observation%3Fcode%3Da%2Cb&_typeFilter=Observation%3Fstatus%3Dfinal%26category%3Dlab",
			want: with(func(r *export.Request) {
				r.TypeFilters = []export.TypeFilter{{Type: "Observation", Query: "code=a%2Cb"}, {Type: "Observation", Query: "status=final&category=lab"}}
				r.RequestURL = "http://example.com/$export?_typeFilter=Observation%3Fcode%3Da%2Cb&_typeFilter=Observation%3Fstatus%3Dfinal%26category%3Dlab"
			})},
		{name: "_typeFilter repeats comma-joined by the host, value with a comma", target: "/$export?_type=Observation,Condition&_typeFilter=Observation%3Fcode%3Da%2Cb,Condition%3Fcategory%3Dx,Observation%3Fcode%3Da%2Cb",
			want: with(func(r *export.Request) {
				r.Types = []string{"Observation", "Condition"}
				r.TypeFilters = []export.TypeFilter{{Type: "Observation", Query: "code=a%2Cb"}, {Type: "Condition", Query: "category=x"}}
				r.RequestURL = "http://example.com/$export?_type=Observation,Condition&_typeFilter=Observation%3Fcode%3Da%2Cb,Condition%3Fcategory%3Dx,Observation%3Fcode%3Da%2Cb"
			})},
		{name: "allowPartialManifests in the query", target: "/$export?allowPartialManifests=true",
			want: with(func(r *export.Request) {
				r.AllowPartialManifests = true
				r.RequestURL = "http://example.com/$export?allowPartialManifests=true"
			})},
		{name: "allowPartialManifests=false", target: "/Patient/$export?allowPartialManifests=false",
			want: with(func(r *export.Request) {
				r.Level = export.LevelPatient
				r.RequestURL = "http://example.com/Patient/$export?allowPartialManifests=false"
			})},
		{name: "POST allowPartialManifests as valueBoolean, as the SMART client sends it", method: "POST", target: "/$export",
			header: hdr("Content-Type", "application/json"), body: params(`{"name":"allowPartialManifests","valueBoolean":true}`),
			want: with(func(r *export.Request) {
				r.AllowPartialManifests = true
				r.RequestURL = "http://example.com/$export"
			})},
		{name: "_typeFilter double-encoded", target: "/$export?_typeFilter=Observation%253Fstatus%253Dfinal",
			want: with(func(r *export.Request) {
				r.TypeFilters = []export.TypeFilter{{Type: "Observation", Query: "status=final"}}
				r.RequestURL = "http://example.com/$export?_typeFilter=Observation%253Fstatus%253Dfinal"
			})},
		{name: "_typeFilter normalized encoding", target: "/Patient/$export?_typeFilter=Observation%3Fcode%3Dhttp%3A%2F%2Floinc.org%7C1234-5%26date%3Dgt2020-01-01T00%3A00%3A00%252B01%3A00%26code%3Ain%3Dhttp%3A%2F%2Fvs",
			want: with(func(r *export.Request) {
				r.Level = export.LevelPatient
				r.TypeFilters = []export.TypeFilter{{Type: "Observation", Query: "code=http%3A%2F%2Floinc.org%7C1234-5&date=gt2020-01-01T00%3A00%3A00%2B01%3A00&code:in=http%3A%2F%2Fvs"}}
				r.RequestURL = "http://example.com/Patient/$export?_typeFilter=Observation%3Fcode%3Dhttp%3A%2F%2Floinc.org%7C1234-5%26date%3Dgt2020-01-01T00%3A00%3A00%252B01%3A00%26code%3Ain%3Dhttp%3A%2F%2Fvs"
			})},
		{name: "_container", target: "/$export?_container=my-exports-2",
			opts: func(o *httpapi.Options) { o.Containers = []string{defaultContainer, "my-exports-2"} },
			want: with(func(r *export.Request) {
				r.Container = "my-exports-2"
				r.RequestURL = "http://example.com/$export?_container=my-exports-2"
			})},
		{name: "lenient ignores unsupported parameters with warnings", target: "/Patient/$export?organizeOutputBy=Patient&_type=Patient&foo=1",
			header: hdr("Prefer", "respond-async, handling=lenient"),
			want: with(func(r *export.Request) {
				r.Level = export.LevelPatient
				r.Types = []string{"Patient"}
				r.Warnings = []string{
					"parameter organizeOutputBy is not supported and was ignored",
					"parameter foo is not supported and was ignored",
				}
				r.RequestURL = "http://example.com/Patient/$export?organizeOutputBy=Patient&_type=Patient&foo=1"
			})},
		{name: "_elements, repeated, both forms", target: "/$export?_elements=id,status&_elements=Observation.subject,%20status,Patient.gender",
			want: with(func(r *export.Request) {
				r.Elements = []string{"id", "status", "Observation.subject", "Patient.gender"}
				r.RequestURL = "http://example.com/$export?_elements=id,status&_elements=Observation.subject,%20status,Patient.gender"
			})},
		{name: "lenient leaves malformed _elements entries out with warnings", target: "/$export?_elements=status,code.coding,Nope.id",
			header: hdr("Prefer", "respond-async, handling=lenient"),
			want: with(func(r *export.Request) {
				r.Elements = []string{"status"}
				r.Warnings = []string{
					`_elements: "code.coding" is not a top-level element (only Type.element or element are allowed); it was ignored`,
					`_elements: "Nope.id" does not start with a FHIR R4 resource type ("Nope" is not one); it was ignored`,
				}
				r.RequestURL = "http://example.com/$export?_elements=status,code.coding,Nope.id"
			})},
		{name: "Prefer over two lines, mixed case", target: "/$export?organizeOutputBy=Patient",
			header: hdr("Prefer", "respond-async", "Prefer", "Handling = Lenient"),
			want: with(func(r *export.Request) {
				r.Warnings = []string{"parameter organizeOutputBy is not supported and was ignored"}
				r.RequestURL = "http://example.com/$export?organizeOutputBy=Patient"
			})},
		{name: "Prefer without respond-async", target: "/$export", header: hdr("Prefer", "return=minimal"),
			want: with(func(r *export.Request) { r.RequestURL = "http://example.com/$export" })},
		{name: "Accept variants and empty Bearer", target: "/$export",
			header: hdr("Accept", "text/html;q=0.9, application/json;q=0.8", "Accept", "application/fhir+json; charset=utf-8", "Authorization", "Bearer "),
			want:   with(func(r *export.Request) { r.RequestURL = "http://example.com/$export" })},
		{name: "Accept */* and bare Bearer", target: "/$export", header: hdr("Accept", "*/*", "Authorization", "Bearer"),
			want: with(func(r *export.Request) { r.RequestURL = "http://example.com/$export" })},
		{name: "X-Forwarded-Proto and -Host", target: "/$export?_type=Patient",
			header: hdr("X-Forwarded-Proto", "https", "X-Forwarded-Host", "fhir.example.org, inner.local"),
			opts:   trustForwarded,
			want: with(func(r *export.Request) {
				r.Types = []string{"Patient"}
				r.RequestURL = "https://fhir.example.org/$export?_type=Patient"
			})},
		{name: "BaseURL with a path prefix", target: "/api/Patient/$export",
			header: hdr("X-Forwarded-Host", "ignored.example.org"),
			opts:   func(o *httpapi.Options) { o.BaseURL = "https://bulk.example.net/api/" },
			want: with(func(r *export.Request) {
				r.Level = export.LevelPatient
				r.RequestURL = "https://bulk.example.net/api/Patient/$export"
			})},
		{name: "POST Parameters as the bulk-data-client sends them, merged with the query", method: "POST",
			target: "/Group/g1/$export?_outputFormat=ndjson",
			header: hdr("Content-Type", "application/json", "Prefer", "respond-async, handling=lenient"),
			body: params(`{"name":"_type","valueString":"Patient"},{"name":"_type","valueString":"Observation"},` +
				`{"name":"_since","valueInstant":"2020-01-01T00:00:00+01:00"},` +
				`{"name":"_typeFilter","valueString":"Observation?code=a,b"},` +
				`{"name":"patient","valueReference":{"reference":"Patient/1"}}`),
			want: with(func(r *export.Request) {
				r.Level = export.LevelGroup
				r.GroupID = "g1"
				r.Types = []string{"Patient", "Observation"}
				r.Since = &since
				r.TypeFilters = []export.TypeFilter{{Type: "Observation", Query: "code=a%2Cb"}}
				r.Patients = []string{"1"}
				r.RequestURL = "http://example.com/Group/g1/$export?_outputFormat=ndjson"
			})},
		{name: "POST fhir+json with other value types", method: "POST", target: "/$export",
			header: hdr("Content-Type", "application/fhir+json; charset=utf-8"),
			opts:   func(o *httpapi.Options) { o.Containers = []string{defaultContainer, "abc"} },
			body: params(`{"name":"_outputFormat","valueCode":"application/fhir+ndjson"},` +
				`{"name":"_since","valueDateTime":"2020-01-01T00:00:00+01:00"},` +
				`{"name":"_container","valueString":"abc"},` +
				`{"name":"_typeFilter","valueString":"Observation%3Fstatus%3Dfinal"}`),
			want: with(func(r *export.Request) {
				r.Since = &since
				r.Container = "abc"
				r.TypeFilters = []export.TypeFilter{{Type: "Observation", Query: "status=final"}}
				r.RequestURL = "http://example.com/$export"
			})},
		{name: "POST patient at Group level: ids sorted and distinct", method: "POST", target: "/Group/g1/$export",
			header: hdr("Content-Type", fhirJSON),
			body:   patientBody(`{"reference":"Patient/b-2"}`, `{"reference":"Patient/a.1","display":"A"}`, `{"reference":"Patient/b-2"}`),
			want: with(func(r *export.Request) {
				r.Level = export.LevelGroup
				r.GroupID = "g1"
				r.Patients = []string{"a.1", "b-2"}
				r.RequestURL = "http://example.com/Group/g1/$export"
			})},
		{name: "POST 1000 patients at Patient level", method: "POST", target: "/Patient/$export",
			header: hdr("Content-Type", fhirJSON), body: patientBody(patientRefs(1000)...),
			want: with(func(r *export.Request) {
				r.Level = export.LevelPatient
				for i := range 1000 {
					r.Patients = append(r.Patients, fmt.Sprintf("p%04d", i))
				}
				r.RequestURL = "http://example.com/Patient/$export"
			})},
		{name: "anonymization config at system level, with every other parameter", target: "/$export?_anonymizationConfig=configs/hipaa.json&_type=Patient&_since=2020-01-01T00:00:00%2B01:00&_elements=id&allowPartialManifests=true",
			want: with(func(r *export.Request) {
				r.AnonymizationConfig = "configs/hipaa.json"
				r.Types = []string{"Patient"}
				r.Since = &since
				r.Elements = []string{"id"}
				r.AllowPartialManifests = true
				r.RequestURL = "http://example.com/$export?_anonymizationConfig=configs/hipaa.json&_type=Patient&_since=2020-01-01T00:00:00%2B01:00&_elements=id&allowPartialManifests=true"
			})},
		{name: "anonymization config and ETag at Patient level: the ETag is quoted", target: "/Patient/$export?_anonymizationConfig=deid.json&_anonymizationConfigEtag=0x8DC1234567890AB",
			want: with(func(r *export.Request) {
				r.Level = export.LevelPatient
				r.AnonymizationConfig = "deid.json"
				r.AnonymizationETag = `"0x8DC1234567890AB"`
				r.RequestURL = "http://example.com/Patient/$export?_anonymizationConfig=deid.json&_anonymizationConfigEtag=0x8DC1234567890AB"
			})},
		{name: "POST anonymization config at Group level with patient and a quoted ETag", method: "POST", target: "/Group/g1/$export",
			header: hdr("Content-Type", fhirJSON),
			body: `{"resourceType":"Parameters","parameter":[{"name":"_anonymizationConfig","valueString":"a b/deid.json"},` +
				`{"name":"_anonymizationConfigEtag","valueString":"\"0x8DC1\""},{"name":"patient","valueReference":{"reference":"Patient/p1"}}]}`,
			want: with(func(r *export.Request) {
				r.Level = export.LevelGroup
				r.GroupID = "g1"
				r.Patients = []string{"p1"}
				r.AnonymizationConfig = "a b/deid.json"
				r.AnonymizationETag = `"0x8DC1"`
				r.RequestURL = "http://example.com/Group/g1/$export"
			})},
		{name: "POST Parameters without parameters", method: "POST", target: "/$export",
			header: hdr("Content-Type", fhirJSON), body: `{"resourceType":"Parameters"}`,
			want: with(func(r *export.Request) { r.RequestURL = "http://example.com/$export" })},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var mods []func(*httpapi.Options)
			if tc.opts != nil {
				mods = append(mods, tc.opts)
			}
			b := setup(t, mods...)
			method := tc.method
			if method == "" {
				method = http.MethodGet
			}
			rec := b.call(method, tc.target, tc.header, tc.body)
			if rec.Code != http.StatusAccepted {
				t.Fatalf("status = %d, want 202; body %s", rec.Code, rec.Body)
			}
			got := b.engine.lastRequest(t)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("engine got\n%s\nwant\n%s", dump(got), dump(tc.want))
			}
		})
	}
}

func dump(r export.Request) string {
	since := "<nil>"
	if r.Since != nil {
		since = r.Since.String()
	}
	r.Since = nil
	return fmt.Sprintf("%+v since=%s", r, since)
}

func TestKickOffResponse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		header http.Header
		opts   func(*httpapi.Options)
		want   string
	}{
		{name: "from Host", want: "http://example.com/jobs/j%2F1"},
		{name: "from X-Forwarded", header: hdr("X-Forwarded-Proto", "HTTPS", "X-Forwarded-Host", "bulk.example.org:8443"), opts: trustForwarded, want: "https://bulk.example.org:8443/jobs/j%2F1"},
		{name: "X-Forwarded ignored without EXPORT_TRUST_FORWARDED", header: hdr("X-Forwarded-Proto", "https", "X-Forwarded-Host", "evil.example"), want: "http://example.com/jobs/j%2F1"},
		{name: "forged X-Forwarded-Host ignored", header: hdr("X-Forwarded-Host", "evil.example/x?"), opts: trustForwarded, want: "http://example.com/jobs/j%2F1"},
		{name: "BaseURL wins", header: hdr("X-Forwarded-Host", "other"), opts: func(o *httpapi.Options) { o.BaseURL = "https://x.azurewebsites.net" }, want: "https://x.azurewebsites.net/jobs/j%2F1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var mods []func(*httpapi.Options)
			if tc.opts != nil {
				mods = append(mods, tc.opts)
			}
			b := setup(t, mods...)
			b.engine.jobID = "j/1"
			rec := b.call("GET", "/$export", tc.header, "")
			if rec.Code != http.StatusAccepted {
				t.Fatalf("status = %d, want 202; body %s", rec.Code, rec.Body)
			}
			if got := rec.Header().Get("Content-Location"); got != tc.want {
				t.Errorf("Content-Location = %q, want %q", got, tc.want)
			}
			if rec.Body.Len() != 0 {
				t.Errorf("body = %q, want empty", rec.Body)
			}
		})
	}
}

// manyElements is an _elements value of n distinct valid names.
func manyElements(n int) string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("e%d", i)
	}
	return strings.Join(names, ",")
}

// patientBody is a Parameters body with one patient parameter per
// valueReference given.
func patientBody(refs ...string) string {
	var ps []string
	for _, r := range refs {
		ps = append(ps, `{"name":"patient","valueReference":`+r+`}`)
	}
	return `{"resourceType":"Parameters","parameter":[` + strings.Join(ps, ",") + `]}`
}

// patientRefs returns n distinct references Patient/p0000, Patient/p0001, ...
func patientRefs(n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf(`{"reference":"Patient/p%04d"}`, i))
	}
	return out
}
