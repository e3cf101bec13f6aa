package export

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/fhir"
)

// maxRestartCount caps the page size of a search restarted after a lost next link.
const maxRestartCount = 10000

// checkpointEvery bounds the work redone after a crash: an item commits and
// records its position (renewing its lease) at least this often, and
// whenever a block is full. It is well inside the lease, so a live owner
// never loses its item between two checkpoints.
//
// The first checkpoints of an invocation come sooner (after 1, 2, 4 and 8
// seconds; n is the number made so far), because the status a client polls
// counts only recorded resources: a slow source shows progress within a
// second instead of ten. That costs about three more block commits and row
// writes per invocation, and each is the same checkpoint as any other, so the
// argument for exactly-once output is unchanged.
func (e *Engine) checkpointEvery(n int) time.Duration {
	return min(time.Second<<min(n, 4), 10*time.Second, e.set.Lease/4)
}

// exportItem pages the source for one work item and writes its NDJSON files,
// from the recorded cursor on. It returns when the item is done, or, after
// handing the rest to a continuation message, when the invocation's budget
// is spent or the process asks its work to stop (at.Stop).
func (e *Engine) exportItem(ctx context.Context, job *Job, item *WorkItem, deadline time.Time, at Attempt) error {
	log := zerolog.Ctx(ctx)
	w := newFileWriter(e.blobs, job, item, e.set)
	if err := w.repair(ctx); err != nil {
		return err
	}
	ew := newErrorWriter(e.blobs, job, item, e.set)
	if err := ew.repair(ctx); err != nil {
		return err
	}
	anon, _, err := e.loadAnonymizer(ctx, job) // once per invocation (anonymize_write.go)
	if err != nil {
		return err
	}
	var run pager
	switch item.Kind {
	case ItemDeleted:
		deleted := e.newDeletedRun(job, item, ew)
		deleted.anon = anon
		run = deleted
	case ItemAssociated:
		if anon != nil { // KickOff refuses the combination
			return fault.New(fault.Permanent, "includeAssociatedData cannot be combined with _anonymizationConfig")
		}
		associated, err := e.newAssociatedRun(ctx, job, item, ew)
		if err != nil {
			return err
		}
		defer associated.close()
		run = associated
	default:
		search, err := e.newItemRun(ctx, job, item)
		if err != nil {
			return err
		}
		search.errs = ew
		search.anon = anon
		// Read the next page ahead only while this invocation will write
		// it; a hand-on writes the page read ahead first.
		search.mayReadAhead = func() bool { return !at.stopping() && time.Now().Before(deadline) }
		defer search.stopReadAhead()
		run = search
	}

	cur := item.Cursor
	lastCheckpoint, checkpoints := time.Now(), 0
	for {
		finished := run.finished(cur)
		if !finished {
			next, err := run.page(ctx, w, cur)
			if err != nil {
				return err
			}
			cur = run.advance(cur, next)
			finished = run.finished(cur)
		}
		// Hand on at this page boundary when the budget is spent or the
		// process is shutting down: both end in the same checkpoint and
		// continuation, so a stop loses nothing and repeats nothing.
		outOfTime := time.Now().After(deadline)
		stopping := at.stopping()
		handOn := !finished && (outOfTime || stopping) && !readingAhead(run)
		if !finished && !handOn && w.pending()+ew.pending() < int64(e.set.BlockBytes) && time.Since(lastCheckpoint) < e.checkpointEvery(checkpoints) {
			continue
		}

		// Checkpoint: commit both writers, then record where the committed
		// data ends. A crash between the commits is repaired like any other
		// crash before the record: both files go back to their recorded blocks.
		if err := w.commit(ctx); err != nil {
			return err
		}
		if err := ew.commit(ctx); err != nil {
			return err
		}
		item.Cursor = cur
		if finished {
			item.State = ItemDone
		} else if handOn {
			item.LeaseOwner = "" // released: the continuation takes it
		}
		if err := e.record(ctx, item); err != nil {
			return err
		}
		lastCheckpoint, checkpoints = time.Now(), checkpoints+1
		log.Debug().Int64("done", item.Done).Int("files", len(item.Files)).Msg("checkpoint")
		// A cancel that came while this item ran deleted the job's folder
		// before this commit: look once more, and remove what we wrote.
		if err := e.checkCancelled(ctx, job.ID); err != nil {
			return err
		}
		if finished {
			// type, bytes and sinceKickOff feed the operators' workbook
			// (resources and bytes per minute, time to finish per type).
			log.Info().Str("type", item.Type).Int64("resources", item.Done).Int("files", len(item.Files)).
				Int64("bytes", fileBytes(item.Files)).Int64("duplicatesSkipped", item.Skipped).Int64("errors", item.ErrorCount).
				Dur("sinceKickOff", e.now().Sub(job.CreatedAt)).Msg("work item done")
			e.logIfCompleted(ctx, job)
			if item.Kind != ItemAssociated {
				e.startAssociatedIfReady(ctx, job) // this may have been the last item it waits for
			}
			return nil
		}
		if handOn {
			if err := e.queue.Enqueue(ctx, Message{Job: job.ID, Item: item.ID}); err != nil {
				return fmt.Errorf("enqueue continuation: %w", err)
			}
			why := "invocation budget spent"
			if stopping {
				why = "shutting down"
			}
			log.Info().Int64("done", item.Done).Msg(why + "; checkpointed, released and continuing in a new message")
			return nil
		}
	}
}

// itemRun is what one invocation of a work item knows about its searches.
type itemRun struct {
	e       *Engine
	job     *Job
	item    *WorkItem
	queries []string // OR-ed _typeFilter queries, or one empty query
	batches int      // member batches (Patient/Group); 0 at system level
	owner   map[string]int
	params  []fhir.CompartmentParam // compartment parameters searched (Patient/Group)
	members []string                // ids of the batch being searched
	batchOf int                     // which batch members holds (-1: none)
	pos     position                // where the search stands, resource by resource
	scratch bytes.Buffer            // the resource being looked at, compacted
	errs    *fileWriter             // the item's error files
	keep    elementSet              // _elements of the item's type; nil: resources are written whole
	anon    Anonymizer              // the job's de-identification; nil: resources are written as they are

	lastRestart restartPoint // where the last restart after a lost next link began

	// Reading the next page ahead while one is written (readahead.go).
	ahead        *readAhead
	noAhead      bool        // a page was too large to hold: stream the rest
	mayReadAhead func() bool // false once the invocation is about to hand on
	aheadSize    int         // bytes of the last page read ahead, to size the next one's buffer
	spareBuf     []byte      // the buffers of the page written last, for the next read ahead
	spareEntries []aheadEntry
}

type restartPoint struct {
	after time.Time
	ties  int
}

// position is the keyset of the last resource passed in a search sorted by
// _lastUpdated: its instant and every id passed at that instant.
type position struct {
	After time.Time
	Ties  []string
	seen  map[string]bool // Ties as a set
	// unsorted: the source did not return the search in _lastUpdated order,
	// so the position cannot be trusted to restart from.
	unsorted bool
}

// passed reports whether a resource at (lastUpdated, id) was already passed.
func (p *position) passed(lastUpdated time.Time, id string) bool {
	if lastUpdated.IsZero() || p.After.IsZero() || p.unsorted {
		return false
	}
	if lastUpdated.Before(p.After) {
		return true
	}
	if !lastUpdated.Equal(p.After) {
		return false
	}
	if p.seen == nil {
		p.seen = make(map[string]bool, len(p.Ties))
		for _, t := range p.Ties {
			p.seen[t] = true
		}
	}
	return p.seen[id]
}

// pass moves the position past a resource.
func (p *position) pass(lastUpdated time.Time, id string) {
	switch {
	case lastUpdated.IsZero():
	case lastUpdated.Before(p.After):
		p.unsorted = true
	case lastUpdated.Equal(p.After):
		p.Ties = append(p.Ties, id)
		if p.seen != nil {
			p.seen[id] = true
		}
	case lastUpdated.After(p.After):
		p.After, p.Ties, p.seen = lastUpdated, []string{id}, nil
	}
}

func (e *Engine) newItemRun(ctx context.Context, job *Job, item *WorkItem) (*itemRun, error) {
	// A window's searches carry its bounds instead of the job's.
	r := &itemRun{e: e, job: windowJob(job, item.Window), item: item, queries: filterQueries(job, item.Type), batchOf: -1,
		keep: elementsFor(job.Request.Elements, item.Type)}
	if job.Request.Level == LevelSystem {
		return r, nil
	}
	plan, err := e.store.GetItem(ctx, job.ID, PlanItemID)
	if err != nil {
		return nil, fmt.Errorf("read plan: %w", err)
	}
	r.batches = plan.Batches
	r.params = itemParams(item)
	if len(r.params)*r.batches > 1 {
		// A resource that names patients of several batches, or a patient
		// through several parameters, is found by the search of each
		// (parameter, batch) pair; it is written only by the first of those
		// pairs (ownsResource), so it is written once.
		r.owner = make(map[string]int)
		for b := range r.batches {
			ids, err := e.store.GetMembers(ctx, job.ID, b)
			if err != nil {
				return nil, fmt.Errorf("read member batch %d: %w", b, err)
			}
			for _, id := range ids {
				r.owner[id] = b
			}
		}
	}
	return r, nil
}

func (r *itemRun) finished(c Cursor) bool { return c.Query >= len(r.queries) }

// advance moves the cursor past a page whose next link is next.
func (r *itemRun) advance(c Cursor, next string) Cursor {
	c.After, c.Ties = r.pos.After, r.pos.Ties
	if r.pos.unsorted {
		c.After, c.Ties = time.Time{}, nil // no safe restart point
	}
	if next != "" {
		c.Next = next
		c.Page++
		return c
	}
	c.Next, c.After, c.Ties, c.Page = "", time.Time{}, nil, 0
	r.pos = position{}
	if r.batches > 0 {
		c.Batch++
		if c.Batch < r.batches {
			return c
		}
		c.Batch = 0
		c.Param++
		if c.Param < len(r.params) {
			return c
		}
		c.Param = 0
	}
	c.Query++
	return c
}

// paramName is the compartment parameter the cursor's search uses ("" at
// system level).
func (r *itemRun) paramName(c Cursor) string {
	if r.batches == 0 || c.Param >= len(r.params) {
		return ""
	}
	return r.params[c.Param].Name
}

// batchMembers returns the member ids of batch b.
func (r *itemRun) batchMembers(ctx context.Context, b int) ([]string, error) {
	if r.batchOf != b {
		ids, err := r.e.store.GetMembers(ctx, r.job.ID, b)
		if err != nil {
			return nil, fmt.Errorf("read member batch %d: %w", b, err)
		}
		r.members, r.batchOf = ids, b
	}
	return r.members, nil
}

// pageURL is the URL of the page the cursor points at.
func (r *itemRun) pageURL(ctx context.Context, c Cursor) (string, error) {
	if c.Next != "" {
		return c.Next, nil
	}
	var members []string
	if r.batches > 0 {
		var err error
		if members, err = r.batchMembers(ctx, c.Batch); err != nil {
			return "", err
		}
	}
	q := searchQuery(r.job, r.queries[c.Query], r.paramName(c), members, r.e.set.PageSize)
	return r.e.source.SearchURL(r.item.Type, q), nil
}

// page fetches the page at the cursor and writes its resources, returning the
// next link. The resources of a second or later OR-ed filter query are held
// for the page so that those an earlier query matched can be left out.
func (r *itemRun) page(ctx context.Context, w *fileWriter, c Cursor) (string, error) {
	if r.pos.After.IsZero() && !c.After.IsZero() {
		r.pos = position{After: c.After, Ties: c.Ties}
	}
	pageURL, err := r.pageURL(ctx, c)
	if err != nil {
		return "", err
	}
	next, err := r.visitPage(ctx, w, c, pageURL)
	if err != nil && c.Next != "" && !c.After.IsZero() && fault.Is(err, fault.Permanent) && !errors.Is(err, errNotAnonymized) {
		// The source no longer honours the next link (its paging state
		// expired, or it restarted). Nothing after the last checkpoint was
		// committed, so search again from the recorded position.
		zerolog.Ctx(ctx).Warn().Err(err).Time("after", c.After).Msg("next link rejected; resuming the search from the last position")
		restart := c
		restart.Next = ""
		restartURL, uerr := r.pageURL(ctx, restart)
		if uerr != nil {
			return "", uerr
		}
		// Ask for enough resources to get past the ties already written, so
		// that a restart always makes progress even if links keep expiring.
		count := r.e.set.PageSize + len(c.Ties)
		progress := restartPoint{after: c.After, ties: len(c.Ties)}
		if r.lastRestart == progress {
			return "", fault.Wrap(fault.Permanent, err, "the source keeps rejecting next links and a restarted search made no progress past %s", fhir.FormatInstant(c.After))
		}
		r.lastRestart = progress
		if count > maxRestartCount {
			return "", fault.Wrap(fault.Permanent, err, "the source rejected a next link and %d resources share the last position; cannot resume", len(c.Ties))
		}
		restartURL = strings.Replace(restartURL, "_count="+strconv.Itoa(r.e.set.PageSize), "_count="+strconv.Itoa(count), 1)
		restartURL += "&_lastUpdated=" + url.QueryEscape("ge"+fhir.FormatInstant(c.After))
		return r.visitPage(ctx, w, c, restartURL)
	}
	return next, err
}

// visitPage fetches one page and writes the resources not passed before.
func (r *itemRun) visitPage(ctx context.Context, w *fileWriter, c Cursor, pageURL string) (string, error) {
	var held []heldResource
	entry := 0
	next, err := r.fetchPage(ctx, pageURL, func(en Entry) error {
		entry++
		if en.Mode == "outcome" {
			return r.writeOutcomeEntry(ctx, c, entry, en.Resource)
		}
		if en.Mode != "" && en.Mode != "match" {
			return nil
		}
		if len(bytes.TrimSpace(en.Resource)) == 0 {
			return r.writeEntryError(ctx, c, entry, "the entry has no resource")
		}
		line := en.Resource
		if !en.Compact { // one pass over the resource's bytes either way
			r.scratch.Reset()
			if err := json.Compact(&r.scratch, en.Resource); err != nil {
				return r.writeEntryError(ctx, c, entry, "the resource is not valid JSON")
			}
			line = r.scratch.Bytes()
		}
		head := readHead(line)
		switch {
		case line[0] != '{':
			return r.writeEntryError(ctx, c, entry, "the resource is not a JSON object")
		case head.ResourceType == "":
			return r.writeEntryError(ctx, c, entry, "the resource has no resourceType")
		case head.ResourceType != r.item.Type:
			// Only the type is named: it is not the patient's data.
			return r.writeEntryError(ctx, c, entry, fmt.Sprintf("the resource is of type %s, not %s", clipType(head.ResourceType), r.item.Type))
		case head.ID == "":
			return r.writeEntryError(ctx, c, entry, "the resource has no id")
		}
		id := head.ID
		if r.pos.passed(head.LastUpdated, id) {
			return nil
		}
		r.pos.pass(head.LastUpdated, id)
		if r.owner != nil && !r.ownsResource(line, id, c.Param, c.Batch) {
			r.item.Skipped++
			return nil
		}
		if r.keep != nil { // _elements, after every decision that reads the whole resource
			subset, err := subsetResource(line, r.keep)
			if err != nil { // a meta or meta.tag not of the FHIR shape; the text is not passed on
				return r.writeEntryError(ctx, c, entry, "_elements could not be applied: meta or meta.tag is malformed")
			}
			line = subset
		}
		if c.Query > 0 { // anonymized once known to be written, so a skip is reported once
			held = append(held, heldResource{id: id, json: bytes.Clone(line), entry: entry})
			return nil
		}
		return r.write(ctx, w, c, entry, line, id)
	})
	if err != nil {
		return "", err
	}
	if len(held) > 0 {
		if err := r.writeUnmatchedByEarlierQueries(ctx, w, c, held); err != nil {
			return "", err
		}
	}
	return next, nil
}

// writeOutcomeEntry copies a search outcome entry (the source's own message
// about the search, such as a partial result) into the item's error files,
// as the source sent it. One that is not an OperationOutcome object is
// reported instead of copied.
func (r *itemRun) writeOutcomeEntry(ctx context.Context, c Cursor, entry int, resource []byte) error {
	if r.anon != nil {
		// The source's own text may name patients or ids; a de-identified
		// export says only that there was one.
		return r.writeEntryError(ctx, c, entry, "the source reported an issue with the search; its text is not copied into a de-identified export")
	}
	if !compactOutcome(&r.scratch, resource) {
		return r.writeEntryError(ctx, c, entry, "the source sent a search outcome entry that is not an OperationOutcome")
	}
	zerolog.Ctx(ctx).Warn().Int("page", c.Page+1).Int("entry", entry).Msg("the source reported an issue with a search; copied to the error file")
	return r.errs.add(ctx, r.scratch.Bytes())
}

// compactOutcome compacts a search outcome entry into scratch and reports
// whether it is an OperationOutcome object, which the error files then take
// as the source sent it.
func compactOutcome(scratch *bytes.Buffer, resource []byte) bool {
	scratch.Reset()
	return json.Compact(scratch, resource) == nil && scratch.Len() > 0 && scratch.Bytes()[0] == '{' &&
		readHead(scratch.Bytes()).ResourceType == "OperationOutcome"
}

// writeEntryError writes an OperationOutcome for an entry that cannot be
// exported into the item's error files. It says where the entry was and
// why, never what it held: a malformed resource may still carry PHI.
func (r *itemRun) writeEntryError(ctx context.Context, c Cursor, entry int, why string) error {
	where := r.item.Type + " search"
	if w := r.item.Window; w != nil {
		where += fmt.Sprintf(" (window %d, _lastUpdated up to %s)", w.N, fhir.FormatInstant(w.Until))
	}
	if len(r.queries) > 1 {
		where += fmt.Sprintf(", _typeFilter query %d", c.Query+1)
	}
	if r.batches > 0 {
		where += fmt.Sprintf(", parameter %s, member batch %d", r.paramName(c), c.Batch+1)
	}
	msg := fmt.Sprintf("%s, page %d, entry %d: %s; the entry was left out of the export", where, c.Page+1, entry, why)
	zerolog.Ctx(ctx).Warn().Str("issue", msg).Msg("the source sent an entry that cannot be exported; reported in the error file")
	return r.errs.add(ctx, fhir.NewOutcome("error", "processing", msg).JSON())
}

// clipType keeps a resourceType the source sent short and printable, for a
// diagnostic: a real type name is letters only.
func clipType(t string) string {
	if len(t) > 64 || strings.IndexFunc(t, func(c rune) bool { return !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z') }) >= 0 {
		return "(an invalid type name)"
	}
	return t
}

type heldResource struct {
	id    string
	json  []byte
	entry int
}

// writeUnmatchedByEarlierQueries writes the held resources that no earlier
// OR-ed query of the type matches, asking the source with _id.
func (r *itemRun) writeUnmatchedByEarlierQueries(ctx context.Context, w *fileWriter, c Cursor, held []heldResource) error {
	ids := make([]string, len(held))
	for i, h := range held {
		ids[i] = h.id
	}
	seen := map[string]bool{}
	for q := range c.Query {
		var members []string
		if r.batches > 0 {
			var err error
			if members, err = r.batchMembers(ctx, c.Batch); err != nil {
				return err
			}
		}
		query := searchQuery(r.job, r.queries[q], r.paramName(c), members, len(ids)) + "&_id=" + url.QueryEscape(strings.Join(ids, ","))
		next := r.e.source.SearchURL(r.item.Type, query)
		for next != "" {
			var err error
			next, err = r.e.source.Page(ctx, next, func(en Entry) error {
				if en.Mode == "" || en.Mode == "match" {
					seen[decodeHead(en.Resource).ID] = true
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("check %s against an earlier _typeFilter query: %w", r.item.Type, err)
			}
		}
	}
	for _, h := range held {
		if seen[h.id] {
			r.item.Skipped++
			continue
		}
		if err := r.write(ctx, w, c, h.entry, h.json, h.id); err != nil {
			return err
		}
	}
	return nil
}

// ownsResource reports whether a resource found by the search of parameter
// p and member batch b is written there. Of all (parameter, batch) pairs whose
// search finds the resource, the first in search order (parameters in R4
// order, then batches) writes it. That pair is read from the resource itself:
// the first parameter at whose element paths it names a member patient, and
// the first batch among the members named there (members are sorted, batches
// contiguous). It depends on nothing an invocation remembers, so a resource is
// written once however often a search is repeated after a crash. A resource
// that names no member where we look is written where found.
func (r *itemRun) ownsResource(resource []byte, id string, p, b int) bool {
	for i, prm := range r.params {
		first := -1
		if prm.Name == "_id" {
			if ob, member := r.owner[id]; member {
				first = ob
			}
		}
		for _, ref := range references(resource, prm.Paths) {
			pid, ok := patientID(ref)
			if !ok {
				continue
			}
			if ob, member := r.owner[pid]; member && (first < 0 || ob < first) {
				first = ob
			}
		}
		if first >= 0 {
			return i == p && first == b
		}
	}
	return true
}

// references returns the Reference.reference strings at the given dotted
// element paths of a resource, looking through arrays at every step.
func references(resource []byte, paths []string) []string {
	var out []string
	for _, p := range paths {
		collectReferences(json.RawMessage(resource), strings.Split(p, "."), &out)
	}
	return out
}

func collectReferences(v json.RawMessage, path []string, out *[]string) {
	v = bytes.TrimSpace(v)
	if len(v) == 0 {
		return
	}
	if v[0] == '[' {
		var arr []json.RawMessage
		if json.Unmarshal(v, &arr) == nil {
			for _, el := range arr {
				collectReferences(el, path, out)
			}
		}
		return
	}
	if v[0] != '{' {
		return
	}
	if len(path) == 0 {
		var ref struct {
			Reference string `json:"reference"`
		}
		if json.Unmarshal(v, &ref) == nil && ref.Reference != "" {
			*out = append(*out, ref.Reference)
		}
		return
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(v, &obj) != nil {
		return
	}
	if child, ok := obj[path[0]]; ok {
		collectReferences(child, path[1:], out)
	}
}
