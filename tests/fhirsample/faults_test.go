package fhirsample

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"
)

func TestFailureInjectionIsOffByDefault(t *testing.T) {
	srv, err := New(testDataDir, Options{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	calls := map[string]func() error{
		"FailNext":       func() error { return srv.FailNext(1, http.StatusServiceUnavailable, "") },
		"ExpireLinks":    func() error { return srv.ExpireLinks(true) },
		"SetSearchDelay": func() error { return srv.SetSearchDelay(time.Second) },
		"AddSearchNoise": func() error { return srv.AddSearchNoise("Observation") },
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			if err := call(); !errors.Is(err, ErrFailureInjectionDisabled) {
				t.Errorf("error %v, want ErrFailureInjectionDisabled", err)
			}
		})
	}
}

func TestFailNext(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		retryAfter string
		wantCode   string
	}{
		{"throttled", http.StatusTooManyRequests, "2", "throttled"},
		{"unavailable", http.StatusServiceUnavailable, "", "transient"},
		{"internal error", http.StatusInternalServerError, "", "transient"},
		{"gateway timeout", http.StatusGatewayTimeout, "1", "timeout"},
		{"client error", http.StatusForbidden, "", "exception"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, ts := newTestServer(t, Options{FailureInjection: true})
			next := getBundle(t, ts.URL+"/fhir/Observation?_count=10").link("next")
			if err := srv.FailNext(2, tt.status, tt.retryAfter); err != nil {
				t.Fatalf("FailNext: %v", err)
			}
			// Reads and metadata are not searches: they are not affected.
			if resp, body := doRequest(t, http.MethodGet, ts.URL+"/fhir/Patient/"+patient0, nil, ""); resp.StatusCode != http.StatusOK {
				t.Fatalf("read: status %d: %s", resp.StatusCode, body)
			}
			for _, target := range []string{ts.URL + "/fhir/Patient", next} {
				resp, body := doRequest(t, http.MethodGet, target, nil, "")
				if resp.StatusCode != tt.status || resp.Header.Get("Retry-After") != tt.retryAfter {
					t.Fatalf("%s: status %d Retry-After %q, want %d %q", target, resp.StatusCode, resp.Header.Get("Retry-After"), tt.status, tt.retryAfter)
				}
				if o := decodeOutcome(t, body); o.Issue[0].Code != tt.wantCode {
					t.Errorf("issue code %q, want %q", o.Issue[0].Code, tt.wantCode)
				}
			}
			getBundle(t, next) // the third search succeeds again
		})
	}
}

func TestFailNextValidates(t *testing.T) {
	srv, _ := newTestServer(t, Options{FailureInjection: true})
	tests := []struct {
		name   string
		n      int
		status int
	}{
		{"negative count", -1, 500},
		{"success status", 1, 200},
		{"redirect status", 1, 302},
		{"beyond 599", 1, 600},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := srv.FailNext(tt.n, tt.status, ""); err == nil {
				t.Error("FailNext accepted invalid arguments")
			}
		})
	}
}

func TestExpireLinks(t *testing.T) {
	srv, ts := newTestServer(t, Options{FailureInjection: true})
	next := getBundle(t, ts.URL+"/fhir/Observation?_count=10").link("next")
	if err := srv.ExpireLinks(true); err != nil {
		t.Fatalf("ExpireLinks: %v", err)
	}
	resp, body := doRequest(t, http.MethodGet, next, nil, "")
	if resp.StatusCode != http.StatusGone {
		t.Fatalf("status %d, want 410: %s", resp.StatusCode, body)
	}
	if o := decodeOutcome(t, body); o.Issue[0].Code != "expired" {
		t.Errorf("issue code %q, want expired", o.Issue[0].Code)
	}
	getBundle(t, ts.URL+"/fhir/Observation?_count=10") // a new search still works
	if err := srv.ExpireLinks(false); err != nil {
		t.Fatalf("ExpireLinks: %v", err)
	}
	getBundle(t, next)
}

func TestSearchDelayHonoursClientTimeout(t *testing.T) {
	srv, ts := newTestServer(t, Options{FailureInjection: true})
	if err := srv.SetSearchDelay(time.Minute); err != nil {
		t.Fatalf("SetSearchDelay: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/fhir/Patient", nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("search answered %d despite the delay", resp.StatusCode)
	}
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 10*time.Second {
		t.Errorf("error %v after %v, want the client deadline", err, time.Since(start))
	}
	if err := srv.SetSearchDelay(0); err != nil {
		t.Fatalf("SetSearchDelay: %v", err)
	}
	getBundle(t, ts.URL+"/fhir/Patient")
}

func TestRequestsCountsConcurrentClients(t *testing.T) {
	srv, ts := newTestServer(t, Options{})
	const clients = 8
	var wg sync.WaitGroup
	pagesPerClient := make([]int, clients)
	errs := make([]error, clients)
	for i := range clients {
		wg.Go(func() {
			pagesPerClient[i], errs[i] = countPages(t.Context(), ts.URL+"/fhir/Claim?_sort=-_lastUpdated&_count=100")
		})
	}
	wg.Wait()
	want := int64(0)
	for i, n := range pagesPerClient {
		if errs[i] != nil || n != 8 {
			t.Errorf("client %d walked %d pages (error %v), want 8", i, n, errs[i])
		}
		want += int64(n)
	}
	if got := srv.Requests(); got != want {
		t.Errorf("Requests() = %d, want %d", got, want)
	}
}

// countPages follows next links without failing the test, for use off the test goroutine.
func countPages(ctx context.Context, url string) (int, error) {
	pages := 0
	for ; url != ""; pages++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return pages, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return pages, err
		}
		var b testBundle
		err = json.NewDecoder(resp.Body).Decode(&b)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			return pages, fmt.Errorf("GET %s: status %d, decode error %v", url, resp.StatusCode, err)
		}
		url = b.link("next")
	}
	return pages, nil
}

func TestSearchNoiseIsOnTheFirstPageOfItsTypeOnly(t *testing.T) {
	srv, ts := newTestServer(t, Options{FailureInjection: true})
	if err := srv.AddSearchNoise("Observation"); err != nil {
		t.Fatalf("AddSearchNoise: %v", err)
	}
	first := getBundle(t, ts.URL+"/fhir/Observation?_count=10")
	if len(first.Entry) != 12 {
		t.Fatalf("first page has %d entries, want 10 matches and 2 injected", len(first.Entry))
	}
	outcome, bad := first.Entry[10], first.Entry[11]
	var oo testOutcome
	if err := json.Unmarshal(outcome.Resource, &oo); err != nil || outcome.Search.Mode != "outcome" ||
		oo.ResourceType != "OperationOutcome" || len(oo.Issue) != 1 || oo.Issue[0].Diagnostics != InjectedOutcomeDiagnostics {
		t.Errorf("outcome entry: mode %q, resource %s", outcome.Search.Mode, outcome.Resource)
	}
	var head struct{ ResourceType, ID string }
	if err := json.Unmarshal(bad.Resource, &head); err != nil || bad.Search.Mode != "match" || head.ResourceType != "Observation" || head.ID != "" {
		t.Errorf("malformed entry: mode %q, resource %s; want an Observation match without id", bad.Search.Mode, bad.Resource)
	}
	if next := getBundle(t, first.link("next")); len(next.Entry) != 10 {
		t.Errorf("second page has %d entries, want 10 matches and nothing injected", len(next.Entry))
	}
	if other := getBundle(t, ts.URL+"/fhir/Patient?_count=3"); len(other.Entry) != 3 {
		t.Errorf("a Patient page has %d entries, want 3", len(other.Entry))
	}
	if err := srv.AddSearchNoise(""); err != nil {
		t.Fatal(err)
	}
	if again := getBundle(t, ts.URL+"/fhir/Observation?_count=10"); len(again.Entry) != 10 {
		t.Errorf("after removing the noise the first page has %d entries, want 10", len(again.Entry))
	}
}

// TestOptionsSearchDelayDelaysSearchesOnly: a delay set in Options (fhir-sample
// -search-delay) holds back searches, with or without failure injection, while
// metadata and reads are answered at once.
func TestOptionsSearchDelayDelaysSearchesOnly(t *testing.T) {
	_, ts := newTestServer(t, Options{SearchDelay: time.Hour})
	get := func(path string) error {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s answered %d", path, resp.StatusCode)
		}
		return nil
	}
	if err := get("/fhir/metadata"); err != nil {
		t.Errorf("metadata: %v; want an answer without the delay", err)
	}
	if err := get("/fhir/Patient?_summary=count"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("search: %v; want it held back past the client's deadline", err)
	}
}
