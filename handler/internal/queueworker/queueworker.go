// Package queueworker runs work item messages in the standalone `serve` mode
// with the same delivery rules the Azure Functions queue trigger applies:
// a message is deleted when its work returns nil, delivered again after a
// delay when it fails, and moved to the poison queue after its last attempt.
// While a message runs, its visibility is extended so that it is not handed
// to a second worker.
package queueworker

import (
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/azfhir/bulkexport/handler/internal/export"
)

// Delivery is one received queue message.
type Delivery struct {
	MessageID    string
	PopReceipt   string
	Text         string
	DequeueCount int64
}

// Receiver is the receive side of the work queue.
type Receiver interface {
	Receive(ctx context.Context, max int, visibility time.Duration) ([]Delivery, error)
	Delete(ctx context.Context, d Delivery) error
	Extend(ctx context.Context, d *Delivery, visibility time.Duration) error
	Poison(ctx context.Context, d Delivery) error
}

// Processor runs one work item message (export.Engine.Process).
type Processor interface {
	Process(ctx context.Context, msg export.Message, at export.Attempt) error
}

// Options tune the loop. Zero values take the defaults in brackets.
type Options struct {
	Workers         int           // concurrent messages [4]
	MaxDequeueCount int           // deliveries before poison [5]
	RetryDelay      time.Duration // visibility of a failed message before its next delivery [30s]
	Visibility      time.Duration // visibility while running, renewed at half-time [2m]
	PollInterval    time.Duration // wait when the queue is empty [1s]
}

func (o Options) withDefaults() Options {
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.MaxDequeueCount <= 0 {
		o.MaxDequeueCount = 5
	}
	if o.RetryDelay < 0 {
		o.RetryDelay = 0
	}
	if o.Visibility <= 0 {
		o.Visibility = 2 * time.Minute
	}
	if o.PollInterval <= 0 {
		o.PollInterval = time.Second
	}
	return o
}

// Run receives and processes messages until ctx ends, then waits for the
// messages in flight.
func Run(ctx context.Context, q Receiver, p Processor, o Options) {
	o = o.withDefaults()
	log := zerolog.Ctx(ctx)
	slots := make(chan struct{}, o.Workers)
	var wg sync.WaitGroup
	defer wg.Wait()
	for ctx.Err() == nil {
		free := o.Workers - len(slots)
		if free == 0 {
			// Every worker is busy: wait until one is free again.
			select {
			case slots <- struct{}{}:
				<-slots
			case <-ctx.Done():
			}
			continue
		}
		batch, err := q.Receive(ctx, min(free, 32), o.Visibility)
		if err != nil {
			if ctx.Err() == nil {
				log.Warn().Err(err).Msg("receiving work items failed; trying again")
			}
			sleep(ctx, o.PollInterval)
			continue
		}
		if len(batch) == 0 {
			sleep(ctx, o.PollInterval)
			continue
		}
		for _, d := range batch {
			slots <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-slots }()
				handle(context.WithoutCancel(ctx), q, p, o, d)
			}()
		}
	}
}

// handle runs one delivery and settles its message.
func handle(ctx context.Context, q Receiver, p Processor, o Options, d Delivery) {
	invocation := d.MessageID + "/" + strconv.FormatInt(d.DequeueCount, 10)
	log := zerolog.Ctx(ctx).With().Str("invocationId", invocation).Logger()
	ctx = log.WithContext(ctx)

	var msg export.Message
	if err := json.Unmarshal([]byte(d.Text), &msg); err != nil {
		log.Error().Err(err).Str("text", d.Text).Msg("poisoning a message that is not a work item")
		if err := q.Poison(ctx, d); err != nil {
			log.Error().Err(err).Msg("could not poison a message")
		}
		return
	}

	stop := keepInvisible(ctx, q, &d, o.Visibility)
	err := p.Process(ctx, msg, export.Attempt{
		Number: int(d.DequeueCount), Final: d.DequeueCount >= int64(o.MaxDequeueCount), InvocationID: invocation,
	})
	stop()

	switch {
	case err == nil:
		if err := q.Delete(ctx, d); err != nil {
			log.Warn().Err(err).Msg("could not delete a finished message; its repeat will be dropped")
		}
	case d.DequeueCount >= int64(o.MaxDequeueCount):
		log.Error().Err(err).Msg("moving a work item message to the poison queue after its last attempt")
		if err := q.Poison(ctx, d); err != nil {
			log.Error().Err(err).Msg("could not poison a message")
		}
	default:
		if err := q.Extend(ctx, &d, o.RetryDelay); err != nil {
			log.Warn().Err(err).Msg("could not schedule the retry; the message returns when its visibility lapses")
		}
	}
}

// keepInvisible renews the message's visibility at half-time while it runs,
// as the Functions host does. The returned stop waits for the renewer.
func keepInvisible(ctx context.Context, q Receiver, d *Delivery, visibility time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(visibility / 2)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				mu.Lock()
				err := q.Extend(ctx, d, visibility)
				mu.Unlock()
				if err != nil && ctx.Err() == nil {
					zerolog.Ctx(ctx).Warn().Err(err).Msg("could not extend a running message's visibility")
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
