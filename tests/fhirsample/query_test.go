package fhirsample

import (
	"net/url"
	"slices"
	"testing"
	"time"
)

func TestParseDateTimeRange(t *testing.T) {
	utc := func(s string) time.Time {
		t.Helper()
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		value     string
		wantStart string
		wantEnd   string // "" means an error is expected
	}{
		{"2024", "2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z"},
		{"2024-02", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"},
		{"2024-12", "2024-12-01T00:00:00Z", "2025-01-01T00:00:00Z"},
		{"2024-02-29", "2024-02-29T00:00:00Z", "2024-03-01T00:00:00Z"},
		{"2024-03-01T10:00:00Z", "2024-03-01T10:00:00Z", "2024-03-01T10:00:01Z"},
		{"2024-03-01T10:00:00+02:00", "2024-03-01T08:00:00Z", "2024-03-01T08:00:01Z"},
		{"2024-03-01T10:00:00 02:00", "2024-03-01T08:00:00Z", "2024-03-01T08:00:01Z"},
		{"2024-03-01T10:00:00-05:30", "2024-03-01T15:30:00Z", "2024-03-01T15:30:01Z"},
		{"2024-03-01T10:00:00.123+02:00", "2024-03-01T08:00:00.123Z", "2024-03-01T08:00:00.123000001Z"},
		{"2024-03-01T10:00:00.5Z", "2024-03-01T10:00:00.5Z", "2024-03-01T10:00:00.500000001Z"},
		{"2023-02-29", "", ""},
		{"2024-13", "", ""},
		{"2024-03-01T10:00:00", "", ""},
		{"2024-03-01T10:00Z", "", ""},
		{"2024-03-01T25:00:00Z", "", ""},
		{"2024-03-01T10:00:00.1234567891Z", "", ""},
		{"2024-03-01 10:00:00Z", "", ""},
		{"24-03-01", "", ""},
		{"", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			got, err := parseDateTimeRange(tt.value)
			if tt.wantEnd == "" {
				if err == nil {
					t.Fatalf("accepted, got %v", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("error: %v", err)
			}
			if !got.start.Equal(utc(tt.wantStart)) || !got.end.Equal(utc(tt.wantEnd)) {
				t.Errorf("range [%v, %v), want [%s, %s)", got.start, got.end, tt.wantStart, tt.wantEnd)
			}
		})
	}
}

func TestDateConditionMatches(t *testing.T) {
	stored, err := time.Parse(time.RFC3339Nano, "2024-03-01T10:00:00.500Z")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		condition string
		want      bool
	}{
		{"2024-03-01T10:00:00.500Z", true},
		{"eq2024-03-01T10:00:00.5Z", true},
		{"2024-03-01T10:00:00.501Z", false},
		{"gt2024-03-01T10:00:00.499Z", true},
		{"gt2024-03-01T10:00:00.500Z", false},
		{"ge2024-03-01T10:00:00.500Z", true},
		{"lt2024-03-01T10:00:00.500Z", false},
		{"lt2024-03-01T10:00:00.501Z", true},
		{"le2024-03-01T10:00:00.500Z", true},
		{"2024-03-01T10:00:00Z", true},
		{"gt2024-03-01T10:00:00Z", false},
		{"ge2024-03-01T10:00:00Z", true},
		{"lt2024-03-01T10:00:00Z", false},
		{"le2024-03-01T10:00:00Z", true},
		{"lt2024-03-01T10:00:01Z", true},
		{"2024-03-01", true},
		{"2024-03-01T12:00:00+02:00", true},
		{"2024-03-02", false},
		{"gt2024-02-29", true},
		{"lt2024-03-02", true},
		{"le2024-03", true},
		{"gt2024-03", false},
		{"ge2024", true},
		{"lt2024", false},
	}
	for _, tt := range tests {
		t.Run(tt.condition, func(t *testing.T) {
			c, err := parseDateCondition(tt.condition)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if got := c.matches(stored); got != tt.want {
				t.Errorf("matches(%v) = %v, want %v", stored, got, tt.want)
			}
		})
	}
}

func TestParseDateConditionRejectsPrefixes(t *testing.T) {
	for _, value := range []string{"ne2024", "sa2024", "eb2024", "ap2024", "xx2024", "GT2024", "gt", "gtgt2024"} {
		t.Run(value, func(t *testing.T) {
			if _, err := parseDateCondition(value); err == nil {
				t.Error("accepted")
			}
		})
	}
}

func TestTokenMatching(t *testing.T) {
	coding := token{system: "http://loinc.org", code: "8302-2"}
	noSystem := token{code: "x"}
	plain := token{code: "final", plainCode: true}
	tests := []struct {
		query string
		t     token
		want  bool
	}{
		{"8302-2", coding, true},
		{"http://loinc.org|8302-2", coding, true},
		{"http://loinc.org|", coding, true},
		{"http://snomed.info/sct|8302-2", coding, false},
		{"|8302-2", coding, false},
		{"|x", noSystem, true},
		{"x", noSystem, true},
		{"final", plain, true},
		{"|final", plain, true},
		{"http://hl7.org/fhir/observation-status|final", plain, false},
		{"Final", plain, false},
		{`a\|b`, token{code: "a|b", plainCode: true}, true},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			q, err := parseTokenValue(tt.query)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if got := q.matches(tt.t); got != tt.want {
				t.Errorf("matches(%+v) = %v, want %v", tt.t, got, tt.want)
			}
		})
	}
}

func TestParseLiteralReference(t *testing.T) {
	tests := []struct {
		value  string
		want   reference
		wantOK bool
	}{
		{"Patient/123", reference{"Patient", "123"}, true},
		{"Patient/123/_history/2", reference{"Patient", "123"}, true},
		{"https://example.org/fhir/Patient/a.b-c", reference{"Patient", "a.b-c"}, true},
		{"urn:uuid:6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2", reference{}, false},
		{"#contained", reference{}, false},
		{"patient/123", reference{}, false},
		{"x/Patient/123", reference{}, false},
		{"Patient/", reference{}, false},
		{"Patient/a b", reference{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			got, ok := parseLiteralReference(tt.value)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("got %+v %v, want %+v %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestSplitUnescaped(t *testing.T) {
	tests := []struct {
		value string
		want  []string
	}{
		{"a", []string{"a"}},
		{"a,b", []string{"a", "b"}},
		{`a\,b,c`, []string{`a\,b`, "c"}},
		{`a\\,b`, []string{`a\\`, "b"}},
		{"a,", []string{"a", ""}},
		{`a\`, []string{`a\`}},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			if got := splitUnescaped(tt.value, ','); !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// FuzzParseQuery checks that the search parser never panics, that the parameters it
// keeps for self links and page tokens parse back to a query with the same results, and
// that the indexes (index.go) find what a scan of every resource finds, in the same order.
func FuzzParseQuery(f *testing.F) {
	st, err := loadStore(testDataDir)
	if err != nil {
		f.Fatalf("load: %v", err)
	}
	observations := st.types["Observation"]
	seeds := []string{
		"",
		"_count=10&_sort=-_lastUpdated,_id",
		"_lastUpdated=ge2024-03-01T10:00:00+02:00&_lastUpdated=lt2024-04",
		"patient=Patient/6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2,abc&code=http://loinc.org%7C8302-2",
		"category=%7Claboratory&status=final,amended&_summary=count",
		"_id=a,b&_format=application/fhir+json",
		`code=a\,b%7Cc`,
		"status:not=final",
		"_count=0&_summary=false",
		"_sort=_lastUpdated&_lastUpdated=le2024-10-02T16:14:05.389Z&_lastUpdated=gt2020",
		"_sort=_lastUpdated,_id&_lastUpdated=2024-10-02&patient=6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2",
		"_sort=_lastUpdated&_lastUpdated=lt2024-10-02T16:14:05.389Z,ge2025&status=final",
		"subject=Patient/6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2&performer=x&_sort=_id",
	}
	for _, s := range seeds {
		f.Add(s)
	}
	limits := pageLimits{defaultCount: 50, maxCount: 1000}
	f.Fuzz(func(t *testing.T, rawQuery string) {
		values, err := url.ParseQuery(rawQuery)
		if err != nil {
			return
		}
		q, err := parseSearchQuery(observations, values, limits)
		if err != nil {
			if _, ok := err.(*requestError); !ok {
				t.Fatalf("error %v is not a requestError", err)
			}
			return
		}
		if q.pageSize < 0 || q.pageSize > limits.maxCount {
			t.Fatalf("page size %d out of bounds", q.pageSize)
		}
		again, err := parseSearchQuery(observations, q.params, limits)
		if err != nil {
			t.Fatalf("kept parameters %q do not parse: %v", q.params.Encode(), err)
		}
		if again.pageSize != q.pageSize || again.summaryCount != q.summaryCount || !slices.Equal(again.sortKeys, q.sortKeys) {
			t.Fatalf("reparsed query differs: %+v vs %+v", again, q)
		}
		if !slices.Equal(observations.search(again), observations.search(q)) {
			t.Fatalf("reparsed query %q finds other resources", q.params.Encode())
		}
		var scanned []*resource
		for _, res := range observations.resources {
			if q.matches(res) {
				scanned = append(scanned, res)
			}
		}
		slices.SortStableFunc(scanned, func(a, b *resource) int {
			if len(q.sortKeys) == 0 {
				return 0
			}
			return q.compare(a, b)
		})
		if got := observations.search(q); !slices.Equal(got, scanned) {
			t.Fatalf("query %q: the indexes find %d resources, a scan %d (or another order)", q.params.Encode(), len(got), len(scanned))
		}
	})
}
