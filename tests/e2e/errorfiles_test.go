package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/tests/bulkclient"
	"github.com/azfhir/bulkexport/tests/fhirsample"
)

// A source that adds a search outcome entry and a resource without an id to
// its Observation search: the job still completes, the outcome is in an
// error file as the source sent it, the broken entry is reported there
// without its content, and the output is otherwise exact.
func TestSearchOutcomesAndMalformedEntriesGoToErrorFiles(t *testing.T) {
	src, fhirURL := faultySource(t)
	if err := src.AddSearchNoise("Observation"); err != nil {
		t.Fatal(err)
	}
	p := newProcess(t, fhirURL, "EXPORT_PAGE_SIZE=50", "EXPORT_RETRY_DELAY=1s")
	client := &bulkclient.Client{Base: p.base(), MaxWait: 3 * time.Minute}
	res, err := client.Export(ctx(t), "/$export?_type=Observation,Patient")
	if err != nil {
		t.Fatal(err)
	}
	sameResources(t, res.Resources, fixture(t, func(typ string, _ map[string]any) bool {
		return typ == "Observation" || typ == "Patient"
	}))
	listed := false
	for _, f := range res.Manifest.Error {
		if f.Type == "OperationOutcome" && strings.Contains(f.URL, "Observation-errors-") {
			listed = true
		}
	}
	if !listed {
		t.Fatalf("manifest error list %+v has no Observation error file", res.Manifest.Error)
	}
	if len(res.Errors) != 2 {
		t.Fatalf("error files hold %d lines, want 2 (the outcome entry and the malformed entry):\n%s", len(res.Errors), joinLines(res.Errors))
	}
	var copied, reported int
	for _, line := range res.Errors {
		if strings.Contains(string(line), fhirsample.InjectedMalformedMarker) {
			t.Errorf("an error line copies the malformed resource's content: %s", line)
		}
		var oo struct {
			Issue []struct {
				Severity, Code, Diagnostics string
			} `json:"issue"`
		}
		if err := json.Unmarshal(line, &oo); err != nil || len(oo.Issue) != 1 {
			t.Fatalf("error line is not an OperationOutcome with one issue: %s", line)
		}
		switch is := oo.Issue[0]; {
		case is.Diagnostics == fhirsample.InjectedOutcomeDiagnostics && is.Severity == "warning" && is.Code == "incomplete":
			copied++
		case strings.HasPrefix(is.Diagnostics, "Observation search, page 1, entry ") && strings.Contains(is.Diagnostics, "has no id"):
			reported++
		default:
			t.Errorf("unexpected error line: %s", line)
		}
	}
	if copied != 1 || reported != 1 {
		t.Errorf("%d copied outcome entries and %d reports of the malformed entry; want one of each:\n%s", copied, reported, joinLines(res.Errors))
	}
}

func joinLines(lines [][]byte) string {
	var b strings.Builder
	for _, l := range lines {
		b.Write(l)
		b.WriteByte('\n')
	}
	return b.String()
}
