package fhirsource

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// entry is what a test expects visit to see.
type entry struct{ resource, mode string }

// collect returns a visit func that copies each entry (its bytes are only
// valid during the call) and a func returning what was collected.
func collect() (func(export.Entry) error, func() []entry) {
	var got []entry
	return func(e export.Entry) error {
			got = append(got, entry{string(e.Resource), e.Mode})
			return nil
		}, func() []entry {
			return got
		}
}

// serveBody serves body on every request, with {base} replaced by the
// server's URL.
func serveBody(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/fhir+json")
		_, _ = w.Write([]byte(strings.ReplaceAll(body, "{base}", "http://"+r.Host)))
	}
}

const (
	obs1 = `{"resourceType":"Observation","id":"o1","status":"final"}`
	obs2 = `{"resourceType":"Observation","id":"o2","valueString":"a \"quoted\" ] } value"}`
	pat1 = `{"resourceType":"Patient","id":"p1"}`
	oo1  = `{"resourceType":"OperationOutcome","issue":[{"severity":"warning","code":"processing"}]}`
)

func TestPageStreamsEntries(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		body     string
		want     []entry
		wantNext string // {base} is the server's URL
	}{
		{
			name: "link after entries",
			body: `{"resourceType":"Bundle","type":"searchset","entry":[
				{"fullUrl":"{base}/fhir/Observation/o1","resource":` + obs1 + `,"search":{"mode":"match"}},
				{"fullUrl":"{base}/fhir/Observation/o2","resource":` + obs2 + `,"search":{"mode":"match"}}],
				"link":[{"relation":"self","url":"{base}/fhir/Observation?_count=2"},{"relation":"next","url":"{base}/fhir/Observation?_count=2&ct=abc%3D"}]}`,
			want:     []entry{{obs1, "match"}, {obs2, "match"}},
			wantNext: "{base}/fhir/Observation?_count=2&ct=abc%3D",
		},
		{
			name: "link before entries",
			body: `{"resourceType":"Bundle","link":[{"relation":"next","url":"{base}/fhir?_getpages=x&_getpagesoffset=2"},{"relation":"self","url":"{base}/fhir/Observation"}],
				"meta":{"lastUpdated":"2024-01-01T00:00:00Z"},"total":3,
				"entry":[{"resource":` + obs1 + `},{"resource":` + obs2 + `}]}`,
			want:     []entry{{obs1, ""}, {obs2, ""}},
			wantNext: "{base}/fhir?_getpages=x&_getpagesoffset=2",
		},
		{
			name:     "last page",
			body:     `{"resourceType":"Bundle","entry":[{"resource":` + obs1 + `}],"link":[{"relation":"self","url":"{base}/fhir/Observation"}]}`,
			want:     []entry{{obs1, ""}},
			wantNext: "",
		},
		{
			name:     "relative next link",
			body:     `{"resourceType":"Bundle","link":[{"relation":"next","url":"Observation?page=2"}],"entry":[]}`,
			wantNext: "{base}/fhir/Observation?page=2",
		},
		{
			name: "modes pass through",
			body: `{"resourceType":"Bundle","entry":[
				{"resource":` + obs1 + `,"search":{"mode":"match","score":1}},
				{"search":{"mode":"include"},"resource":` + pat1 + `},
				{"resource":` + oo1 + `,"search":{"mode":"outcome"}},
				{"resource":` + obs2 + `,"search":{}},
				{"resource":` + obs2 + `,"search":{"mode":"other"}}]}`,
			want: []entry{{obs1, "match"}, {pat1, "include"}, {oo1, "outcome"}, {obs2, ""}, {obs2, "other"}},
		},
		{
			name: "entries without a resource are skipped",
			body: `{"resourceType":"Bundle","entry":[{"fullUrl":"x"},{"resource":null},null,{"resource":` + obs1 + `}]}`,
			want: []entry{{obs1, ""}},
		},
		{name: "no entries", body: `{"resourceType":"Bundle","type":"searchset","total":0}`},
		{name: "null entries", body: `{"resourceType":"Bundle","entry":null}`},
		{
			name:     "resourceType last, unknown keys skipped",
			body:     `{"id":"b","extension":[{"url":"x","valueString":"]}"}],"entry":[{"resource":` + obs1 + `}],"link":[{"relation":"next","url":"{base}/fhir/next"}],"resourceType":"Bundle"}`,
			want:     []entry{{obs1, ""}},
			wantNext: "{base}/fhir/next",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, srv, _ := setup(t, serveBody(tc.body))
			visit, got := collect()
			next, err := c.Page(context.Background(), srv.URL+"/fhir/Observation?_count=2", visit)
			if err != nil {
				t.Fatalf("Page: %v", err)
			}
			if want := strings.ReplaceAll(tc.wantNext, "{base}", srv.URL); next != want {
				t.Errorf("next = %q, want %q", next, want)
			}
			if !slices.Equal(got(), tc.want) {
				t.Errorf("entries = %q, want %q", got(), tc.want)
			}
		})
	}
}

func TestPageRejects(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		body        string
		wantKind    fault.Kind
		wantMsg     string
		wantVisited int
	}{
		{name: "OperationOutcome with 200", body: `{"resourceType":"OperationOutcome","issue":[]}`, wantKind: fault.Permanent, wantMsg: "not a Bundle"},
		{name: "no resourceType", body: `{"entry":[]}`, wantKind: fault.Permanent, wantMsg: "no resourceType Bundle"},
		{name: "not an object", body: `[1,2]`, wantKind: fault.Permanent, wantMsg: "not a JSON Bundle"},
		{name: "entry not an array", body: `{"resourceType":"Bundle","entry":{}}`, wantKind: fault.Permanent, wantMsg: "not an array"},
		{name: "invalid JSON", body: `{"resourceType":"Bundle","entry":[{"resource":{"a":tru}}]}`, wantKind: fault.Permanent, wantMsg: "cannot be read"},
		{
			name:     "foreign next link before entries",
			body:     `{"resourceType":"Bundle","link":[{"relation":"next","url":"https://evil.example:8443/fhir/Observation?page=2"}],"entry":[{"resource":` + obs1 + `}]}`,
			wantKind: fault.Permanent, wantMsg: "https://evil.example:8443, not at the source",
		},
		{
			name:     "foreign next link after entries",
			body:     `{"resourceType":"Bundle","entry":[{"resource":` + obs1 + `}],"link":[{"relation":"next","url":"https://evil.example/fhir/Observation?page=2"}]}`,
			wantKind: fault.Permanent, wantMsg: "never sent elsewhere", wantVisited: 1,
		},
		{
			name:     "next link to another port",
			body:     `{"resourceType":"Bundle","link":[{"relation":"next","url":"http://127.0.0.1:1/fhir/Observation?page=2"}]}`,
			wantKind: fault.Permanent, wantMsg: "never sent elsewhere",
		},
		{
			name:     "next link to https on the same host",
			body:     `{"resourceType":"Bundle","link":[{"relation":"next","url":"{https}/fhir/Observation?page=2"}]}`,
			wantKind: fault.Permanent, wantMsg: "never sent elsewhere",
		},
		// Same origin, outside the base path /fhir: another application on
		// the source's host is never read. The message names the base path,
		// not the link.
		{
			name:     "same-origin next link outside the base path",
			body:     `{"resourceType":"Bundle","link":[{"relation":"next","url":"{base}/admin/secret?key=k1"}],"entry":[{"resource":` + obs1 + `}]}`,
			wantKind: fault.Permanent, wantMsg: "leaves its base path /fhir;",
		},
		{
			name:     "relative next link outside the base path",
			body:     `{"resourceType":"Bundle","link":[{"relation":"next","url":"/admin/secret"}]}`,
			wantKind: fault.Permanent, wantMsg: "leaves its base path /fhir;",
		},
		{
			name:     "next link to a sibling path sharing the prefix",
			body:     `{"resourceType":"Bundle","link":[{"relation":"next","url":"{base}/fhir-admin/secret"}]}`,
			wantKind: fault.Permanent, wantMsg: "leaves its base path /fhir;",
		},
		{
			name:     "next link climbing out with encoded dots",
			body:     `{"resourceType":"Bundle","link":[{"relation":"next","url":"{base}/fhir/%2e%2e/admin/secret"}]}`,
			wantKind: fault.Permanent, wantMsg: "leaves its base path /fhir;",
		},
		{
			name:     "next link to the same page",
			body:     `{"resourceType":"Bundle","link":[{"relation":"next","url":"{base}/fhir/Observation?_count=2"}]}`,
			wantKind: fault.Permanent, wantMsg: "same page",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var hits atomic.Int32
			c, srv, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				body := strings.ReplaceAll(tc.body, "{https}", "https://"+r.Host)
				serveBody(body)(w, r)
			})
			visited := 0
			_, err := c.Page(context.Background(), srv.URL+"/fhir/Observation?_count=2", func(export.Entry) error {
				visited++
				return nil
			})
			if !fault.Is(err, tc.wantKind) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("Page error = %v, want kind %v mentioning %q", err, tc.wantKind, tc.wantMsg)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("Page error %q repeats the refused link", err)
			}
			if visited != tc.wantVisited {
				t.Errorf("visited %d entries, want %d", visited, tc.wantVisited)
			}
			if hits.Load() != 1 {
				t.Errorf("the page was fetched %d times, want 1", hits.Load())
			}
		})
	}
}

func TestPageRefusesAForeignPageURL(t *testing.T) {
	t.Parallel()
	var hits atomic.Int32
	c, _, _ := setup(t, func(w http.ResponseWriter, r *http.Request) { hits.Add(1) })
	for _, u := range []string{"https://evil.example/fhir/Observation?page=2", "/fhir/Observation", "::"} {
		if _, err := c.Page(context.Background(), u, func(export.Entry) error { return nil }); !fault.Is(err, fault.Permanent) {
			t.Errorf("Page(%q) error = %v, want permanent", u, err)
		}
	}
	if hits.Load() != 0 {
		t.Errorf("the source was asked %d times", hits.Load())
	}
}

func TestPageReturnsTheVisitErrorAsIs(t *testing.T) {
	t.Parallel()
	var hits atomic.Int32
	c, srv, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		serveBody(`{"resourceType":"Bundle","entry":[{"resource":`+obs1+`},{"resource":`+obs2+`},{"resource":`+pat1+`}]}`)(w, r)
	})
	stop := fault.New(fault.Transient, "destination throttled")
	visited := 0
	_, err := c.Page(context.Background(), srv.URL+"/fhir/Observation", func(export.Entry) error {
		visited++
		if visited == 2 {
			return stop
		}
		return nil
	})
	if err != stop {
		t.Fatalf("Page error = %v, want the visit error itself", err)
	}
	if visited != 2 || hits.Load() != 1 {
		t.Errorf("visited %d entries over %d fetches, want 2 over 1", visited, hits.Load())
	}
}

// cutAfter writes head, flushes it and drops the connection.
func cutAfter(w http.ResponseWriter, head string) {
	w.Header().Set("Content-Type", "application/fhir+json")
	_, _ = w.Write([]byte(head))
	w.(http.Flusher).Flush()
	panic(http.ErrAbortHandler)
}

func TestPageConnectionLostMidBody(t *testing.T) {
	t.Parallel()
	full := `{"resourceType":"Bundle","entry":[{"resource":` + obs1 + `},{"resource":` + obs2 + `}]}`
	t.Run("after entries were visited: not retried", func(t *testing.T) {
		t.Parallel()
		var hits atomic.Int32
		c, srv, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			cutAfter(w, `{"resourceType":"Bundle","entry":[{"resource":`+obs1+`},{"resource":{"resourceType":"Obs`)
		})
		visit, got := collect()
		_, err := c.Page(context.Background(), srv.URL+"/fhir/Observation", visit)
		if !fault.Is(err, fault.Transient) {
			t.Fatalf("Page error = %v, want transient", err)
		}
		if hits.Load() != 1 || len(got()) != 1 {
			t.Errorf("%d fetches and %d entries, want 1 and 1: a page is not fetched again once entries were handed on", hits.Load(), len(got()))
		}
	})
	t.Run("before any entry: retried", func(t *testing.T) {
		t.Parallel()
		var hits atomic.Int32
		c, srv, w := setup(t, func(w http.ResponseWriter, r *http.Request) {
			if hits.Add(1) == 1 {
				cutAfter(w, `{"resourceType":"Bundle","meta":{"lastUpdated":"2024-01-01T00:00:00Z"},"entry":[{"resource":{"resourceType":"Obs`)
			}
			serveBody(full)(w, r)
		})
		visit, got := collect()
		if _, err := c.Page(context.Background(), srv.URL+"/fhir/Observation", visit); err != nil {
			t.Fatalf("Page: %v", err)
		}
		if want := []entry{{obs1, ""}, {obs2, ""}}; !slices.Equal(got(), want) || hits.Load() != 2 || len(w.list()) != 1 {
			t.Errorf("entries %q over %d fetches and %d waits, want %q over 2 and 1", got(), hits.Load(), len(w.list()), want)
		}
	})
}

// TestPageStreamsALargePage proves that Page hands entries on while the body
// is still arriving, and that a 20 MB page costs far less than 20 MB of
// allocation. The source holds back the second half of the page until the
// first entry was visited, so a client that read the whole body first would
// stall; and the page is produced from one reused buffer so that the server
// side allocates (almost) nothing.
func TestPageStreamsALargePage(t *testing.T) {
	const (
		entries   = 10_000
		entrySize = 2 << 10
		pageSize  = entries * entrySize // about 20 MB
	)
	filler := strings.Repeat("x", entrySize-120)
	template := []byte(`{"fullUrl":"urn:uuid:00000000","resource":{"resourceType":"Observation","id":"00000000","valueString":"` + filler + `"},"search":{"mode":"match"}},`)
	idAt := bytes.Index(template, []byte(`"id":"`)) + len(`"id":"`)
	firstVisited := make(chan struct{})
	var once sync.Once
	var stalled atomic.Bool
	c, srv, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"resourceType":"Bundle","type":"searchset","entry":[`))
		buf := slices.Clone(template)
		for i := range entries {
			if i == entries/2 {
				w.(http.Flusher).Flush()
				select {
				case <-firstVisited:
				case <-time.After(10 * time.Second):
					stalled.Store(true)
					panic(http.ErrAbortHandler)
				}
			}
			copy(buf[idAt:], fmt.Sprintf("%08d", i))
			if i == entries-1 {
				buf = buf[:len(buf)-1] // no comma after the last entry
			}
			_, _ = w.Write(buf)
		}
		_, _ = w.Write([]byte(`],"link":[{"relation":"next","url":"http://` + r.Host + `/fhir/Observation?page=2"}]}`))
	})

	var before, now runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var peakHeap uint64
	n := 0
	next, err := c.Page(context.Background(), srv.URL+"/fhir/Observation", func(e export.Entry) error {
		once.Do(func() { close(firstVisited) })
		if want := fmt.Sprintf(`"id":"%08d"`, n); !bytes.Contains(e.Resource, []byte(want)) {
			return fmt.Errorf("entry %d does not hold %s", n, want)
		}
		if n%1000 == 0 {
			runtime.ReadMemStats(&now)
			peakHeap = max(peakHeap, now.HeapInuse)
		}
		n++
		return nil
	})
	runtime.ReadMemStats(&now)
	if stalled.Load() {
		t.Fatal("Page did not visit the first entry before the whole page had arrived")
	}
	if err != nil {
		t.Fatalf("Page: %v", err)
	}
	if n != entries || next != srv.URL+"/fhir/Observation?page=2" {
		t.Fatalf("visited %d entries, next %q; want %d and the page-2 link", n, next, entries)
	}
	allocated := now.TotalAlloc - before.TotalAlloc
	heapGrowth := int64(peakHeap) - int64(before.HeapInuse)
	t.Logf("page %d bytes: allocated %d bytes in all, peak heap in use grew by %d bytes", pageSize, allocated, heapGrowth)
	// Streaming allocates about 0.5 MB here (a few MB under the race
	// detector); holding the page would take at least its 20 MB.
	limit := uint64(pageSize / 8)
	if raceEnabled {
		limit = pageSize / 2
	}
	if allocated > limit {
		t.Errorf("allocated %d bytes while paging %d; the page is not streamed", allocated, pageSize)
	}
	if heapGrowth > int64(limit) {
		t.Errorf("heap in use grew by %d bytes while paging %d; the page is not streamed", heapGrowth, pageSize)
	}
}

func TestPageHonoursCancellationMidBody(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	c, srv, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"resourceType":"Bundle","entry":[{"resource":` + obs1 + `},`))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	ctx, cancel := context.WithCancel(context.Background())
	start := time.Now()
	_, err := c.Page(ctx, srv.URL+"/fhir/Observation", func(export.Entry) error {
		cancel() // the caller gives up while the rest of the page is pending
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Page error = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Page took %v to notice the cancellation", d)
	}
}

// TestPageCompactsLikeEncodingJSON holds the one-pass scanner to
// encoding/json: every resource reaches visit exactly as json.Compact would
// write it (the engine writes those bytes without compacting them again), and
// every resource encoding/json rejects makes the page fail as unreadable.
func TestPageCompactsLikeEncodingJSON(t *testing.T) {
	t.Parallel()
	for _, resource := range []string{
		obs1, obs2,
		"{ \"resourceType\" : \"Observation\",\n\t\"id\": \"o3\",\r\n \"valueQuantity\": { \"value\": -1.25e+3, \"unit\": \"cm\" } }",
		`{"resourceType":"Observation","id":"o4","note":[{"text":"tab\there \u00e9 \\ \/ \" \b\f\n\r"}],"x":[ ],"y":{ },"z":[true,false,null,0,-0,0.5,1E9,12e-2]}`,
		`{"resourceType":"Observation","id":"o5","valueString":"` + strings.Repeat("é<>&\u2028", 30000) + `"}`, // spans read buffers
		`{"resourceType":"Observation","id":"o6","deep":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}`,
	} {
		var want bytes.Buffer
		if err := json.Compact(&want, []byte(resource)); err != nil {
			t.Fatalf("test resource is not JSON: %v", err)
		}
		var got []byte
		compact := false
		_, err := decodePage(strings.NewReader(`{"resourceType":"Bundle","entry":[{"resource":`+resource+`}]}`), func(string) error { return nil },
			func(e export.Entry) error { got, compact = bytes.Clone(e.Resource), e.Compact; return nil })
		if err != nil || !bytes.Equal(got, want.Bytes()) || !compact {
			t.Errorf("resource %.60q: got %.80q (compact %v), %v; want %.80q", resource, got, compact, err, want.Bytes())
		}
	}
	for _, resource := range []string{
		`{"a":tru}`, `{"a":01}`, `{"a":1.}`, `{"a":-}`, `{"a":1e}`, `{"a":"\x"}`, `{"a":"\u12g4"}`, "{\"a\":\"\x01\"}",
		`{"a" 1}`, `{"a":1,}`, `{a:1}`, `[1 2]`, `{"a":[1,]}`, `{"a":+1}`, `{"a":.5}`, `{"a":nul}`,
	} {
		if json.Valid([]byte(resource)) {
			t.Fatalf("%q is valid JSON", resource)
		}
		c, srv, _ := setup(t, serveBody(`{"resourceType":"Bundle","entry":[{"resource":`+resource+`}]}`))
		_, err := c.Page(context.Background(), srv.URL+"/fhir/Observation", func(export.Entry) error { return nil })
		if !fault.Is(err, fault.Permanent) || !strings.Contains(fmt.Sprint(err), "cannot be read") {
			t.Errorf("resource %q: err = %v, want a permanent fault for JSON that cannot be read", resource, err)
		}
	}
}

// FuzzDecodePage checks the scanner against encoding/json on any resource
// text: accepted exactly when json.Valid accepts it, and then compacted to
// the same bytes.
func FuzzDecodePage(f *testing.F) {
	for _, seed := range []string{obs1, obs2, `{"a": [1, 2.5e3, "x\u0041"]}`, `{"a":tru}`, `[]`, `"s"`, `-0.0E+1`} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, resource string) {
		var got []byte
		_, err := decodePage(strings.NewReader(`{"resourceType":"Bundle","entry":[{"resource":`+resource+`}]}`), func(string) error { return nil },
			func(e export.Entry) error { got = bytes.Clone(e.Resource); return nil })
		var want bytes.Buffer
		if json.Compact(&want, []byte(resource)) != nil {
			// The text may still close the entry and go on as a valid
			// Bundle; only a page encoding/json cannot decode must fail.
			var v any
			if err == nil && json.NewDecoder(strings.NewReader(`{"resourceType":"Bundle","entry":[{"resource":`+resource+`}]}`)).Decode(&v) != nil {
				t.Fatalf("%q: accepted JSON that encoding/json rejects", resource)
			}
			return
		}
		if err != nil {
			t.Fatalf("%q: %v", resource, err)
		}
		if want.String() != "null" && !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("%q: compacted to %q, want %q", resource, got, want.Bytes())
		}
	})
}
