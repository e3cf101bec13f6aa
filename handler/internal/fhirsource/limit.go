package fhirsource

import (
	"context"
	"sync"
	"time"
)

// DefaultConcurrency is the default of Options.Concurrency
// (EXPORT_SOURCE_CONCURRENCY): more than one request for each of the six
// work items a Functions instance runs at once (host.json batchSize 4 +
// newBatchThreshold 2), fewer than the two each has while reading a page ahead.
const DefaultConcurrency = 8

// limiter caps the requests in flight to the source from one Client, which
// main shares between every work item of the process, and adapts the cap to
// the source (AIMD): a 429 or 503 halves it and, when it carries a
// Retry-After, holds back every new request until then; each run of as many
// successes as the cap allows raises it by one, up to the configured
// maximum. So one window that is throttled slows every window of the
// process down, instead of the others pressing on while it backs off.
//
// A request holds its slot until its body is read (a page streams while its
// entries are written), so the cap is on open source requests. So a caller
// must never make a source request from inside a page's visit callback: it
// would hold a second slot while waiting for it, and with the cap down to one
// after throttling it would wait for itself forever.
type limiter struct {
	mu       sync.Mutex
	max      int
	limit    int       // requests allowed in flight now, 1..max
	inFlight int       // requests in flight
	run      int       // successes since the limit last changed
	epoch    int       // counts decreases: one throttle episode halves once
	until    time.Time // no request starts before this (the source's Retry-After)
	wake     chan struct{}
	now      func() time.Time
	// after is time.After; held, when set, is told each time a caller is
	// held back (tests).
	after func(time.Duration) <-chan time.Time
	held  func()
}

func newLimiter(n int) *limiter {
	n = max(n, 1)
	return &limiter{max: n, limit: n, wake: make(chan struct{}), now: time.Now, after: time.After}
}

// acquire waits for a slot (and for the end of a Retry-After pause) or for
// ctx to end. It returns the epoch to hand back to release. waited says the
// caller has just waited out a Retry-After itself (the retry of the request
// that got it), so the pause it set does not hold it back a second time.
func (l *limiter) acquire(ctx context.Context, waited bool) (int, error) {
	for {
		l.mu.Lock()
		wait := l.until.Sub(l.now())
		if waited {
			wait = 0
		}
		if wait <= 0 && l.inFlight < l.limit {
			l.inFlight++
			epoch := l.epoch
			l.mu.Unlock()
			return epoch, nil
		}
		wake, held := l.wake, l.held
		l.mu.Unlock()
		if held != nil {
			held()
		}
		var tick <-chan time.Time
		if wait > 0 {
			tick = l.after(wait)
		}
		select {
		case <-ctx.Done():
			return 0, context.Cause(ctx)
		case <-wake:
		case <-tick:
		}
	}
}

// loadSignal is what a request's answer says about the source's load.
type loadSignal int

const (
	neutral   loadSignal = iota // no answer, or one that says nothing about load (404, 400, a reset)
	succeeded                   // 2xx
	throttled                   // 429 or 503
)

// release frees the slot taken at epoch and adapts the limit to the answer.
// It returns the limit and whether this answer lowered it.
func (l *limiter) release(epoch int, o loadSignal, retryAfter time.Duration) (limit int, lowered bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inFlight--
	switch o {
	case throttled:
		// Requests sent before the last decrease saw the old load: only the
		// first throttle of an episode halves.
		if epoch == l.epoch {
			lowered = l.limit > 1
			l.limit = max(l.limit/2, 1)
			l.epoch++
		}
		l.run = 0
		if retryAfter > 0 {
			if u := l.now().Add(min(retryAfter, maxRetryAfter)); u.After(l.until) {
				l.until = u
			}
		}
	case succeeded:
		l.run++
		if l.run >= l.limit && l.limit < l.max {
			l.limit++
			l.run = 0
		}
	}
	close(l.wake)
	l.wake = make(chan struct{})
	return l.limit, lowered
}

// state returns the current limit and the requests in flight (tests, logs).
func (l *limiter) state() (limit, inFlight int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.limit, l.inFlight
}
