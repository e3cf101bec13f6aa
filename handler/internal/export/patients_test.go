package export_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	. "github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// inCompartmentOf keeps the lines of want that are one of the patients or
// reference one of them: their compartments, read from the data itself.
func inCompartmentOf(want map[string][]string, patients ...string) map[string][]string {
	out := map[string][]string{}
	for typ, lines := range want {
		for _, l := range lines {
			for _, p := range patients {
				if (typ == "Patient" && strings.Contains(l, `"id":"`+p+`"`)) || strings.Contains(l, `"reference":"Patient/`+p+`"`) {
					out[typ] = append(out[typ], l)
					break
				}
			}
		}
	}
	return out
}

// TestPatientParameterRestrictsAGroupExportToThosePatients: a Group export
// with patient=p000,p002 holds their compartments, through every parameter
// and across member batches, and nothing of the other member p001.
func TestPatientParameterRestrictsAGroupExportToThosePatients(t *testing.T) {
	set := DefaultSettings()
	set.MemberBatch = 1 // p000 and p002 in separate batches
	b := setup(t, set, nil)
	all := compartmentPopulation(b.source)
	want := inCompartmentOf(all, "p000", "p002")
	if len(want["Observation"]) == 0 || len(want["Patient"]) != 2 || len(want["Patient"]) == len(all["Patient"]) {
		t.Fatalf("premise: the data should hold compartments of p000 and p002 and of another member; got %v", want)
	}
	st := b.export(t, Request{Level: LevelGroup, GroupID: "g1", Patients: []string{"p000", "p002"},
		Types: []string{"DocumentReference", "Observation", "Patient"}}, 5)
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	got := b.lines(t, st, 0)
	wantExactly(t, got, want)
	for _, l := range slices.Concat(got["Observation"], got["DocumentReference"]) {
		if strings.Contains(l, `"id":"authored"`) {
			t.Errorf("the DocumentReference authored only by p001 was exported: %s", l)
		}
	}
}

// TestPatientLevelPatientParameterExportsOnlyThosePatients: at Patient level
// the patient parameter replaces the list of every patient.
func TestPatientLevelPatientParameterExportsOnlyThosePatients(t *testing.T) {
	b := setup(t, DefaultSettings(), nil)
	all := population(b.source, 3, 2)
	delete(all, "Group")
	st := b.export(t, Request{Level: LevelPatient, Patients: []string{"p001"}, Types: []string{"Observation", "Patient"}}, 5)
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	wantExactly(t, b.lines(t, st, 0), inCompartmentOf(all, "p001"))
}

// TestAPatientNotInTheGroupIsRefusedAtKickOff: nothing is created for it.
func TestAPatientNotInTheGroupIsRefusedAtKickOff(t *testing.T) {
	b := setup(t, DefaultSettings(), nil)
	compartmentPopulation(b.source)
	_, err := b.engine.KickOff(context.Background(), Request{Level: LevelGroup, GroupID: "g1",
		Patients: []string{"p001", "zz-outsider"}, Container: "bulk-export"})
	if !fault.Is(err, fault.Invalid) || !strings.Contains(err.Error(), "Patient/zz-outsider") || strings.Contains(err.Error(), "Patient/p001") {
		t.Fatalf("got %v, want invalid naming Patient/zz-outsider only", err)
	}
	if n := b.drain(t, 5); n != 0 {
		t.Errorf("%d queue deliveries after a refused kick-off, want none", n)
	}
}
