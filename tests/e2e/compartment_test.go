package e2e

import (
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/tests/bulkclient"
	"github.com/azfhir/bulkexport/tests/exportcheck"
	"github.com/azfhir/bulkexport/tests/fhirsample"
)

// compartmentElements are, for the types the compartment tests export, the
// elements through which the R4 Patient CompartmentDefinition puts a resource
// in a patient's compartment and that the sample server can search (its
// parameters match top-level elements). Written here from the definition, not
// taken from the service, so that the expected set is computed independently.
// Claim's payee and Patient's link are left out: the sample server cannot
// search them, and the export must say so instead.
var compartmentElements = map[string][]string{
	"Observation":       {"subject", "performer"},
	"DocumentReference": {"subject", "author"},
	"Encounter":         {"subject"},
	"Claim":             {"patient"},
}

const compartmentExportTypes = "Patient,Observation,DocumentReference,Encounter,Claim"

// compartmentData copies the sample data into a temporary folder and adds
// resources that are in a Group member's compartment only through a second
// parameter (performer, author), through two parameters, or through members
// of two batches, and some of an outsider who is not a member. It returns the
// folder and the Group's id.
func compartmentData(t *testing.T) (dir, groupID string) {
	t.Helper()
	dir = t.TempDir()
	files, err := filepath.Glob(filepath.Join(dataDir, "*.ndjson"))
	if err != nil || len(files) == 0 {
		t.Fatalf("sample data: %v", err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var g struct {
		ID     string
		Member []struct{ Entity struct{ Reference string } }
	}
	if err := json.Unmarshal([]byte(fixture(t, nil)["Group"][0]), &g); err != nil || len(g.Member) < 6 {
		t.Fatalf("the sample Group must have at least 6 members: %v", err)
	}
	var members []string
	for _, m := range g.Member {
		members = append(members, m.Entity.Reference)
	}
	slices.Sort(members) // batches are runs of sorted ids: first and last are in different batches
	first, second, last := members[0], members[1], members[len(members)-1]
	ref := func(r string) string { return `{"reference":"` + r + `"}` }
	const outsider = "Patient/h10-outsider"
	lu := `"meta":{"lastUpdated":"2024-05-01T00:00:00.000Z"}`
	add := func(file string, lines ...string) {
		f, err := os.OpenFile(filepath.Join(dir, file), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, l := range lines {
			if _, err := f.WriteString(l + "\n"); err != nil {
				t.Fatal(err)
			}
		}
	}
	add("Patient.ndjson", `{"resourceType":"Patient","id":"h10-outsider",`+lu+`,"gender":"other"}`)
	add("Observation.ndjson",
		// Only as performer.
		`{"resourceType":"Observation","id":"h10-performer-only",`+lu+`,"status":"final","code":{"text":"x"},"subject":`+ref(outsider)+`,"performer":[`+ref(last)+`]}`,
		// As subject and as performer, of members in different batches.
		`{"resourceType":"Observation","id":"h10-subject-and-performer",`+lu+`,"status":"final","code":{"text":"x"},"subject":`+ref(last)+`,"performer":[`+ref(first)+`]}`,
		// As performer of two members in different batches.
		`{"resourceType":"Observation","id":"h10-two-performers",`+lu+`,"status":"final","code":{"text":"x"},"subject":`+ref(outsider)+`,"performer":[`+ref(last)+`,`+ref(second)+`]}`,
		// The outsider's own: not in the export.
		`{"resourceType":"Observation","id":"h10-outsiders",`+lu+`,"status":"final","code":{"text":"x"},"subject":`+ref(outsider)+`,"performer":[`+ref(outsider)+`]}`,
	)
	add("DocumentReference.ndjson",
		`{"resourceType":"DocumentReference","id":"h10-authored",`+lu+`,"status":"current","subject":`+ref(outsider)+`,"author":[`+ref(second)+`]}`,
		`{"resourceType":"DocumentReference","id":"h10-about",`+lu+`,"status":"current","subject":`+ref(first)+`,"author":[`+ref(last)+`]}`,
		`{"resourceType":"DocumentReference","id":"h10-outsiders",`+lu+`,"status":"current","subject":`+ref(outsider)+`}`,
	)
	return dir, g.ID
}

// wantCompartment computes, from the data, the resources of the exported
// types in the compartment of a member, by following every reference at
// compartmentElements.
func wantCompartment(t *testing.T, dir, groupID string) map[string][]string {
	t.Helper()
	all := exportcheck.Fixture(t, dir, nil)
	var g struct {
		Member []struct{ Entity struct{ Reference string } }
	}
	for _, line := range all["Group"] {
		if strings.Contains(line, `"id":"`+groupID+`"`) {
			json.Unmarshal([]byte(line), &g)
		}
	}
	member := map[string]bool{}
	for _, m := range g.Member {
		member[m.Entity.Reference] = true
	}
	return exportcheck.Fixture(t, dir, func(typ string, r map[string]any) bool {
		if typ == "Patient" {
			return member["Patient/"+r["id"].(string)]
		}
		for _, el := range compartmentElements[typ] {
			for _, ref := range refsOf(r[el]) {
				if member[ref] {
					return true
				}
			}
		}
		return false
	})
}

// refsOf returns the reference strings of a Reference or a list of them.
func refsOf(v any) []string {
	switch x := v.(type) {
	case map[string]any:
		if s, ok := x["reference"].(string); ok {
			return []string{s}
		}
	case []any:
		var out []string
		for _, el := range x {
			out = append(out, refsOf(el)...)
		}
		return out
	}
	return nil
}

// checkCompartmentExport checks a Group export of compartmentData: every
// resource in a member's compartment through any parameter the source
// supports, once, and a warning naming each parameter it does not.
func checkCompartmentExport(t *testing.T, got map[string][][]byte, errs [][]byte, want map[string][]string) {
	t.Helper()
	for _, id := range []string{"h10-performer-only", "h10-two-performers", "h10-subject-and-performer"} {
		if !slices.ContainsFunc(want["Observation"], func(l string) bool { return strings.Contains(l, `"id":"`+id+`"`) }) {
			t.Fatalf("premise: %s is not in the expected set", id)
		}
	}
	sameResources(t, got, want)
	text := string(slices.Concat(errs...))
	for _, must := range []string{"payee on Claim", "link on Patient"} {
		if !strings.Contains(text, must) || !strings.Contains(text, `"severity":"warning"`) {
			t.Errorf("error files hold no warning about %q:\n%s", must, text)
		}
	}
	if strings.Contains(text, "performer on Observation") || strings.Contains(text, "author on DocumentReference") {
		t.Errorf("a warning names a parameter the source supports:\n%s", text)
	}
}

// TestGroupExportHasEveryCompartmentResourceOnce: resources in a member's
// compartment only as performer or author are exported, and one that two
// parameters or two member batches reach is exported once.
func TestGroupExportHasEveryCompartmentResourceOnce(t *testing.T) {
	dir, groupID := compartmentData(t)
	src, err := fhirsample.New(dir, fhirsample.Options{})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(src.Handler())
	t.Cleanup(hs.Close)
	svc := startService(t, "FHIR_SERVER_URL="+hs.URL+"/fhir", "EXPORT_MEMBER_BATCH=3", "EXPORT_PAGE_SIZE=20")
	res, err := svc.client.Export(ctx(t), "/Group/"+groupID+"/$export?_type="+compartmentExportTypes)
	if err != nil {
		t.Fatal(err)
	}
	checkCompartmentExport(t, res.Resources, res.Errors, wantCompartment(t, dir, groupID))
}

// TestGroupExportAcrossCompartmentParametersSurvivesSIGKILL kills the handler
// at random moments during such a Group export: still every resource once.
func TestGroupExportAcrossCompartmentParametersSurvivesSIGKILL(t *testing.T) {
	dir, groupID := compartmentData(t)
	src, err := fhirsample.New(dir, fhirsample.Options{FailureInjection: true})
	if err != nil {
		t.Fatal(err)
	}
	src.SetSearchDelay(15 * time.Millisecond)
	hs := httptest.NewServer(src.Handler())
	t.Cleanup(hs.Close)
	p := newProcess(t, hs.URL+"/fhir",
		"EXPORT_PAGE_SIZE=10", "EXPORT_MEMBER_BATCH=3", "EXPORT_BLOCK_BYTES=20000",
		"EXPORT_LEASE=3s", "EXPORT_VISIBILITY=4s", "EXPORT_RETRY_DELAY=1s", "EXPORT_STALL_AFTER=30s",
		"EXPORT_WORKERS=4", "EXPORT_MAX_DEQUEUE_COUNT=50")
	client := &bulkclient.Client{Base: p.base(), MaxWait: 5 * time.Minute}
	statusURL, err := client.KickOff(ctx(t), "/Group/"+groupID+"/$export?_type="+compartmentExportTypes)
	if err != nil {
		t.Fatal(err)
	}
	kills := 0
	for kills < 6 {
		time.Sleep(time.Duration(300+200*kills) * time.Millisecond)
		if finished(t, statusURL) {
			break
		}
		p.kill()
		kills++
		p.start()
	}
	_, got, errs := waitAndDownloadAll(t, client, statusURL)
	if kills == 0 {
		t.Fatal("the export finished before the first kill: nothing was proved")
	}
	checkCompartmentExport(t, got, errs, wantCompartment(t, dir, groupID))
	t.Logf("killed the handler %d times during the export", kills)
}
