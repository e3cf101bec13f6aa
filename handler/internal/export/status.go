package export

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// Status derives a job's status from its work items: failed as soon as one
// item failed, complete when the plan and every item it created are done,
// in progress otherwise. Nothing else is consulted, so the answer is the same
// after any process restarts.
func (e *Engine) Status(ctx context.Context, jobID string) (*Status, error) {
	job, err := e.activeJob(ctx, jobID)
	if err != nil {
		return nil, err
	}
	items, err := e.store.ListItems(ctx, jobID)
	if err != nil {
		return nil, fmt.Errorf("read work items of job %s: %w", jobID, err)
	}
	return deriveStatus(job, items), nil
}

func deriveStatus(job *Job, items []*WorkItem) *Status {
	st := &Status{Job: job, Phase: InProgress}
	var plan *WorkItem
	pending := 0
	for _, it := range items {
		if it.ID == PlanItemID {
			plan = it
		}
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
		if it.ID != PlanItemID {
			st.Done += it.Done
		}
	}
	if plan != nil && plan.State == ItemDone {
		st.Total, st.TotalKnown = plan.Expected, plan.Expected > 0
	}
	if st.Phase == Failed || plan == nil || pending > 0 {
		st.CompletedAt = time.Time{}
		return st
	}
	st.Phase = Completed
	sort.Slice(items, func(i, j int) bool { return items[i].Type < items[j].Type })
	for _, it := range items {
		for _, f := range it.Files {
			if f.Count == 0 {
				continue
			}
			of := OutputFile{Type: it.Type, Name: f.Name, Count: f.Count}
			if it.ID == PlanItemID {
				of.Type = "OperationOutcome"
				st.Errors = append(st.Errors, of)
			} else {
				st.Output = append(st.Output, of)
			}
		}
	}
	return st
}

// itemFailure rebuilds the recorded cause of a failed item as an error with
// its FHIR issue code, for the OperationOutcome of the status answer.
func itemFailure(it *WorkItem) error {
	what := "planning the export"
	if it.ID != PlanItemID {
		what = "exporting " + it.Type
	}
	err := fault.New(fault.Permanent, "%s failed: %s", what, it.Failure)
	if it.FailureCode != "" {
		err = fault.WithCode(err, it.FailureCode)
	}
	return err
}
