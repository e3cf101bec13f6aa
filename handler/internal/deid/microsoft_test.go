package deid

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"
)

// Microsoft's functional test pairs (FHIR/src/Microsoft.Health.Fhir.Anonymizer.Shared.FunctionalTests
// and R4.FunctionalTests, vendored unchanged in testdata/microsoft, see
// testdata/README.md): each input resource anonymized with each
// configuration must equal Microsoft's published target, compared as JSON
// values (key order aside), as Microsoft's FunctionalTestUtility compares them.
// The configurations use keys "123", so every method in them is
// deterministic.
func TestMicrosoftFunctionalPairs(t *testing.T) {
	for _, c := range []struct{ config, input, target string }{
		// ResourceTests.cs
		{"common-config.json", "patient-basic.json", "patient-basic-target.json"},
		{"redact-all-config.json", "patient-basic.json", "patient-redact-all-target.json"},
		{"common-config.json", "patient-special-content.json", "patient-special-content-target.json"},
		{"common-config.json", "patient-null-date.json", "patient-null-date-target.json"},
		{"common-no-partial-config.json", "patient-no-partial.json", "patient-no-partial-target.json"},
		{"substitute-primitive.json", "patient-substitute-primitive.json", "patient-substitute-primitive-target.json"},
		{"substitute-complex.json", "patient-substitute-complex.json", "patient-substitute-complex-target.json"},
		{"substitute-conflict-rules.json", "patient-substitute-conflict-rules.json", "patient-substitute-conflict-rules-target.json"},
		{"generalize-patient-config.json", "patient-generalize.json", "patient-generalize-target.json"},
		{"substitute-multiple.json", "patient-substitute-multiple.json", "patient-substitute-multiple-target.json"},
		{"substitute-multiple-2.json", "patient-substitute-multiple-2.json", "patient-substitute-multiple-2-target.json"},
		// CollectionResourceTests.cs
		{"common-config.json", "bundle-basic.json", "bundle-basic-target.json"},
		{"common-config.json", "contained-basic.json", "contained-basic-target.json"},
		{"common-config.json", "contained-in-bundle.json", "contained-in-bundle-target.json"},
		// R4.FunctionalTests/VersionSpecificTests.cs: the R4 HIPAA sample with keys "123"
		{"r4-configuration-sample.json", "Account-R4.json", "Account-R4-target.json"},
		{"r4-configuration-sample.json", "Claim-R4.json", "Claim-R4-target.json"},
		{"r4-configuration-sample.json", "Contract-R4.json", "Contract-R4-target.json"},
		{"r4-configuration-sample.json", "MedicinalProduct.json", "MedicinalProduct-target.json"},
		{"r4-configuration-sample.json", "OrganizationAffiliation.json", "OrganizationAffiliation-target.json"},
		{"r4-configuration-sample.json", "ServiceRequest.json", "ServiceRequest-target.json"},
	} {
		t.Run(c.config+"/"+c.input, func(t *testing.T) {
			cfg, _, err := ParseConfig(readTestdata(t, "microsoft/"+c.config))
			if err != nil {
				t.Fatal(err)
			}
			a, err := New(cfg, WithClock(func() time.Time { return time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC) }))
			if err != nil {
				t.Fatal(err)
			}
			out, err := a.Anonymize(withoutBOM(readTestdata(t, "microsoft/"+c.input)))
			if err != nil {
				t.Fatal(err)
			}
			var got, want any
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("output is not JSON: %v", err)
			}
			if err := json.Unmarshal(withoutBOM(readTestdata(t, "microsoft/"+c.target)), &want); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				wantJSON, _ := json.Marshal(want)
				t.Errorf("output differs from Microsoft's target\n got: %s\nwant: %s", out, wantJSON)
			}
		})
	}
}

// Microsoft's skip configuration generalizes names with a numeric case,
// which fails at run time. Microsoft then writes an empty resource; we report
// the failure so that the caller leaves the resource out and records an
// OperationOutcome (deliberately different: an empty resource in the output
// counts as data that is not there).
func TestMicrosoftProcessingErrorConfigurations(t *testing.T) {
	for _, c := range []struct {
		config string
		skip   bool
	}{{"configuration-skip-processing-error.json", true}, {"configuration-raise-processing-error.json", false}} {
		cfg, _, err := ParseConfig(readTestdata(t, "microsoft/"+c.config))
		if err != nil {
			t.Fatal(err)
		}
		a, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		_, err = a.Anonymize(withoutBOM(readTestdata(t, "microsoft/patient-basic.json")))
		var pe *ProcessingError
		if !errors.As(err, &pe) || pe.RuleIndex != 0 || pe.ResourceType != "Patient" {
			t.Errorf("%s: error %v, want a processing error of rule 0 on Patient", c.config, err)
		}
		if a.SkipErrors() != c.skip {
			t.Errorf("%s: SkipErrors %v", c.config, a.SkipErrors())
		}
	}
}

func withoutBOM(b []byte) []byte { return bytes.TrimPrefix(b, []byte("\xef\xbb\xbf")) }
