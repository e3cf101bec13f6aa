package fhirsource

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// heldServer answers count searches, holding each request until the test
// lets it go, and tells the test when a request arrives.
type heldServer struct {
	*httptest.Server
	arrived chan struct{}
	release chan struct{}
	mu      sync.Mutex
	status  []int // answers of the first requests; then 200
	hits    int
}

func newHeldServer(t *testing.T, status ...int) *heldServer {
	s := &heldServer{arrived: make(chan struct{}, 100), release: make(chan struct{}), status: status}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.hits++
		code := http.StatusOK
		if len(s.status) > 0 {
			code, s.status = s.status[0], s.status[1:]
		}
		s.mu.Unlock()
		if code != http.StatusOK {
			w.Header().Set("Retry-After", "3")
			w.WriteHeader(code)
			return
		}
		s.arrived <- struct{}{}
		<-s.release
		w.Header().Set("Content-Type", "application/fhir+json")
		_, _ = w.Write([]byte(countBody))
	}))
	t.Cleanup(s.Close)
	return s
}

func limitedClient(t *testing.T, s *heldServer, n int) (*Client, chan struct{}) {
	c, err := New(Options{BaseURL: s.URL + "/fhir", Concurrency: n, MaxAttempts: 3, BaseBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c.sleep = func(ctx context.Context, d time.Duration) error { return nil }
	held := make(chan struct{}, 100)
	c.limit.held = func() { held <- struct{}{} }
	return c, held
}

// countIn starts n count requests and returns their errors' channel.
func countIn(c *Client, n int) chan error {
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := c.Count(context.Background(), "Observation", "")
			errs <- err
		}()
	}
	return errs
}

// expectHeld starts one more request while the server holds the others and
// checks that the client holds it back instead of sending it.
func expectHeld(t *testing.T, c *Client, s *heldServer, held chan struct{}) chan error {
	t.Helper()
	extra := countIn(c, 1)
	select {
	case <-held:
	case <-s.arrived:
		t.Fatal("a request past the concurrency limit reached the source")
	}
	return extra
}

func TestConcurrencyLimitHoldsRequestsBackUntilOneEnds(t *testing.T) {
	t.Parallel()
	s := newHeldServer(t)
	c, held := limitedClient(t, s, 3)
	errs := countIn(c, 3)
	for range 3 {
		<-s.arrived
	}
	extra := expectHeld(t, c, s, held)
	close(s.release) // every request may finish now, the held one included
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if err := <-extra; err != nil {
		t.Fatalf("the held request failed once a slot was free: %v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hits != 4 {
		t.Errorf("the source got %d requests, want 4", s.hits)
	}
}

func TestAThrottleHalvesTheLimitForEveryCallerAndSuccessesRaiseIt(t *testing.T) {
	t.Parallel()
	s := newHeldServer(t, http.StatusTooManyRequests)
	c, held := limitedClient(t, s, 4)
	var mu sync.Mutex
	var waits []time.Duration
	c.sleep = func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		waits = append(waits, d)
		mu.Unlock()
		return nil
	}
	// The 429 comes back with Retry-After 3: the request waits that long and
	// its retry goes through.
	first := countIn(c, 1)
	<-s.arrived
	if limit, _ := c.limit.state(); limit != 2 {
		t.Fatalf("after a 429 the limit is %d, want 4 halved", limit)
	}
	mu.Lock()
	if len(waits) != 1 || waits[0] != 3*time.Second {
		t.Errorf("waits %v, want the source's Retry-After of 3s", waits)
	}
	mu.Unlock()
	// Another caller now finds only one more slot: the second request of
	// the process goes out, the third is held.
	c.limit.mu.Lock()
	c.limit.until = time.Time{} // past the Retry-After pause (TestRetryAfterPausesEveryCaller)
	c.limit.mu.Unlock()
	second := countIn(c, 1)
	<-s.arrived
	third := expectHeld(t, c, s, held)
	close(s.release)
	for _, ch := range []chan error{first, second, third} {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	// Three successes at limit 2: a run of two raises it to 3.
	if limit, inFlight := c.limit.state(); limit != 3 || inFlight != 0 {
		t.Errorf("after 3 successes the limit is %d (%d in flight), want 3", limit, inFlight)
	}
	for range 20 {
		if _, err := c.Count(context.Background(), "Observation", ""); err != nil {
			t.Fatal(err)
		}
		<-s.arrived
	}
	if limit, _ := c.limit.state(); limit != 4 {
		t.Errorf("after many successes the limit is %d, want back at the configured 4 and not above", limit)
	}
}

func TestRetryAfterPausesEveryCaller(t *testing.T) {
	t.Parallel()
	now := time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)
	l := newLimiter(4)
	l.now = func() time.Time { return now }
	tick := make(chan time.Time)
	var asked []time.Duration
	l.after = func(d time.Duration) <-chan time.Time { asked = append(asked, d); return tick }
	heldCh := make(chan struct{}, 10)
	l.held = func() { heldCh <- struct{}{} }

	epoch, err := l.acquire(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	l.release(epoch, throttled, 5*time.Second)
	// A caller that did not get the 429 waits out the source's Retry-After
	// although slots are free.
	got := make(chan error, 1)
	go func() {
		e, err := l.acquire(context.Background(), false)
		if err == nil {
			l.release(e, succeeded, 0)
		}
		got <- err
	}()
	select {
	case <-heldCh:
	case err := <-got:
		t.Fatalf("a request started during the source's Retry-After (%v)", err)
	}
	now = now.Add(5 * time.Second)
	tick <- now
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if len(asked) != 1 || asked[0] != 5*time.Second {
		t.Errorf("held for %v, want the 5s Retry-After", asked)
	}
	// The request that got the 429 and waited itself is not held again.
	now = time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)
	if _, err := l.acquire(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	// A caller whose context ends while it is held gets its cause.
	ctx, cancel := context.WithCancelCause(context.Background())
	cause := errors.New("shutting down")
	go func() { <-heldCh; cancel(cause) }()
	if _, err := l.acquire(ctx, false); !errors.Is(err, cause) {
		t.Errorf("a held caller whose context ended got %v, want its cause", err)
	}
}
