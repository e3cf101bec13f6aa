package azstore

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue/queueerror"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/queueworker"
)

// Delivery is a received message: its text and what it takes to delete it,
// extend its visibility or poison it.
type Delivery = queueworker.Delivery

// Queue is an export.Queue on an Azure Storage queue, plus the receive side
// the standalone worker uses in place of the Functions host. Messages are
// plain-text JSON (the host runs with messageEncoding "none") and never expire.
type Queue struct {
	svc    *azqueue.ServiceClient
	client *azqueue.QueueClient
	name   string
}

const (
	maxReceive    = 32
	maxVisibility = 7 * 24 * time.Hour
	neverExpire   = -1
)

var _ export.Queue = (*Queue)(nil)

func newQueue(svc *azqueue.ServiceClient, name string) *Queue {
	return &Queue{svc: svc, client: svc.NewQueueClient(name), name: name}
}

// Enqueue sends msg as JSON text.
func (q *Queue) Enqueue(ctx context.Context, msg export.Message) error {
	text, err := json.Marshal(msg)
	if err != nil {
		return fault.Wrap(fault.Internal, err, "enqueue %s/%s", msg.Job, msg.Item)
	}
	if err := q.send(ctx, string(text)); err != nil {
		return fmt.Errorf("enqueue %s/%s: %w", msg.Job, msg.Item, err)
	}
	return nil
}

func (q *Queue) send(ctx context.Context, text string) error {
	ttl := int32(neverExpire)
	if _, err := q.client.EnqueueMessage(ctx, text, &azqueue.EnqueueMessageOptions{TimeToLive: &ttl}); err != nil {
		return wrap(err, "send to queue %s", q.name)
	}
	return nil
}

// Receive takes up to limit (1..32) visible messages and hides them for
// visibility (rounded up to whole seconds, at least one).
func (q *Queue) Receive(ctx context.Context, limit int, visibility time.Duration) ([]Delivery, error) {
	if limit < 1 || limit > maxReceive {
		return nil, fault.New(fault.Internal, "receive from %s: limit %d out of range 1..%d", q.name, limit, maxReceive)
	}
	vis, err := seconds(visibility, 1)
	if err != nil {
		return nil, fault.Wrap(fault.Internal, err, "receive from %s", q.name)
	}
	n := int32(limit)
	resp, err := q.client.DequeueMessages(ctx, &azqueue.DequeueMessagesOptions{NumberOfMessages: &n, VisibilityTimeout: &vis})
	if err != nil {
		return nil, wrap(err, "receive from %s", q.name)
	}
	out := make([]Delivery, 0, len(resp.Messages))
	for _, m := range resp.Messages {
		out = append(out, Delivery{
			MessageID:    deref(m.MessageID),
			PopReceipt:   deref(m.PopReceipt),
			Text:         deref(m.MessageText),
			DequeueCount: deref(m.DequeueCount),
		})
	}
	return out, nil
}

// Delete removes a received message. A stale pop receipt (the message was
// received again, or is gone) is fault.Conflict: the lease was lost.
func (q *Queue) Delete(ctx context.Context, d Delivery) error {
	if _, err := q.client.DeleteMessage(ctx, d.MessageID, d.PopReceipt, nil); err != nil {
		return leaseError(err, "delete message %s from %s", d.MessageID, q.name)
	}
	return nil
}

// Extend hides a received message for visibility from now (rounded up to
// whole seconds; 0 makes it visible at once), keeping its text, and stores
// the new pop receipt in d. fault.Conflict as for Delete.
func (q *Queue) Extend(ctx context.Context, d *Delivery, visibility time.Duration) error {
	vis, err := seconds(visibility, 0)
	if err != nil {
		return fault.Wrap(fault.Internal, err, "extend message %s in %s", d.MessageID, q.name)
	}
	opts := &azqueue.UpdateMessageOptions{VisibilityTimeout: &vis}
	resp, err := q.client.UpdateMessage(ctx, d.MessageID, d.PopReceipt, d.Text, opts)
	if err != nil {
		return leaseError(err, "extend message %s in %s", d.MessageID, q.name)
	}
	if resp.PopReceipt == nil {
		return fault.New(fault.Internal, "extend message %s in %s: no pop receipt in the answer", d.MessageID, q.name)
	}
	d.PopReceipt = *resp.PopReceipt
	return nil
}

// Poison copies the message's text to the poison queue, then deletes it here.
func (q *Queue) Poison(ctx context.Context, d Delivery) error {
	if err := q.PoisonQueue().send(ctx, d.Text); err != nil {
		return fmt.Errorf("poison message %s: %w", d.MessageID, err)
	}
	if err := q.Delete(ctx, d); err != nil {
		return fmt.Errorf("poison: %w", err)
	}
	return nil
}

// PoisonQueue returns the queue Poison moves messages to: the queue's name
// with PoisonSuffix, as the Functions host names it.
func (q *Queue) PoisonQueue() *Queue {
	return newQueue(q.svc, q.name+PoisonSuffix)
}

// leaseError makes a stale pop receipt a Conflict: Azurite answers
// 400 PopReceiptMismatch, Azure that or 404 MessageNotFound.
func leaseError(err error, format string, args ...any) error {
	if queueerror.HasCode(err, queueerror.PopReceiptMismatch, queueerror.MessageNotFound) {
		return wrapAs(fault.Conflict, err, format, args...)
	}
	return wrap(err, format, args...)
}

// seconds rounds d up to the whole seconds the service takes, at least floor.
func seconds(d time.Duration, floor int32) (int32, error) {
	if d < 0 || d > maxVisibility {
		return 0, fmt.Errorf("visibility %s out of range 0..%s", d, maxVisibility)
	}
	s := int32((d + time.Second - 1) / time.Second)
	return max(s, floor), nil
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
