package fhirsample

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// ErrFailureInjectionDisabled is returned by the failure-injection methods of a Server
// created without Options.FailureInjection.
var ErrFailureInjectionDisabled = errors.New("fhirsample: failure injection is not enabled (set Options.FailureInjection)")

// faults is the failure-injection state, changed at runtime by tests.
type faults struct {
	enabled bool

	mu            sync.Mutex
	failRemaining int
	failStatus    int
	retryAfter    string
	linksExpired  bool
	searchDelay   time.Duration
	noisyType     string
}

// injectedFailure is one failure to answer instead of a search.
type injectedFailure struct {
	status     int
	retryAfter string
}

// FailNext makes the next n search requests (first pages and next links alike) answer
// status, which must be 4xx or 5xx, with an OperationOutcome, and with a Retry-After header
// when retryAfter is not empty. Reads and metadata are not affected. n = 0 cancels
// failures still pending.
func (s *Server) FailNext(n int, status int, retryAfter string) error {
	if !s.faults.enabled {
		return ErrFailureInjectionDisabled
	}
	if n < 0 {
		return fmt.Errorf("fhirsample: FailNext: negative count %d", n)
	}
	if status < 400 || status > 599 {
		return fmt.Errorf("fhirsample: FailNext: status %d is not an HTTP error status", status)
	}
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	s.faults.failRemaining, s.faults.failStatus, s.faults.retryAfter = n, status, retryAfter
	return nil
}

// ExpireLinks makes every next link answer 410 Gone while expired is true, as a server
// that dropped its search state would.
func (s *Server) ExpireLinks(expired bool) error {
	if !s.faults.enabled {
		return ErrFailureInjectionDisabled
	}
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	s.faults.linksExpired = expired
	return nil
}

// SetSearchDelay makes every search request wait d before it is answered, or until the
// client gives up. Zero removes the delay.
func (s *Server) SetSearchDelay(d time.Duration) error {
	if !s.faults.enabled {
		return ErrFailureInjectionDisabled
	}
	if d < 0 {
		return fmt.Errorf("fhirsample: SetSearchDelay: negative delay %v", d)
	}
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	s.faults.searchDelay = d
	return nil
}

// InjectedOutcomeDiagnostics is the diagnostics of the search outcome entry that
// AddSearchNoise puts on first pages.
const InjectedOutcomeDiagnostics = "injected: the search results may be incomplete"

// injectedMalformed is the resource AddSearchNoise sends as a match: it has no id,
// so it cannot be exported, and it carries a marker a test can look for in places it
// must not reach.
const injectedMalformed = `{"resourceType":"%s","note":"injected malformed resource PHI-MARKER"}`

// InjectedMalformedMarker appears in the malformed resource AddSearchNoise sends.
const InjectedMalformedMarker = "PHI-MARKER"

// AddSearchNoise makes the first page of every search of resource type typ carry, after
// its matches, a search outcome entry (search.mode outcome, an OperationOutcome with
// InjectedOutcomeDiagnostics) and a match entry whose resource has no id, as a source
// with partial results or a broken record would. Next-link pages and _summary=count are
// not affected. An empty typ removes the noise.
func (s *Server) AddSearchNoise(typ string) error {
	if !s.faults.enabled {
		return ErrFailureInjectionDisabled
	}
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	s.faults.noisyType = typ
	return nil
}

// noise returns the extra entries of the first page of a search of typ, if any.
func (f *faults) noise(typ string) []bundleEntry {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.noisyType == "" || f.noisyType != typ {
		return nil
	}
	outcome := fmt.Sprintf(`{"resourceType":"OperationOutcome","issue":[{"severity":"warning","code":"incomplete","diagnostics":%q}]}`, InjectedOutcomeDiagnostics)
	return []bundleEntry{
		{raw: []byte(outcome), mode: "outcome"},
		{raw: []byte(fmt.Sprintf(injectedMalformed, typ))},
	}
}

// takeFailure consumes one pending injected failure, if any.
func (f *faults) takeFailure() (injectedFailure, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failRemaining == 0 {
		return injectedFailure{}, false
	}
	f.failRemaining--
	return injectedFailure{status: f.failStatus, retryAfter: f.retryAfter}, true
}

func (f *faults) linksAreExpired() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.linksExpired
}

// wait sleeps for the configured search delay; it returns the context's error if the
// request is cancelled first.
func (f *faults) wait(ctx context.Context) error {
	f.mu.Lock()
	delay := f.searchDelay
	f.mu.Unlock()
	if delay == 0 {
		return nil
	}
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("search delay: %w", ctx.Err())
	}
}

// outcome is the error answered for an injected failure.
func (f injectedFailure) outcome() *requestError {
	code := "exception"
	switch {
	case f.status == http.StatusTooManyRequests:
		code = "throttled"
	case f.status == http.StatusGatewayTimeout:
		code = "timeout"
	case f.status >= 500:
		code = "transient"
	}
	return &requestError{status: f.status, code: code, diagnostics: fmt.Sprintf("injected failure: %d %s", f.status, http.StatusText(f.status))}
}
