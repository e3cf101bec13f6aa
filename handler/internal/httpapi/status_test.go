package httpapi_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/httpapi"
	"github.com/azfhir/bulkexport/handler/internal/memstore"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with testdata/name, or rewrites it under -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, append(bytes.TrimSpace(got), '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(bytes.TrimSpace(got), bytes.TrimSpace(want)) {
		t.Errorf("%s differs:\ngot  %s\nwant %s", name, got, want)
	}
}

var (
	txTime    = time.Date(2024, 3, 1, 10, 20, 30, 123456789, time.FixedZone("", 3600))
	completed = time.Date(2024, 3, 1, 10, 25, 0, 0, time.UTC)
)

func completedStatus(output, errs []export.OutputFile) *export.Status {
	return &export.Status{
		Job: &export.Job{ID: "01900000000000000000000000070000000000000000", TransactionTime: txTime,
			Request: export.Request{RequestURL: "https://fhir.example.org/Group/g1/$export?_type=Patient,Observation"}},
		Phase:       export.Completed,
		Output:      output,
		Errors:      errs,
		CompletedAt: completed,
	}
}

func TestStatusCompletedManifest(t *testing.T) {
	t.Parallel()
	files := []export.OutputFile{
		{Type: "Patient", Name: "Patient-1.ndjson", Count: 2},
		{Type: "Observation", Name: "Observation-1.ndjson", Count: 1000},
		{Type: "Observation", Name: "Observation-2.ndjson", Count: 7},
	}
	errs := []export.OutputFile{{Type: "OperationOutcome", Name: "OperationOutcome-1.ndjson", Count: 3}}
	tests := []struct {
		name   string
		status *export.Status
		header http.Header
		opts   func(*httpapi.Options)
		trust  bool // EXPORT_TRUST_FORWARDED
		golden string
	}{
		{name: "files and errors behind a proxy", status: completedStatus(files, errs),
			header: hdr("X-Forwarded-Proto", "https", "X-Forwarded-Host", "fhir.example.org"), trust: true, golden: "manifest-proxy.json"},
		{name: "BaseURL", status: completedStatus(files, errs), header: hdr("X-Forwarded-Host", "ignored"),
			opts: func(o *httpapi.Options) { o.BaseURL = "https://bulk.azurewebsites.net/api" }, golden: "manifest-baseurl.json"},
		{name: "nothing matched", status: completedStatus(nil, nil), golden: "manifest-empty.json"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var mods []func(*httpapi.Options)
			if tc.opts != nil {
				mods = append(mods, tc.opts)
			}
			if tc.trust {
				mods = append(mods, trustForwarded)
			}
			b := setup(t, mods...)
			b.engine.status = tc.status
			path := "/jobs/01900000000000000000000000070000000000000000"
			if tc.opts != nil {
				path = "/api/jobs/01900000000000000000000000070000000000000000"
			}
			// Inferno sends an empty bearer token even in open mode.
			h := tc.header.Clone()
			if h == nil {
				h = http.Header{}
			}
			h.Set("Authorization", "Bearer ")
			h.Set("Accept", "application/json")
			rec := b.call("GET", path, h, "")
			if rec.Code != http.StatusOK {
				t.Fatalf("status = %d, want 200; body %s", rec.Code, rec.Body)
			}
			if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type = %q, want application/json", ct)
			}
			if got, want := rec.Header().Get("Expires"), "Sat, 02 Mar 2024 10:25:00 GMT"; got != want {
				t.Errorf("Expires = %q, want %q", got, want)
			}
			golden(t, tc.golden, rec.Body.Bytes())
		})
	}
}

func TestStatusInProgress(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		status     export.Status
		retryAfter time.Duration
		wantRetry  string
		wantProg   string
	}{
		{name: "planning", status: export.Status{Phase: export.InProgress}, wantRetry: "2", wantProg: "0% (planning the export)"},
		{name: "total known", status: export.Status{Phase: export.InProgress, Planned: true, Done: 16531, Total: 38483, TotalKnown: true, Percent: 42},
			wantRetry: "2", wantProg: "42% (16,531 of 38,483 resources)"},
		{name: "total unknown", status: export.Status{Phase: export.InProgress, Planned: true, Done: 1234, Percent: 7, ItemsDone: 3, ItemsTotal: 7},
			wantRetry: "2", wantProg: "7% (estimated; 1,234 resources, 3 of 7 work items done)"},
		{name: "never 100 before the manifest", status: export.Status{Phase: export.InProgress, Planned: true, Done: 10, Total: 10, TotalKnown: true, Percent: 100},
			wantRetry: "2", wantProg: "99% (10 of 10 resources)"},
		{name: "retry clamped up", status: export.Status{Phase: export.InProgress, Planned: true, ItemsTotal: 1}, retryAfter: 300 * time.Millisecond,
			wantRetry: "1", wantProg: "0% (estimated; 0 resources, 0 of 1 work items done)"},
		{name: "retry clamped down, longest", status: export.Status{Phase: export.InProgress, Planned: true, Done: 9223372036854775807, Percent: 99, ItemsDone: 145, ItemsTotal: 146},
			retryAfter: time.Minute, wantRetry: "5", wantProg: "99% (estimated; 9,223,372,036,854,775,807 resources, 145 of 146 work items done)"},
		{name: "largest exact", status: export.Status{Phase: export.InProgress, Planned: true, Done: 999, Total: 9223372036854775807, TotalKnown: true},
			wantRetry: "2", wantProg: "0% (999 of 9,223,372,036,854,775,807 resources)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(o *httpapi.Options) { o.RetryAfter = tc.retryAfter })
			b.engine.status = &tc.status
			rec := b.call("GET", "/jobs/01900000000000000000000000010000000000000000", hdr("Authorization", "Bearer"), "")
			if rec.Code != http.StatusAccepted {
				t.Fatalf("status = %d, want 202; body %s", rec.Code, rec.Body)
			}
			if got := rec.Header().Get("Retry-After"); got != tc.wantRetry {
				t.Errorf("Retry-After = %q, want %q", got, tc.wantRetry)
			}
			got := rec.Header().Get("X-Progress")
			if got != tc.wantProg || len(got) >= 100 {
				t.Errorf("X-Progress = %q, want %q (under 100 chars)", got, tc.wantProg)
			}
			if rec.Body.Len() != 0 {
				t.Errorf("body = %q, want none", rec.Body)
			}
		})
	}
}

func TestStatusErrors(t *testing.T) {
	t.Parallel()
	failed := func(err error) *export.Status { return &export.Status{Phase: export.Failed, Failure: err} }
	tests := []struct {
		name      string
		status    *export.Status
		statusErr error
		want      int
		code      string
		diag      string
		retry     string
	}{
		{name: "failed permanently", status: failed(fault.New(fault.Permanent, "source rejected _typeFilter Observation?foo=bar")), want: 500, code: "exception", diag: "source rejected _typeFilter"},
		{name: "failed with a code", status: failed(fault.WithCode(fault.New(fault.Permanent, "file too big"), "too-costly")), want: 500, code: "too-costly", diag: "file too big"},
		{name: "failed after transient errors", status: failed(fault.New(fault.Transient, "source kept answering 503")), want: 500, code: "exception", diag: "503"},
		{name: "failed unavailable", status: failed(fault.New(fault.Unavailable, "storage unreachable")), want: 500, code: "exception", diag: "storage unreachable"},
		{name: "failed invalid", status: failed(fault.New(fault.Invalid, "Group has no members")), want: 400, code: "invalid", diag: "Group has no members"},
		// A failed job is never answered as a missing one (404) or as a
		// refusal of the client's credentials (403): see statusOf.
		{name: "failed not found", status: failed(fault.New(fault.NotFound, "Group g1 was deleted")), want: 500, code: "not-found", diag: "Group g1 was deleted"},
		// The service's own trouble is told in fixed words; the cause is in the log.
		{name: "failed forbidden", status: failed(fault.New(fault.Forbidden, "storage refuses us")), want: 500, code: "forbidden", diag: "refused the service's identity"},
		{name: "failed after a lost race", status: failed(fault.New(fault.Conflict, "item kept changing")), want: 500, code: "conflict", diag: "internal error"},
		{name: "failed internal", status: failed(errors.New("plain error")), want: 500, code: "exception", diag: "internal error"},
		{name: "failed without cause", status: failed(nil), want: 500, code: "exception", diag: "failed"},
		{name: "unknown job", statusErr: fault.New(fault.NotFound, "no job 01900000000000000000000000010000000000000000"), want: 404, code: "not-found", diag: "01900000000000000000000000010000000000000000"},
		{name: "cancelled job", statusErr: fault.New(fault.Cancelled, "job 01900000000000000000000000010000000000000000 was cancelled"), want: 404, code: "not-found", diag: "cancelled"},
		{name: "lookup failed transiently", statusErr: fault.New(fault.Transient, "table storage timeout"), want: 503, code: "transient", diag: "unavailable", retry: "2"},
		{name: "lookup unavailable", statusErr: fault.New(fault.Unavailable, "storage down"), want: 503, code: "transient", diag: "unavailable", retry: "2"},
		{name: "lookup internal", statusErr: errors.New("bug"), want: 500, code: "exception", diag: "internal error"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.engine.status, b.engine.statusErr = tc.status, tc.statusErr
			rec := b.call("GET", "/jobs/01900000000000000000000000010000000000000000", hdr("Authorization", "Bearer "), "")
			code, diag := checkOutcome(t, rec, tc.want)
			if code != tc.code {
				t.Errorf("code = %q, want %q", code, tc.code)
			}
			if !strings.Contains(diag, tc.diag) {
				t.Errorf("diagnostics %q lack %q", diag, tc.diag)
			}
			if got := rec.Header().Get("Retry-After"); got != tc.retry {
				t.Errorf("Retry-After = %q, want %q", got, tc.retry)
			}
		})
	}
}

func TestCancel(t *testing.T) {
	t.Parallel()
	t.Run("accepted", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		rec := b.call("DELETE", "/jobs/01900000000000000000000000030000000000000000", hdr("Authorization", "Bearer "), "")
		if rec.Code != http.StatusAccepted || rec.Body.Len() != 0 {
			t.Fatalf("got %d %q, want 202 and no body", rec.Code, rec.Body)
		}
		if len(b.engine.cancelled) != 1 || b.engine.cancelled[0] != "01900000000000000000000000030000000000000000" {
			t.Errorf("engine cancelled %v, want [01900000000000000000000000030000000000000000]", b.engine.cancelled)
		}
	})
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"unknown or already cancelled", fault.New(fault.NotFound, "no job 01900000000000000000000000030000000000000000"), 404},
		{"storage down", fault.New(fault.Unavailable, "storage down"), 503},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.engine.cancelErr = tc.err
			checkOutcome(t, b.call("DELETE", "/jobs/01900000000000000000000000030000000000000000", nil, ""), tc.want)
		})
	}
	t.Run("invalid job id never reaches the engine", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		checkOutcome(t, b.call("DELETE", "/jobs/a%20b", nil, ""), 404)
		if len(b.engine.cancelled) != 0 {
			t.Errorf("engine cancelled %v", b.engine.cancelled)
		}
	})
}

func TestDownload(t *testing.T) {
	t.Parallel()
	const data = "{\"resourceType\":\"Patient\",\"id\":\"1\"}\n{\"resourceType\":\"Patient\",\"id\":\"2\"}\n"
	t.Run("headers and body", func(t *testing.T) {
		t.Parallel()
		for _, name := range []string{"Patient-1.ndjson", "OperationOutcome-12.ndjson"} {
			b := setup(t)
			b.engine.files = map[string]string{"01900000000000000000000000010000000000000000/" + name: data}
			rec := b.call("GET", "/jobs/01900000000000000000000000010000000000000000/files/"+name, hdr("Authorization", "Bearer "), "")
			if rec.Code != http.StatusOK {
				t.Fatalf("%s: status = %d; body %s", name, rec.Code, rec.Body)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/fhir+ndjson" {
				t.Errorf("Content-Type = %q", ct)
			}
			if cl := rec.Header().Get("Content-Length"); cl != strconv.Itoa(len(data)) {
				t.Errorf("Content-Length = %q, want %d", cl, len(data))
			}
			if rec.Body.String() != data {
				t.Errorf("body = %q", rec.Body)
			}
		}
	})
	t.Run("bad names are 404 without asking the engine", func(t *testing.T) {
		t.Parallel()
		for _, name := range []string{"..%2F..%2Fetc%2Fpasswd", "..", "Patient.ndjson", "Patient-1.json", "Patient-1.ndjson.bak",
			"Patient-x.ndjson", "-1.ndjson", "Pat%2Fient-1.ndjson", "Patient-1.ndjson%00"} {
			b := setup(t)
			checkOutcome(t, b.call("GET", "/jobs/01900000000000000000000000010000000000000000/files/"+name, nil, ""), 404)
			if len(b.engine.opened) != 0 {
				t.Errorf("%s: engine opened %v", name, b.engine.opened)
			}
		}
	})
	t.Run("unknown file", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		checkOutcome(t, b.call("GET", "/jobs/01900000000000000000000000010000000000000000/files/Patient-9.ndjson", nil, ""), 404)
	})
	t.Run("streams without buffering the file", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		pr, pw := io.Pipe()
		const chunk = 256 << 10
		const total = 4 * chunk
		b.engine.open = func(jobID, name string) (io.ReadCloser, int64, error) { return pr, total, nil }
		srv := httptest.NewServer(b.handler)
		defer srv.Close()
		defer pw.Close() // unblocks the handler if the test fails early
		line := bytes.Repeat([]byte("x"), chunk-1)
		line = append(line, '\n')
		go func() {
			_, _ = pw.Write(line) // the first chunk; the rest only after the client saw it
		}()
		// Only the first chunk exists until the client has read it: a handler
		// that buffered the file would never send it, and the deadline fails the test.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/jobs/01900000000000000000000000010000000000000000/files/Patient-1.ndjson", nil)
		req.Header.Set("Accept-Encoding", "identity") // the plain file, with its Content-Length (gzip: gzip_test.go)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("no response before the file was complete (the handler buffers?): %v", err)
		}
		defer resp.Body.Close()
		if resp.ContentLength != total {
			t.Errorf("Content-Length = %d, want %d", resp.ContentLength, total)
		}
		first := make([]byte, chunk)
		if _, err := io.ReadFull(resp.Body, first); err != nil {
			t.Fatalf("the first chunk did not arrive before the file was complete (the handler buffers?): %v", err)
		}
		go func() {
			for range 3 {
				_, _ = pw.Write(line)
			}
			_ = pw.Close()
		}()
		n, err := io.Copy(io.Discard, bufio.NewReader(resp.Body))
		if err != nil || n != total-chunk {
			t.Errorf("rest of body: %d bytes, %v; want %d", n, err, total-chunk)
		}
	})
}

// The watchdog writes, so only a poll of a running job runs it: not a poll
// of a finished job, and never a download.
func TestOnlyPollsOfARunningJobRunTheStalledItemWatchdog(t *testing.T) {
	t.Parallel()
	const id = "01900000000000000000000000010000000000000000"
	for _, tc := range []struct {
		name   string
		status *export.Status
		want   int
	}{
		{"in progress", &export.Status{Phase: export.InProgress}, 1},
		{"completed", completedStatus(nil, nil), 0},
		{"failed", &export.Status{Phase: export.Failed, Failure: fault.New(fault.Permanent, "rejected")}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.engine.status = tc.status
			b.engine.files = map[string]string{id + "/Patient-1.ndjson": "{}\n"}
			b.call("GET", "/jobs/"+id, nil, "")
			if got := len(b.engine.restarted); got != tc.want {
				t.Errorf("a status poll ran the watchdog %d times, want %d", got, tc.want)
			}
			if rec := b.call("GET", "/jobs/"+id+"/files/Patient-1.ndjson", nil, ""); rec.Code != http.StatusOK {
				t.Fatalf("download: %d %s", rec.Code, rec.Body)
			}
			if got := len(b.engine.restarted); got != tc.want {
				t.Errorf("a download ran the watchdog (%d runs in all, want %d)", got, tc.want)
			}
		})
	}
}

// tinySource is a FHIR source of two Patients whose searches fail with
// pageErr when it is set, so that the engine records a real failure.
type tinySource struct{ pageErr error }

func (tinySource) Now(context.Context) (time.Time, error) {
	return time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC), nil
}
func (tinySource) Types(context.Context) ([]string, error)                   { return []string{"Patient"}, nil }
func (tinySource) SearchParams(context.Context) (map[string][]string, error) { return nil, nil }
func (tinySource) Read(_ context.Context, typ, id string) ([]byte, error) {
	return nil, fault.New(fault.NotFound, "%s/%s is not on the source", typ, id)
}
func (tinySource) SearchURL(typ, query string) string                   { return "tiny:///" + typ + "?" + query }
func (tinySource) Count(context.Context, string, string) (int64, error) { return 2, nil }
func (tinySource) HistoryTypes(context.Context) ([]string, error)       { return nil, nil }
func (tinySource) HistoryURL(typ, id, query string) string {
	return "tiny:///" + typ + "/_history?" + query
}
func (tinySource) HistoryPage(context.Context, string, func(export.HistoryEntry) error) (string, error) {
	return "", export.ErrNoHistory
}
func (s tinySource) Page(_ context.Context, _ string, visit func(export.Entry) error) (string, error) {
	if s.pageErr != nil {
		return "", s.pageErr
	}
	for _, id := range []string{"a", "b"} {
		r := `{"resourceType":"Patient","id":"` + id + `","meta":{"lastUpdated":"2024-06-01T11:00:00Z"}}`
		if err := visit(export.Entry{Resource: []byte(r), Mode: "match"}); err != nil {
			return "", err
		}
	}
	return "", nil
}

// refusingBlobs answers writes of export files as a storage account answers
// an identity that lost its data role after the job was accepted.
type refusingBlobs struct{ export.Blobs }

func (b refusingBlobs) StageBlock(ctx context.Context, c, name string, n int, data []byte) error {
	if strings.HasPrefix(name, ".preflight/") {
		return b.Blobs.StageBlock(ctx, c, name, n, data)
	}
	return fault.New(fault.Forbidden, "stage %s: 403 AuthorizationPermissionMismatch", name)
}

// runToTheEnd kicks off a Patient export on a real engine over memstore and
// delivers its messages as the queue trigger would, up to deliveries per
// message, until none is left.
func runToTheEnd(t *testing.T, src export.Source, blobs export.Blobs, deliveries int) (*export.Engine, string) {
	t.Helper()
	ctx := context.Background()
	queue := memstore.NewQueue(nil)
	engine := export.New(memstore.NewStore(), queue, blobs, src, export.DefaultSettings(), nil)
	job, err := engine.KickOff(ctx, export.Request{Level: export.LevelSystem, Types: []string{"Patient"}, Container: "bulk-export", Owner: anonymousOwner,
		OutputFormat: "application/fhir+ndjson", RequestURL: "https://bulk.example.org/$export?_type=Patient"})
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		ds, err := queue.Receive(ctx, 1, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 0 {
			return engine, job.ID
		}
		d := ds[0]
		var msg export.Message
		if err := json.Unmarshal([]byte(d.Text), &msg); err != nil {
			t.Fatal(err)
		}
		out := engine.Process(ctx, msg, export.Attempt{Number: int(d.DequeueCount), Final: d.DequeueCount >= int64(deliveries)})
		switch out.Action {
		case export.Settle:
			err = queue.Delete(ctx, d)
		case export.Retry:
			err = queue.Extend(ctx, &d, 0)
		case export.Poison:
			err = queue.Poison(ctx, d)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("the export's messages never ran out")
	return nil, ""
}

// The status of a job that failed answers the failure the engine recorded,
// with the kind it had when it happened.
func TestStatusOfAFailedJobAnswersTheRecordedCause(t *testing.T) {
	t.Parallel()
	const deliveries = 3
	for _, tc := range []struct {
		name  string
		src   tinySource
		blobs func(export.Blobs) export.Blobs
		code  string
		diag  []string
	}{
		{name: "storage refuses the service mid-job", blobs: func(b export.Blobs) export.Blobs { return refusingBlobs{b} },
			code: "forbidden", diag: []string{"the export failed", "refused the service's identity"}},
		{name: "the source fails until the last delivery",
			src:  tinySource{pageErr: fault.New(fault.Transient, "the source FHIR server answered GET Patient with 503 Service Unavailable")},
			code: "exception", diag: []string{"503 Service Unavailable", "gave up after 3 attempts"}},
		{name: "the source rejects the search",
			src:  tinySource{pageErr: fault.New(fault.Permanent, "the source FHIR server rejected GET Patient with 400 Bad Request: unknown _sort")},
			code: "exception", diag: []string{"400 Bad Request: unknown _sort"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var blobs export.Blobs = memstore.NewBlobs()
			if tc.blobs != nil {
				blobs = tc.blobs(blobs)
			}
			engine, jobID := runToTheEnd(t, tc.src, blobs, deliveries)
			b := &bundle{handler: httpapi.New(engine, httpapi.Options{DefaultContainer: defaultContainer, Auth: noAuth})}
			for range 2 { // the answer is settled: asking again gives the same
				rec := b.call("GET", "/jobs/"+jobID, hdr("Accept", "application/json"), "")
				code, diag := checkOutcome(t, rec, http.StatusInternalServerError)
				if code != tc.code {
					t.Errorf("issue code %q, want %q", code, tc.code)
				}
				for _, want := range tc.diag {
					if !strings.Contains(diag, want) {
						t.Errorf("diagnostics %q lack %q", diag, want)
					}
				}
				if ra := rec.Header().Get("Retry-After"); ra != "" {
					t.Errorf("a failed job invites a retry: Retry-After %q", ra)
				}
			}
		})
	}
}
