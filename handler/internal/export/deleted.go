package export

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/rs/zerolog"

	"github.com/azfhir/bulkexport/handler/internal/fhir"
)

// An export with _since lists the resources deleted in its window
// (_since, upper] in `deleted` files: one line per resource, a transaction
// Bundle with one DELETE entry, as the IG describes. Each type's deletions are
// a work item of their own (Kind ItemDeleted, id "<Type>.deleted") that pages
// the source's history, GET [Type]/_history?_since=, instead of a search. It is
// an ordinary work item in every other way (lease, checkpoints, repair,
// continuation, its own output and error writers), so the exactly-once
// argument of docs/design.md holds for its files unchanged. A separate item
// rather than a third writer in the type's search item keeps the search item
// as it is, and lists the deletions of a type even when no resource of it
// changed (the plan creates no search item then).

// ItemDeleted is the Kind of a work item that lists one type's deletions.
const ItemDeleted = "deleted"

// deletedItemID is the id of the work item that lists the deletions of typ:
// "Patient.deleted", of the characters a manifest page Position allows.
func deletedItemID(typ string) string { return typ + ".deleted" }

// deletedFilePrefix is the name prefix of the deleted files of typ:
// "Patient-deleted-1.ndjson", and "Patient-deleted-errors-1.ndjson" for the
// item's error files.
func deletedFilePrefix(typ string) string { return typ + "-deleted" }

// planDeleted returns the work items that list the deletions of a job's types
// and the warnings for what will not be listed. Only a system export with
// _since lists deletions. At Patient and Group level a deleted resource's
// content is gone, so whether it was in a member's compartment cannot be told
// from the history entry; listing them all would tell a client about other
// patients' records, so none are listed and a warning says so. A type whose
// history the source's CapabilityStatement does not offer gets a warning
// instead of an item.
func (e *Engine) planDeleted(ctx context.Context, job *Job, types []string) ([]*WorkItem, []string, error) {
	req := job.Request
	if req.Since == nil || len(types) == 0 {
		return nil, nil, nil
	}
	if req.Level != LevelSystem {
		return nil, []string{"Deleted resources are not listed in Patient and Group exports: a deleted resource's content is gone, so the export cannot tell whether it was in a member's compartment; this export's deleted array is empty."}, nil
	}
	offered, err := e.source.HistoryTypes(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("read the source's CapabilityStatement for history support: %w", err)
	}
	var items []*WorkItem
	var warnings []string
	for _, t := range types {
		if !slices.Contains(offered, t) {
			warnings = append(warnings, noHistoryWarning(t, *req.Since, "its CapabilityStatement does not declare the history-type interaction for "+t))
			continue
		}
		items = append(items, &WorkItem{JobID: job.ID, ID: deletedItemID(t), Type: t, Kind: ItemDeleted, State: ItemPending, UpdatedAt: e.now().UTC()})
	}
	return items, warnings, nil
}

func noHistoryWarning(typ string, since time.Time, why string) string {
	return fmt.Sprintf("The source FHIR server does not offer the history of %s (%s); %s resources deleted since %s are not listed in this export's deleted files.",
		typ, why, typ, fhir.FormatInstant(since))
}

// pager walks the source for a work item: a search (itemRun) or a type's
// history (deletedRun). exportItem commits and records between pages.
type pager interface {
	finished(c Cursor) bool
	// page writes what the page at the cursor holds and returns its next link.
	page(ctx context.Context, w *fileWriter, c Cursor) (next string, err error)
	advance(c Cursor, next string) Cursor
}

// deletedRun pages a type's history for one invocation of a deleted item.
//
// Each DELETE entry is decided on its own: it is listed if it falls in the
// window and no later version of the resource, up to the upper bound, is in
// the resource's own history (GET [Type]/[id]/_history?_since=). So a resource
// deleted and re-created inside the window is not listed (it is current, and
// the search items export it), a resource deleted twice is listed once (for
// the later deletion), and one deleted inside the window and re-created after
// it is listed (at the export's upper bound it was deleted). The decision
// reads nothing but the source's history, which does not change inside the
// window, so a page read again after a crash decides the same way and the
// checkpoints of exportItem keep every line once. The history's own order is
// not relied on.
type deletedRun struct {
	e      *Engine
	job    *Job
	item   *WorkItem
	errs   *fileWriter
	since  time.Time
	upper  time.Time
	bundle []byte // the line being built
	// anon is the job's de-identification (nil: none). A deleted line then
	// names the resource by the id it has in the output (anonymizedID), and
	// error lines by its anonymized id, never the original.
	anon Anonymizer
}

func (e *Engine) newDeletedRun(job *Job, item *WorkItem, errs *fileWriter) *deletedRun {
	r := &deletedRun{e: e, job: job, item: item, errs: errs, upper: job.TransactionTime}
	if job.Request.Since != nil {
		r.since = *job.Request.Since
	}
	if u := job.Request.Until; u != nil && u.Before(r.upper) {
		r.upper = *u
	}
	return r
}

// Cursor.Query is 1 once the history is read to its end.
func (r *deletedRun) finished(c Cursor) bool { return c.Query > 0 }

func (r *deletedRun) advance(c Cursor, next string) Cursor {
	if next != "" {
		c.Next = next
		c.Page++
		return c
	}
	return Cursor{Query: 1}
}

func (r *deletedRun) page(ctx context.Context, w *fileWriter, c Cursor) (string, error) {
	pageURL := c.Next
	if pageURL == "" {
		q := url.Values{}
		q.Set("_since", fhir.FormatInstant(r.since))
		q.Set("_count", strconv.Itoa(max(r.e.set.PageSize, 1)))
		pageURL = r.e.source.HistoryURL(r.item.Type, "", q.Encode())
	}
	var entries []HistoryEntry
	next, err := r.e.source.HistoryPage(ctx, pageURL, func(h HistoryEntry) error {
		entries = append(entries, h)
		return nil
	})
	if err != nil && c.Next == "" && errors.Is(err, ErrNoHistory) {
		// The source refused the history itself: a warning, and the item is done.
		zerolog.Ctx(ctx).Warn().Err(err).Msg("the source does not offer this type's history; its deletions are not listed")
		return "", r.errs.add(ctx, fhir.NewOutcome("warning", "not-supported", noHistoryWarning(r.item.Type, r.since, err.Error())).JSON())
	}
	if err != nil {
		return "", err
	}
	// The entries are listed once the page is read, because checking one
	// makes source requests of its own: made while the page's body still
	// streamed, each would hold a second slot of the source client's
	// concurrency cap, and with the cap down to one after throttling it
	// would wait for its own page forever. A page of entries is small.
	for i, h := range entries {
		if err := r.listDeletion(ctx, w, c.Page+1, i+1, h); err != nil {
			return "", err
		}
	}
	return next, nil
}

// listDeletion writes the deleted line of entry number entry of history page
// page, if it is a deletion inside the job's window and the last version of
// its resource, or a warning when it cannot be listed.
func (r *deletedRun) listDeletion(ctx context.Context, w *fileWriter, page, entry int, h HistoryEntry) error {
	if h.Method != "DELETE" {
		return nil
	}
	where := fmt.Sprintf("%s history, page %d, entry %d", r.item.Type, page, entry)
	switch {
	case h.Type != r.item.Type:
		return r.warn(ctx, fmt.Sprintf("%s: the DELETE entry is of type %s, not %s; it is not listed", where, clipType(h.Type), r.item.Type))
	case !fhirID.MatchString(h.ID):
		return r.warn(ctx, where+": the DELETE entry names no valid resource id; it is not listed")
	case h.At.IsZero():
		return r.warn(ctx, fmt.Sprintf("%s: the deletion of %s/%s has no time (response.lastModified), so it cannot be placed in the export's window; it is not listed", where, h.Type, r.shownID(h.ID)))
	case !h.At.After(r.since) || h.At.After(r.upper):
		return nil // outside the window
	}
	latest, err := r.latest(ctx, h)
	if errors.Is(err, ErrNoHistory) {
		why := err.Error()
		if r.anon != nil {
			why = "the source's text is not copied into a de-identified export" // it names the id
		}
		return r.warn(ctx, fmt.Sprintf("%s: the source does not offer the history of %s/%s, so whether it was re-created after its deletion cannot be checked; it is not listed (%s)", where, h.Type, r.shownID(h.ID), why))
	}
	if err != nil || !latest {
		return err
	}
	if r.anon != nil {
		id, ok := anonymizedID(r.anon, h.Type, h.ID)
		if !ok {
			return r.warn(ctx, fmt.Sprintf("%s: the anonymization configuration removes or cannot process the id of %s/%s, so its deletion is not listed", where, h.Type, r.anon.AnonymizedID(h.ID)))
		}
		h.ID = id
	}
	return w.add(ctx, r.deletedLine(h))
}

// fhirID is the R4 id type.
var fhirID = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)

// latest reports whether the deletion h is the last version of its resource
// up to the upper bound.
func (r *deletedRun) latest(ctx context.Context, h HistoryEntry) (bool, error) {
	q := url.Values{}
	q.Set("_since", fhir.FormatInstant(h.At))
	next := r.e.source.HistoryURL(h.Type, h.ID, q.Encode())
	later := false
	for next != "" && !later {
		var err error
		next, err = r.e.source.HistoryPage(ctx, next, func(v HistoryEntry) error {
			if v.At.After(h.At) && !v.At.After(r.upper) {
				later = true
			}
			return nil
		})
		if err != nil {
			return false, fmt.Errorf("read the history of %s/%s: %w", h.Type, r.shownID(h.ID), err)
		}
	}
	return !later, nil
}

// deletedLine is the line of a deleted file for h: a transaction Bundle with
// one DELETE entry (the type and id are checked to be plain tokens).
func (r *deletedRun) deletedLine(h HistoryEntry) []byte {
	r.bundle = append(r.bundle[:0], `{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"`...)
	r.bundle = append(r.bundle, h.Type...)
	r.bundle = append(r.bundle, '/')
	r.bundle = append(r.bundle, h.ID...)
	r.bundle = append(r.bundle, `"}}]}`...)
	return r.bundle
}

// warn writes a warning OperationOutcome into the item's error files.
func (r *deletedRun) warn(ctx context.Context, msg string) error {
	zerolog.Ctx(ctx).Warn().Str("issue", msg).Msg("a history entry cannot be listed as deleted; reported in the error file")
	return r.errs.add(ctx, fhir.NewOutcome("warning", "processing", msg).JSON())
}
