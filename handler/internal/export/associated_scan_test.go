package export

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
)

// The one-pass scan of a Provenance agrees with json.Unmarshal wherever it
// answers, and hands what it does not handle to the decode; the shapes are
// those a FHIR server sends (keys in any order, References with identifiers,
// extensions and displays, escapes, an empty or missing target).
func TestScanProvenanceAgreesWithTheDecode(t *testing.T) {
	cases := []struct {
		json     string
		scanned  bool // the scan answers (else the decode must)
		wantRefs []string
	}{
		{`{"resourceType":"Provenance","id":"p1","meta":{"versionId":"1","lastUpdated":"2024-01-02T03:04:05.678Z"},"target":[{"reference":"Patient/1"},{"reference":"Observation/2/_history/3"}],"recorded":"2024-01-02T03:04:05Z","agent":[{"who":{"reference":"Practitioner/9"}}]}`,
			true, []string{"Patient/1", "Observation/2/_history/3"}},
		{`{"target":[{"reference":"Encounter/e","display":"visit {1}, [a]","extension":[{"url":"x","valueString":"y"}]},{"identifier":{"value":"no-ref"}},{"type":"Patient","reference":"https://ehr.example/fhir/Patient/7"}],"recorded":"2024-02-02T00:00:00+02:00","resourceType":"Provenance","id":"p2"}`,
			true, []string{"Encounter/e", "https://ehr.example/fhir/Patient/7"}},
		{`{"resourceType":"Provenance","id":"p3","target":[],"recorded":"2024-01-01T00:00:00Z"}`, true, nil},
		{`{"resourceType":"Provenance","id":"p4","recorded":"2024-01-01T00:00:00Z","text":{"div":"<div>\"quoted\"</div>"}}`, true, nil},
		{`{"resourceType":"Provenance","id":"p5","target":[{"reference":"Patient\/1"}]}`, false, []string{"Patient/1"}},
		{`{"resourceType":"Provenance","id":"p6","recorded":"2024-01-01T00:00:00Z","target":[{"reference":"#contained"},{"reference":"urn:uuid:1"}]}`,
			true, []string{"#contained", "urn:uuid:1"}},
	}
	for i, c := range cases {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			var b bytes.Buffer
			if err := json.Compact(&b, []byte(c.json)); err != nil {
				t.Fatal(err)
			}
			dec, ok := decodeProvenance(b.Bytes())
			if !ok {
				t.Fatal("the decode refused a valid resource")
			}
			scan, ok := scanProvenance(b.Bytes(), nil)
			if ok != c.scanned {
				t.Fatalf("scan answered %v; want %v", ok, c.scanned)
			}
			if !ok {
				scan = dec
			}
			for _, f := range []provenanceFields{scan, dec} {
				var refs []string
				for _, r := range f.refs {
					refs = append(refs, string(r))
				}
				if !slices.Equal(refs, c.wantRefs) {
					t.Errorf("references %q; want %q", refs, c.wantRefs)
				}
			}
			if scan.resourceType != dec.resourceType || scan.id != dec.id || scan.recorded != dec.recorded || !scan.lastUpdated.Equal(dec.lastUpdated) {
				t.Errorf("scan %+v, decode %+v", scan, dec)
			}
		})
	}
}

// literalReference keeps Type/id of the reference forms FHIR allows for a
// resource on a server, and nothing else.
func TestLiteralReference(t *testing.T) {
	for ref, want := range map[string]string{
		"Observation/1":                                   "Observation/1",
		"Observation/1/_history/2":                        "Observation/1",
		"http://x.example/fhir/Observation/1":             "Observation/1",
		"https://x.example/Observation/1/_history":        "", // "/_history" without a version: not a reference to a version
		"https://x.example/fhir/Patient/a.b-c/_history/9": "Patient/a.b-c",
		"fhir/Observation/1":                              "", // relative with more than Type/id
		"#c1":                                             "",
		"urn:uuid:7":                                      "",
		"Observation/":                                    "",
		"/Observation":                                    "",
	} {
		got, ok := literalReference([]byte(ref))
		if string(got) != want || ok != (want != "") {
			t.Errorf("%q: got %q, %v; want %q", ref, got, ok, want)
		}
	}
}
