package httpapi_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

// FuzzKickOffQuery sends arbitrary query strings (and Prefer headers) to the
// three kick-off endpoints. The handler must never panic, and must answer
// either 202 with a Content-Location or a 4xx with a valid OperationOutcome.
func FuzzKickOffQuery(f *testing.F) {
	for _, q := range []string{
		"",
		"_type=Patient,Observation&_since=2020-01-01T00:00:00+00:00",
		"_outputFormat=application/fhir+ndjson&_type=Patient",
		"_typeFilter=Observation%3Fcode%3Da%2Cb,Condition%3Fcategory%3Dx",
		"_typeFilter=Observation%253Fstatus%253Dfinal&_typeFilter=Observation?code=a,b",
		"_typeFilter=Observation%3F_include%3DObservation:patient",
		"_container=abc&_elements=id&patient=Patient/1",
		"_since=2020-01-01T00:00:00 01:00&_type=,,",
		"%zz=1&;=;&&=&_type",
		"_typeFilter=,,?,%3F,Foo?=&a=%",
	} {
		f.Add(q, uint8(0), false)
		f.Add(q, uint8(1), true)
		f.Add(q, uint8(2), false)
	}
	paths := []string{"/$export", "/Patient/$export", "/Group/g1/$export"}
	f.Fuzz(func(t *testing.T, query string, level uint8, lenient bool) {
		b := setup(t)
		req := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
		req.URL.Path = paths[int(level)%len(paths)]
		req.URL.RawPath = ""
		req.URL.RawQuery = query
		if lenient {
			req.Header.Set("Prefer", "respond-async, handling=lenient")
		}
		rec := httptest.NewRecorder()
		b.handler.ServeHTTP(rec, req)

		switch {
		case rec.Code == http.StatusAccepted:
			if rec.Header().Get("Content-Location") == "" {
				t.Fatalf("202 without Content-Location for %q", query)
			}
			if len(b.engine.requests) != 1 {
				t.Fatalf("202 but the engine got %d requests", len(b.engine.requests))
			}
		case rec.Code >= 400 && rec.Code < 500:
			var oo struct {
				ResourceType string `json:"resourceType"`
				Issue        []struct{ Severity, Code, Diagnostics string }
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &oo); err != nil || oo.ResourceType != "OperationOutcome" ||
				len(oo.Issue) == 0 || oo.Issue[0].Severity == "" || oo.Issue[0].Code == "" || oo.Issue[0].Diagnostics == "" {
				t.Fatalf("%d for %q with an invalid OperationOutcome: %s", rec.Code, query, rec.Body)
			}
			if len(b.engine.requests) != 0 {
				t.Fatalf("%d but the engine was called", rec.Code)
			}
		default:
			t.Fatalf("status %d for %q: %s", rec.Code, query, rec.Body)
		}
	})
}
