package fhirsource

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

type answer struct {
	status int
	header map[string]string
	body   string
}

const countBody = `{"resourceType":"Bundle","type":"searchset","total":42}`

func outcome(diagnostics string) string {
	return `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid","diagnostics":"` + diagnostics + `"}]}`
}

func TestRetries(t *testing.T) {
	t.Parallel()
	longDiagnostics := strings.Repeat("d", 2000)
	for _, tc := range []struct {
		name           string
		answers        []answer // the i-th request gets answers[min(i, len-1)]
		wantHits       int32
		wantKind       fault.Kind // Internal: success
		wantMsg        []string
		wantWaits      []time.Duration // exact waits; nil with wantWaitCount for jittered ones
		wantWaitCount  int
		wantRetryAfter time.Duration
	}{
		{
			name:      "429 with Retry-After then success",
			answers:   []answer{{status: 429, header: map[string]string{"Retry-After": "7"}}, {status: 200, body: countBody}},
			wantHits:  2,
			wantWaits: []time.Duration{7 * time.Second},
		},
		{
			name:          "503 twice then success",
			answers:       []answer{{status: 503}, {status: 503}, {status: 200, body: countBody}},
			wantHits:      3,
			wantWaitCount: 2,
		},
		{
			name:          "500 beyond MaxAttempts",
			answers:       []answer{{status: 500, header: map[string]string{"Content-Type": "application/fhir+json"}, body: outcome("database is down")}},
			wantHits:      3,
			wantKind:      fault.Transient,
			wantMsg:       []string{"GET /fhir/Observation", "500 Internal Server Error", "database is down"},
			wantWaitCount: 2,
		},
		{
			name:     "400 with an OperationOutcome",
			answers:  []answer{{status: 400, header: map[string]string{"Content-Type": "application/fhir+json; charset=utf-8"}, body: outcome(`Unknown search parameter \"colour\" for resource type \"Observation\"`)}},
			wantHits: 1,
			wantKind: fault.Permanent,
			wantMsg:  []string{"rejected GET /fhir/Observation", "400 Bad Request", `Unknown search parameter "colour" for resource type "Observation"`},
		},
		{
			name: "issue details text and several issues",
			answers: []answer{{status: 422, body: `{"resourceType":"OperationOutcome","issue":[
				{"severity":"error","code":"invalid","details":{"text":"first problem"}},
				{"severity":"error","code":"invalid","details":{"text":"second\nproblem"},"diagnostics":"at line 3"}]}`}},
			wantHits: 1,
			wantKind: fault.Permanent,
			wantMsg:  []string{"422 Unprocessable Entity: first problem; second problem; at line 3"},
		},
		{
			name:     "long diagnostics are cut",
			answers:  []answer{{status: 400, body: outcome(longDiagnostics)}},
			wantHits: 1,
			wantKind: fault.Permanent,
			wantMsg:  []string{strings.Repeat("d", maxDiagnostics) + "…"},
		},
		{
			name:     "plain text error body",
			answers:  []answer{{status: 400, header: map[string]string{"Content-Type": "text/plain"}, body: "bad\nrequest"}},
			wantHits: 1,
			wantKind: fault.Permanent,
			wantMsg:  []string{"400 Bad Request: bad request"},
		},
		{
			name:     "401",
			answers:  []answer{{status: 401}},
			wantHits: 1,
			wantKind: fault.Forbidden,
			wantMsg:  []string{"refused our identity", "401 Unauthorized"},
		},
		{
			name:     "403",
			answers:  []answer{{status: 403, body: outcome("caller lacks the FHIR Data Reader role")}},
			wantHits: 1,
			wantKind: fault.Forbidden,
			wantMsg:  []string{"refused our identity", "403 Forbidden", "FHIR Data Reader"},
		},
		{
			name:     "404 on a search is permanent",
			answers:  []answer{{status: 404, body: outcome("Unknown resource type 'Observation'")}},
			wantHits: 1,
			wantKind: fault.Permanent,
			wantMsg:  []string{"404 Not Found", "Unknown resource type"},
		},
		{
			name:     "501 is permanent",
			answers:  []answer{{status: 501}},
			wantHits: 1,
			wantKind: fault.Permanent,
		},
		{
			name:           "Retry-After beyond the cap is left to the caller",
			answers:        []answer{{status: 429, header: map[string]string{"Retry-After": "3600"}}},
			wantHits:       1,
			wantKind:       fault.Transient,
			wantRetryAfter: time.Hour,
		},
		{
			name:          "Retry-After 0 falls back to the backoff",
			answers:       []answer{{status: 503, header: map[string]string{"Retry-After": "0"}}, {status: 200, body: countBody}},
			wantHits:      2,
			wantWaitCount: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var hits atomic.Int32
			c, _, w := setup(t, func(rw http.ResponseWriter, r *http.Request) {
				a := tc.answers[min(int(hits.Add(1))-1, len(tc.answers)-1)]
				for k, v := range a.header {
					rw.Header().Set(k, v)
				}
				rw.WriteHeader(a.status)
				_, _ = rw.Write([]byte(a.body))
			}, func(o *Options) { o.BaseBackoff = 100 * time.Millisecond })
			var logs bytes.Buffer
			ctx := zerolog.New(&logs).WithContext(context.Background())

			got, err := c.Count(ctx, "Observation", "status=final")

			if hits.Load() != tc.wantHits {
				t.Errorf("source asked %d times, want %d", hits.Load(), tc.wantHits)
			}
			if tc.wantKind == fault.Internal {
				if err != nil || got != 42 {
					t.Fatalf("Count = %d, %v; want 42", got, err)
				}
			} else {
				if !fault.Is(err, tc.wantKind) {
					t.Fatalf("Count error = %v, want kind %v", err, tc.wantKind)
				}
				for _, m := range tc.wantMsg {
					if !strings.Contains(err.Error(), m) {
						t.Errorf("error %q does not contain %q", err, m)
					}
				}
				if ra := fault.RetryAfter(err); ra != tc.wantRetryAfter {
					t.Errorf("RetryAfter = %v, want %v", ra, tc.wantRetryAfter)
				}
			}
			waits := w.list()
			if tc.wantWaits != nil {
				if !equalDurations(waits, tc.wantWaits) {
					t.Errorf("waits = %v, want %v", waits, tc.wantWaits)
				}
			} else {
				if len(waits) != tc.wantWaitCount {
					t.Errorf("waits = %v, want %d", waits, tc.wantWaitCount)
				}
				for i, d := range waits { // full jitter below the doubling ceiling
					if ceiling := 100 * time.Millisecond << i; d < 0 || d >= ceiling {
						t.Errorf("wait %d = %v, want in [0, %v)", i, d, ceiling)
					}
				}
			}
			lines := strings.Count(logs.String(), `"level":"warn"`)
			if lines != len(waits) {
				t.Errorf("%d warn log lines for %d retries:\n%s", lines, len(waits), logs.String())
			}
			if len(waits) > 0 {
				for _, want := range []string{`"status":` + strconv.Itoa(tc.answers[0].status), `"requestAttempt":1`, `"wait":`} {
					if !strings.Contains(logs.String(), want) {
						t.Errorf("retry log does not contain %s:\n%s", want, logs.String())
					}
				}
			}
		})
	}
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestRetryAfterHTTPDate(t *testing.T) {
	t.Parallel()
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		value string
		want  time.Duration
	}{
		{"", 0},
		{"12", 12 * time.Second},
		{"-3", 0},
		{"soon", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{"99999999999999", 7 * 24 * time.Hour},
	} {
		h := http.Header{}
		if tc.value != "" {
			h.Set("Retry-After", tc.value)
		}
		if got := retryAfter(h, now); got != tc.want {
			t.Errorf("retryAfter(%q) = %v, want %v", tc.value, got, tc.want)
		}
	}
}

func TestPageRetriesBeforeAnyEntry(t *testing.T) {
	t.Parallel()
	var hits atomic.Int32
	c, srv, w := setup(t, func(rw http.ResponseWriter, r *http.Request) {
		if hits.Add(1) <= 2 {
			rw.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		serveBody(`{"resourceType":"Bundle","entry":[{"resource":`+obs1+`}]}`)(rw, r)
	})
	visit, got := collect()
	if _, err := c.Page(context.Background(), srv.URL+"/fhir/Observation", visit); err != nil {
		t.Fatalf("Page: %v", err)
	}
	if len(got()) != 1 || hits.Load() != 3 || len(w.list()) != 2 {
		t.Errorf("%d entries over %d fetches and %d waits, want 1 over 3 and 2", len(got()), hits.Load(), len(w.list()))
	}
}

func TestCancellationDuringBackoffReturnsPromptly(t *testing.T) {
	t.Parallel()
	var hits atomic.Int32
	c, srv, _ := setup(t, func(rw http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		rw.Header().Set("Retry-After", "60")
		rw.WriteHeader(http.StatusServiceUnavailable)
	})
	c.sleep = sleepCtx // really wait
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	_, err := c.Page(ctx, srv.URL+"/fhir/Observation", func(export.Entry) error { return nil })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Page error = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Page returned %v after the start, want promptly after the cancellation", d)
	}
	if hits.Load() != 1 {
		t.Errorf("source asked %d times, want 1", hits.Load())
	}
}

func TestNoWaitBeyondTheDeadline(t *testing.T) {
	t.Parallel()
	c, _, w := setup(t, func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Retry-After", "60")
		rw.WriteHeader(http.StatusTooManyRequests)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Count(ctx, "Patient", "")
	if !fault.Is(err, fault.Transient) || fault.RetryAfter(err) != time.Minute {
		t.Fatalf("Count error = %v (Retry-After %v), want transient with Retry-After 1m", err, fault.RetryAfter(err))
	}
	if n := len(w.list()); n != 0 {
		t.Errorf("waited %d times although the deadline comes first", n)
	}
}
