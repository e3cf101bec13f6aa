package fhirpath

// The definitions are not committed: internal/gen says where to get them.
//go:generate go run ./internal/gen -dir ${FHIR_R4_DEFINITIONS} -o r4types_gen.go
