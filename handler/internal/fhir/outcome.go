package fhir

import "encoding/json"

// Issue is one issue of an OperationOutcome.
type Issue struct {
	Severity    string `json:"severity"`              // fatal | error | warning | information
	Code        string `json:"code"`                  // http://hl7.org/fhir/issue-type
	Diagnostics string `json:"diagnostics,omitempty"` // what happened, for a person
}

// OperationOutcome is the FHIR resource every error answer and error file carries.
type OperationOutcome struct {
	ResourceType string  `json:"resourceType"`
	Issue        []Issue `json:"issue"`
}

// NewOutcome returns an OperationOutcome with one issue.
func NewOutcome(severity, code, diagnostics string) OperationOutcome {
	if code == "" {
		code = "exception"
	}
	return OperationOutcome{ResourceType: "OperationOutcome", Issue: []Issue{{Severity: severity, Code: code, Diagnostics: diagnostics}}}
}

// JSON returns the outcome as compact JSON (one NDJSON line, without the newline).
func (o OperationOutcome) JSON() []byte {
	b, err := json.Marshal(o)
	if err != nil { // cannot happen: only strings
		panic(err)
	}
	return b
}
