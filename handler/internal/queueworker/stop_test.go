package queueworker_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/memstore"
	"github.com/azfhir/bulkexport/handler/internal/queueworker"
)

// stopDuringReceive is a queue whose first Receive is answered by storage
// (the messages are dequeued and invisible) while the process is being
// stopped: the answer reaches the loop only if the request's context was not
// cancelled by the stop, as with a real HTTP request to Azure Storage.
type stopDuringReceive struct {
	*memstore.Queue
	stop func()
	once sync.Once
}

func (r *stopDuringReceive) Receive(ctx context.Context, limit int, visibility time.Duration) ([]queueworker.Delivery, error) {
	first := false
	r.once.Do(func() { first = true })
	if !first {
		return r.Queue.Receive(ctx, limit, visibility)
	}
	batch, err := r.Queue.Receive(context.WithoutCancel(ctx), limit, visibility)
	r.stop() // SIGTERM arrives while the answer is on its way
	if ctx.Err() != nil {
		return nil, context.Cause(ctx) // the answer is lost with the cancelled request
	}
	return batch, err
}

// A stop that lands while a Receive is in flight must not strand the
// messages storage handed out: they are given back, visible at once, not
// left invisible for the whole visibility timeout (which left a restarted
// export waiting 10 minutes for a work item nobody ran).
func TestAStopDuringReceiveGivesTheMessagesBack(t *testing.T) {
	mq := memstore.NewQueue(nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, item := range []string{"Encounter", "ExplanationOfBenefit"} {
		if err := mq.Enqueue(ctx, export.Message{Job: "j", Item: item}); err != nil {
			t.Fatal(err)
		}
	}
	q := &stopDuringReceive{Queue: mq, stop: cancel}
	p := &scripted{attempts: map[string][]export.Attempt{}, script: map[string][]export.Outcome{}}
	done := make(chan struct{})
	go func() {
		queueworker.Run(ctx, q, p, queueworker.Options{Workers: 4, Visibility: 10 * time.Minute, PollInterval: 10 * time.Millisecond})
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	p.mu.Lock()
	started := len(p.attempts)
	p.mu.Unlock()
	if started != 0 {
		t.Errorf("%d messages were started after the stop; want none", started)
	}
	again, err := mq.Receive(context.Background(), 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 2 {
		t.Fatalf("%d of the 2 messages are visible after the stop; the rest stay invisible for the 10-minute visibility timeout", len(again))
	}
}
