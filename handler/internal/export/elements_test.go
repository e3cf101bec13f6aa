package export

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const subsettedJSON = `{"system":"` + SubsettedSystem + `","code":"` + SubsettedCode + `","display":"subsetted"}`

func TestSubsetResource(t *testing.T) {
	t.Parallel()
	obs := `{"resourceType":"Observation","id":"o1","meta":{"versionId":"2","lastUpdated":"2024-01-02T03:04:05Z"},` +
		`"status":"final","_status":{"extension":[{"url":"u","valueString":"x"}]},"category":[{"text":"vital"}],` +
		`"code":{"text":"bp"},"subject":{"reference":"Patient/p1"},"valueQuantity":{"value":1.50},"note":[{"text":"n"}]}`
	tests := []struct {
		name     string
		resource string
		elements []string
		typ      string
		want     string // "" : the type is not subsetted
	}{
		{
			name:     "listed kept, others dropped, mandatory kept, tag added",
			resource: obs, elements: []string{"status"}, typ: "Observation",
			want: `{"resourceType":"Observation","id":"o1","meta":{"versionId":"2","lastUpdated":"2024-01-02T03:04:05Z","tag":[` + subsettedJSON + `]},` +
				`"status":"final","_status":{"extension":[{"url":"u","valueString":"x"}]},"code":{"text":"bp"}}`,
		},
		{
			name:     "type-qualified for its type, choice element by its name",
			resource: obs, elements: []string{"Observation.subject", "Patient.gender", "value"}, typ: "Observation",
			want: `{"resourceType":"Observation","id":"o1","meta":{"versionId":"2","lastUpdated":"2024-01-02T03:04:05Z","tag":[` + subsettedJSON + `]},` +
				`"status":"final","_status":{"extension":[{"url":"u","valueString":"x"}]},"code":{"text":"bp"},"subject":{"reference":"Patient/p1"},"valueQuantity":{"value":1.50}}`,
		},
		{
			name:     "type-qualified for another type only: untouched",
			resource: obs, elements: []string{"Patient.gender", "Condition.code"}, typ: "Observation",
		},
		{
			name:     "existing tags kept, SUBSETTED appended",
			resource: `{"resourceType":"Patient","id":"p","meta":{"tag":[{"system":"s","code":"c"}],"source":"x"},"gender":"female","birthDate":"2000-01-01"}`,
			elements: []string{"gender"}, typ: "Patient",
			want: `{"resourceType":"Patient","id":"p","meta":{"tag":[{"system":"s","code":"c"},` + subsettedJSON + `],"source":"x"},"gender":"female"}`,
		},
		{
			name:     "SUBSETTED already present is not repeated",
			resource: `{"resourceType":"Patient","id":"p","meta":{"tag":[{"code":"SUBSETTED","system":"` + SubsettedSystem + `"}]},"gender":"female","active":true}`,
			elements: []string{"gender"}, typ: "Patient",
			want: `{"resourceType":"Patient","id":"p","meta":{"tag":[{"code":"SUBSETTED","system":"` + SubsettedSystem + `"}]},"gender":"female"}`,
		},
		{
			name:     "no meta: one is added with the tag",
			resource: `{"resourceType":"Patient","id":"p","gender":"female","active":true}`,
			elements: []string{"active"}, typ: "Patient",
			want: `{"resourceType":"Patient","id":"p","active":true,"meta":{"tag":[` + subsettedJSON + `]}}`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			keep := elementsFor(tc.elements, tc.typ)
			if tc.want == "" {
				if keep != nil {
					t.Fatalf("a %s is subsetted by %v, want it untouched", tc.typ, tc.elements)
				}
				return
			}
			if keep == nil {
				t.Fatalf("a %s is not subsetted by %v", tc.typ, tc.elements)
			}
			got, err := subsetResource([]byte(tc.resource), keep)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got\n %s\nwant\n %s", got, tc.want)
			}
			if slow, err := subsetDecoded([]byte(tc.resource), keep); err != nil || string(slow) != tc.want {
				t.Errorf("decoding path: %v\n %s", err, slow)
			}
			if !json.Valid(got) {
				t.Errorf("the result is not valid JSON")
			}
		})
	}
}

// TestElementsKeepsMandatory checks that the R4 required elements of a type
// survive even when not listed (Claim requires patient, status and more).
func TestElementsKeepsMandatory(t *testing.T) {
	t.Parallel()
	keep := elementsFor([]string{"id"}, "Claim")
	for _, e := range []string{"resourceType", "id", "meta", "status", "type", "use", "patient", "created", "provider", "priority", "insurance"} {
		if !keep.keeps([]byte(e)) {
			t.Errorf("Claim subset drops mandatory %s", e)
		}
	}
	if keep.keeps([]byte("item")) || keep.keeps([]byte("total")) {
		t.Errorf("Claim subset keeps elements not listed")
	}
}

// TestSubsetPathsAgree checks that the fast path over compact JSON and the
// decoding path give the same bytes for every resource of the sample data,
// for a list that keeps some elements of every type and the tags of none.
func TestSubsetPathsAgree(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join("..", "..", "..", "tests", "data", "synthea-r4-10", "*.ndjson"))
	if err != nil || len(files) == 0 {
		t.Fatalf("sample data: %v (%d files)", err, len(files))
	}
	n := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		typ := strings.TrimSuffix(filepath.Base(f), ".ndjson")
		keep := elementsFor([]string{"status", "subject", "value", "name", typ + ".code"}, typ)
		for l := range strings.SplitSeq(string(data), "\n") {
			if l == "" {
				continue
			}
			fast, ok := subsetCompact([]byte(l), keep)
			if !ok {
				t.Fatalf("%s: the fast path refused a compact line: %.120s", typ, l)
			}
			slow, err := subsetDecoded([]byte(l), keep)
			if err != nil {
				t.Fatal(err)
			}
			if string(fast) != string(slow) {
				t.Fatalf("%s: paths differ\nfast %s\nslow %s", typ, fast, slow)
			}
			n++
		}
	}
	if n < 100 {
		t.Fatalf("only %d resources compared", n)
	}
}

func TestSubsetResourceRejectsBrokenInput(t *testing.T) {
	t.Parallel()
	keep := elementsFor([]string{"status"}, "Observation")
	for _, in := range []string{`[1]`, `{"status":`, `{"meta":[1],"id":"x"}`, `{"meta":{"tag":{}}}`} {
		if out, err := subsetResource([]byte(in), keep); err == nil {
			t.Errorf("%s: no error, got %s", in, out)
		}
	}
}

// BenchmarkSubsetResource measures _elements on the sample data's
// Observations (typical Synthea resources), keeping status and subject.
func BenchmarkSubsetResource(b *testing.B) {
	data, err := os.ReadFile(filepath.Join("..", "..", "..", "tests", "data", "synthea-r4-10", "Observation.ndjson"))
	if err != nil {
		b.Skipf("sample data: %v", err)
	}
	lines := slices.DeleteFunc(strings.Split(string(data), "\n"), func(s string) bool { return s == "" })
	keep := elementsFor([]string{"id", "status", "Observation.subject"}, "Observation")
	var total int64
	for _, l := range lines {
		total += int64(len(l))
	}
	in := make([][]byte, len(lines))
	for i, l := range lines {
		in[i] = []byte(l)
	}
	b.SetBytes(total)
	b.ReportAllocs()
	for b.Loop() {
		for _, l := range in {
			if _, err := subsetResource(l, keep); err != nil {
				b.Fatal(err)
			}
		}
	}
}
