package export

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/rs/zerolog"

	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// Status derives a job's status from its work items: failed as soon as one
// item failed, complete when the plan and every item it created are done,
// in progress otherwise. Nothing else is consulted, so the answer is the same
// after any process restarts.
//
// Only owner (Request.Owner) sees the job: for anyone else it is
// fault.NotFound, as an unknown job is.
func (e *Engine) Status(ctx context.Context, jobID, owner string) (*Status, error) {
	job, err := e.activeJob(ctx, jobID, owner)
	if err != nil {
		return nil, err
	}
	items, err := e.store.ListItems(ctx, jobID)
	if err != nil {
		return nil, fmt.Errorf("read work items of job %s: %w", jobID, err)
	}
	st := deriveStatus(job, items)
	st.Files, st.Items = manifestFiles(items)
	return st, nil
}

// logIfCompleted writes the "export completed" line, with the job's totals,
// when the item that just finished was the job's last. Status is derived on
// each poll and never stored, so without this line the logs could tell a
// finished job from an abandoned one only by its client's polls. Two items
// finishing at the same moment may both write it: readers count distinct
// jobs. Best effort: a failed read only costs the line.
func (e *Engine) logIfCompleted(ctx context.Context, job *Job) {
	items, err := e.store.ListItems(ctx, job.ID)
	if err != nil {
		return
	}
	st := deriveStatus(job, items)
	if st.Phase != Completed {
		return
	}
	var files int
	var bytes int64
	for _, it := range items {
		files += len(it.Files)
		bytes += fileBytes(it.Files)
	}
	// The worker's logger already carries the job and work item ids.
	zerolog.Ctx(ctx).Info().Str("exportLevel", string(job.Request.Level)).
		Int64("resources", st.Done).Int("files", files).Int64("bytes", bytes).
		Dur("sinceKickOff", e.now().Sub(job.CreatedAt)).Msg("export completed")
}

// fileBytes is the size of a work item's committed files.
func fileBytes(files []File) int64 {
	var n int64
	for _, f := range files {
		n += f.Bytes
	}
	return n
}

// RestartStalled is the watchdog that keeps a job from hanging when a work
// item's message was lost (poisoned while storage was down, purged by hand):
// a pending item that nobody owns and that has not changed for StallAfter is
// enqueued again. Taking the item first (If-Match) makes one caller do it;
// a repeated message is harmless, since an item runs under its lease. It
// returns how many items it enqueued.
//
// Unlike Status it writes, so it is its own call: the HTTP API makes it after
// a status poll found the job in progress, and downloads never do.
func (e *Engine) RestartStalled(ctx context.Context, jobID string) (int, error) {
	if !ValidJobID(jobID) {
		return 0, fault.New(fault.NotFound, "there is no export job %q", jobID)
	}
	items, err := e.store.ListItems(ctx, jobID)
	if err != nil {
		return 0, fmt.Errorf("read work items of job %s: %w", jobID, err)
	}
	restarted := 0
	now := e.now().UTC()
	for _, it := range items {
		if it.State != ItemPending || it.LeaseUntil.After(now) || now.Sub(it.UpdatedAt) < e.set.StallAfter {
			continue
		}
		if it.Kind == ItemAssociated && !othersDone(items) {
			continue // waiting for the others by design, not stalled
		}
		stalled := *it
		stalled.UpdatedAt = now
		if err := e.store.UpdateItem(ctx, &stalled); err != nil {
			continue // someone else touched it: not stalled, or already restarted
		}
		if err := e.queue.Enqueue(ctx, Message{Job: it.JobID, Item: it.ID}); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Str("workItem", it.ID).Msg("could not enqueue a stalled work item again")
			continue
		}
		restarted++
		zerolog.Ctx(ctx).Warn().Str("workItem", it.ID).Time("lastChange", it.UpdatedAt).
			Msg("work item made no progress and had no owner; enqueued again")
	}
	return restarted, nil
}

func deriveStatus(job *Job, items []*WorkItem) *Status {
	st := &Status{Job: job, Phase: InProgress}
	var plan *WorkItem
	pending := 0
	associated := false
	for _, it := range items {
		if it.ID == PlanItemID {
			plan = it
		}
		associated = associated || it.Kind == ItemAssociated
		switch it.State {
		case ItemFailed:
			if st.Failure == nil {
				st.Phase = Failed
				st.Failure = itemFailure(it)
			}
		case ItemPending:
			pending++
		}
		if it.UpdatedAt.After(st.CompletedAt) {
			st.CompletedAt = it.UpdatedAt
		}
		if it.ID != PlanItemID && it.Kind != ItemDeleted { // deletions are not resources
			st.Done += it.Done
		}
	}
	if plan != nil && plan.State == ItemDone {
		// The plan's exact total counts the searched resources; the
		// associated Provenance (includeAssociatedData) come on top of them,
		// in a number nobody knows before, so the answer is an estimate.
		st.Total, st.TotalKnown = plan.Expected, plan.Expected > 0 && !associated
	}
	estimateProgress(st, plan, items)
	if st.Phase == Failed || plan == nil || pending > 0 {
		st.CompletedAt = time.Time{}
		return st
	}
	st.Phase = Completed
	// By type, then item id: the windows of a type in order (their ids and
	// file names carry fixed-width numbers), then each item's files in order.
	sort.Slice(items, func(i, j int) bool {
		if items[i].Type != items[j].Type {
			return items[i].Type < items[j].Type
		}
		return items[i].ID < items[j].ID
	})
	for _, it := range items {
		for _, f := range it.Files {
			if f.Count == 0 {
				continue
			}
			of := OutputFile{Type: it.Type, Name: f.Name, Count: f.Count}
			if it.ID == PlanItemID {
				of.Type = "OperationOutcome"
				st.Errors = append(st.Errors, of)
			} else if it.Kind == ItemDeleted {
				of.Type = "Bundle"
				st.Deleted = append(st.Deleted, of)
			} else {
				st.Output = append(st.Output, of)
			}
		}
		// Search outcome entries and entries that could not be exported.
		for _, f := range it.ErrorFiles {
			if f.Count > 0 {
				st.Errors = append(st.Errors, OutputFile{Type: "OperationOutcome", Name: f.Name, Count: f.Count})
			}
		}
	}
	return st
}

// itemFailure rebuilds the recorded cause of a failed item as an error with
// its fault kind and FHIR issue code, for the status answer (the HTTP API
// maps the kind to a status). A row recorded before kinds were stored has
// none and reads as Permanent, which is what every failure was taken for then.
func itemFailure(it *WorkItem) error {
	what := "planning the export"
	if it.ID != PlanItemID {
		what = "exporting " + it.Type
	}
	kind, ok := fault.ParseKind(it.FailureKind)
	if !ok {
		kind = fault.Permanent
	}
	return &fault.Error{Kind: kind, Code: it.FailureCode, Msg: fmt.Sprintf("%s failed: %s", what, it.Failure)}
}
