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

// scripted answers each delivery of an item with the next error of its script.
type scripted struct {
	mu       sync.Mutex
	script   map[string][]error
	attempts map[string][]export.Attempt
}

func (s *scripted) Process(ctx context.Context, msg export.Message, at export.Attempt) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attempts[msg.Item] = append(s.attempts[msg.Item], at)
	if errs := s.script[msg.Item]; len(errs) > 0 {
		s.script[msg.Item] = errs[1:]
		return errs[0]
	}
	return nil
}

func TestDeliveryRulesMatchTheQueueTrigger(t *testing.T) {
	q := memstore.NewQueue(nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	transient := fault.New(fault.Transient, "source said 503")
	p := &scripted{attempts: map[string][]export.Attempt{}, script: map[string][]error{
		"ok":          nil,
		"flaky":       {transient, transient},
		"always-down": {transient, transient, transient, transient},
	}}
	for _, item := range []string{"ok", "flaky", "always-down"} {
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
	if n := len(p.attempts["ok"]); n != 1 {
		t.Errorf("a successful message was delivered %d times, want 1", n)
	}
	if n := len(p.attempts["flaky"]); n != 3 {
		t.Errorf("a message failing twice was delivered %d times, want 3", n)
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
