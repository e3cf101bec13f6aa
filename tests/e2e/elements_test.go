package e2e

import (
	"encoding/json"
	"reflect"
	"slices"
	"testing"
)

const (
	subsettedSystem = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
	subsettedCode   = "SUBSETTED"
)

// TestElementsKeepsOnlyTheListedElements exports Observations with
// _elements=id,status: every line holds resourceType, id, meta, status and
// code (the element R4 requires of an Observation, which the IG says to
// keep), each value as the source has it, meta.tag carries SUBSETTED, and
// every Observation of the source is there once.
func TestElementsKeepsOnlyTheListedElements(t *testing.T) {
	svc := startService(t)
	res, err := svc.client.Export(ctx(t), "/$export?_type=Observation&_elements=id,status")
	if err != nil {
		t.Fatal(err)
	}
	want := fixture(t, func(typ string, _ map[string]any) bool { return typ == "Observation" })["Observation"]
	got := res.Resources["Observation"]
	if len(got) != len(want) || len(got) == 0 {
		t.Fatalf("%d Observations exported, want the source's %d", len(got), len(want))
	}
	kept := []string{"resourceType", "id", "meta", "status", "code"}
	byID := map[string]map[string]any{}
	for _, line := range want {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		byID[r["id"].(string)] = r
	}
	for i, line := range got {
		var r map[string]any
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		for k := range r {
			if !slices.Contains(kept, k) {
				t.Fatalf("line %d keeps %s, which _elements=id,status drops: %s", i+1, k, line)
			}
		}
		src, ok := byID[r["id"].(string)]
		if !ok {
			t.Fatalf("line %d: id %v is not a source Observation (or is there twice)", i+1, r["id"])
		}
		delete(byID, r["id"].(string))
		if !hasSubsettedTag(r) {
			t.Fatalf("line %d has no SUBSETTED tag in meta.tag: %s", i+1, line)
		}
		for _, k := range []string{"status", "code", "id"} {
			if !reflect.DeepEqual(r[k], src[k]) {
				t.Fatalf("line %d: %s is %v, the source has %v", i+1, k, r[k], src[k])
			}
		}
		meta, srcMeta := r["meta"].(map[string]any), src["meta"].(map[string]any)
		if meta["lastUpdated"] != srcMeta["lastUpdated"] {
			t.Fatalf("line %d: meta.lastUpdated %v, the source has %v", i+1, meta["lastUpdated"], srcMeta["lastUpdated"])
		}
	}
}

// TestElementsTypeQualifiedLeavesOtherTypesWhole exports Patients and
// Observations with _elements=Observation.status: the Observations are
// subsetted, the Patients are exactly the source's.
func TestElementsTypeQualifiedLeavesOtherTypesWhole(t *testing.T) {
	svc := startService(t)
	res, err := svc.client.Export(ctx(t), "/$export?_type=Patient,Observation&_elements=Observation.status")
	if err != nil {
		t.Fatal(err)
	}
	sameResources(t, map[string][][]byte{"Patient": res.Resources["Patient"]},
		fixture(t, func(typ string, _ map[string]any) bool { return typ == "Patient" }))
	obs := res.Resources["Observation"]
	if len(obs) == 0 {
		t.Fatal("no Observations exported")
	}
	for i, line := range obs {
		var r map[string]any
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatal(err)
		}
		if _, ok := r["subject"]; ok || !hasSubsettedTag(r) || r["status"] == nil {
			t.Fatalf("Observation line %d is not subsetted to status: %s", i+1, line)
		}
	}
}

func hasSubsettedTag(r map[string]any) bool {
	meta, _ := r["meta"].(map[string]any)
	tags, _ := meta["tag"].([]any)
	n := 0
	for _, tag := range tags {
		c, _ := tag.(map[string]any)
		if c["system"] == subsettedSystem && c["code"] == subsettedCode {
			n++
		}
	}
	return n == 1
}
