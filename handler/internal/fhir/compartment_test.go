package fhir

import (
	"reflect"
	"testing"
)

// TestPatientCompartmentRows checks rows of the table against the published
// R4 CompartmentDefinition/patient and SearchParameter expressions: a typo
// there silently drops a patient's data from Patient and Group exports.
func TestPatientCompartmentRows(t *testing.T) {
	for typ, want := range map[string][]CompartmentParam{
		"Observation":       {{"subject", []string{"subject"}}, {"performer", []string{"performer"}}},
		"Claim":             {{"patient", []string{"patient"}}, {"payee", []string{"payee.party"}}},
		"DocumentReference": {{"subject", []string{"subject"}}, {"author", []string{"author"}}},
		"Encounter":         {{"patient", []string{"subject"}}},
		"Provenance":        {{"patient", []string{"target"}}},
		"Coverage": {{"policy-holder", []string{"policyHolder"}}, {"subscriber", []string{"subscriber"}},
			{"beneficiary", []string{"beneficiary"}}, {"payor", []string{"payor"}}},
		"Patient": {{"_id", nil}, {"link", []string{"link.other"}}},
	} {
		got, ok := PatientCompartment(typ)
		if !ok || !reflect.DeepEqual(got, want) {
			t.Errorf("PatientCompartment(%s) = %v, %v; want %v", typ, got, ok, want)
		}
	}
	for _, typ := range []string{"Organization", "Practitioner", "Medication", "Group"} {
		if _, ok := PatientCompartment(typ); ok {
			t.Errorf("%s is in the Patient compartment table; R4 (or our Group rule) leaves it out", typ)
		}
	}
	for _, typ := range PatientCompartmentTypes() {
		if !IsExportable(typ) {
			t.Errorf("compartment type %q is not an exportable R4 type", typ)
		}
		for _, prm := range patientCompartment[typ] {
			if prm.Name != "_id" && len(prm.Paths) == 0 {
				t.Errorf("%s parameter %s has no element path", typ, prm.Name)
			}
		}
	}
}
