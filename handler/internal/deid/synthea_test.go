package deid

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

const syntheaDir = "../../../tests/data/synthea-r4-10"

// syntheaResources reads every resource of the Synthea sample, one per line.
func syntheaResources(t testing.TB) [][]byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(syntheaDir, "*.ndjson"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no Synthea data in %s: %v", syntheaDir, err)
	}
	var out [][]byte
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			if line := bytes.TrimSpace(sc.Bytes()); len(line) > 0 {
				out = append(out, bytes.Clone(line))
			}
		}
	}
	return out
}

// hipaaSample is Microsoft's R4 sample configuration with fixed keys.
func hipaaSample(t testing.TB) *Anonymizer {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal(readTestdata(t, "configuration-sample.json"), &doc); err != nil {
		t.Fatal(err)
	}
	params := doc["parameters"].(map[string]any)
	params["cryptoHashKey"] = "123"
	params["dateShiftKey"] = "123"
	params["encryptKey"] = "704ab12c8e3e46d4bea600ef62a6bec7"
	data, _ := json.Marshal(doc)
	cfg, _, err := ParseConfig(data)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, WithClock(func() time.Time { return time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC) }))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// identifying collects, from the resources the sample does not exempt
// (it keeps Organization and OrganizationAffiliation identifiers, telecoms
// and addresses), the values of names, address lines, telecoms and
// identifiers.
func identifying(v any, inResource string, out map[string]bool) {
	switch v := v.(type) {
	case map[string]any:
		if rt, ok := v["resourceType"].(string); ok {
			inResource = rt
		}
		exempt := inResource == "Organization" || inResource == "OrganizationAffiliation"
		for k, c := range v {
			switch k {
			case "name":
				if !exempt || inResource == "Patient" {
					collectStrings(c, out, "family", "given", "text", "prefix", "suffix")
				}
			case "address":
				if !exempt {
					collectStrings(c, out, "line", "city", "text")
				}
			case "telecom":
				if !exempt {
					collectStrings(c, out, "value")
				}
			case "identifier":
				if !exempt {
					collectStrings(c, out, "value")
				}
			}
			identifying(c, inResource, out)
		}
	case []any:
		for _, c := range v {
			identifying(c, inResource, out)
		}
	}
}

// collectStrings adds the string values of the given keys of objects in v.
func collectStrings(v any, out map[string]bool, keys ...string) {
	switch v := v.(type) {
	case []any:
		for _, c := range v {
			collectStrings(c, out, keys...)
		}
	case map[string]any:
		for _, k := range keys {
			switch s := v[k].(type) {
			case string:
				out[s] = true
			case []any:
				for _, x := range s {
					if str, ok := x.(string); ok {
						out[str] = true
					}
				}
			}
		}
	}
}

var literalRef = regexp.MustCompile(`"reference":"([A-Za-z]+)/([^"/]+)"`)

func TestHIPAASampleOnSynthea(t *testing.T) {
	a := hipaaSample(t)
	resources := syntheaResources(t)
	secrets := map[string]bool{}
	kept := map[string]bool{} // values of the exempt Organization fields
	sourceIDs := map[string]bool{}
	var out bytes.Buffer
	outIDs := map[string]bool{}
	for _, r := range resources {
		var doc map[string]any
		if err := json.Unmarshal(r, &doc); err != nil {
			t.Fatal(err)
		}
		rt, _ := doc["resourceType"].(string)
		identifying(doc, "", secrets)
		if rt == "Organization" || rt == "OrganizationAffiliation" {
			collectStrings(doc["identifier"], kept, "value")
			collectStrings(doc["telecom"], kept, "value")
			collectStrings(doc["address"], kept, "line", "city", "text")
		}
		sourceIDs[rt+"/"+doc["id"].(string)] = true

		anon, err := a.Anonymize(r)
		if err != nil {
			t.Fatalf("%s/%v: %v", rt, doc["id"], err)
		}
		var o map[string]any
		if err := json.Unmarshal(anon, &o); err != nil {
			t.Fatalf("output is not JSON: %v", err)
		}
		if o["resourceType"] != rt {
			t.Fatalf("resourceType %v, want %s", o["resourceType"], rt)
		}
		if o["id"] != hashValue([]byte("123"), doc["id"].(string)) {
			t.Fatalf("%s id not hashed with the key", rt)
		}
		outIDs[rt+"/"+o["id"].(string)] = true
		out.Write(anon)
		out.WriteByte('\n')
	}
	for k := range kept {
		delete(secrets, k)
	}
	if len(secrets) < 100 {
		t.Fatalf("premise: only %d identifying values found in the source", len(secrets))
	}
	text := out.String()
	var outStrings map[string]bool = map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		var o any
		_ = json.Unmarshal([]byte(line), &o)
		checkedStrings(o, "", outStrings)
	}
	for s := range secrets {
		if outStrings[s] {
			t.Errorf("source value %q appears in the output", s)
			continue
		}
		if len(s) < 6 {
			continue
		}
		for o := range outStrings {
			if strings.Contains(o, s) {
				t.Errorf("source value %q appears in the output inside %q", s, o)
			}
		}
	}

	// Every reference that resolved in the source resolves in the output,
	// except those the sample redacts on purpose (Claim and
	// ExplanationOfBenefit supportingInfo.value, which can be a Reference).
	resolved, redacted := 0, 0
	for _, r := range resources {
		claim := bytes.HasPrefix(r, []byte(`{"resourceType":"Claim"`)) || bytes.HasPrefix(r, []byte(`{"resourceType":"ExplanationOfBenefit"`))
		for _, m := range literalRef.FindAllSubmatchIndex(r, -1) {
			typ, id := string(r[m[2]:m[3]]), string(r[m[4]:m[5]])
			if !sourceIDs[typ+"/"+id] {
				continue
			}
			resolved++
			if claim && bytes.HasSuffix(r[:m[0]], []byte(`"valueReference":{`)) {
				redacted++
			}
		}
	}
	outResolved, outBroken := 0, 0
	for _, m := range literalRef.FindAllStringSubmatch(text, -1) {
		if outIDs[m[1]+"/"+m[2]] {
			outResolved++
		} else {
			outBroken++
		}
	}
	if resolved == 0 || outResolved != resolved-redacted || outBroken != 0 {
		t.Errorf("%d references resolve in the source (%d of them redacted by the sample); %d resolve in the output, %d do not", resolved, redacted, outResolved, outBroken)
	}
}

// checkedStrings collects the string values of v, leaving out the
// Organization fields the sample keeps on purpose.
func checkedStrings(v any, resource string, out map[string]bool) {
	switch v := v.(type) {
	case string:
		out[v] = true
	case []any:
		for _, c := range v {
			checkedStrings(c, resource, out)
		}
	case map[string]any:
		if rt, ok := v["resourceType"].(string); ok {
			resource = rt
		}
		for k, c := range v {
			if resource == "Organization" || resource == "OrganizationAffiliation" {
				switch k {
				case "name", "identifier", "telecom", "address", "alias":
					continue
				}
			}
			checkedStrings(c, resource, out)
		}
	}
}

// BenchmarkAnonymizeHIPAA measures Anonymize with Microsoft's HIPAA sample
// configuration over the Synthea sample; bytes are input bytes.
func BenchmarkAnonymizeHIPAA(b *testing.B) {
	a := hipaaSample(b)
	resources := syntheaResources(b)
	var total int64
	for _, r := range resources {
		total += int64(len(r))
	}
	b.SetBytes(total)
	b.ReportAllocs()
	b.ResetTimer()
	cpu := processCPU()
	for i := 0; i < b.N; i++ {
		for _, r := range resources {
			if _, err := a.Anonymize(r); err != nil {
				b.Fatal(err)
			}
		}
	}
	// On a machine shared with other work, wall-clock MB/s understates the
	// cost; MB/cpu-s counts only the CPU time this process used (GC included).
	if used := processCPU() - cpu; used > 0 {
		b.ReportMetric(float64(total)*float64(b.N)/1e6/used.Seconds(), "MB/cpu-s")
	}
}

// One Anonymizer serves many work items at once: concurrent calls give the
// same output as sequential ones.
func TestAnonymizeConcurrently(t *testing.T) {
	a := hipaaSample(t)
	resources := syntheaResources(t)
	if len(resources) > 400 {
		resources = resources[:400]
	}
	want := make([][]byte, len(resources))
	for i, r := range resources {
		out, err := a.Anonymize(r)
		if err != nil {
			t.Fatal(err)
		}
		want[i] = out
	}
	errs := make(chan error, 4)
	for g := 0; g < 4; g++ {
		go func() {
			for i := range resources {
				out, err := a.Anonymize(resources[(i+g*97)%len(resources)])
				if err == nil && !bytes.Equal(out, want[(i+g*97)%len(resources)]) {
					err = errors.New("concurrent output differs from the sequential one")
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for g := 0; g < 4; g++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
