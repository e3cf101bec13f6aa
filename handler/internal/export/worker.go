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
	// Stop is closed when the process is shutting down. A running item then
	// checkpoints at its next page boundary, releases its lease and hands
	// the rest to a continuation message, so that another instance resumes
	// at once. Nil never stops. It is separate from the context, which ends
	// only when the work must stop at once (the shutdown grace has passed).
	Stop <-chan struct{}
}

// stopping reports whether the process asked running work to hand on.
func (at Attempt) stopping() bool {
	select {
	case <-at.Stop:
		return true
	default:
		return false
	}
}

// errLeaseLost stops an invocation that no longer owns its item.
var errLeaseLost = fault.New(fault.Conflict, "another invocation owns this work item")

// errBusy is a delivery of a message whose item another live invocation runs.
var errBusy = fault.New(fault.Transient, "another invocation is running this work item")

// detachedTimeout bounds the storage calls that tidy up after an invocation
// whose own context has ended (releasing its lease): they must not hang a
// shutdown.
const detachedTimeout = 5 * time.Second

// Process runs one delivery of a work item message and says what the queue
// must do with the message:
//
//   - Done: finished with (the item is done, handed on to a continuation
//     message, or the message was a duplicate, stale or malformed);
//   - GiveUp: the item failed for good (a permanent cause) and the failure is
//     recorded on the job;
//   - RetryLater: a failure that may pass (or a live owner elsewhere, or an
//     invocation cut short by ctx); the lease is released and the next
//     delivery resumes at the last checkpoint;
//   - Poisoned: the last delivery failed; the failure is recorded on the job,
//     so a job never stays in progress because its message ran out of
//     deliveries.
//
// ctx ending stops the work at once; at.Stop asks it to hand on at the next
// page boundary instead.
func (e *Engine) Process(ctx context.Context, msg Message, at Attempt) Outcome {
	log := zerolog.Ctx(ctx).With().Str("job", msg.Job).Str("workItem", msg.Item).
		Int("attempt", at.Number).Logger()
	ctx = log.WithContext(ctx)

	if !ValidJobID(msg.Job) || msg.Item == "" {
		log.Error().Msg("dropping a malformed work item message")
		return Done()
	}
	job, err := e.store.GetJob(ctx, msg.Job)
	if fault.Is(err, fault.NotFound) {
		log.Warn().Msg("dropping a message for a job that does not exist")
		return Done()
	}
	if err != nil {
		return e.retryOrFail(ctx, msg, "", at, fmt.Errorf("read job: %w", err))
	}
	item, err := e.store.GetItem(ctx, msg.Job, msg.Item)
	if fault.Is(err, fault.NotFound) {
		log.Warn().Msg("dropping a message for a work item that does not exist")
		return Done()
	}
	if err != nil {
		return e.retryOrFail(ctx, msg, "", at, fmt.Errorf("read work item: %w", err))
	}
	if item.State != ItemPending {
		log.Info().Str("state", string(item.State)).Msg("work item already finished; dropping a repeated message")
		return Done()
	}

	if item.Kind == ItemAssociated {
		// It reads the job's output files, so it waits until every other
		// item is done; the last of them enqueues it (associated.go).
		items, err := e.store.ListItems(ctx, msg.Job)
		if err != nil {
			return e.retryOrFail(ctx, msg, "", at, fmt.Errorf("read work items: %w", err))
		}
		if !othersDone(items) {
			log.Info().Msg("associated Provenance waits for the job's other work items; the last of them enqueues it")
			return Done()
		}
	}

	owner := newOwner()
	if err := e.acquire(ctx, item, owner); err != nil {
		if errors.Is(err, errBusy) || errors.Is(err, errLeaseLost) {
			if at.Final {
				log.Info().Msg("work item is being run by another invocation; dropping this repeated message")
				return Done()
			}
			// Deliver again later: if the owner died, its lease will have lapsed.
			log.Info().Msg("work item is being run by another invocation; this message will be delivered again")
			return RetryLater(err)
		}
		return e.retryOrFail(ctx, msg, "", at, err)
	}

	if job.State == JobCancelled {
		e.removeItemFiles(ctx, job, item)
		return Done()
	}

	deadline := time.Now().Add(e.set.InvocationBudget)
	if item.ID == PlanItemID {
		err = e.plan(ctx, job, item)
	} else {
		err = e.exportItem(ctx, job, item, deadline, at)
	}
	switch {
	case err == nil:
		return Done()
	case errors.Is(err, errLeaseLost):
		log.Warn().Msg("lost the work item to another invocation; stopping without writing")
		return Done()
	case fault.Is(err, fault.Cancelled):
		log.Info().Msg("job was cancelled; work item stopped")
		e.removeItemFiles(ctx, job, item)
		return Done()
	default:
		if ctx.Err() == nil && fault.Is(e.checkCancelled(ctx, job.ID), fault.Cancelled) {
			// The failure is most likely the cancel itself (its files were
			// deleted under us): clean up now rather than on a retry.
			log.Info().Err(err).Msg("job was cancelled; work item stopped")
			e.removeItemFiles(ctx, job, item)
			return Done()
		}
		return e.retryOrFail(ctx, msg, owner, at, err)
	}
}

// release gives up the lease after a failed invocation, so that the next
// delivery can start at once. It reads the item afresh: the in-memory copy
// may describe writes that were never committed. It runs even when ctx has
// ended (a shutdown past its grace), within detachedTimeout.
func (e *Engine) release(ctx context.Context, jobID, itemID, owner string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), detachedTimeout)
	defer cancel()
	item, err := e.store.GetItem(ctx, jobID, itemID)
	if err != nil || item.LeaseOwner != owner {
		return
	}
	item.LeaseOwner, item.LeaseUntil = "", time.Time{}
	if err := e.store.UpdateItem(ctx, item); err != nil {
		zerolog.Ctx(ctx).Debug().Err(err).Msg("could not release a work item lease; it will lapse")
	}
}

// retryable reports whether a failure of this kind may pass on a later
// delivery: outages, throttling, bugs and lost races. Anything else (the
// source rejects the search, storage refuses our identity) will not.
func retryable(kind fault.Kind) bool {
	switch kind {
	case fault.Transient, fault.Unavailable, fault.Internal, fault.Conflict:
		return true
	}
	return false
}

// retryOrFail decides what a failure of the delivery of msg means: a
// retryable one is retried while deliveries remain; anything else, or the
// last delivery, fails the item on the job. owner is the lease this
// invocation holds ("" if it took none). The item is failed by id, read
// afresh, so a failure before the item could even be read is recorded too.
func (e *Engine) retryOrFail(ctx context.Context, msg Message, owner string, at Attempt, cause error) Outcome {
	log := zerolog.Ctx(ctx)
	kind := fault.KindOf(cause)
	if owner != "" {
		e.release(ctx, msg.Job, msg.Item, owner)
	}
	if ctx.Err() != nil {
		// The invocation was cut short (a shutdown past its grace, or the
		// host gave up on the request): that says nothing about the work, so
		// it is never recorded as the job's failure. Like a crash, it
		// resumes at the last checkpoint on the next delivery.
		log.Warn().Err(cause).Msg("work item interrupted; it will be delivered again")
		return RetryLater(cause)
	}
	if retryable(kind) && !at.Final {
		log.Warn().Err(cause).Str("kind", kind.String()).Msg("work item failed; it will be retried")
		return RetryLater(cause)
	}
	if err := e.fail(ctx, msg, cause, at); err != nil {
		log.Error().Err(err).AnErr("cause", cause).Msg("could not record the failure of a work item")
		if at.Final {
			// Nothing more can be done here: the poison queue keeps the
			// message, and the status watchdog enqueues the item again once
			// it has been idle for StallAfter.
			return Poisoned(cause)
		}
		return RetryLater(cause)
	}
	log.Error().Err(cause).Str("kind", kind.String()).Msg("work item failed; the job is failed")
	if retryable(kind) {
		// The last delivery of a failure that never cleared: the job now says
		// why, and the message goes to the poison queue, where operators look
		// for what went wrong.
		return Poisoned(cause)
	}
	return GiveUp(cause)
}

// fail records the work item of msg as failed with the cause (as
// shownFailure words it), its kind and its FHIR issue code. It reads the
// item afresh, because an in-memory copy may describe writes that were never
// committed.
func (e *Engine) fail(ctx context.Context, msg Message, cause error, at Attempt) error {
	kind := fault.KindOf(cause)
	shown := e.shownFailure(ctx, msg.Job, cause)
	for range 5 {
		fresh, err := e.store.GetItem(ctx, msg.Job, msg.Item)
		if err != nil {
			return err
		}
		if fresh.State != ItemPending {
			return nil
		}
		fresh.State = ItemFailed
		fresh.Failure = shown
		if at.Final && retryable(kind) {
			fresh.Failure = fmt.Sprintf("%s (gave up after %d attempts)", shown, at.Number)
		}
		fresh.FailureKind = kind.String()
		fresh.FailureCode = fault.Code(cause)
		fresh.LeaseOwner, fresh.LeaseUntil = "", time.Time{}
		fresh.UpdatedAt = e.now().UTC()
		err = e.store.UpdateItem(ctx, fresh)
		if !fault.Is(err, fault.Conflict) {
			return err
		}
	}
	return fmt.Errorf("work item %s kept changing while recording its failure", msg.Item)
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
	for _, w := range []*fileWriter{newFileWriter(e.blobs, job, item, e.set), newErrorWriter(e.blobs, job, item, e.set)} {
		if err := w.removeAll(ctx); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("could not delete the files of a cancelled work item")
		}
	}
}
