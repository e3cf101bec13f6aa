package storetest

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// DeliveryFields is any struct type with exactly the fields of a received
// message (memstore.Delivery, azstore.Delivery), so one suite serves both.
type DeliveryFields interface {
	~struct {
		MessageID, PopReceipt, Text string
		DequeueCount                int64
	}
}

// delivery is the suite's own view of a D.
type delivery struct {
	MessageID, PopReceipt, Text string
	DequeueCount                int64
}

// ReceiveQueue is an export.Queue with the receive side of a storage queue.
type ReceiveQueue[D DeliveryFields] interface {
	export.Queue
	Receive(ctx context.Context, limit int, visibility time.Duration) ([]D, error)
	Delete(ctx context.Context, d D) error
	Extend(ctx context.Context, d *D, visibility time.Duration) error
	Poison(ctx context.Context, d D) error
}

// QueueHarness is what a queue case runs on.
type QueueHarness[D DeliveryFields] struct {
	Queue  ReceiveQueue[D] // empty
	Poison ReceiveQueue[D] // where Queue.Poison moves messages; empty
	// Wait lets d pass for visibility timeouts: a sleep, or a fake clock's advance.
	Wait func(d time.Duration)
}

// RunQueue checks a queue. newQueue returns a fresh harness for each case.
func RunQueue[D DeliveryFields](t *testing.T, newQueue func(t *testing.T) QueueHarness[D]) {
	cases := []struct {
		name string
		run  func(t *testing.T, h QueueHarness[D])
	}{
		{"EnqueueReceiveDelete", testEnqueueReceiveDelete[D]},
		{"Redelivery", testRedelivery[D]},
		{"Extend", testExtend[D]},
		{"ExtendZeroReleases", testExtendZero[D]},
		{"Poison", testPoison[D]},
		{"ReceiveLimit", testReceiveLimit[D]},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.run(t, newQueue(t))
		})
	}
}

const (
	shortVisibility = time.Second
	longVisibility  = time.Minute
	// pastShort is long enough for a shortVisibility to lapse on a service
	// that counts whole seconds.
	pastShort = 2 * time.Second
)

func testEnqueueReceiveDelete[D DeliveryFields](t *testing.T, h QueueHarness[D]) {
	ctx := t.Context()
	msg := export.Message{Job: "01JD8Z6Q", Item: "Observation"}
	mustOK(t, h.Queue.Enqueue(ctx, msg), "Enqueue")
	d := receiveOne(t, h.Queue, longVisibility)
	v := delivery(d)
	want, _ := json.Marshal(msg)
	if v.Text != string(want) {
		t.Fatalf("received text %q, want %q", v.Text, want)
	}
	if v.MessageID == "" || v.PopReceipt == "" || v.DequeueCount != 1 {
		t.Fatalf("received %+v, want an id, a pop receipt and DequeueCount 1", v)
	}
	receiveNone(t, h.Queue, "while the message is invisible")
	mustOK(t, h.Queue.Delete(ctx, d), "Delete")
	wantKind(t, h.Queue.Delete(ctx, d), fault.Conflict, "second Delete")
}

func testRedelivery[D DeliveryFields](t *testing.T, h QueueHarness[D]) {
	ctx := t.Context()
	mustOK(t, h.Queue.Enqueue(ctx, export.Message{Job: "j", Item: "plan"}), "Enqueue")
	first := receiveOne(t, h.Queue, shortVisibility)
	h.Wait(pastShort)
	second := receiveOne(t, h.Queue, longVisibility)
	a, b := delivery(first), delivery(second)
	if b.MessageID != a.MessageID || b.Text != a.Text {
		t.Fatalf("redelivered %+v, want the message of %+v", b, a)
	}
	if a.DequeueCount != 1 || b.DequeueCount != 2 {
		t.Fatalf("DequeueCount %d then %d, want 1 then 2", a.DequeueCount, b.DequeueCount)
	}
	if b.PopReceipt == a.PopReceipt {
		t.Fatal("redelivery kept the pop receipt")
	}
	wantKind(t, h.Queue.Delete(ctx, first), fault.Conflict, "Delete with the first pop receipt")
	mustOK(t, h.Queue.Delete(ctx, second), "Delete with the second pop receipt")
	receiveNone(t, h.Queue, "after Delete")
}

func testExtend[D DeliveryFields](t *testing.T, h QueueHarness[D]) {
	ctx := t.Context()
	mustOK(t, h.Queue.Enqueue(ctx, export.Message{Job: "j", Item: "Patient"}), "Enqueue")
	d := receiveOne(t, h.Queue, shortVisibility)
	old := d
	mustOK(t, h.Queue.Extend(ctx, &d, longVisibility), "Extend")
	if delivery(d).PopReceipt == delivery(old).PopReceipt || delivery(d).PopReceipt == "" {
		t.Fatalf("Extend left pop receipt %q, want a new one", delivery(d).PopReceipt)
	}
	if delivery(d).Text != delivery(old).Text {
		t.Fatalf("Extend changed the text to %q", delivery(d).Text)
	}
	h.Wait(pastShort)
	receiveNone(t, h.Queue, "after Extend, past the first visibility")
	wantKind(t, h.Queue.Delete(ctx, old), fault.Conflict, "Delete with the pop receipt from before Extend")
	wantKind(t, h.Queue.Extend(ctx, &old, longVisibility), fault.Conflict, "Extend with a stale pop receipt")
	mustOK(t, h.Queue.Delete(ctx, d), "Delete with the new pop receipt")
	receiveNone(t, h.Queue, "after Delete")
}

func testExtendZero[D DeliveryFields](t *testing.T, h QueueHarness[D]) {
	ctx := t.Context()
	mustOK(t, h.Queue.Enqueue(ctx, export.Message{Job: "j", Item: "Encounter"}), "Enqueue")
	d := receiveOne(t, h.Queue, longVisibility)
	mustOK(t, h.Queue.Extend(ctx, &d, 0), "Extend by 0")
	again := receiveOne(t, h.Queue, longVisibility)
	if delivery(again).MessageID != delivery(d).MessageID || delivery(again).DequeueCount != 2 {
		t.Fatalf("after release received %+v, want the same message with DequeueCount 2", delivery(again))
	}
	mustOK(t, h.Queue.Delete(ctx, again), "Delete")
}

func testPoison[D DeliveryFields](t *testing.T, h QueueHarness[D]) {
	ctx := t.Context()
	mustOK(t, h.Queue.Enqueue(ctx, export.Message{Job: "j", Item: "Condition"}), "Enqueue")
	d := receiveOne(t, h.Queue, shortVisibility)
	mustOK(t, h.Queue.Poison(ctx, d), "Poison")
	h.Wait(pastShort)
	receiveNone(t, h.Queue, "after Poison")
	p := receiveOne(t, h.Poison, longVisibility)
	if delivery(p).Text != delivery(d).Text || delivery(p).DequeueCount != 1 {
		t.Fatalf("poison queue holds %+v, want text %q with DequeueCount 1", delivery(p), delivery(d).Text)
	}
	wantKind(t, h.Queue.Delete(ctx, d), fault.Conflict, "Delete after Poison")
}

func testReceiveLimit[D DeliveryFields](t *testing.T, h QueueHarness[D]) {
	ctx := t.Context()
	for _, limit := range []int{0, 33} {
		if _, err := h.Queue.Receive(ctx, limit, longVisibility); err == nil {
			t.Errorf("Receive(%d) succeeded, want an error", limit)
		}
	}
	for range 5 {
		mustOK(t, h.Queue.Enqueue(ctx, export.Message{Job: "j", Item: "Observation"}), "Enqueue")
	}
	got, err := h.Queue.Receive(ctx, 3, longVisibility)
	mustOK(t, err, "Receive(3)")
	rest, err := h.Queue.Receive(ctx, 32, longVisibility)
	mustOK(t, err, "Receive(32)")
	seen := map[string]bool{}
	for _, d := range append(got, rest...) {
		seen[delivery(d).MessageID] = true
	}
	if len(got) != 3 || len(rest) != 2 || len(seen) != 5 {
		t.Fatalf("Receive(3) then Receive(32) got %d and %d messages (%d distinct), want 3, 2, 5", len(got), len(rest), len(seen))
	}
}

func receiveOne[D DeliveryFields](t *testing.T, q ReceiveQueue[D], visibility time.Duration) D {
	t.Helper()
	ds, err := q.Receive(t.Context(), 32, visibility)
	mustOK(t, err, "Receive")
	if len(ds) != 1 {
		t.Fatalf("Receive returned %d messages, want 1", len(ds))
	}
	return ds[0]
}

func receiveNone[D DeliveryFields](t *testing.T, q ReceiveQueue[D], when string) {
	t.Helper()
	ds, err := q.Receive(t.Context(), 32, longVisibility)
	mustOK(t, err, "Receive")
	if len(ds) != 0 {
		t.Fatalf("Receive %s returned %d messages, want none: %+v", when, len(ds), delivery(ds[0]))
	}
}
