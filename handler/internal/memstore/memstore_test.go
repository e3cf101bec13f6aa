package memstore_test

import (
	"sync"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/memstore"
	"github.com/azfhir/bulkexport/handler/internal/storetest"
)

func TestStore(t *testing.T) {
	storetest.RunStore(t, func(t *testing.T) export.Store { return memstore.NewStore() })
}

func TestQueue(t *testing.T) {
	storetest.RunQueue(t, func(t *testing.T) storetest.QueueHarness[memstore.Delivery] {
		clock := &fakeClock{now: time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)}
		q := memstore.NewQueue(clock.Now)
		return storetest.QueueHarness[memstore.Delivery]{Queue: q, Poison: q.PoisonQueue(), Wait: clock.Advance}
	})
}

func TestBlobs(t *testing.T) {
	storetest.RunBlobs(t, func(t *testing.T) (storetest.Blobs, string) { return memstore.NewBlobs(), "exports" })
}

func TestQueuePending(t *testing.T) {
	q := memstore.NewQueue(nil)
	msgs := []export.Message{{Job: "j", Item: "plan"}, {Job: "j", Item: "Patient"}}
	for _, m := range msgs {
		if err := q.Enqueue(t.Context(), m); err != nil {
			t.Fatal(err)
		}
	}
	ds, err := q.Receive(t.Context(), 1, time.Minute)
	if err != nil || len(ds) != 1 {
		t.Fatalf("Receive: %d messages, %v", len(ds), err)
	}
	if got := q.Pending(); len(got) != 2 || got[0] != msgs[0] || got[1] != msgs[1] {
		t.Fatalf("Pending() = %v, want %v (received messages still count)", got, msgs)
	}
	if err := q.Delete(t.Context(), ds[0]); err != nil {
		t.Fatal(err)
	}
	if got := q.Pending(); len(got) != 1 || got[0] != msgs[1] {
		t.Fatalf("Pending() after Delete = %v, want %v", got, msgs[1:])
	}
}

// fakeClock is a clock that only moves when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
