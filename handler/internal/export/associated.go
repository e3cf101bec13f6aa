package export

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/fhir"
)

// includeAssociatedData (LatestProvenanceResources, RelevantProvenanceResources)
// adds to an export the Provenance resources associated with the resources it
// returns. We follow the definitions of the IG's 4.0.0 (HL7 Terminology's
// include-associated-data 2.0.0): the associated Provenance are added to the
// Provenance the export returns anyway (those of its _type, or of every type),
// which they do not exclude. The v2 and v3 wording of Latest ("other
// Provenance resources will not be returned") contradicted the rule that an
// export without _type returns all Provenance, and 4.0.0 dropped it; a client
// that wants only the associated Provenance leaves Provenance out of _type.
//
// A Provenance is associated with a returned resource when one of its target
// references names it (any version; relative or absolute). Relevant adds
// every associated Provenance; Latest, for each returned resource, the one
// most recently recorded (Provenance.recorded; ties go to the later
// meta.lastUpdated, then the greater id). Only Provenance last updated up to
// the job's upper bound count; _since does not filter them.
//
// The returned resources are known only once they are written, so one more
// work item, "Provenance.associated" (Kind ItemAssociated), runs after every
// other item of the job is done: the plan creates it, and whichever item
// finishes last enqueues it (startAssociatedIfReady). It reads the job's
// output files back, in a fixed order, and for each batch of
// Settings.MemberBatch of their references asks the source for
// Provenance?target=<batch>. The cursor is the output file and the byte
// offset reached in it, recorded with every checkpoint as any item's cursor
// is. Every Provenance about a resource comes back in the search of that
// resource's batch, so Latest chooses within the batch.
//
// Each Provenance is written once, by the job. One about resources of several
// batches comes back in each, so the item keeps the ids the job holds and
// skips those: its own (after a crash or a continuation read back from its
// committed files, which the usual repair has cut to the recorded cursor) and
// those of the job's ordinary Provenance items. A system export that searches
// Provenance without a _typeFilter already holds every Provenance last
// updated in (_since, upper]: its associated item searches only up to _since
// (Window.Until), so the two sets cannot meet, and without _since it has
// nothing to add and is not created. Memory is one id per Provenance the
// item must tell apart, not one per exported resource.

// ItemAssociated is the Kind of the work item that writes the job's
// associated Provenance resources.
const ItemAssociated = "associated"

// associatedItemID is the id of that item.
const associatedItemID = "Provenance.associated"

// associatedFilePrefix names its files: "Provenance-associated-1.ndjson".
const associatedFilePrefix = "Provenance-associated"

// ProvenanceTargetParam is the search parameter the source must offer on
// Provenance for includeAssociatedData.
const ProvenanceTargetParam = "target"

// checkAssociated checks at kick-off that the source can search Provenance by
// target. If it cannot, a strict request is refused; a lenient one drops the
// parameter with a warning in the job's error files.
func (e *Engine) checkAssociated(ctx context.Context, req *Request) error {
	switch req.IncludeAssociated {
	case "":
		return nil
	case LatestProvenance, RelevantProvenance:
	default:
		return fault.New(fault.Invalid, "includeAssociatedData %q is not supported", req.IncludeAssociated)
	}
	if req.AnonymizationConfig != "" {
		return fault.WithCode(fault.New(fault.Invalid, "includeAssociatedData cannot be combined with _anonymizationConfig"), "not-supported")
	}
	params, err := e.source.SearchParams(ctx)
	if err != nil {
		return fault.Wrap(fault.Unavailable, err, "read the source FHIR server's search parameters for includeAssociatedData")
	}
	if slices.Contains(params["Provenance"], ProvenanceTargetParam) {
		return nil
	}
	why := "includeAssociatedData: the source FHIR server cannot search Provenance by target (its CapabilityStatement " +
		"declares no target search parameter for Provenance), so the Provenance associated with the exported resources cannot be found"
	if !req.Lenient {
		return fault.WithCode(fault.New(fault.Invalid, "%s", why), "not-supported")
	}
	req.Warnings = append(req.Warnings, why+"; the parameter was ignored")
	req.IncludeAssociated = ""
	return nil
}

// planAssociated returns the associated item of a job that asked for
// includeAssociatedData, given the types the job searches and the items the
// plan decided on, or nil when the job's own Provenance searches return every
// Provenance it could add. Its Expected is what it will look up, the planned
// counts of the other types, so that progress (estimateProgress) weighs the
// phase from the start and credits it as its cursor moves (Cursor.Page
// counts the references looked up): the percentage keeps growing through the
// phase instead of waiting at 99.
func (e *Engine) planAssociated(job *Job, types []string, planned []PlannedItem) *WorkItem {
	var expected int64
	for _, p := range planned {
		if p.Type != "Provenance" {
			expected += p.Expected
		}
	}
	req := job.Request
	if req.IncludeAssociated == "" {
		return nil
	}
	item := &WorkItem{JobID: job.ID, ID: associatedItemID, Type: "Provenance", Kind: ItemAssociated,
		State: ItemPending, UpdatedAt: e.now().UTC(), Expected: expected}
	if req.Level == LevelSystem && slices.Contains(types, "Provenance") && filterQueries(job, "Provenance")[0] == "" {
		// Every Provenance last updated in (_since, upper] is in the
		// output already: only older ones can be added.
		if req.Since == nil {
			return nil
		}
		item.Window = &Window{N: 1, Until: *req.Since}
	}
	return item
}

// othersDone reports whether the plan and every item but the associated one
// are done: the associated item may then read their files.
func othersDone(items []*WorkItem) bool {
	plan := false
	for _, it := range items {
		if it.Kind == ItemAssociated {
			continue
		}
		if it.State != ItemDone {
			return false
		}
		plan = plan || it.ID == PlanItemID
	}
	return plan
}

// startAssociatedIfReady enqueues the job's associated item once every other
// item is done. The plan calls it, and every item that finishes: the last of
// them to finish sees all the others done (each records itself done before it
// looks), so one of them enqueues it; two finishing together may both, which
// is harmless. A lost message is the watchdog's (RestartStalled), which
// enqueues the item again once it is ready and idle.
func (e *Engine) startAssociatedIfReady(ctx context.Context, job *Job) {
	if job.Request.IncludeAssociated == "" {
		return
	}
	items, err := e.store.ListItems(ctx, job.ID)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("could not check whether the associated Provenance can start; the watchdog will")
		return
	}
	i := slices.IndexFunc(items, func(it *WorkItem) bool { return it.Kind == ItemAssociated })
	if i < 0 || items[i].State != ItemPending || !othersDone(items) {
		return
	}
	if err := e.queue.Enqueue(ctx, Message{Job: job.ID, Item: associatedItemID}); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("could not enqueue the associated Provenance item; the watchdog will")
		return
	}
	zerolog.Ctx(ctx).Info().Msg("every other work item is done; associated Provenance enqueued")
}

// associatedRun is one invocation of the associated item.
type associatedRun struct {
	e      *Engine
	job    *Job
	item   *WorkItem
	errs   *fileWriter
	upper  time.Time
	latest bool
	keep   elementSet // _elements for Provenance
	// sources are the blob names of the job's output files, in the order
	// the cursor counts them: items by id, each item's files in order.
	sources []string
	written map[string]bool // ids of the Provenance the job's files hold

	// The open output file: index in sources, and bytes read from it.
	file    io.ReadCloser
	reader  *bufio.Reader
	fileAt  int
	offset  int64
	nextPos Cursor // where the page just read leaves the cursor
	long    []byte // a line longer than the reader's buffer
}

func (e *Engine) newAssociatedRun(ctx context.Context, job *Job, item *WorkItem, errs *fileWriter) (*associatedRun, error) {
	items, err := e.store.ListItems(ctx, job.ID)
	if err != nil {
		return nil, fmt.Errorf("read work items: %w", err)
	}
	if !othersDone(items) {
		return nil, fault.New(fault.Internal, "the associated Provenance item started before the job's other items were done")
	}
	r := &associatedRun{e: e, job: job, item: item, errs: errs, upper: upperBound(job), fileAt: -1,
		latest: job.Request.IncludeAssociated == LatestProvenance, keep: elementsFor(job.Request.Elements, "Provenance"),
		written: map[string]bool{}}
	if item.Window != nil {
		r.upper = item.Window.Until // the job's Provenance items hold the later ones
	}
	// The item's own committed files (repair has just cut them to the
	// recorded cursor) hold Provenance it must not write again.
	held := slices.Clone(item.Files)
	slices.SortFunc(items, func(a, b *WorkItem) int { return strings.Compare(a.ID, b.ID) })
	for _, it := range items {
		if it.ID == PlanItemID || it.Kind != "" {
			continue
		}
		if it.Type == "Provenance" {
			// The job's ordinary Provenance: not written again either,
			// unless the item's bound keeps them apart.
			if item.Window == nil {
				held = append(held, it.Files...)
			}
			continue
		}
		for _, f := range it.Files {
			if f.Count > 0 {
				r.sources = append(r.sources, job.ID+"/"+f.Name)
			}
		}
	}
	for _, f := range held {
		if f.Count == 0 {
			continue
		}
		if err := r.readIDs(ctx, job.ID+"/"+f.Name); err != nil {
			return nil, fmt.Errorf("read back %s: %w", f.Name, err)
		}
	}
	return r, nil
}

// readIDs adds the ids of the resources in one of the job's files to written.
func (r *associatedRun) readIDs(ctx context.Context, blob string) error {
	rc, _, err := r.e.blobs.Open(ctx, r.job.Request.Container, blob)
	if err != nil {
		return err
	}
	defer rc.Close()
	br := bufio.NewReaderSize(rc, 256<<10)
	for {
		line, err := br.ReadBytes('\n')
		if id := readHead(bytes.TrimRight(line, "\r\n")).ID; id != "" {
			r.written[id] = true
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// close closes the open output file, if any.
func (r *associatedRun) close() {
	if r.file != nil {
		r.file.Close()
		r.file, r.reader, r.fileAt = nil, nil, -1
	}
}

// Cursor.Query is 1 once every output file has been looked up.
func (r *associatedRun) finished(c Cursor) bool { return c.Query > 0 }

func (r *associatedRun) advance(Cursor, string) Cursor { return r.nextPos }

// associatedSearchesAtOnce is how many batches one step of the associated
// item searches at the same time. The item is the job's last and runs alone,
// so one search after another would make its time the sum of the source's
// answers; the source client's concurrency cap still bounds them all.
const associatedSearchesAtOnce = 4

// page looks up the Provenance of the next batches of returned resources:
// it searches them at once, then writes what each found in batch order, so
// the lines and the cursor are what a search one at a time would give.
func (r *associatedRun) page(ctx context.Context, w *fileWriter, c Cursor) (string, error) {
	batch := max(r.e.set.MemberBatch, 1)
	refs, err := r.nextRefs(ctx, c, associatedSearchesAtOnce*batch)
	if err != nil {
		return "", err
	}
	chunks := slices.Collect(slices.Chunk(refs, batch))
	found := make([]batchFound, len(chunks))
	g, gctx := errgroup.WithContext(ctx)
	for i, chunk := range chunks {
		g.Go(func() (err error) {
			found[i], err = r.search(gctx, c, i+1, chunk)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return "", err
	}
	for _, f := range found {
		for _, line := range f.errors {
			if err := r.errs.add(ctx, line); err != nil {
				return "", err
			}
		}
		for _, p := range f.provenance {
			if err := r.write(ctx, w, p); err != nil {
				return "", err
			}
		}
	}
	return "", nil
}

// nextRefs reads up to n references (Type/id) of returned resources from
// the cursor on, within one output file, and sets nextPos past them.
func (r *associatedRun) nextRefs(ctx context.Context, c Cursor, n int) ([]string, error) {
	if c.Batch >= len(r.sources) {
		r.close()
		r.nextPos = Cursor{Query: 1, Page: c.Page}
		return nil, nil
	}
	if r.fileAt != c.Batch || r.offset != c.Offset {
		r.close()
		rc, _, err := r.e.blobs.Open(ctx, r.job.Request.Container, r.sources[c.Batch])
		if err != nil {
			return nil, fmt.Errorf("read back output file %s: %w", r.sources[c.Batch], err)
		}
		r.file, r.reader, r.fileAt, r.offset = rc, bufio.NewReaderSize(rc, 256<<10), c.Batch, 0
		skipped, err := r.reader.Discard(int(c.Offset))
		r.offset = int64(skipped)
		if err != nil {
			r.close()
			return nil, fmt.Errorf("read back output file %s: %w", r.sources[c.Batch], err)
		}
	}
	var refs []string
	for len(refs) < n {
		line, err := r.readLine()
		r.offset += int64(len(line))
		if h := readHead(bytes.TrimRight(line, "\r\n")); h.ResourceType != "" && h.ID != "" {
			refs = append(refs, h.ResourceType+"/"+h.ID)
		}
		if errors.Is(err, io.EOF) {
			r.close()
			r.nextPos = Cursor{Batch: c.Batch + 1, Page: c.Page + len(refs)}
			return refs, nil
		}
		if err != nil {
			r.close()
			return nil, fmt.Errorf("read back output file %s: %w", r.sources[c.Batch], err)
		}
	}
	r.nextPos = Cursor{Batch: c.Batch, Offset: r.offset, Page: c.Page + len(refs)}
	return refs, nil
}

// readLine reads the next line of the open output file. The line is valid
// until the next read: most fit the reader's buffer and are not copied.
func (r *associatedRun) readLine() ([]byte, error) {
	line, err := r.reader.ReadSlice('\n')
	if !errors.Is(err, bufio.ErrBufferFull) {
		return line, err
	}
	r.long = append(r.long[:0], line...)
	for errors.Is(err, bufio.ErrBufferFull) {
		line, err = r.reader.ReadSlice('\n')
		r.long = append(r.long, line...)
	}
	return r.long, err
}

// provenance is what the item reads of a Provenance resource.
type provenance struct {
	id          string
	recorded    time.Time // zero if absent or unparsable: the earliest
	lastUpdated time.Time
	line        []byte // compact JSON; nil when the item had written it already
}

// later reports whether p was recorded after q (the order Latest picks by).
func (p *provenance) later(q *provenance) bool {
	return cmp.Or(p.recorded.Compare(q.recorded), p.lastUpdated.Compare(q.lastUpdated), strings.Compare(p.id, q.id)) > 0
}

// batchFound is what the search of one batch found: the Provenance to write
// (in id order; the item may have written some already) and the error lines.
type batchFound struct {
	provenance []*provenance
	errors     [][]byte
}

// search runs Provenance?target=<refs> through all its pages and returns the
// Provenance it selects: every one about a reference of the batch
// (Relevant), or for each reference the latest about it (Latest). It writes
// nothing, so that batches can be searched at once. n numbers the batch
// within the step, for error lines.
func (r *associatedRun) search(ctx context.Context, c Cursor, n int, refs []string) (batchFound, error) {
	var found batchFound
	inBatch := make(map[string]bool, len(refs))
	for _, ref := range refs {
		inBatch[ref] = true
	}
	q := url.Values{}
	q.Set(ProvenanceTargetParam, strings.Join(refs, ","))
	q.Set("_lastUpdated", "le"+fhir.FormatInstant(r.upper))
	q.Set("_count", strconv.Itoa(max(r.e.set.PageSize, 1)))
	next := r.e.source.SearchURL("Provenance", q.Encode())
	latest := map[string]*provenance{} // Latest: the pick for each reference so far
	var scratch bytes.Buffer
	var refBuf [][]byte // target references of the entry being visited, reused
	for page := 1; next != ""; page++ {
		entry := 0
		var err error
		next, err = r.e.source.Page(ctx, next, func(en Entry) error {
			entry++
			where := func() string {
				return fmt.Sprintf("Provenance search for the associated data of output file %d (from byte %d, batch %d), page %d, entry %d",
					c.Batch+1, c.Offset, n, page, entry)
			}
			if en.Mode == "outcome" {
				found.errors = append(found.errors, outcomeLine(ctx, en.Resource, where, &scratch))
				return nil
			}
			if en.Mode != "" && en.Mode != "match" {
				return nil
			}
			if !r.latest && en.Compact && r.written[readHead(en.Resource).ID] {
				return nil // see below; the head is read without scanning the targets
			}
			p, refs, why := readProvenance(en, &scratch, refBuf[:0])
			refBuf = refs
			if why != "" {
				msg := where() + ": " + why + "; the entry was left out of the export"
				zerolog.Ctx(ctx).Warn().Str("issue", msg).Msg("the source sent an entry that cannot be exported; reported in the error file")
				found.errors = append(found.errors, fhir.NewOutcome("error", "processing", msg).JSON())
				return nil
			}
			if !r.latest && r.written[p.id] {
				// Relevant has nothing to decide about one written already:
				// a Provenance about many batches comes back in each (once
				// per batch of its targets), and this is most of them.
				return nil
			}
			targets := targetsIn(refs, inBatch)
			if len(targets) == 0 {
				return nil // not about this batch (a source that matched loosely)
			}
			// One about many batches comes back in each: its bytes are kept
			// only until it is written (the set is only read while batches
			// are searched).
			if r.written[p.id] {
				p.line = nil
			} else {
				p.line = bytes.Clone(p.line)
			}
			if !r.latest {
				found.provenance = append(found.provenance, p)
				return nil
			}
			for _, t := range targets {
				if cur := latest[t]; cur == nil || p.later(cur) {
					latest[t] = p
				}
			}
			return nil
		})
		if err != nil {
			return found, fmt.Errorf("search the Provenance of %d returned resources: %w", len(refs), err)
		}
	}
	for _, p := range latest {
		if !slices.Contains(found.provenance, p) {
			found.provenance = append(found.provenance, p)
		}
	}
	slices.SortFunc(found.provenance, func(a, b *provenance) int { return strings.Compare(a.id, b.id) })
	return found, nil
}

// write writes one Provenance unless the item holds it already.
func (r *associatedRun) write(ctx context.Context, w *fileWriter, p *provenance) error {
	if r.written[p.id] {
		return nil
	}
	line := p.line
	if r.keep != nil {
		subset, err := subsetResource(line, r.keep)
		if err != nil { // the text is not passed on
			msg := fmt.Sprintf("Provenance/%s: _elements could not be applied: meta or meta.tag is malformed; it was left out of the export", p.id)
			return r.errs.add(ctx, fhir.NewOutcome("error", "processing", msg).JSON())
		}
		line = subset
	}
	if err := w.add(ctx, line); err != nil {
		return err
	}
	r.written[p.id] = true
	return nil
}

// readProvenance checks one search entry and returns the Provenance it
// holds and its target references, or why it cannot be exported (never what
// it held: it may carry PHI). The references are appended to refs. p.line
// and the references are valid during the visit only.
func readProvenance(en Entry, scratch *bytes.Buffer, refs [][]byte) (p *provenance, _ [][]byte, why string) {
	if len(bytes.TrimSpace(en.Resource)) == 0 {
		return nil, refs, "the entry has no resource"
	}
	line := en.Resource
	if !en.Compact {
		scratch.Reset()
		if json.Compact(scratch, en.Resource) != nil {
			return nil, refs, "the resource is not valid JSON"
		}
		line = scratch.Bytes()
	}
	if line[0] != '{' {
		return nil, refs, "the resource is not a JSON object"
	}
	f, ok := scanProvenance(line, refs)
	if !ok {
		if f, ok = decodeProvenance(line); !ok {
			return nil, refs, "the resource is not a JSON object"
		}
	}
	switch {
	case f.resourceType != "Provenance":
		return nil, f.refs, fmt.Sprintf("the resource is of type %s, not Provenance", clipType(f.resourceType))
	case !fhirID.MatchString(f.id):
		return nil, f.refs, "the resource has no valid id"
	}
	p = &provenance{id: f.id, line: line, lastUpdated: f.lastUpdated}
	p.recorded, _ = time.Parse(time.RFC3339Nano, f.recorded)
	return p, f.refs, ""
}

// provenanceFields is what the associated item reads of a Provenance.
type provenanceFields struct {
	resourceType, id, recorded string
	lastUpdated                time.Time // zero if absent or unparsable
	refs                       [][]byte  // target[].reference; slices of the resource's bytes when scanned
}

// scanProvenance reads the fields of a Provenance in compact JSON in one pass
// and without copying its references. A Provenance about a patient's records
// (Synthea writes one per patient, about all of them) comes back in the
// search of every batch that holds one of them, hundreds of references each
// time, so this is the item's main work; json.Unmarshal did it at a fifth of
// the speed. The references are appended to refs. ok is false when it meets
// what it does not handle (escapes in a string it reads, malformed input):
// decodeProvenance decides then.
func scanProvenance(b []byte, refs [][]byte) (f provenanceFields, ok bool) {
	f.refs = refs
	s := scanner{b: b}
	if !s.eat('{') {
		return f, false
	}
	if s.eat('}') {
		return f, true
	}
	for {
		key, ok := s.str()
		if !ok || !s.eat(':') {
			return f, false
		}
		switch string(key) {
		case "resourceType", "id", "recorded":
			v, ok := s.str()
			if !ok {
				return f, false
			}
			switch string(key) {
			case "resourceType":
				f.resourceType = string(v)
			case "id":
				f.id = string(v)
			default:
				f.recorded = string(v)
			}
		case "meta":
			lu, ok := s.lastUpdated()
			if !ok {
				return f, false
			}
			f.lastUpdated = lu
		case "target":
			if !s.references(&f.refs) {
				return f, false
			}
		default:
			if !s.skip() {
				return f, false
			}
		}
		if s.eat('}') {
			return f, true
		}
		if !s.eat(',') {
			return f, false
		}
	}
}

// references reads an array of Reference objects and appends each one's
// reference.
func (s *scanner) references(out *[][]byte) bool {
	if !s.eat('[') {
		return false
	}
	if s.eat(']') {
		return true
	}
	for {
		if !s.eat('{') {
			return false
		}
		if !s.eat('}') {
			for {
				key, ok := s.str()
				if !ok || !s.eat(':') {
					return false
				}
				if string(key) == "reference" {
					v, ok := s.str()
					if !ok {
						return false
					}
					*out = append(*out, v)
				} else if !s.skip() {
					return false
				}
				if s.eat('}') {
					break
				}
				if !s.eat(',') {
					return false
				}
			}
		}
		if s.eat(']') {
			return true
		}
		if !s.eat(',') {
			return false
		}
	}
}

// decodeProvenance is scanProvenance by json.Unmarshal, for what the scan
// does not handle.
func decodeProvenance(b []byte) (provenanceFields, bool) {
	var res struct {
		ResourceType string `json:"resourceType"`
		ID           string `json:"id"`
		Recorded     string `json:"recorded"`
		Meta         struct {
			LastUpdated string `json:"lastUpdated"`
		} `json:"meta"`
		Target []struct {
			Reference string `json:"reference"`
		} `json:"target"`
	}
	if json.Unmarshal(b, &res) != nil {
		return provenanceFields{}, false
	}
	f := provenanceFields{resourceType: res.ResourceType, id: res.ID, recorded: res.Recorded}
	f.lastUpdated, _ = time.Parse(time.RFC3339Nano, res.Meta.LastUpdated)
	for _, t := range res.Target {
		if t.Reference != "" { // as the scan, which finds none
			f.refs = append(f.refs, []byte(t.Reference))
		}
	}
	return f, true
}

// targetsIn returns the references of the batch (Type/id) that a
// Provenance's target references name, each once.
func targetsIn(refs [][]byte, inBatch map[string]bool) []string {
	var out []string
	for _, ref := range refs {
		if key, ok := literalReference(ref); ok && inBatch[string(key)] && !slices.Contains(out, string(key)) {
			out = append(out, string(key))
		}
	}
	return out
}

// literalReference reduces a reference to the Type/id it names: "Type/id",
// with or without "/_history/<version>", or an absolute http(s) URL ending in
// one of those. Contained ("#x"), urn: and other references name nothing
// here. The result is a slice of ref; it is only looked up among a batch's
// references, which are valid Type/id pairs, so it is not checked further.
func literalReference(ref []byte) ([]byte, bool) {
	if i := bytes.Index(ref, []byte("/_history/")); i >= 0 {
		ref = ref[:i]
	}
	slash := bytes.LastIndexByte(ref, '/')
	if slash <= 0 || slash == len(ref)-1 {
		return nil, false
	}
	prev := bytes.LastIndexByte(ref[:slash], '/')
	if prev >= 0 && !bytes.HasPrefix(ref, []byte("http://")) && !bytes.HasPrefix(ref, []byte("https://")) {
		return nil, false // a relative reference of more than Type/id
	}
	if c := ref[prev+1]; c < 'A' || c > 'Z' {
		return nil, false // not a resource type (such as ".../1/_history")
	}
	return ref[prev+1:], true
}

// outcomeLine is the error line for a search outcome entry: the entry as the
// source sent it, or a line saying that it was not an OperationOutcome.
func outcomeLine(ctx context.Context, resource []byte, where func() string, scratch *bytes.Buffer) []byte {
	if !compactOutcome(scratch, resource) {
		return fhir.NewOutcome("error", "processing", where()+": the source sent a search outcome entry that is not an OperationOutcome").JSON()
	}
	zerolog.Ctx(ctx).Warn().Msg("the source reported an issue with a Provenance search; copied to the error file")
	return bytes.Clone(scratch.Bytes())
}
