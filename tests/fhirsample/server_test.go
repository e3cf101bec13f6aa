package fhirsample

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// Ids from the bundled data set.
const (
	patient0 = "6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2"
	patient1 = "58c297c4-d684-4677-8024-01131d93835e"
)

func TestCountsMatchDataSet(t *testing.T) {
	srv, err := New(testDataDir, Options{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	counts := srv.Counts()
	total := 0
	for _, n := range counts {
		total += n
	}
	if len(counts) != 18 || total != 4142 {
		t.Errorf("loaded %d types and %d resources, want 18 and 4142", len(counts), total)
	}
}

func TestMetadata(t *testing.T) {
	_, ts := newTestServer(t, Options{})
	resp, body := doRequest(t, http.MethodGet, ts.URL+"/fhir/metadata", nil, "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var cs capabilityStatement
	if err := json.Unmarshal(body, &cs); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if cs.ResourceType != "CapabilityStatement" || cs.Status != "active" || cs.Kind != "instance" ||
		cs.FHIRVersion != "4.0.1" || len(cs.Format) != 1 || cs.Format[0] != "json" || cs.Date == "" ||
		cs.Software.Name == "" || cs.Implementation.URL != ts.URL+"/fhir" {
		t.Errorf("unexpected header fields: %s", body)
	}
	if len(cs.Rest) != 1 || cs.Rest[0].Mode != "server" || len(cs.Rest[0].Resource) != 18 {
		t.Fatalf("want one server rest with 18 resources: %s", body)
	}
	params := map[string]map[string]string{}
	for _, r := range cs.Rest[0].Resource {
		if len(r.Interaction) != 4 || r.Interaction[0].Code != "read" || r.Interaction[1].Code != "search-type" ||
			r.Interaction[2].Code != "history-instance" || r.Interaction[3].Code != "history-type" {
			t.Errorf("%s: interactions %v", r.Type, r.Interaction)
		}
		params[r.Type] = map[string]string{}
		for _, p := range r.SearchParam {
			params[r.Type][p.Name] = p.Type
		}
	}
	tests := []struct {
		typeName, param, wantType string // wantType "" means absent
	}{
		{"Patient", "_id", "token"},
		{"Patient", "_lastUpdated", "date"},
		{"Patient", "gender", "token"},
		{"Patient", "patient", ""},
		{"Observation", "patient", "reference"},
		{"Observation", "subject", "reference"},
		{"Observation", "code", "token"},
		{"Observation", "category", "token"},
		{"Claim", "patient", "reference"},
		{"Claim", "subject", ""},
		{"Condition", "clinical-status", "token"},
		{"Encounter", "class", "token"},
		{"MedicationRequest", "intent", "token"},
		{"Organization", "patient", ""},
	}
	for _, tt := range tests {
		t.Run(tt.typeName+"/"+tt.param, func(t *testing.T) {
			if got := params[tt.typeName][tt.param]; got != tt.wantType {
				t.Errorf("param type %q, want %q", got, tt.wantType)
			}
		})
	}
}

func TestRead(t *testing.T) {
	_, ts := newTestServer(t, Options{})
	patientLine := dataLines(t, "Patient")[3]
	var patient struct{ ID string }
	if err := json.Unmarshal(patientLine, &patient); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		path       string
		wantStatus int
		wantBody   []byte // nil: an OperationOutcome
		wantCode   string
	}{
		{"stored bytes", "/fhir/Patient/" + patient.ID, http.StatusOK, patientLine, ""},
		{"unknown id", "/fhir/Patient/no-such-id", http.StatusNotFound, nil, "not-found"},
		{"unknown type", "/fhir/Unicorn/" + patient.ID, http.StatusNotFound, nil, "not-found"},
		{"id of another type", "/fhir/Observation/" + patient.ID, http.StatusNotFound, nil, "not-found"},
		{"history not served", "/fhir/Patient/" + patient.ID + "/_history/1", http.StatusNotFound, nil, "not-found"},
		{"outside the base", "/other/Patient/" + patient.ID, http.StatusNotFound, nil, "not-found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := doRequest(t, http.MethodGet, ts.URL+tt.path, nil, "")
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.wantStatus, body)
			}
			if tt.wantBody != nil {
				if !bytes.Equal(body, tt.wantBody) {
					t.Errorf("body differs from the stored line:\n got %s\nwant %s", body, tt.wantBody)
				}
				if resp.Header.Get("ETag") != `W/"1"` || resp.Header.Get("Last-Modified") == "" {
					t.Errorf("ETag %q, Last-Modified %q", resp.Header.Get("ETag"), resp.Header.Get("Last-Modified"))
				}
				return
			}
			if o := decodeOutcome(t, body); o.Issue[0].Code != tt.wantCode {
				t.Errorf("issue code %q, want %q", o.Issue[0].Code, tt.wantCode)
			}
		})
	}
}

func TestSummaryCountPerType(t *testing.T) {
	_, ts := newTestServer(t, Options{})
	sum := 0
	for _, typeName := range dataTypes(t) {
		t.Run(typeName, func(t *testing.T) {
			b := getBundle(t, ts.URL+"/fhir/"+typeName+"?_summary=count")
			if want := len(dataLines(t, typeName)); *b.Total != want {
				t.Errorf("total %d, want %d", *b.Total, want)
			}
			if len(b.Entry) != 0 || b.link("next") != "" {
				t.Errorf("_summary=count returned %d entries, next %q", len(b.Entry), b.link("next"))
			}
			sum += *b.Total
		})
	}
	if sum != 4142 {
		t.Errorf("totals add up to %d, want 4142", sum)
	}
}

func TestSearchFilters(t *testing.T) {
	_, ts := newTestServer(t, Options{})
	const (
		observationCategory = "http://terminology.hl7.org/CodeSystem/observation-category"
		actCode             = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
	)
	tests := []struct {
		name      string
		typeName  string
		query     string // raw query string, sent as is
		wantTotal int
	}{
		{"no parameters", "Observation", "", 1369},
		{"_id list", "Patient", "_id=" + patient0 + "," + patient1 + ",unknown", 2},
		{"_id repeated is AND", "Patient", "_id=" + patient0 + "&_id=" + patient1, 0},
		{"gender plain code", "Patient", "gender=female", 5},
		{"gender |code matches a plain code", "Patient", "gender=%7Cmale", 5},
		{"gender system|code never matches a plain code", "Patient", "gender=http://hl7.org/fhir/administrative-gender%7Cmale", 0},
		{"category code", "Observation", "category=laboratory", 614},
		{"category system|code", "Observation", "category=" + observationCategory + "%7Cvital-signs", 653},
		{"category system|", "Observation", "category=" + observationCategory + "%7C", 1369},
		{"category |code needs no system", "Observation", "category=%7Claboratory", 0},
		{"category OR", "Observation", "category=laboratory,vital-signs", 1267},
		{"category wrong system", "Observation", "category=http://example.org%7Claboratory", 0},
		{"code in CodeableConcept", "Observation", "code=http://loinc.org%7C8302-2", 89},
		{"clinical-status maps to clinicalStatus", "Condition", "clinical-status=active", 35},
		{"class Coding", "Encounter", "class=" + actCode + "%7CAMB,EMER", 332},
		{"class Coding single", "Encounter", "class=EMER", 14},
		{"status and intent", "MedicationRequest", "status=active&intent=order", 21},
		{"status repeated is AND", "MedicationRequest", "status=active&status=stopped", 0},
		{"type plain code", "AllergyIntolerance", "type=allergy", 5},
		{"patient bare id", "Observation", "patient=" + patient0, 167},
		{"patient Type/id", "Observation", "patient=Patient/" + patient0, 167},
		{"patient absolute URL", "Observation", "patient=http://example.org/fhir/Patient/" + patient0, 167},
		{"patient OR", "Observation", "patient=" + patient0 + ",Patient/" + patient1, 283},
		{"patient element", "Claim", "patient=" + patient0, 17},
		{"patient on Immunization", "Immunization", "patient=" + patient0, 11},
		{"subject", "Encounter", "subject=Patient/" + patient0, 16},
		{"subject bare id", "Condition", "subject=" + patient0, 7},
		{"patient and code", "Observation", "patient=" + patient0 + "&code=http://loinc.org%7C8302-2", 0 + countHeights(t, patient0)},
		{"_lastUpdated month", "Observation", "_lastUpdated=2024-03", 102},
		{"_lastUpdated day", "Observation", "_lastUpdated=eq2024-03-15", 3},
		{"_lastUpdated range", "Observation", "_lastUpdated=ge2024-06-01&_lastUpdated=lt2024-07-01", 74},
		{"_lastUpdated exact instant", "Observation", "_lastUpdated=2024-02-10T00:00:01.000Z", 62},
		{"_lastUpdated gt instant excludes ties", "Observation", "_lastUpdated=gt2024-02-10T00:00:01.000Z", 1187},
		{"_lastUpdated ge instant includes ties", "Observation", "_lastUpdated=ge2024-02-10T00:00:01.000Z", 1249},
		{"_lastUpdated lt instant", "Observation", "_lastUpdated=lt2024-02-10T00:00:01.000Z", 120},
		{"_lastUpdated le instant", "Observation", "_lastUpdated=le2024-02-10T00:00:01.000Z", 182},
		{"_lastUpdated gt just before ties", "Observation", "_lastUpdated=gt2024-02-10T00:00:00.999Z", 1249},
		{"_lastUpdated second is a period", "Observation", "_lastUpdated=2024-02-10T00:00:01Z", 62},
		{"_lastUpdated gt second is after the period", "Observation", "_lastUpdated=gt2024-02-10T00:00:01Z", 1187},
		{"_lastUpdated offset with %2B", "Observation", "_lastUpdated=ge2024-03-01T10:00:00%2B02:00&_lastUpdated=lt2024-04-01", 101},
		{"_lastUpdated offset + decoded as space", "Observation", "_lastUpdated=ge2024-03-01T10:00:00+02:00&_lastUpdated=lt2024-04-01", 101},
		{"_lastUpdated OR", "Observation", "_lastUpdated=2024-03,2024-06", 176},
		{"_summary=false", "Patient", "_summary=false", 10},
		{"_format json", "Patient", "_format=json", 10},
		{"_format fhir+json decoded as space", "Patient", "_format=application/fhir+json", 10},
		{"_count=0", "Patient", "_count=0", 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := getBundle(t, ts.URL+"/fhir/"+tt.typeName+"?"+tt.query)
			if *b.Total != tt.wantTotal {
				t.Errorf("total %d, want %d", *b.Total, tt.wantTotal)
			}
			if want := min(tt.wantTotal, defaultDefaultCount); strings.Contains(tt.query, "_count=0") {
				if len(b.Entry) != 0 {
					t.Errorf("_count=0 returned %d entries", len(b.Entry))
				}
			} else if len(b.Entry) != want {
				t.Errorf("%d entries on the first page, want %d", len(b.Entry), want)
			}
			for _, e := range b.Entry {
				if e.Search.Mode != "match" || !strings.HasPrefix(e.FullURL, ts.URL+"/fhir/"+tt.typeName+"/") {
					t.Errorf("entry mode %q, fullUrl %q", e.Search.Mode, e.FullURL)
				}
			}
		})
	}
}

// countHeights counts body-height observations of a patient straight from the data file.
func countHeights(t *testing.T, patientID string) int {
	t.Helper()
	n := 0
	for _, line := range dataLines(t, "Observation") {
		if bytes.Contains(line, []byte(`"subject":{"reference":"Patient/`+patientID+`"}`)) &&
			bytes.Contains(line, []byte(`{"system":"http://loinc.org","code":"8302-2"`)) {
			n++
		}
	}
	if n == 0 {
		t.Fatalf("patient %s has no body height in the data set", patientID)
	}
	return n
}

func TestSearchRejects(t *testing.T) {
	_, ts := newTestServer(t, Options{})
	tests := []struct {
		name        string
		method      string
		target      string
		header      http.Header
		body        string
		wantStatus  int
		wantCode    string
		wantMention string // the diagnostics must mention this
	}{
		{"unknown parameter", "GET", "/fhir/Observation?foo=1", nil, "", 400, "invalid", `"foo"`},
		{"patient on Patient", "GET", "/fhir/Patient?patient=" + patient0, nil, "", 400, "invalid", `"patient"`},
		{"parameter absent on type", "GET", "/fhir/Organization?gender=female", nil, "", 400, "invalid", `"gender"`},
		{"modifier :not", "GET", "/fhir/Observation?status:not=final", nil, "", 400, "not-supported", ":not"},
		{"modifier :missing", "GET", "/fhir/Observation?_id:missing=true", nil, "", 400, "not-supported", ":missing"},
		{"chain", "GET", "/fhir/Observation?subject.name=x", nil, "", 400, "invalid", "subject.name"},
		{"_elements", "GET", "/fhir/Patient?_elements=id", nil, "", 400, "not-supported", "_elements"},
		{"_include", "GET", "/fhir/Observation?_include=Observation:subject", nil, "", 400, "not-supported", "_include"},
		{"_total", "GET", "/fhir/Observation?_total=accurate", nil, "", 400, "not-supported", "_total"},
		{"empty value", "GET", "/fhir/Observation?status=", nil, "", 400, "invalid", "status"},
		{"empty list item", "GET", "/fhir/Observation?status=final,", nil, "", 400, "invalid", "final,"},
		{"negative _count", "GET", "/fhir/Patient?_count=-1", nil, "", 400, "invalid", "_count"},
		{"non-numeric _count", "GET", "/fhir/Patient?_count=ten", nil, "", 400, "invalid", "_count"},
		{"repeated _count", "GET", "/fhir/Patient?_count=1&_count=2", nil, "", 400, "invalid", "_count"},
		{"_summary=true", "GET", "/fhir/Patient?_summary=true", nil, "", 400, "not-supported", "_summary"},
		{"_sort by other field", "GET", "/fhir/Patient?_sort=birthdate", nil, "", 400, "not-supported", "birthdate"},
		{"_lastUpdated ne", "GET", "/fhir/Patient?_lastUpdated=ne2024-01-01", nil, "", 400, "invalid", "ne"},
		{"_lastUpdated garbage", "GET", "/fhir/Patient?_lastUpdated=yesterday", nil, "", 400, "invalid", "_lastUpdated"},
		{"_lastUpdated time without zone", "GET", "/fhir/Patient?_lastUpdated=2024-01-01T10:00:00", nil, "", 400, "invalid", "_lastUpdated"},
		{"_lastUpdated bad month", "GET", "/fhir/Patient?_lastUpdated=2024-13", nil, "", 400, "invalid", "_lastUpdated"},
		{"invalid _id", "GET", "/fhir/Patient?_id=a/b", nil, "", 400, "invalid", "_id"},
		{"patient to a Group", "GET", "/fhir/Observation?patient=Group/1", nil, "", 400, "invalid", "Group"},
		{"urn reference", "GET", "/fhir/Observation?patient=urn:uuid:" + patient0, nil, "", 400, "invalid", "patient"},
		{"token with two bars", "GET", "/fhir/Observation?code=a%7Cb%7Cc", nil, "", 400, "invalid", "code"},
		{"malformed escape", "GET", "/fhir/Observation?code=%zz", nil, "", 400, "invalid", "query"},
		{"_format xml", "GET", "/fhir/Patient?_format=xml", nil, "", 406, "not-supported", "xml"},
		{"Accept xml", "GET", "/fhir/Patient", http.Header{"Accept": {"application/fhir+xml"}}, "", 406, "not-supported", "json"},
		{"unknown type", "GET", "/fhir/Unicorn?_id=1", nil, "", 404, "not-found", "Unicorn"},
		{"base itself", "GET", "/fhir/", nil, "", 404, "not-found", ""},
		{"create", "POST", "/fhir/Patient", http.Header{"Content-Type": {fhirJSON}}, "{}", 405, "not-supported", "POST"},
		{"delete", "DELETE", "/fhir/Patient/" + patient0, nil, "", 405, "not-supported", "DELETE"},
		{"GET _search", "GET", "/fhir/Patient/_search", nil, "", 405, "not-supported", "GET"},
		{"POST _search with JSON", "POST", "/fhir/Patient/_search", http.Header{"Content-Type": {"application/json"}}, "{}", 415, "not-supported", "form"},
		{"POST _search unknown parameter", "POST", "/fhir/Patient/_search", http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}, "bogus=1", 400, "invalid", "bogus"},
		{"metadata by POST", "POST", "/fhir/metadata", nil, "", 405, "not-supported", "POST"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := doRequest(t, tt.method, ts.URL+tt.target, tt.header, tt.body)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.wantStatus, body)
			}
			o := decodeOutcome(t, body)
			if o.Issue[0].Code != tt.wantCode || !strings.Contains(o.Issue[0].Diagnostics, tt.wantMention) {
				t.Errorf("issue %+v, want code %q mentioning %q", o.Issue[0], tt.wantCode, tt.wantMention)
			}
			if resp.StatusCode == http.StatusMethodNotAllowed && resp.Header.Get("Allow") == "" {
				t.Error("405 without an Allow header")
			}
		})
	}
}

func TestPaging(t *testing.T) {
	_, ts := newTestServer(t, Options{})
	tests := []struct {
		name      string
		query     string
		wantTotal int
		wantPages int
		sortedBy  func(a, b pagedResource) bool // a must not come after b; nil: file order
	}{
		{"file order", "_count=100", 1369, 14, nil},
		{"default page size", "", 1369, 28, nil},
		{"by _lastUpdated with ties across pages", "_sort=_lastUpdated&_count=7", 1369, 196, lastUpdatedThenID},
		{"by -_lastUpdated", "_sort=-_lastUpdated&_count=250", 1369, 6, func(a, b pagedResource) bool {
			return a.lastUpdated > b.lastUpdated || (a.lastUpdated == b.lastUpdated && a.id <= b.id)
		}},
		{"by _id", "_sort=_id&_count=500", 1369, 3, func(a, b pagedResource) bool { return a.id <= b.id }},
		{"filtered and sorted", "_sort=_lastUpdated&patient=" + patient0 + "&_count=10", 167, 17, lastUpdatedThenID},
		{"exact multiple of the page size", "_count=37", 1369, 37, nil},
		{"_count above the cap", "_count=5000", 1369, 2, nil},
	}
	fileOrder := observationIDsInFileOrder(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first := ts.URL + "/fhir/Observation"
			if tt.query != "" {
				first += "?" + tt.query
			}
			got, pages := walkPages(t, first)
			if len(got) != tt.wantTotal || len(pages) != tt.wantPages {
				t.Fatalf("walked %d resources in %d pages, want %d in %d", len(got), len(pages), tt.wantTotal, tt.wantPages)
			}
			checkPageLinks(t, ts.URL, pages, tt.wantTotal)
			checkNoRepeats(t, got)
			for i := 1; i < len(got); i++ {
				if tt.sortedBy != nil && !tt.sortedBy(got[i-1], got[i]) {
					t.Fatalf("out of order at %d: %+v then %+v", i, got[i-1], got[i])
				}
			}
			if tt.sortedBy == nil {
				for i, r := range got {
					if r.id != fileOrder[i] {
						t.Fatalf("entry %d is %s, want %s (file order)", i, r.id, fileOrder[i])
					}
				}
			}
		})
	}
}

func lastUpdatedThenID(a, b pagedResource) bool {
	// Every lastUpdated in the data set has the same layout, so strings order like instants.
	return a.lastUpdated < b.lastUpdated || (a.lastUpdated == b.lastUpdated && a.id <= b.id)
}

func observationIDsInFileOrder(t *testing.T) []string {
	t.Helper()
	var ids []string
	for _, line := range dataLines(t, "Observation") {
		var r struct{ ID string }
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.ID)
	}
	return ids
}

// checkPageLinks checks every page has an absolute self link, every page but the last a
// next link carrying only the opaque token, and every page the same total.
func checkPageLinks(t *testing.T, serverURL string, pages []testBundle, wantTotal int) {
	t.Helper()
	for i, p := range pages {
		if *p.Total != wantTotal {
			t.Errorf("page %d: total %d, want %d", i, *p.Total, wantTotal)
		}
		if !strings.HasPrefix(p.link("self"), serverURL+"/fhir/Observation") {
			t.Errorf("page %d: self link %q", i, p.link("self"))
		}
		next := p.link("next")
		if last := i == len(pages)-1; last != (next == "") {
			t.Errorf("page %d of %d: next link %q", i, len(pages), next)
		}
		if next == "" {
			continue
		}
		u, err := url.Parse(next)
		if err != nil || u.Scheme+"://"+u.Host != serverURL || u.Path != "/fhir/Observation" || len(u.Query()) != 1 {
			t.Errorf("page %d: next link %q is not an absolute link with one opaque parameter", i, next)
		}
	}
}

func checkNoRepeats(t *testing.T, got []pagedResource) {
	t.Helper()
	seen := map[string]bool{}
	for _, r := range got {
		if seen[r.id] {
			t.Fatalf("%s repeated", r.id)
		}
		seen[r.id] = true
	}
}

func TestPageSizeOptions(t *testing.T) {
	_, ts := newTestServer(t, Options{DefaultCount: 3, MaxCount: 4})
	tests := []struct {
		query       string
		wantEntries int
	}{
		{"", 3},
		{"_count=2", 2},
		{"_count=4", 4},
		{"_count=1000", 4},
	}
	for _, tt := range tests {
		t.Run("query "+tt.query, func(t *testing.T) {
			b := getBundle(t, ts.URL+"/fhir/Patient?"+tt.query)
			if len(b.Entry) != tt.wantEntries {
				t.Errorf("%d entries, want %d", len(b.Entry), tt.wantEntries)
			}
		})
	}
}

func TestBasePathOption(t *testing.T) {
	tests := []struct{ basePath, path string }{
		{"/r4", "/r4/Patient"},
		{"/", "/Patient"},
		{"/a/b/", "/a/b/Patient"},
	}
	for _, tt := range tests {
		t.Run(tt.basePath, func(t *testing.T) {
			_, ts := newTestServer(t, Options{BasePath: tt.basePath})
			resp, body := doRequest(t, http.MethodGet, ts.URL+tt.path+"?_count=4", nil, "")
			b := decodeBundle(t, resp, body)
			if next := b.link("next"); !strings.HasPrefix(next, ts.URL+tt.path+"?") {
				t.Errorf("next link %q is not under %s", next, tt.path)
			}
		})
	}
}

func TestEntriesEmbedStoredBytes(t *testing.T) {
	_, ts := newTestServer(t, Options{})
	lines := dataLines(t, "Patient")
	b := getBundle(t, ts.URL+"/fhir/Patient?_count=100")
	if len(b.Entry) != len(lines) {
		t.Fatalf("%d entries, want %d", len(b.Entry), len(lines))
	}
	for i, e := range b.Entry {
		if !bytes.Equal(e.Resource, lines[i]) {
			t.Errorf("entry %d is not the stored line byte for byte", i)
		}
	}
}

func TestPOSTSearchMatchesGET(t *testing.T) {
	_, ts := newTestServer(t, Options{})
	form := url.Values{
		"_lastUpdated": {"ge2024-03-01T10:00:00+02:00", "lt2024-12-01"},
		"patient":      {patient0},
		"_sort":        {"_lastUpdated"},
		"_count":       {"20"},
	}
	viaGET, _ := walkPages(t, ts.URL+"/fhir/Observation?"+form.Encode())
	resp, body := doRequest(t, http.MethodPost, ts.URL+"/fhir/Observation/_search",
		http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}, form.Encode())
	first := decodeBundle(t, resp, body)
	viaPOST, _ := walkPages(t, first.link("next"))
	for _, e := range first.Entry {
		var r struct{ ID string }
		if err := json.Unmarshal(e.Resource, &r); err != nil {
			t.Fatal(err)
		}
		viaPOST = append([]pagedResource{{id: r.ID}}, viaPOST...)
	}
	if len(viaGET) == 0 || len(viaPOST) != len(viaGET) || *first.Total != len(viaGET) {
		t.Fatalf("GET found %d, POST %d (total %d)", len(viaGET), len(viaPOST), *first.Total)
	}
}

func TestPageTokenChecks(t *testing.T) {
	_, ts := newTestServer(t, Options{})
	next := getBundle(t, ts.URL+"/fhir/Observation?_count=10").link("next")
	token := mustQueryParam(t, next, pageTokenParam)

	_, otherTS := newTestServer(t, Options{})
	tests := []struct {
		name       string
		target     string
		wantStatus int
	}{
		{"valid", next, http.StatusOK},
		{"valid with _format", next + "&_format=json", http.StatusOK},
		{"another server instance", otherTS.URL + "/fhir/Observation?" + pageTokenParam + "=" + token, http.StatusGone},
		{"another type", ts.URL + "/fhir/Patient?" + pageTokenParam + "=" + token, http.StatusBadRequest},
		{"with other parameters", next + "&_count=5", http.StatusBadRequest},
		{"tampered", ts.URL + "/fhir/Observation?" + pageTokenParam + "=x" + token, http.StatusBadRequest},
		{"not base64", ts.URL + "/fhir/Observation?" + pageTokenParam + "=%21%21", http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := doRequest(t, http.MethodGet, tt.target, nil, "")
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.wantStatus, body)
			}
			if tt.wantStatus != http.StatusOK {
				decodeOutcome(t, body)
			}
		})
	}
}

func mustQueryParam(t *testing.T, rawURL, name string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("parse %q: %v", rawURL, err)
	}
	value := u.Query().Get(name)
	if value == "" {
		t.Fatalf("%q has no %s", rawURL, name)
	}
	return value
}
