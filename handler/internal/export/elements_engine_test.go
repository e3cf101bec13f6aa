package export_test

import (
	"strings"
	"testing"

	. "github.com/azfhir/bulkexport/handler/internal/export"
)

// TestElementsInAGroupExportAfterOwnership checks that _elements applies to
// what is written, not to what the engine decides on: a Group export in
// member batches of Observations subsetted to status still finds the
// resource naming members of two batches once (ownership reads subject,
// which the subset drops), every Observation is there without subject and
// with the SUBSETTED tag, and the Patients, which no entry names, are whole.
func TestElementsInAGroupExportAfterOwnership(t *testing.T) {
	set := DefaultSettings()
	set.MemberBatch, set.PageSize = 2, 3
	b := setup(t, set, nil)
	want := population(b.source, 5, 3)
	shared := resource("Observation", "shared", t0, `"status":"final","subject":[{"reference":"Patient/p000"},{"reference":"Patient/p004"}]`)
	b.source.add(shared)
	st := b.export(t, Request{Level: LevelGroup, GroupID: "g1", Types: []string{"Observation", "Patient"},
		Elements: []string{"Observation.status"}}, 5)
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	got := b.lines(t, st, 0)
	wantExactly(t, map[string][]string{"Patient": got["Patient"]}, map[string][]string{"Patient": want["Patient"]})
	if n := len(got["Observation"]); n != len(want["Observation"])+1 {
		t.Fatalf("%d Observations, want %d", n, len(want["Observation"])+1)
	}
	sharedSeen := 0
	for _, l := range got["Observation"] {
		if strings.Contains(l, `"subject"`) || strings.Contains(l, `"valueString"`) || !strings.Contains(l, `"status"`) ||
			!strings.Contains(l, `"code":"`+SubsettedCode+`"`) {
			t.Fatalf("Observation not subsetted to status with the tag: %s", l)
		}
		if strings.Contains(l, `"id":"shared"`) {
			sharedSeen++
		}
	}
	if sharedSeen != 1 {
		t.Errorf("the Observation of two batches is written %d times, want once", sharedSeen)
	}
}
