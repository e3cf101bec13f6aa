package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/tests/testproc"
)

// startSample runs a fhir-sample of its own on the sample data with extra
// flags (the shared one in TestMain must stay unchanged for the other tests)
// and returns its FHIR base URL.
func startSample(t *testing.T, flags ...string) string {
	t.Helper()
	addr := testproc.FreeAddr()
	cmd := exec.Command(filepath.Join(os.Getenv("BULKEXPORT_DIST"), "fhir-sample"), append([]string{"-data", dataDir, "-addr", addr}, flags...)...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	base := "http://" + addr + "/fhir"
	if err := testproc.WaitReady(base + "/metadata"); err != nil {
		t.Fatal(err)
	}
	return base
}

func deleteLine(ref string) string {
	return `{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"` + ref + `"}}]}`
}

// An export with _since lists in deleted exactly the resources deleted after
// _since and not re-created, once each, and none of them is in output.
func TestSinceListsDeletionsInDeletedAndNotInOutput(t *testing.T) {
	since := time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC)
	// Pick from the fixture: observations updated after _since (one to
	// delete, one deleted and then re-created), one updated before it, and a
	// patient.
	var after, before []string
	var recreated string
	var recreatedAt time.Time
	var patient string
	fixture(t, func(typ string, r map[string]any) bool {
		id, _ := r["id"].(string)
		lu := lastUpdated(r)
		switch {
		case typ == "Patient" && patient == "":
			patient = id
		case typ == "Observation" && lu.After(since.Add(48*time.Hour)) && recreated == "":
			recreated, recreatedAt = id, lu
		case typ == "Observation" && lu.After(since) && len(after) < 2:
			after = append(after, id)
		case typ == "Observation" && lu.Before(since) && len(before) < 2:
			before = append(before, id)
		}
		return false
	})
	if len(after) < 2 || len(before) < 2 || recreated == "" || patient == "" {
		t.Fatalf("the sample data lacks the resources this test deletes: %v %v %q %q", after, before, recreated, patient)
	}
	deleted := map[string]bool{"Observation/" + after[0]: true, "Observation/" + before[0]: true, "Patient/" + patient: true}
	lines := []string{
		"Observation/" + after[0] + " 2025-01-02T03:04:05.678Z",                                 // listed
		"Observation/" + before[0] + " 2024-12-01T00:00:00Z",                                    // listed: updated before _since, deleted after it
		"Patient/" + patient + " 2025-02-01T00:00:00+01:00",                                     // listed
		"Observation/" + after[1] + " 2024-05-01T00:00:00Z",                                     // deleted before _since: not listed
		"Observation/" + before[1] + " 2024-05-02T00:00:00Z",                                    // likewise
		"Observation/" + recreated + " " + recreatedAt.Add(-time.Hour).Format(time.RFC3339Nano), // re-created: in output only
	}
	file := filepath.Join(t.TempDir(), "deletions.txt")
	if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// One source request at a time: checking a deletion reads the
	// resource's own history, so a check made while the type's history page
	// still held the only slot would wait for itself and the job would hang.
	svc := startService(t, "FHIR_SERVER_URL="+startSample(t, "-deletions", file), "EXPORT_SOURCE_CONCURRENCY=1")

	res, err := svc.client.Export(ctx(t), "/$export?_type=Patient,Observation&_since="+since.Format(time.RFC3339))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range res.Deleted {
		got = append(got, string(l))
	}
	var want []string
	for ref := range deleted {
		want = append(want, deleteLine(ref))
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("deleted lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, f := range res.Manifest.Deleted {
		if f.Type != "Bundle" || !strings.Contains(f.URL, "-deleted-") {
			t.Errorf("manifest deleted item %+v; want type Bundle and a <Type>-deleted-<n>.ndjson file", f)
		}
	}
	if len(res.Errors) != 0 {
		t.Errorf("error lines %q; want none", res.Errors)
	}
	sameResources(t, res.Resources, fixture(t, func(typ string, r map[string]any) bool {
		return (typ == "Patient" || typ == "Observation") && lastUpdated(r).After(since) && !deleted[fmt.Sprintf("%s/%s", typ, r["id"])]
	}))
}

// A source without history gives a warning in the error file; the export
// completes, with every changed resource and no deleted file.
func TestSinceOnASourceWithoutHistoryWarnsAndCompletes(t *testing.T) {
	since := time.Date(2024, 9, 1, 0, 0, 0, 0, time.UTC)
	svc := startService(t, "FHIR_SERVER_URL="+startSample(t, "-no-history"))
	res, err := svc.client.Export(ctx(t), "/$export?_type=Encounter&_since="+since.Format(time.RFC3339))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Manifest.Deleted) != 0 {
		t.Errorf("deleted files %+v from a source without history", res.Manifest.Deleted)
	}
	if len(res.Errors) != 1 || !strings.Contains(string(res.Errors[0]), `"severity":"warning"`) ||
		!strings.Contains(string(res.Errors[0]), "does not offer the history of Encounter") {
		t.Errorf("error lines %q; want one warning that Encounter's history is not offered", res.Errors)
	}
	sameResources(t, res.Resources, fixture(t, func(typ string, r map[string]any) bool {
		return typ == "Encounter" && lastUpdated(r).After(since)
	}))
}
