package fhirsource

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// waits records the backoff waits a Client asked for, without waiting.
type waits struct {
	mu sync.Mutex
	d  []time.Duration
}

func (w *waits) sleep(ctx context.Context, d time.Duration) error {
	w.mu.Lock()
	w.d = append(w.d, d)
	w.mu.Unlock()
	return context.Cause(ctx)
}

func (w *waits) list() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.d)
}

// setup starts a source on handler and returns a Client for its /fhir base
// whose backoff waits are recorded, not slept; opts may adjust the options.
func setup(t *testing.T, handler http.HandlerFunc, opts ...func(*Options)) (*Client, *httptest.Server, *waits) {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	o := Options{BaseURL: srv.URL + "/fhir/", BaseBackoff: time.Millisecond, MaxAttempts: 3}
	for _, f := range opts {
		f(&o)
	}
	c, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	w := &waits{}
	c.sleep = w.sleep
	return c, srv, w
}

type tokenFunc func(ctx context.Context) (string, error)

func (f tokenFunc) Token(ctx context.Context) (string, error) { return f(ctx) }

func TestNewValidatesBaseURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		base    string
		wantErr string
		want    string // SearchURL("Patient", "a=b")
	}{
		{base: "http://127.0.0.1:8080/fhir", want: "http://127.0.0.1:8080/fhir/Patient?a=b"},
		{base: "https://example.org/fhir/", want: "https://example.org/fhir/Patient?a=b"},
		{base: "https://example.org", want: "https://example.org/Patient?a=b"},
		{base: "", wantErr: "empty"},
		{base: "/fhir", wantErr: "absolute"},
		{base: "ftp://example.org/fhir", wantErr: "scheme http or https"},
		{base: "http:///fhir", wantErr: "no host"},
		{base: "https://user:pw@example.org/fhir", wantErr: "user info"},
		{base: "https://example.org/fhir?x=1", wantErr: "query"},
		{base: "https://example.org/fhir#x", wantErr: "fragment"},
	} {
		t.Run(tc.base, func(t *testing.T) {
			t.Parallel()
			c, err := New(Options{BaseURL: tc.base})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("New(%q) error = %v, want one mentioning %q", tc.base, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New(%q): %v", tc.base, err)
			}
			if got := c.SearchURL("Patient", "a=b"); got != tc.want {
				t.Errorf("SearchURL = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSearchURLKeepsTheEncodedQuery(t *testing.T) {
	t.Parallel()
	c, err := New(Options{BaseURL: "http://h:1/fhir"})
	if err != nil {
		t.Fatal(err)
	}
	q := "_lastUpdated=le2024-01-02T03%3A04%3A05.000%2B00%3A00&code=http%3A%2F%2Floinc.org%7C8302-2"
	if got, want := c.SearchURL("Observation", q), "http://h:1/fhir/Observation?"+q; got != want {
		t.Errorf("SearchURL = %q, want %q", got, want)
	}
	if got, want := c.SearchURL("Observation", ""), "http://h:1/fhir/Observation"; got != want {
		t.Errorf("SearchURL without query = %q, want %q", got, want)
	}
}

func TestNow(t *testing.T) {
	t.Parallel()
	sourceTime := time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		status   int
		date     []string // nil: no Date header
		want     time.Time
		local    bool // want the local clock
		wantKind fault.Kind
	}{
		{name: "date header", status: 200, date: []string{sourceTime.Format(http.TimeFormat)}, want: sourceTime},
		{name: "no date header", status: 200, local: true},
		{name: "unparsable date header", status: 200, date: []string{"yesterday"}, local: true},
		{name: "not 2xx", status: 500, wantKind: fault.Transient},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var path string
			c, _, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
				path = r.URL.Path
				w.Header()["Date"] = tc.date // nil suppresses the server's own Date
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(`{"resourceType":"CapabilityStatement"}`))
			})
			before := time.Now()
			got, err := c.Now(context.Background())
			if tc.wantKind != fault.Internal {
				if !fault.Is(err, tc.wantKind) {
					t.Fatalf("Now error = %v, want kind %v", err, tc.wantKind)
				}
				return
			}
			if err != nil {
				t.Fatalf("Now: %v", err)
			}
			if path != "/fhir/metadata" {
				t.Errorf("Now asked %q, want /fhir/metadata", path)
			}
			if tc.local {
				if got.Before(before) || got.After(time.Now()) {
					t.Errorf("Now = %v, want the local clock", got)
				}
				return
			}
			if !got.Equal(tc.want) || got.Location() != time.UTC {
				t.Errorf("Now = %v, want %v in UTC", got, tc.want)
			}
		})
	}
}

func TestNowUnreachable(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close() // nothing listens there any more
	c, err := New(Options{BaseURL: srv.URL, MaxAttempts: 2, BaseBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w := &waits{}
	c.sleep = w.sleep
	if _, err := c.Now(context.Background()); !fault.Is(err, fault.Transient) {
		t.Fatalf("Now error = %v, want transient", err)
	}
	if n := len(w.list()); n != 1 {
		t.Errorf("retried %d times, want 1 (MaxAttempts 2)", n)
	}
}

const capabilityStatement = `{
  "resourceType": "CapabilityStatement",
  "status": "active",
  "rest": [
    {"mode": "client", "resource": [{"type": "ClientOnly", "interaction": [{"code": "search-type"}]}]},
    {"mode": "server", "resource": [
      {"type": "Patient", "interaction": [{"code": "read"}, {"code": "search-type"}]},
      {"type": "Binary", "interaction": [{"code": "read"}]},
      {"type": "Observation"},
      {"type": "Encounter", "interaction": [{"code": "search-type"}], "searchParam": [{"name": "_lastUpdated", "type": "date"}]},
      {"type": "Patient", "interaction": [{"code": "search-type"}]}
    ]},
    {"mode": "server", "resource": [{"type": "Condition", "interaction": [{"code": "search-type"}]}, {"type": "Observation"}]}
  ]
}`

func TestTypes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		body     string
		want     []string
		wantKind fault.Kind
	}{
		{name: "searchable server resources", body: capabilityStatement, want: []string{"Patient", "Observation", "Encounter", "Condition"}},
		{name: "not a CapabilityStatement", body: `{"resourceType":"OperationOutcome"}`, wantKind: fault.Permanent},
		{name: "invalid JSON", body: `{"resourceType":`, wantKind: fault.Transient}, // cut short
		{name: "wrong shape", body: `{"resourceType":"CapabilityStatement","rest":{}}`, wantKind: fault.Permanent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, _, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/fhir/metadata" {
					http.NotFound(w, r)
					return
				}
				_, _ = w.Write([]byte(tc.body))
			})
			got, err := c.Types(context.Background())
			if tc.wantKind != fault.Internal {
				if !fault.Is(err, tc.wantKind) {
					t.Fatalf("Types error = %v, want kind %v", err, tc.wantKind)
				}
				return
			}
			if err != nil {
				t.Fatalf("Types: %v", err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("Types = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestSearchParams proves the engine learns which compartment parameters the
// source supports, so that it can warn about the ones it cannot search.
func TestSearchParams(t *testing.T) {
	t.Parallel()
	c, _, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(capabilityStatement))
	})
	got, err := c.SearchParams(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"Encounter": {"_lastUpdated"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("SearchParams = %v, want %v (server mode only, types without a list absent)", got, want)
	}
}

func TestRead(t *testing.T) {
	t.Parallel()
	const group = `{"resourceType":"Group","id":"g-1","member":[]}`
	for _, tc := range []struct {
		name     string
		id       string
		status   int
		wantKind fault.Kind
		wantHits int32
	}{
		{name: "found", id: "g-1", status: 200, wantHits: 1},
		{name: "404", id: "g-1", status: 404, wantKind: fault.NotFound, wantHits: 1},
		{name: "410 deleted", id: "g-1", status: 410, wantKind: fault.NotFound, wantHits: 1},
		{name: "403", id: "g-1", status: 403, wantKind: fault.Forbidden, wantHits: 1},
		{name: "invalid id is not sent", id: "../metadata", wantKind: fault.Invalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var hits atomic.Int32
			c, _, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				if r.URL.Path != "/fhir/Group/g-1" {
					t.Errorf("read %q, want /fhir/Group/g-1", r.URL.Path)
				}
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(group))
			})
			got, err := c.Read(context.Background(), "Group", tc.id)
			if hits.Load() != tc.wantHits {
				t.Errorf("source asked %d times, want %d", hits.Load(), tc.wantHits)
			}
			if tc.wantKind != fault.Internal {
				if !fault.Is(err, tc.wantKind) {
					t.Fatalf("Read error = %v, want kind %v", err, tc.wantKind)
				}
				return
			}
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if string(got) != group {
				t.Errorf("Read = %s, want %s", got, group)
			}
		})
	}
}

func TestCount(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		query     string
		body      string
		wantQuery string
		want      int64
		wantKind  fault.Kind
	}{
		{
			name:      "summary count added, query kept as encoded",
			query:     "_lastUpdated=le2024-01-02T03%3A04%3A05.000%2B00%3A00&code=a%2Cb",
			body:      `{"resourceType":"Bundle","type":"searchset","total":1234}`,
			wantQuery: "_lastUpdated=le2024-01-02T03%3A04%3A05.000%2B00%3A00&code=a%2Cb&_summary=count",
			want:      1234,
		},
		{
			name:      "_count and _summary replaced",
			query:     "_count=500&status=final&_summary=data",
			body:      `{"resourceType":"Bundle","total":0}`,
			wantQuery: "status=final&_summary=count",
			want:      0,
		},
		{name: "empty query", body: `{"resourceType":"Bundle","total":7}`, wantQuery: "_summary=count", want: 7},
		{name: "no total", body: `{"resourceType":"Bundle","type":"searchset"}`, wantQuery: "_summary=count", wantKind: fault.Permanent},
		{name: "not a Bundle", body: `{"resourceType":"OperationOutcome"}`, wantQuery: "_summary=count", wantKind: fault.Permanent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, _, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/fhir/Observation" || r.URL.RawQuery != tc.wantQuery {
					t.Errorf("asked %s?%s, want /fhir/Observation?%s", r.URL.Path, r.URL.RawQuery, tc.wantQuery)
				}
				_, _ = w.Write([]byte(tc.body))
			})
			got, err := c.Count(context.Background(), "Observation", tc.query)
			if tc.wantKind != fault.Internal {
				if !fault.Is(err, tc.wantKind) {
					t.Fatalf("Count error = %v, want kind %v", err, tc.wantKind)
				}
				return
			}
			if err != nil {
				t.Fatalf("Count: %v", err)
			}
			if got != tc.want {
				t.Errorf("Count = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestEveryRequestCarriesHeadersAndToken(t *testing.T) {
	t.Parallel()
	var tokenCalls atomic.Int32
	type seen struct{ accept, auth, agent string }
	var mu sync.Mutex
	var got []seen
	c, srv, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, seen{r.Header.Get("Accept"), r.Header.Get("Authorization"), r.Header.Get("User-Agent")})
		mu.Unlock()
		switch r.URL.Path {
		case "/fhir/metadata":
			_, _ = w.Write([]byte(capabilityStatement))
		case "/fhir/Patient/p1":
			_, _ = w.Write([]byte(`{"resourceType":"Patient","id":"p1"}`))
		default:
			if r.URL.Query().Get("_summary") == "count" {
				_, _ = w.Write([]byte(`{"resourceType":"Bundle","total":1}`))
				return
			}
			_, _ = w.Write([]byte(`{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","id":"p1"}}]}`))
		}
	}, func(o *Options) {
		o.UserAgent = "bulkexport-test/1"
		o.Token = tokenFunc(func(context.Context) (string, error) {
			tokenCalls.Add(1)
			return "secret-token", nil
		})
	})
	ctx := context.Background()
	if _, err := c.Now(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Types(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(ctx, "Patient", "p1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Count(ctx, "Patient", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Page(ctx, srv.URL+"/fhir/Patient?_count=10", func(export.Entry) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 5 || tokenCalls.Load() != 5 {
		t.Fatalf("%d requests and %d token calls, want 5 of each", len(got), tokenCalls.Load())
	}
	for i, s := range got {
		if s != (seen{"application/fhir+json", "Bearer secret-token", "bulkexport-test/1"}) {
			t.Errorf("request %d carried %+v", i, s)
		}
	}
}

func TestTokenFailureSendsNothing(t *testing.T) {
	t.Parallel()
	var hits atomic.Int32
	c, _, _ := setup(t, func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }, func(o *Options) {
		o.Token = tokenFunc(func(context.Context) (string, error) { return "", errors.New("no managed identity") })
	})
	_, err := c.Now(context.Background())
	if !fault.Is(err, fault.Unavailable) || !strings.Contains(err.Error(), "no managed identity") {
		t.Fatalf("Now error = %v, want unavailable with the credential's reason", err)
	}
	if hits.Load() != 0 {
		t.Errorf("the source was asked %d times without a token", hits.Load())
	}
}

func TestRefusedIdentityNeverLeaksTheToken(t *testing.T) {
	t.Parallel()
	c, _, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/fhir+json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"login","diagnostics":"Authentication failed: token audience is wrong"}]}`))
	}, func(o *Options) {
		o.Token = tokenFunc(func(context.Context) (string, error) { return "secret-token", nil })
	})
	_, err := c.Count(context.Background(), "Patient", "")
	if !fault.Is(err, fault.Forbidden) {
		t.Fatalf("Count error = %v, want forbidden", err)
	}
	msg := err.Error()
	for _, want := range []string{"refused our identity", "401", "GET /fhir/Patient", "token audience is wrong"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	if strings.Contains(msg, "secret-token") {
		t.Errorf("error %q carries the token", msg)
	}
}

func TestRedirectsStayAtTheSource(t *testing.T) {
	t.Parallel()
	var foreignAuth atomic.Value
	foreign := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		foreignAuth.Store(r.Header.Get("Authorization"))
		_, _ = w.Write([]byte(capabilityStatement))
	}))
	t.Cleanup(foreign.Close)
	c, _, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fhir/metadata":
			http.Redirect(w, r, foreign.URL+"/metadata", http.StatusFound)
		case "/fhir/Patient/moved":
			http.Redirect(w, r, "/fhir/Patient/p1", http.StatusMovedPermanently)
		case "/fhir/Patient/away":
			http.Redirect(w, r, "/admin/secret", http.StatusFound)
		case "/admin/secret":
			t.Errorf("a redirect outside the base path was followed")
		case "/fhir/Patient/p1":
			if r.Header.Get("Authorization") != "Bearer secret-token" {
				t.Errorf("same-origin redirect lost the token")
			}
			_, _ = w.Write([]byte(`{"resourceType":"Patient","id":"p1"}`))
		}
	}, func(o *Options) {
		o.HTTPClient = &http.Client{} // the caller's own client is held to the rule too
		o.Token = tokenFunc(func(context.Context) (string, error) { return "secret-token", nil })
	})
	if _, err := c.Read(context.Background(), "Patient", "moved"); err != nil {
		t.Errorf("same-origin redirect: %v", err)
	}
	if _, err := c.Read(context.Background(), "Patient", "away"); !fault.Is(err, fault.Permanent) || !strings.Contains(err.Error(), "outside its base path /fhir;") {
		t.Errorf("redirect to /admin/secret: %v, want a permanent refusal", err)
	}
	_, err := c.Now(context.Background())
	if !fault.Is(err, fault.Permanent) || !strings.Contains(err.Error(), "never sent elsewhere") {
		t.Fatalf("Now error = %v, want a permanent refusal of the redirect", err)
	}
	if v := foreignAuth.Load(); v != nil {
		t.Errorf("the foreign host was asked (Authorization %q)", v)
	}
}
