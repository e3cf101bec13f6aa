package export

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// Attempt describes one delivery of a work item message.
type Attempt struct {
	Number       int    // the queue's dequeue count, from 1
	Final        bool   // no further delivery will follow a failure
	InvocationID string // for logs
}

// errLeaseLost stops an invocation that no longer owns its item.
var errLeaseLost = fault.New(fault.Conflict, "another invocation owns this work item")

// errBusy is a delivery of a message whose item another live invocation runs.
var errBusy = fault.New(fault.Transient, "another invocation is running this work item")

// Process runs one delivery of a work item message. It returns nil when the
// message is finished with (done, failed for good and recorded, handed on to
// a continuation, or a duplicate), and an error of kind Transient when it
// should be delivered again. On the final attempt every failure is recorded
// on the job, so a job never stays in progress because its message ran out
// of deliveries; a failure that was retried until then is also returned (kind
// Permanent), so the queue moves the message to its poison queue.
func (e *Engine) Process(ctx context.Context, msg Message, at Attempt) error {
	log := zerolog.Ctx(ctx).With().Str("job", msg.Job).Str("workItem", msg.Item).
		Int("attempt", at.Number).Logger()
	ctx = log.WithContext(ctx)

	if !validJobID(msg.Job) || msg.Item == "" {
		log.Error().Msg("dropping a malformed work item message")
		return nil
	}
	job, err := e.store.GetJob(ctx, msg.Job)
	if fault.Is(err, fault.NotFound) {
		log.Warn().Msg("dropping a message for a job that does not exist")
		return nil
	}
	if err != nil {
		return e.retryOrFail(ctx, nil, at, fmt.Errorf("read job: %w", err))
	}
	item, err := e.store.GetItem(ctx, msg.Job, msg.Item)
	if fault.Is(err, fault.NotFound) {
		log.Warn().Msg("dropping a message for a work item that does not exist")
		return nil
	}
	if err != nil {
		return e.retryOrFail(ctx, nil, at, fmt.Errorf("read work item: %w", err))
	}
	if item.State != ItemPending {
		log.Info().Str("state", string(item.State)).Msg("work item already finished; dropping a repeated message")
		return nil
	}

	owner := newOwner()
	if err := e.acquire(ctx, item, owner); err != nil {
		if errors.Is(err, errBusy) || errors.Is(err, errLeaseLost) {
			if at.Final {
				log.Info().Msg("work item is being run by another invocation; dropping this repeated message")
				return nil
			}
			return err // deliver again later: if the owner died, its lease will have lapsed
		}
		return e.retryOrFail(ctx, nil, at, err)
	}

	if job.State == JobCancelled {
		e.removeItemFiles(ctx, job, item)
		return nil
	}

	deadline := time.Now().Add(e.set.InvocationBudget)
	if item.ID == PlanItemID {
		err = e.plan(ctx, job, item)
	} else {
		err = e.exportItem(ctx, job, item, deadline)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errLeaseLost):
		log.Warn().Msg("lost the work item to another invocation; stopping without writing")
		return nil
	case fault.Is(err, fault.Cancelled):
		log.Info().Msg("job was cancelled; work item stopped")
		e.removeItemFiles(ctx, job, item)
		return nil
	default:
		if fault.Is(e.checkCancelled(ctx, job.ID), fault.Cancelled) {
			// The failure is most likely the cancel itself (its files were
			// deleted under us): clean up now rather than on a retry.
			log.Info().Err(err).Msg("job was cancelled; work item stopped")
			e.removeItemFiles(ctx, job, item)
			return nil
		}
		return e.retryOrFail(ctx, item, at, err)
	}
}

// release gives up the lease after a failed invocation, so that the next
// delivery can start at once. It reads the item afresh: the in-memory copy
// may describe writes that were never committed.
func (e *Engine) release(ctx context.Context, jobID, itemID, owner string) {
	item, err := e.store.GetItem(ctx, jobID, itemID)
	if err != nil || item.LeaseOwner != owner {
		return
	}
	item.LeaseOwner, item.LeaseUntil = "", time.Time{}
	if err := e.store.UpdateItem(ctx, item); err != nil {
		zerolog.Ctx(ctx).Debug().Err(err).Msg("could not release a work item lease; it will lapse")
	}
}

// retryOrFail decides what a failure means: a transient one is retried while
// deliveries remain; anything else, or the last delivery, fails the item.
func (e *Engine) retryOrFail(ctx context.Context, item *WorkItem, at Attempt, cause error) error {
	log := zerolog.Ctx(ctx)
	kind := fault.KindOf(cause)
	retryable := kind == fault.Transient || kind == fault.Unavailable || kind == fault.Internal || kind == fault.Conflict
	if retryable && !at.Final {
		if item != nil {
			e.release(ctx, item.JobID, item.ID, item.LeaseOwner)
		}
		log.Warn().Err(cause).Str("kind", kind.String()).Msg("work item failed; it will be retried")
		return fault.Wrap(fault.Transient, cause, "work item will be retried")
	}
	if item == nil {
		// We could not even read the item; record the failure on it by id.
		log.Error().Err(cause).Msg("work item failed on its last delivery before it could be read")
		return fault.Wrap(fault.Transient, cause, "work item could not be read")
	}
	if err := e.fail(ctx, item, cause, at); err != nil {
		log.Error().Err(err).AnErr("cause", cause).Msg("could not record the failure of a work item")
		return fault.Wrap(fault.Transient, err, "record failure")
	}
	log.Error().Err(cause).Str("kind", kind.String()).Msg("work item failed; the job is failed")
	if retryable {
		// The last delivery of a failure that never cleared: the job now says
		// why, and failing the delivery too leaves the message in the poison
		// queue, where operators look for what went wrong.
		return &fault.Error{Kind: fault.Permanent, Msg: "work item failed on its last delivery; the failure is recorded on the job", Err: cause}
	}
	return nil
}

// fail records a work item as failed. It reads the item afresh, because the
// in-memory copy may describe writes that were never committed.
func (e *Engine) fail(ctx context.Context, item *WorkItem, cause error, at Attempt) error {
	for range 5 {
		fresh, err := e.store.GetItem(ctx, item.JobID, item.ID)
		if err != nil {
			return err
		}
		if fresh.State != ItemPending {
			return nil
		}
		fresh.State = ItemFailed
		fresh.Failure = cause.Error()
		if at.Final && fault.KindOf(cause) != fault.Permanent {
			fresh.Failure = fmt.Sprintf("%s (gave up after %d attempts)", cause.Error(), at.Number)
		}
		fresh.FailureCode = fault.Code(cause)
		if fresh.FailureCode == "transient" {
			fresh.FailureCode = "exception" // a failed job is not a reason to poll again
		}
		fresh.LeaseOwner, fresh.LeaseUntil = "", time.Time{}
		fresh.UpdatedAt = e.now().UTC()
		err = e.store.UpdateItem(ctx, fresh)
		if !fault.Is(err, fault.Conflict) {
			return err
		}
	}
	return fmt.Errorf("work item %s kept changing while recording its failure", item.ID)
}

func newOwner() string {
	var r [8]byte
	_, _ = rand.Read(r[:])
	return hex.EncodeToString(r[:])
}

// acquire takes the item's lease unless another live invocation holds it.
func (e *Engine) acquire(ctx context.Context, item *WorkItem, owner string) error {
	now := e.now().UTC()
	if item.LeaseOwner != "" && item.LeaseUntil.After(now) {
		return errBusy
	}
	item.LeaseOwner, item.LeaseUntil = owner, now.Add(e.set.Lease)
	item.Attempts++
	item.UpdatedAt = now
	err := e.store.UpdateItem(ctx, item)
	if fault.Is(err, fault.Conflict) {
		return errLeaseLost
	}
	return err
}

// record writes the item, renewing the lease; a lost compare-and-swap means
// another invocation took the item over.
func (e *Engine) record(ctx context.Context, item *WorkItem) error {
	now := e.now().UTC()
	item.UpdatedAt = now
	if item.State == ItemPending && item.LeaseOwner != "" {
		item.LeaseUntil = now.Add(e.set.Lease)
	} else {
		item.LeaseOwner, item.LeaseUntil = "", time.Time{}
	}
	err := e.store.UpdateItem(ctx, item)
	if fault.Is(err, fault.Conflict) {
		return errLeaseLost
	}
	return err
}

// checkCancelled reports fault.Cancelled once the job has been cancelled.
func (e *Engine) checkCancelled(ctx context.Context, jobID string) error {
	job, err := e.store.GetJob(ctx, jobID)
	if err != nil {
		return fmt.Errorf("read job: %w", err)
	}
	if job.State == JobCancelled {
		return fault.New(fault.Cancelled, "job %s was cancelled", jobID)
	}
	return nil
}

func (e *Engine) removeItemFiles(ctx context.Context, job *Job, item *WorkItem) {
	if item.ID == PlanItemID {
		if err := e.blobs.Delete(ctx, job.Request.Container, job.ID+"/"+fileName("OperationOutcome", 1)); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("could not delete the warnings file of a cancelled job")
		}
		return
	}
	w := newFileWriter(e.blobs, job, item, e.set)
	if err := w.removeAll(ctx); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("could not delete the files of a cancelled work item")
	}
}
