package queueworker_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/memstore"
	"github.com/azfhir/bulkexport/handler/internal/queueworker"
)

// scripted answers each delivery of an item with the next outcome of its
// script, and Done when the script is used up.
type scripted struct {
	mu       sync.Mutex
	script   map[string][]export.Outcome
	attempts map[string][]export.Attempt
}

func (s *scripted) Process(ctx context.Context, msg export.Message, at export.Attempt) export.Outcome {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attempts[msg.Item] = append(s.attempts[msg.Item], at)
	if outs := s.script[msg.Item]; len(outs) > 0 {
		s.script[msg.Item] = outs[1:]
		return outs[0]
	}
	return export.Done()
}

func TestDeliveryRulesFollowTheOutcome(t *testing.T) {
	q := memstore.NewQueue(nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	transient := fault.New(fault.Transient, "source said 503")
	p := &scripted{attempts: map[string][]export.Attempt{}, script: map[string][]export.Outcome{
		"ok":          nil,
		"failed":      {export.GiveUp(fault.New(fault.Permanent, "source rejected the search"))},
		"flaky":       {export.RetryLater(transient), export.RetryLater(transient)},
		"always-down": {export.RetryLater(transient), export.RetryLater(transient), export.Poisoned(transient)},
	}}
	for _, item := range []string{"ok", "failed", "flaky", "always-down"} {
		if err := q.Enqueue(ctx, export.Message{Job: "j", Item: item}); err != nil {
			t.Fatal(err)
		}
	}

	done := make(chan struct{})
	go func() {
		queueworker.Run(ctx, q, p, queueworker.Options{Workers: 2, MaxDequeueCount: 3, RetryDelay: 0, PollInterval: 10 * time.Millisecond})
		close(done)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for len(q.Pending()) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done

	p.mu.Lock()
	defer p.mu.Unlock()
	for item, want := range map[string]int{"ok": 1, "failed": 1, "flaky": 3} {
		if n := len(p.attempts[item]); n != want {
			t.Errorf("%s was delivered %d times, want %d", item, n, want)
		}
	}
	got := p.attempts["always-down"]
	if len(got) != 3 {
		t.Fatalf("a message that always fails was delivered %d times, want MaxDequeueCount = 3", len(got))
	}
	for i, at := range got {
		if at.Number != i+1 || at.Final != (i == 2) {
			t.Errorf("delivery %d: %+v, want Number %d and Final only on the last", i+1, at, i+1)
		}
	}
	poisoned := q.PoisonQueue().Pending()
	if len(poisoned) != 1 || poisoned[0].Item != "always-down" {
		t.Errorf("poison queue holds %+v, want the always-down message", poisoned)
	}
	if left := q.Pending(); len(left) != 0 {
		t.Errorf("work queue still holds %+v", left)
	}
}

// handingOn runs until its delivery is asked to stop, then hands on (as the
// engine does: a continuation message, and the delivery settled). With
// ignoreStop it runs until its context is cancelled instead.
type handingOn struct {
	q          *memstore.Queue
	ignoreStop bool
	started    chan string
	mu         sync.Mutex
	ended      map[string]error // the context's error when each item ended
}

func (h *handingOn) Process(ctx context.Context, msg export.Message, at export.Attempt) export.Outcome {
	h.started <- msg.Item
	stop := at.Stop
	if h.ignoreStop {
		stop = nil
	}
	select {
	case <-stop:
	case <-ctx.Done():
	}
	h.mu.Lock()
	h.ended[msg.Item] = ctx.Err()
	h.mu.Unlock()
	if ctx.Err() != nil {
		return export.RetryLater(ctx.Err())
	}
	if err := h.q.Enqueue(context.Background(), export.Message{Job: msg.Job, Item: msg.Item + "-continued"}); err != nil {
		return export.RetryLater(err)
	}
	return export.Done()
}

func TestStoppingHandsOnTheWorkInFlightAndTakesNoMore(t *testing.T) {
	q := memstore.NewQueue(nil)
	p := &handingOn{q: q, started: make(chan string, 3), ended: map[string]error{}}
	for _, item := range []string{"a", "b", "waiting"} {
		if err := q.Enqueue(context.Background(), export.Message{Job: "j", Item: item}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		queueworker.Run(ctx, q, p, queueworker.Options{Workers: 2, PollInterval: 10 * time.Millisecond, Grace: time.Hour})
		close(done)
	}()
	running := map[string]bool{<-p.started: true, <-p.started: true}
	cancel() // both workers are busy: the third message has not been taken
	<-done

	if !running["a"] || !running["b"] {
		t.Fatalf("the workers ran %v, want a and b", running)
	}
	for item, err := range p.ended {
		if err != nil {
			t.Errorf("%s: its work was cancelled (%v) instead of asked to hand on", item, err)
		}
	}
	var left []string
	for _, m := range q.Pending() {
		left = append(left, m.Item)
	}
	if len(left) != 3 || left[0] != "waiting" || left[1] == left[2] {
		t.Errorf("queue holds %v, want the untaken message and the two continuations (the handed-on messages deleted)", left)
	}
	ds, err := q.Receive(context.Background(), 32, time.Minute)
	if err != nil || len(ds) != 3 || ds[0].DequeueCount != 1 {
		t.Errorf("after the stop %d messages are visible (%v), want all 3, the untaken one never delivered", len(ds), err)
	}
}

func TestWorkStillRunningAfterTheGraceIsCancelledAndGivenBack(t *testing.T) {
	q := memstore.NewQueue(nil)
	p := &handingOn{q: q, ignoreStop: true, started: make(chan string, 1), ended: map[string]error{}}
	if err := q.Enqueue(context.Background(), export.Message{Job: "j", Item: "slow"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		queueworker.Run(ctx, q, p, queueworker.Options{Workers: 1, PollInterval: 10 * time.Millisecond, Grace: time.Millisecond,
			RetryDelay: time.Hour})
		close(done)
	}()
	<-p.started
	cancel()
	<-done
	if err := p.ended["slow"]; err == nil {
		t.Fatal("the work that ignored the stop was never cancelled")
	}
	// Cut short, not failed: the message is visible again at once (not
	// after RetryDelay), for another instance to resume.
	ds, err := q.Receive(context.Background(), 1, time.Minute)
	if err != nil || len(ds) != 1 || ds[0].DequeueCount != 2 {
		t.Fatalf("after the cancelled delivery: %+v, %v; want the message visible at once for its second delivery", ds, err)
	}
}

// emptyNoted tells, once, that a receive found the queue empty: the loop is
// then idle until its poll interval is over or something wakes it.
type emptyNoted struct {
	*memstore.Queue
	once  sync.Once
	empty chan struct{}
}

func (q *emptyNoted) Receive(ctx context.Context, max int, visibility time.Duration) ([]queueworker.Delivery, error) {
	ds, err := q.Queue.Receive(ctx, max, visibility)
	if err == nil && len(ds) == 0 {
		q.once.Do(func() { close(q.empty) })
	}
	return ds, err
}

// planning enqueues the job's items when its "plan" message runs, after the
// loop has gone idle, and reports every item it runs.
type planning struct {
	q   *emptyNoted
	ran chan string
}

func (p *planning) Process(ctx context.Context, msg export.Message, at export.Attempt) export.Outcome {
	if msg.Item == "plan" {
		select {
		case <-p.q.empty:
		case <-time.After(10 * time.Second):
			return export.GiveUp(fault.New(fault.Permanent, "the loop never found the queue empty"))
		}
		for _, item := range []string{"Observation.w0001", "Observation.w0002"} {
			if err := p.q.Enqueue(ctx, export.Message{Job: msg.Job, Item: item}); err != nil {
				return export.RetryLater(err)
			}
		}
	}
	p.ran <- msg.Item
	return export.Done()
}

// The items a plan enqueues start when the plan ends, not a poll interval
// later: with an hour-long interval they would otherwise wait an hour (the
// guard fails the test instead).
func TestItemsEnqueuedByAMessageStartWhenItEnds(t *testing.T) {
	q := &emptyNoted{Queue: memstore.NewQueue(nil), empty: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := q.Enqueue(ctx, export.Message{Job: "j", Item: "plan"}); err != nil {
		t.Fatal(err)
	}
	p := &planning{q: q, ran: make(chan string, 3)}
	done := make(chan struct{})
	go func() {
		queueworker.Run(ctx, q, p, queueworker.Options{Workers: 4, PollInterval: time.Hour, Grace: time.Second})
		close(done)
	}()
	defer func() { cancel(); <-done }()
	var ran []string
	guard := time.After(10 * time.Second)
	for len(ran) < 3 {
		select {
		case item := <-p.ran:
			ran = append(ran, item)
		case <-guard:
			t.Fatalf("ran %v; the items the plan enqueued did not start when it ended", ran)
		}
	}
	if ran[0] != "plan" {
		t.Errorf("ran %v, want the plan first", ran)
	}
}

// A kick-off enqueues its plan item through the Notifier: the idle loop
// starts it at once, not a poll interval (here an hour) later.
func TestAMessageEnqueuedThroughTheNotifierStartsAtOnce(t *testing.T) {
	q := &emptyNoted{Queue: memstore.NewQueue(nil), empty: make(chan struct{})}
	n := queueworker.NewNotifier(q)
	ctx, cancel := context.WithCancel(context.Background())
	p := &planning{q: q, ran: make(chan string, 1)}
	done := make(chan struct{})
	go func() {
		queueworker.Run(ctx, q, p, queueworker.Options{Workers: 2, PollInterval: time.Hour, Grace: time.Second, Wake: n.Wake()})
		close(done)
	}()
	defer func() { cancel(); <-done }()
	select {
	case <-q.empty: // the loop is idle now
	case <-time.After(10 * time.Second):
		t.Fatal("the loop never found the queue empty")
	}
	if err := n.Enqueue(ctx, export.Message{Job: "j", Item: "Patient"}); err != nil {
		t.Fatal(err)
	}
	select {
	case item := <-p.ran:
		if item != "Patient" {
			t.Errorf("ran %s, want Patient", item)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a message enqueued through the Notifier did not start while the loop was idle")
	}
}
