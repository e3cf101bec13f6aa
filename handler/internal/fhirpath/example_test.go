package fhirpath_test

import (
	"fmt"

	"github.com/azfhir/bulkexport/handler/internal/fhirpath"
)

// Select returns the tree's own nodes: changing or removing them changes the
// resource that AppendJSON writes.
func Example() {
	patient, err := fhirpath.ParseResource([]byte(`{"resourceType":"Patient","id":"p1",
		"name":[{"use":"official","family":"Doe","given":["Jane"]}],
		"address":[{"city":"Springfield","postalCode":"12345"}],"birthDate":"1970-02-03"}`))
	if err != nil {
		panic(err)
	}
	names := fhirpath.MustCompile("nodesByType('HumanName')")
	zips := fhirpath.MustCompile("Patient.address.postalCode")
	old := fhirpath.MustCompile("Patient.birthDate < @1980")

	for _, n := range must(names.Select(patient)) {
		n.Remove()
	}
	for _, n := range must(zips.Select(patient)) {
		n.Value = "00000"
	}
	fmt.Println(fhirpath.IsTrue(must(old.Select(patient))))
	fmt.Println(string(patient.AppendJSON(nil)))
	// Output:
	// true
	// {"resourceType":"Patient","id":"p1","address":[{"city":"Springfield","postalCode":"00000"}],"birthDate":"1970-02-03"}
}

func must(n []*fhirpath.Node, err error) []*fhirpath.Node {
	if err != nil {
		panic(err)
	}
	return n
}
