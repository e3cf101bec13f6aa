package deid

import (
	"os"
	"strings"
	"testing"

	"github.com/azfhir/bulkexport/handler/internal/fault"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseConfigReadsMicrosoftHIPAASample(t *testing.T) {
	cfg, warnings, err := ParseConfig(readTestdata(t, "configuration-sample.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Rules) != 193 {
		t.Errorf("%d rules, want the sample's 193", len(cfg.Rules))
	}
	counts := map[Method]int{}
	for _, r := range cfg.Rules {
		counts[r.Method]++
	}
	want := map[Method]int{Redact: 179, Keep: 8, CryptoHash: 2, DateShift: 3, Perturb: 1}
	for m, n := range want {
		if counts[m] != n {
			t.Errorf("%d %s rules, want %d", counts[m], m, n)
		}
	}
	p := cfg.Parameters
	if cfg.FHIRVersion != "R4" || cfg.SkipErrors || !p.EnablePartialDatesForRedact || !p.EnablePartialAgesForRedact || !p.EnablePartialZipCodesForRedact || len(p.RestrictedZipCodeTabulationAreas) != 14 {
		t.Errorf("parameters read wrong: %+v, %+v", cfg, p)
	}
	if !hasWarning(warnings, "cryptoHashKey is empty") {
		t.Errorf("no warning about the empty keys: %q", warnings)
	}
}

func TestParseConfigReadsDocsSampleWithMisspeltKey(t *testing.T) {
	cfg, warnings, err := ParseConfig(readTestdata(t, "docs-sample.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !hasWarning(warnings, `"processingError" is read as "processingErrors"`) {
		t.Errorf("no warning about processingError: %q", warnings)
	}
	if cfg.SkipErrors {
		t.Error("raise read as skip")
	}
	cfg, _, err = ParseConfig([]byte(`{"fhirVersion":"R4","processingError":"skip","fhirPathRules":[]}`))
	if err != nil || !cfg.SkipErrors {
		t.Errorf("misspelt skip not honoured: %v", err)
	}
	cfg, warnings, err = ParseConfig([]byte(`{"fhirVersion":"R4","processingErrors":"raise","processingError":"skip","fhirPathRules":[]}`))
	if err != nil || cfg.SkipErrors || !hasWarning(warnings, `"processingError" is ignored`) {
		t.Errorf("the correct key must win: skip=%v %q %v", cfg != nil && cfg.SkipErrors, warnings, err)
	}
}

func TestParseConfigWarnsOnEmptyFHIRVersion(t *testing.T) {
	_, warnings, err := ParseConfig([]byte(`{"fhirPathRules":[{"path":"Patient.name","method":"redact"}],"parameters":{"cryptoHashKey":"k","dateShiftKey":"k","encryptKey":"0123456789abcdef"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "fhirVersion is not set") {
		t.Errorf("warnings %q, want only the fhirVersion one", warnings)
	}
}

func TestParseConfigRejectsBadConfigurations(t *testing.T) {
	rules := func(r string) string { return `{"fhirVersion":"R4","fhirPathRules":[` + r + `]}` }
	for _, c := range []struct {
		name, config, want string
	}{
		{"invalid JSON", `{"fhirVersion":"R4",`, "invalid JSON"},
		{"trailing data", rules(``) + `{}`, "data after"},
		{"duplicate top-level key", `{"fhirVersion":"R4","fhirPathRules":[],"fhirPathRules":[]}`, `duplicate key "fhirPathRules"`},
		{"duplicate key in a rule", rules(`{"path":"Patient.name","method":"redact","method":"keep"}`), `duplicate key "method" in $.fhirPathRules[0]`},
		{"duplicate key in parameters", `{"fhirPathRules":[],"parameters":{"cryptoHashKey":"a","cryptoHashKey":"b"}}`, `duplicate key "cryptoHashKey"`},
		{"missing fhirPathRules", `{"fhirVersion":"R4"}`, "fhirPathRules is missing"},
		{"fhirPathRules not an array", `{"fhirVersion":"R4","fhirPathRules":{}}`, "fhirPathRules is a JSON object; expected an array"},
		{"flag not a boolean", `{"fhirPathRules":[],"parameters":{"enablePartialDatesForRedact":"yes"}}`, "enablePartialDatesForRedact is a JSON string; expected true or false"},
		{"unknown method", rules(`{"path":"Patient.name","method":"scramble"}`), `unknown method "scramble"`},
		{"missing method", rules(`{"path":"Patient.name"}`), "fhirPathRules[0] (path \"Patient.name\") has no method"},
		{"missing path", rules(`{"method":"redact"}`), "fhirPathRules[0] has no path"},
		{"path that does not compile", rules(`{"path":"Patient.name","method":"keep"},{"path":"Patient.name.where(","method":"redact"}`), `fhirPathRules[1]: invalid FHIRPath "Patient.name.where("`},
		{"generalize case that does not compile", rules(`{"path":"Patient.birthDate","method":"generalize","cases":{"$this >":"$this"}}`), `case "$this >" does not compile`},
		{"generalize value that does not compile", rules(`{"path":"Patient.birthDate","method":"generalize","cases":{"$this > @2000":"$this +"}}`), `the value "$this +"`},
		{"generalize without cases", rules(`{"path":"Patient.birthDate","method":"generalize"}`), "generalize needs cases"},
		{"generalize bad otherValues", rules(`{"path":"Patient.birthDate","method":"generalize","cases":{},"otherValues":"drop"}`), `otherValues "drop"`},
		{"substitute without replaceWith", rules(`{"path":"Patient.name","method":"substitute"}`), "substitute needs replaceWith"},
		{"perturb without span", rules(`{"path":"Observation.value","method":"perturb"}`), "perturb needs span"},
		{"perturb negative span", rules(`{"path":"Observation.value","method":"perturb","span":-1}`), "span must not be negative"},
		{"perturb roundTo too large", rules(`{"path":"Observation.value","method":"perturb","span":1,"roundTo":29}`), "roundTo must be an integer from 0 to 28"},
		{"perturb bad rangeType", rules(`{"path":"Observation.value","method":"perturb","span":1,"rangeType":"wide"}`), `rangeType "wide"`},
		{"encrypt key of the wrong size", `{"fhirPathRules":[],"parameters":{"encryptKey":"abc"}}`, "encryptKey is 24 bits"},
		{"non-R4 fhirVersion", `{"fhirVersion":"STU3","fhirPathRules":[]}`, `fhirVersion "STU3" is not supported`},
		{"bad processingErrors", `{"fhirVersion":"R4","processingErrors":"keep","fhirPathRules":[]}`, `processingErrors "keep" is not supported`},
		{"bad dateShiftScope", `{"fhirPathRules":[],"parameters":{"dateShiftScope":"planet"}}`, `dateShiftScope "planet"`},
		{"fractional fixed offset", `{"fhirPathRules":[],"parameters":{"dateShiftFixedOffsetInDays":1.5}}`, "dateShiftFixedOffsetInDays must be an integer"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := ParseConfig([]byte(c.config))
			if err == nil {
				t.Fatalf("accepted; want an error containing %q", c.want)
			}
			if !fault.Is(err, fault.Invalid) {
				t.Errorf("error kind %v, want invalid", fault.KindOf(err))
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not contain %q", err, c.want)
			}
		})
	}
}

func TestParseConfigAcceptsEveryKeySize(t *testing.T) {
	for _, key := range []string{"0123456789abcdef", "0123456789abcdef01234567", "704ab12c8e3e46d4bea600ef62a6bec7"} {
		if _, _, err := ParseConfig([]byte(`{"fhirPathRules":[],"parameters":{"encryptKey":"` + key + `"}}`)); err != nil {
			t.Errorf("%d-byte key rejected: %v", len(key), err)
		}
	}
}

func hasWarning(warnings []string, part string) bool {
	for _, w := range warnings {
		if strings.Contains(w, part) {
			return true
		}
	}
	return false
}
