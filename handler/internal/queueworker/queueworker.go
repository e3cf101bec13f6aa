// Package queueworker runs work item messages in the standalone `serve` mode
// with the same delivery rules the Azure Functions queue trigger applies:
// the engine's outcome decides (export.Outcome): a settled message is
// deleted, a retried one is delivered again after a delay, a poisoned one
// moves to the poison queue. While a message runs, its visibility is
// extended so that it is not handed to a second worker. On shutdown it
// stops receiving and lets the messages in flight hand on within a grace.
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
	Process(ctx context.Context, msg export.Message, at export.Attempt) export.Outcome
}

// Options tune the loop. Zero values take the defaults in brackets.
type Options struct {
	Workers         int           // concurrent messages [4]
	MaxDequeueCount int           // the delivery that is the last (export.Attempt.Final) [5]
	RetryDelay      time.Duration // visibility of a failed message before its next delivery [30s]
	Visibility      time.Duration // visibility while running, renewed at half-time [2m]
	PollInterval    time.Duration // wait when the queue is empty [1s]
	Grace           time.Duration // after Run's ctx ends, how long messages in flight may run before their work is cancelled [DefaultGrace]
	// Wake, when set, ends an idle wait at once (Notifier.Wake: a message
	// was enqueued by this process).
	Wake <-chan struct{}
}

// Notifier is the engine's work queue in the standalone mode: each message
// it enqueues (a kick-off's plan item, the items a plan creates) also wakes
// the loop of this process, so that the work starts within a receive round
// trip instead of up to a PollInterval later.
type Notifier struct {
	export.Queue
	wake chan struct{}
}

// NewNotifier wraps q.
func NewNotifier(q export.Queue) *Notifier { return &Notifier{Queue: q, wake: make(chan struct{}, 1)} }

// Enqueue enqueues msg, then wakes the loop.
func (n *Notifier) Enqueue(ctx context.Context, msg export.Message) error {
	if err := n.Queue.Enqueue(ctx, msg); err != nil {
		return err
	}
	select {
	case n.wake <- struct{}{}:
	default: // the loop has been told already
	}
	return nil
}

// Wake is what Options.Wake takes.
func (n *Notifier) Wake() <-chan struct{} { return n.wake }

// DefaultGrace is the default of Options.Grace and of EXPORT_SHUTDOWN_GRACE:
// time for a page in flight to end and its checkpoint to be written.
const DefaultGrace = 20 * time.Second

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
	if o.Grace <= 0 {
		o.Grace = DefaultGrace
	}
	return o
}

// settleTimeout bounds the storage call that settles a message once its
// work is over, so that a shutdown cannot hang on it.
const settleTimeout = 10 * time.Second

// Run receives and processes messages until ctx ends. Then it receives no
// more, and the messages in flight are asked to hand on at their next page
// boundary (export.Attempt.Stop is ctx.Done()); their work's own context is
// cancelled only if they are still running after o.Grace. Run returns when
// every message in flight is settled.
func Run(ctx context.Context, q Receiver, p Processor, o Options) {
	o = o.withDefaults()
	log := zerolog.Ctx(ctx)
	// The work outlives ctx by up to the grace: it is told to stop through
	// Attempt.Stop, and cancelled only when the grace is over.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	slots := make(chan struct{}, o.Workers)
	// A message that ends may have enqueued more (the plan enqueues every
	// work item of the job at its end): an idle loop looks again at once
	// instead of after the rest of its PollInterval, so the items start
	// within a receive round trip, not up to a PollInterval late.
	ended := make(chan struct{}, 1)
	var wg sync.WaitGroup
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
		// Receive on the work's context, not ctx: a stop that cancelled the
		// request after storage had dequeued the messages would lose the
		// answer and leave them invisible for o.Visibility, neither run nor
		// given back. A stop seen after it returns gives them back below.
		rctx, cancelReceive := context.WithTimeout(work, settleTimeout)
		batch, err := q.Receive(rctx, min(free, 32), o.Visibility)
		cancelReceive()
		if err != nil {
			if ctx.Err() == nil {
				log.Warn().Err(err).Msg("receiving work items failed; trying again")
			}
			sleep(ctx, o.PollInterval)
			continue
		}
		if len(batch) == 0 {
			idle(ctx, o.PollInterval, ended, o.Wake)
			continue
		}
		if ctx.Err() != nil {
			giveBack(work, q, batch)
			break
		}
		for _, d := range batch {
			slots <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-slots }()
				handle(work, ctx.Done(), q, p, o, d)
				select {
				case ended <- struct{}{}:
				default: // the loop has been told already
				}
			}()
		}
	}
	drain(log, &wg, len(slots), o.Grace, cancelWork)
}

// drain waits for the messages in flight, cancelling their work once the
// grace is over.
func drain(log *zerolog.Logger, wg *sync.WaitGroup, running int, grace time.Duration, cancelWork context.CancelFunc) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	if running > 0 {
		log.Info().Int("running", running).Dur("grace", grace).Msg("stopping: work items in flight hand on at their next page boundary")
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		log.Warn().Dur("grace", grace).Msg("stopping: the shutdown grace is over; cancelling the work still running")
		cancelWork()
		<-done
	}
}

// giveBack makes messages received as the loop was stopping visible again
// at once, unstarted, for another instance to take.
func giveBack(ctx context.Context, q Receiver, batch []Delivery) {
	ctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	for i := range batch {
		if err := q.Extend(ctx, &batch[i], 0); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("could not give back a message received while stopping; it returns when its visibility lapses")
		}
	}
}

// handle runs one delivery and settles its message as the outcome says.
// ctx is the work's context; stop asks the work to hand on.
func handle(ctx context.Context, stop <-chan struct{}, q Receiver, p Processor, o Options, d Delivery) {
	invocation := d.MessageID + "/" + strconv.FormatInt(d.DequeueCount, 10)
	log := zerolog.Ctx(ctx).With().Str("invocationId", invocation).Logger()
	ctx = log.WithContext(ctx)

	var msg export.Message
	if err := json.Unmarshal([]byte(d.Text), &msg); err != nil {
		log.Error().Err(err).Str("text", d.Text).Bool("poisoned", true).Msg("poisoning a message that is not a work item")
		if err := q.Poison(ctx, d); err != nil {
			log.Error().Err(err).Msg("could not poison a message")
		}
		return
	}

	stopRenewing := keepInvisible(ctx, q, &d, o.Visibility)
	out := p.Process(ctx, msg, export.Attempt{
		Number: int(d.DequeueCount), Final: d.DequeueCount >= int64(o.MaxDequeueCount), InvocationID: invocation, Stop: stop,
	})
	stopRenewing()

	interrupted := ctx.Err() != nil
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	switch out.Action {
	case export.Settle:
		if err := q.Delete(sctx, d); err != nil {
			log.Warn().Err(err).Msg("could not delete a finished message; its repeat will be dropped")
		}
	case export.Poison:
		// "poisoned" is what the operators' alert and workbook look for, in
		// this mode and in the Functions host's (funchost).
		log.Error().Err(out.Cause).Str("job", msg.Job).Str("workItem", msg.Item).Bool("poisoned", true).
			Msg("moving a work item message to the poison queue after its last attempt")
		if err := q.Poison(sctx, d); err != nil {
			log.Error().Err(err).Msg("could not poison a message")
		}
	default: // export.Retry
		delay := o.RetryDelay
		if interrupted {
			// Cut short by the shutdown, not failed: the lease is released,
			// so another instance may resume it at once.
			delay = 0
		}
		if err := q.Extend(sctx, &d, delay); err != nil {
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

// idle waits d, or less when a message ends (see Run) or wake fires (a nil
// wake never does).
func idle(ctx context.Context, d time.Duration, ended, wake <-chan struct{}) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-ended:
	case <-wake:
	case <-t.C:
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
