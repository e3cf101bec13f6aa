package memstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/queueworker"
)

// Delivery is a received message: its text and what it takes to delete it,
// extend its visibility or poison it. It has the same fields as
// azstore.Delivery.
type Delivery = queueworker.Delivery

// Queue is an in-memory export.Queue with the receive side of an Azure
// Storage queue: a received message is invisible for the visibility timeout
// (whole seconds, as in Azure), comes back with a higher DequeueCount unless
// deleted, and can only be deleted or extended with its latest pop receipt.
type Queue struct {
	now export.Clock

	mu     sync.Mutex
	seq    int64
	msgs   []*message // in enqueue order
	poison *Queue
}

type message struct {
	id, text, pop string
	visibleAt     time.Time
	dequeues      int64
}

const (
	maxReceive    = 32
	maxVisibility = 7 * 24 * time.Hour
)

var _ export.Queue = (*Queue)(nil)

// NewQueue returns an empty queue whose visibility timeouts follow clock
// (time.Now if nil).
func NewQueue(clock export.Clock) *Queue {
	if clock == nil {
		clock = time.Now
	}
	return &Queue{now: clock}
}

// Enqueue adds msg as JSON text, visible at once.
func (q *Queue) Enqueue(ctx context.Context, msg export.Message) error {
	text, err := json.Marshal(msg)
	if err != nil {
		return fault.Wrap(fault.Internal, err, "enqueue %s/%s", msg.Job, msg.Item)
	}
	q.add(string(text))
	return nil
}

func (q *Queue) add(text string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.seq++
	q.msgs = append(q.msgs, &message{id: strconv.FormatInt(q.seq, 10), text: text, visibleAt: q.now()})
}

// Receive takes up to limit (1..32) visible messages, oldest first, and hides
// them for visibility (rounded up to whole seconds, at least one).
func (q *Queue) Receive(ctx context.Context, limit int, visibility time.Duration) ([]Delivery, error) {
	if limit < 1 || limit > maxReceive {
		return nil, fault.New(fault.Internal, "receive: limit %d out of range 1..%d", limit, maxReceive)
	}
	vis, err := seconds(visibility, time.Second)
	if err != nil {
		return nil, fault.Wrap(fault.Internal, err, "receive")
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.now()
	var out []Delivery
	for _, m := range q.msgs {
		if len(out) == limit {
			break
		}
		if m.visibleAt.After(now) {
			continue
		}
		m.dequeues++
		m.visibleAt = now.Add(vis)
		m.pop = q.receipt()
		out = append(out, Delivery{MessageID: m.id, PopReceipt: m.pop, Text: m.text, DequeueCount: m.dequeues})
	}
	return out, nil
}

// Delete removes a received message; fault.Conflict if the pop receipt is no
// longer the latest (the message was received again) or the message is gone.
func (q *Queue) Delete(ctx context.Context, d Delivery) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	i, err := q.find(d)
	if err != nil {
		return fault.Wrap(fault.Conflict, err, "delete message %s", d.MessageID)
	}
	q.msgs = append(q.msgs[:i], q.msgs[i+1:]...)
	return nil
}

// Extend hides a received message for visibility from now (rounded up to
// whole seconds; 0 makes it visible at once) and stores the new pop receipt
// in d. fault.Conflict as for Delete.
func (q *Queue) Extend(ctx context.Context, d *Delivery, visibility time.Duration) error {
	vis, err := seconds(visibility, 0)
	if err != nil {
		return fault.Wrap(fault.Internal, err, "extend message %s", d.MessageID)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	i, err := q.find(*d)
	if err != nil {
		return fault.Wrap(fault.Conflict, err, "extend message %s", d.MessageID)
	}
	m := q.msgs[i]
	m.visibleAt = q.now().Add(vis)
	m.pop = q.receipt()
	d.PopReceipt = m.pop
	return nil
}

// Poison copies the message's text to the poison queue and deletes it here.
func (q *Queue) Poison(ctx context.Context, d Delivery) error {
	q.PoisonQueue().add(d.Text)
	if err := q.Delete(ctx, d); err != nil {
		return fmt.Errorf("poison: %w", err)
	}
	return nil
}

// PoisonQueue returns the queue that Poison moves messages to.
func (q *Queue) PoisonQueue() *Queue {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.poison == nil {
		q.poison = NewQueue(q.now)
	}
	return q.poison
}

// Pending returns the messages not yet deleted, visible or not, in enqueue
// order. Texts that are not an export.Message are skipped.
func (q *Queue) Pending() []export.Message {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []export.Message
	for _, m := range q.msgs {
		var msg export.Message
		if json.Unmarshal([]byte(m.text), &msg) == nil {
			out = append(out, msg)
		}
	}
	return out
}

// find returns the index of d's message if d holds its latest pop receipt.
// The caller holds q.mu.
func (q *Queue) find(d Delivery) (int, error) {
	for i, m := range q.msgs {
		if m.id != d.MessageID {
			continue
		}
		if m.pop == "" || m.pop != d.PopReceipt {
			return 0, fmt.Errorf("pop receipt %q is stale", d.PopReceipt)
		}
		return i, nil
	}
	return 0, fmt.Errorf("message not found")
}

// receipt returns a fresh pop receipt. The caller holds q.mu.
func (q *Queue) receipt() string {
	q.seq++
	return "pop-" + strconv.FormatInt(q.seq, 10)
}

// seconds rounds d up to whole seconds, as the queue service counts them.
func seconds(d, floor time.Duration) (time.Duration, error) {
	if d < 0 || d > maxVisibility {
		return 0, fmt.Errorf("visibility %s out of range 0..%s", d, maxVisibility)
	}
	d = (d + time.Second - 1).Truncate(time.Second)
	return max(d, floor), nil
}
