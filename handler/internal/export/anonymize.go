package export

import (
	"context"
)

// Anonymizer de-identifies one resource at a time (package deid behind an
// adapter), so the engine imports no configuration format and no FHIRPath.
type Anonymizer interface {
	// Anonymize returns the de-identified resource. The error text never
	// carries resource values: it names the rule and the resource type, so it
	// may go to a failure message or an error file.
	Anonymize(resource []byte) ([]byte, error)
	SkipErrors() bool // processingErrors: skip
	// AnonymizedID is what an OperationOutcome about a skipped resource may
	// carry instead of the resource's id.
	AnonymizedID(id string) string
}

// Anonymizers reads anonymization configurations from the anonymization
// container of the export destination. Settings.Anonymizers holds the one the
// engine uses; nil means de-identified export is off, and a kick-off asking
// for it is refused.
type Anonymizers interface {
	// Check reads the named configuration (If-Match etag when etag != ""), at
	// most 1 MB, parses and validates it, and returns the ETag it read and the
	// configuration's warnings. Every problem is fault.Invalid naming it: a
	// missing container or blob, an ETag mismatch, invalid JSON, a duplicate
	// key, an unknown method, an invalid FHIRPath, a wrong key size, a wrong
	// fhirVersion, an empty key that a rule needs.
	Check(ctx context.Context, name, etag string) (gotETag string, warnings []string, err error)
	// Load returns the anonymizer for exactly that version (If-Match etag),
	// cached per (name, etag) in the process. A blob that changed or vanished
	// since kick-off is fault.Permanent naming the configuration: the job
	// fails, it never uses another version.
	Load(ctx context.Context, name, etag string) (Anonymizer, []string, error)
}
