package export

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/rs/zerolog"

	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/fhir"
)

// The write side of a de-identified export (_anonymizationConfig).
//
// Anonymization is one step of a work item's write path: each resource goes
// through Anonymizer.Anonymize after every decision that reads the original
// (keyset position, compartment owner, _elements) and before the file
// writer, so nothing un-anonymized is added after it and rollover counts the
// bytes actually written. It is a function of the resource's bytes and the
// configuration version the job pinned at kick-off (Request.
// AnonymizationETag); encrypt (a random IV) and perturb (random noise) are
// the exceptions, and the argument does not need them to repeat. A page read
// again after a crash therefore produces the same lines (for encrypt and
// perturb, lines of the same resources), and the checkpoints of exportItem
// keep every line exactly once, as without it.

// loadAnonymizer returns the job's anonymizer, or nil when the job is not
// de-identified. It is loaded once per invocation; Anonymizers caches it per
// (name, ETag) in the process. A configuration that changed or vanished
// since kick-off is a permanent failure: the job never uses another version.
func (e *Engine) loadAnonymizer(ctx context.Context, job *Job) (Anonymizer, []string, error) {
	name := job.Request.AnonymizationConfig
	if name == "" {
		return nil, nil, nil
	}
	if e.set.Anonymizers == nil {
		return nil, nil, configFailure{fault.New(fault.Permanent, "the job asks for de-identified export with the configuration %q, but de-identified export is not configured on this service", name)}
	}
	a, warnings, err := e.set.Anonymizers.Load(ctx, name, job.Request.AnonymizationETag)
	if err != nil {
		return nil, nil, configFailure{fmt.Errorf("load the anonymization configuration %q: %w", name, err)}
	}
	return a, warnings, nil
}

// errAnonymizationConfig marks a failure to load the job's anonymization
// configuration. Its text names the configuration and never the data
// (Anonymizers.Load), so a de-identified job shows it (shownFailure).
var errAnonymizationConfig = errors.New("the anonymization configuration could not be loaded")

type configFailure struct{ error }

func (configFailure) Is(target error) bool { return target == errAnonymizationConfig }

func (c configFailure) Unwrap() error { return c.error }

// shownFailure is the text a client is shown of the failure of one of its
// job's work items. A de-identified job shows the failures of its own
// de-identification (they name the rule or the configuration, never a
// value) and, of anything else, only its kind: the cause may carry the
// source FHIR server's words or a URL path, which can name an original
// record (a resource id, a patient in a diagnostics text). The whole cause
// goes to the service's log, under the job's and the work item's ids.
func (e *Engine) shownFailure(ctx context.Context, jobID string, cause error) string {
	job, err := e.store.GetJob(ctx, jobID)
	if err != nil || job.Request.AnonymizationConfig == "" || errors.Is(cause, errNotAnonymized) || errors.Is(cause, errAnonymizationConfig) {
		return cause.Error()
	}
	what := "the work failed"
	switch fault.KindOf(cause) {
	case fault.Transient, fault.Unavailable:
		what = "the source FHIR server or the storage kept failing"
	case fault.Forbidden:
		what = "the source FHIR server or the storage refused the service's identity"
	case fault.Permanent, fault.NotFound:
		what = "the source FHIR server refused a request or sent something that cannot be exported"
	}
	return what + "; a de-identified export does not show the cause, which may carry the source's words about original records; " +
		"the service's log has it under this job's id"
}

// anonymizationWarnings are the warnings of the job's configuration (such as
// the misspelt processingError key), for the plan's warnings file. Those the
// request already carries are not repeated.
func (e *Engine) anonymizationWarnings(ctx context.Context, job *Job, have []string) ([]string, error) {
	_, warnings, err := e.loadAnonymizer(ctx, job)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, w := range warnings {
		if !slices.Contains(have, w) && !slices.Contains(out, w) {
			out = append(out, w)
		}
	}
	return out, nil
}

// write adds a resource the item exports to its files, de-identified first
// when the job asks for it: the last step, so nothing un-anonymized is added
// after it, and roll-over counts the bytes written.
func (r *itemRun) write(ctx context.Context, w *fileWriter, c Cursor, entry int, line []byte, id string) error {
	if r.anon != nil {
		out, err := r.anonymize(ctx, c, entry, line, id)
		if out == nil || err != nil {
			return err // nil: skipped and reported
		}
		line = out
	}
	return w.add(ctx, line)
}

// anonymize de-identifies one resource of a search page. It returns nil and
// no error when the resource is skipped (processingErrors: skip): an
// OperationOutcome carrying only the type and the anonymized id goes to the
// error file. Under raise the item fails for good, naming the rule and type.
func (r *itemRun) anonymize(ctx context.Context, c Cursor, entry int, line []byte, id string) ([]byte, error) {
	out, err := r.anon.Anonymize(line)
	if err == nil {
		return out, nil
	}
	if !r.anon.SkipErrors() {
		return nil, fault.Wrap(fault.Permanent, notAnonymized{err}, "de-identified export with the configuration %q (processingErrors: raise)", r.job.Request.AnonymizationConfig)
	}
	// err names the rule and the resource type, never a value of the resource.
	msg := fmt.Sprintf("%s/%s (%s search, page %d, entry %d) could not be de-identified and was left out of the export: %v",
		r.item.Type, r.anon.AnonymizedID(id), r.item.Type, c.Page+1, entry, err)
	zerolog.Ctx(ctx).Warn().Str("issue", msg).Msg("a resource could not be de-identified; reported in the error file")
	return nil, r.errs.add(ctx, fhir.NewOutcome("error", "processing", msg).JSON())
}

// errNotAnonymized marks the failure of a resource under processingErrors:
// raise, so that it is not mistaken for a next link the source rejected
// (itemRun.page): it is permanent too, but searching again cannot help.
var errNotAnonymized = errors.New("a resource could not be de-identified")

type notAnonymized struct{ error }

func (notAnonymized) Is(target error) bool { return target == errNotAnonymized }

func (n notAnonymized) Unwrap() error { return n.error }

// anonymizedID is the id a deleted line carries in a de-identified export:
// the id of the bare resource {"resourceType":typ,"id":id} after the
// configuration is applied. So it is exactly the id the resource had in the
// output files (hashed by a cryptoHash rule on Resource.id, as in Microsoft's
// sample configurations, or kept when no rule touches ids). ok is false when
// the configuration removes or cannot process the id: the line is then not
// listed, because the original id must not appear in a de-identified export.
func anonymizedID(a Anonymizer, typ, id string) (string, bool) {
	out, err := a.Anonymize(fmt.Appendf(nil, `{"resourceType":%q,"id":%q}`, typ, id))
	if err != nil {
		return "", false
	}
	got := readHead(out).ID
	return got, got != "" && fhirID.MatchString(got)
}

// shownID is how an error line names a resource of a history entry: its id,
// or its anonymized id in a de-identified export.
func (r *deletedRun) shownID(id string) string {
	if r.anon == nil {
		return id
	}
	return r.anon.AnonymizedID(id)
}
