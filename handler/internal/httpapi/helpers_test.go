package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/azfhir/bulkexport/handler/internal/auth"
	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/httpapi"
)

// fakeEngine records what the API asks of it and answers what the test set.
type fakeEngine struct {
	mu        sync.Mutex
	requests  []export.Request
	jobID     string
	kickErr   error
	status    *export.Status
	statusErr error
	cancelErr error
	cancelled []string
	files     map[string]string // "job/name" -> content
	open      func(jobID, name string) (io.ReadCloser, int64, error)
	opened    []string
	restarted []string // jobs the stalled-item watchdog was run for
	panicMsg  string   // panic in every method when set
	owners    []string // the owner argument of every Status, Cancel and OpenFile
}

func (e *fakeEngine) owner(o string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.owners = append(e.owners, o)
}

func (e *fakeEngine) KickOff(ctx context.Context, req export.Request) (*export.Job, error) {
	e.maybePanic()
	zerolog.Ctx(ctx).Info().Msg("engine kick-off")
	e.mu.Lock()
	defer e.mu.Unlock()
	e.requests = append(e.requests, req)
	if e.kickErr != nil {
		return nil, e.kickErr
	}
	id := e.jobID
	if id == "" {
		id = "01900000000000000000000000010000000000000000"
	}
	return &export.Job{ID: id, Request: req}, nil
}

func (e *fakeEngine) Status(ctx context.Context, jobID, owner string) (*export.Status, error) {
	e.maybePanic()
	e.owner(owner)
	zerolog.Ctx(ctx).Info().Msg("engine status")
	if e.statusErr != nil {
		return nil, e.statusErr
	}
	if e.status == nil {
		return nil, fault.New(fault.NotFound, "no job %s", jobID)
	}
	return e.status, nil
}

func (e *fakeEngine) RestartStalled(ctx context.Context, jobID string) (int, error) {
	e.maybePanic()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.restarted = append(e.restarted, jobID)
	return 0, nil
}

func (e *fakeEngine) Cancel(ctx context.Context, jobID, owner string) error {
	e.maybePanic()
	e.owner(owner)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cancelErr != nil {
		return e.cancelErr
	}
	e.cancelled = append(e.cancelled, jobID)
	return nil
}

func (e *fakeEngine) OpenFile(ctx context.Context, jobID, owner, name string) (io.ReadCloser, int64, error) {
	e.maybePanic()
	e.owner(owner)
	e.mu.Lock()
	e.opened = append(e.opened, jobID+"/"+name)
	e.mu.Unlock()
	if e.open != nil {
		return e.open(jobID, name)
	}
	data, ok := e.files[jobID+"/"+name]
	if !ok {
		return nil, 0, fault.New(fault.NotFound, "job %s has no file %s", jobID, name)
	}
	return io.NopCloser(strings.NewReader(data)), int64(len(data)), nil
}

func (e *fakeEngine) maybePanic() {
	if e.panicMsg != "" {
		panic(e.panicMsg)
	}
}

func (e *fakeEngine) lastRequest(t *testing.T) export.Request {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.requests) != 1 {
		t.Fatalf("engine got %d kick-off requests, want 1", len(e.requests))
	}
	return e.requests[0]
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// lines returns the logged JSON objects.
func (b *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(b.b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		out = append(out, m)
	}
	return out
}

// noAuth is AUTH_MODE=none; anonymousOwner is the owner key of its one
// client, which owns every job the API starts with it.
var noAuth, anonymousOwner = func() (*auth.Verifier, string) {
	v, err := auth.New(auth.Config{Mode: auth.ModeNone})
	if err != nil {
		panic(err)
	}
	p, err := v.Authenticate(context.Background(), "")
	if err != nil {
		panic(err)
	}
	return v, p.OwnerKey()
}()

type bundle struct {
	engine  *fakeEngine
	handler http.Handler
	logs    *syncBuffer
}

const defaultContainer = "bulk-exports"

// setup returns the API over a fresh fake engine; mod may change the options.
func setup(t *testing.T, mod ...func(*httpapi.Options)) *bundle {
	t.Helper()
	logs := &syncBuffer{}
	opts := httpapi.Options{
		DefaultContainer: defaultContainer,
		Retention:        24 * time.Hour,
		Logger:           zerolog.New(logs),
		SoftwareVersion:  "1.2.3",
		Auth:             noAuth,
	}
	for _, m := range mod {
		m(&opts)
	}
	if err := opts.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	eng := &fakeEngine{}
	return &bundle{engine: eng, handler: httpapi.New(eng, opts), logs: logs}
}

// call sends one request through the handler. target is a path with an
// optional raw query; it is set verbatim, so it may hold anything.
func (b *bundle) call(method, target string, header http.Header, body string) *httptest.ResponseRecorder {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, "http://example.com/", r)
	path, query, _ := strings.Cut(target, "?")
	u, err := url.Parse("http://example.com" + path)
	if err != nil {
		panic(fmt.Sprintf("bad test path %q: %v", path, err))
	}
	u.RawQuery = query
	req.URL = u
	req.RequestURI = target
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	rec := httptest.NewRecorder()
	b.handler.ServeHTTP(rec, req)
	return rec
}

type outcome struct {
	ResourceType string `json:"resourceType"`
	Issue        []struct {
		Severity    string `json:"severity"`
		Code        string `json:"code"`
		Diagnostics string `json:"diagnostics"`
	} `json:"issue"`
}

// checkOutcome asserts rec is a valid OperationOutcome answer with status
// want, and returns its first issue's code and diagnostics.
func checkOutcome(t *testing.T, rec *httptest.ResponseRecorder, want int) (code, diagnostics string) {
	t.Helper()
	if rec.Code != want {
		t.Fatalf("status = %d, want %d; body %s", rec.Code, want, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/fhir+json") {
		t.Fatalf("Content-Type = %q, want application/fhir+json", ct)
	}
	var oo outcome
	if err := json.Unmarshal(rec.Body.Bytes(), &oo); err != nil {
		t.Fatalf("body is not JSON: %v; %s", err, rec.Body)
	}
	if oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
		t.Fatalf("body is not an OperationOutcome with issues: %s", rec.Body)
	}
	i := oo.Issue[0]
	if i.Severity == "" || i.Code == "" || i.Diagnostics == "" {
		t.Fatalf("issue lacks severity, code or diagnostics: %s", rec.Body)
	}
	return i.Code, i.Diagnostics
}

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}
