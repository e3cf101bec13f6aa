package azstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/azfhir/bulkexport/handler/devstorage"
	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/storetest"
)

// The conformance suite runs on real storage (Azurite, or the account in
// AZURE_STORAGE_CONNECTION_STRING) when EXPORT_INTEGRATION=1. Each case gets
// its own table, queue or container, deleted afterwards.

func TestStore(t *testing.T) {
	a := integration(t)
	storetest.RunStore(t, func(t *testing.T) export.Store {
		name := "t" + suffix()
		if _, err := a.tables.CreateTable(t.Context(), name, nil); err != nil {
			t.Fatalf("create table %s: %v", name, err)
		}
		t.Cleanup(func() { _, _ = a.tables.DeleteTable(context.Background(), name, nil) })
		return &Store{table: a.tables.NewClient(name), name: name}
	})
}

func TestQueue(t *testing.T) {
	a := integration(t)
	storetest.RunQueue(t, func(t *testing.T) storetest.QueueHarness[Delivery] {
		q := newQueue(a.queues, "q-"+suffix())
		for _, name := range []string{q.name, q.PoisonQueue().name} {
			if _, err := a.queues.CreateQueue(t.Context(), name, nil); err != nil {
				t.Fatalf("create queue %s: %v", name, err)
			}
			t.Cleanup(func() { _, _ = a.queues.DeleteQueue(context.Background(), name, nil) })
		}
		return storetest.QueueHarness[Delivery]{Queue: q, Poison: q.PoisonQueue(), Wait: time.Sleep}
	})
}

func TestBlobs(t *testing.T) {
	a := integration(t)
	storetest.RunBlobs(t, func(t *testing.T) (storetest.Blobs, string) {
		name := "c-" + suffix()
		t.Cleanup(func() { _, _ = a.blobs.NewContainerClient(name).Delete(context.Background(), nil) })
		return a.Blobs(), name
	})
}

func TestEnsureInfrastructure(t *testing.T) {
	base := integration(t)
	a := *base
	a.table, a.queue = "t"+suffix(), "q-"+suffix()
	t.Cleanup(func() {
		ctx := context.Background()
		_, _ = a.tables.DeleteTable(ctx, a.table, nil)
		_, _ = a.queues.DeleteQueue(ctx, a.queue, nil)
		_, _ = a.queues.DeleteQueue(ctx, a.queue+PoisonSuffix, nil)
	})
	for i := range 2 {
		if err := a.EnsureInfrastructure(t.Context()); err != nil {
			t.Fatalf("EnsureInfrastructure #%d: %v", i+1, err)
		}
	}
	job := &export.Job{ID: "j1", State: export.JobActive}
	if err := a.Store().CreateJob(t.Context(), job); err != nil {
		t.Fatalf("CreateJob in the new table: %v", err)
	}
	for _, q := range []*Queue{a.Queue(), a.Queue().PoisonQueue()} {
		if err := q.Enqueue(t.Context(), export.Message{Job: "j1", Item: "plan"}); err != nil {
			t.Fatalf("Enqueue on %s: %v", q.name, err)
		}
	}
}

// TestMissingInfrastructure: without EnsureInfrastructure every call fails
// as a deployment error, not as "job not found".
func TestMissingInfrastructure(t *testing.T) {
	base := integration(t)
	a := *base
	a.table, a.queue = "t"+suffix(), "q-"+suffix()
	ctx := t.Context()
	_, err := a.Store().GetJob(ctx, "j")
	wantKind(t, err, fault.Internal, "GetJob without the table")
	_, err = a.Store().ListItems(ctx, "j")
	wantKind(t, err, fault.Internal, "ListItems without the table")
	wantKind(t, a.Queue().Enqueue(ctx, export.Message{Job: "j", Item: "plan"}), fault.Internal, "Enqueue without the queue")
	_, err = a.Queue().Receive(ctx, 1, time.Second)
	wantKind(t, err, fault.Internal, "Receive without the queue")
}

// integration skips unless EXPORT_INTEGRATION=1, and then fails if the
// storage account does not answer.
func integration(t *testing.T) *Account {
	t.Helper()
	if os.Getenv("EXPORT_INTEGRATION") != "1" {
		t.Skip("set EXPORT_INTEGRATION=1 and start Azurite (scripts/azurite/azurite.sh start) to run")
	}
	cs := os.Getenv("AZURE_STORAGE_CONNECTION_STRING")
	if cs == "" {
		cs = "UseDevelopmentStorage=true"
	}
	a, err := Open(t.Context(), Options{ConnectionString: cs})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := probe(ctx, a); err != nil {
		t.Fatalf("storage unreachable (start Azurite with scripts/azurite/azurite.sh start, "+
			"or set AZURE_STORAGE_CONNECTION_STRING): %v", err)
	}
	return a
}

func probe(ctx context.Context, a *Account) error {
	if _, err := a.tables.GetProperties(ctx, nil); err != nil {
		return fmt.Errorf("table service: %w", err)
	}
	if _, err := a.queues.GetServiceProperties(ctx, nil); err != nil {
		return fmt.Errorf("queue service: %w", err)
	}
	if _, err := a.blobs.GetProperties(ctx, nil); err != nil {
		return fmt.Errorf("blob service: %w", err)
	}
	return nil
}

// suffix makes names unique per run: lowercase hex, valid in table, queue
// and container names.
func suffix() string { return fmt.Sprintf("%016x", rand.Uint64()) }

func TestOpenOptions(t *testing.T) {
	cred := fakeCredential{}
	urls := Options{BlobURL: "https://a.blob.core.windows.net", QueueURL: "https://a.queue.core.windows.net",
		TableURL: "https://a.table.core.windows.net", Credential: cred}
	withCS := urls
	withCS.ConnectionString = devstorage.ConnectionString
	noCred := urls
	noCred.Credential = nil
	cases := []struct {
		name string
		o    Options
		ok   bool
	}{
		{"connection string", Options{ConnectionString: "UseDevelopmentStorage=true"}, true},
		{"urls and credential", urls, true},
		{"nothing", Options{}, false},
		{"both", withCS, false},
		{"urls without credential", noCred, false},
		{"bad table", Options{ConnectionString: devstorage.ConnectionString, Table: "export-jobs"}, false},
		{"bad queue", Options{ConnectionString: devstorage.ConnectionString, Queue: "Export"}, false},
		{"queue too long for -poison", Options{ConnectionString: devstorage.ConnectionString, Queue: strings.Repeat("q", 57)}, false},
		{"queue of 56", Options{ConnectionString: devstorage.ConnectionString, Queue: strings.Repeat("q", 56)}, true},
		{"malformed connection string", Options{ConnectionString: "nonsense"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, err := Open(t.Context(), c.o)
			if c.ok && (err != nil || a == nil) {
				t.Fatalf("Open: %v", err)
			}
			if !c.ok && !fault.Is(err, fault.Invalid) {
				t.Fatalf("Open = %v, want an invalid error", err)
			}
		})
	}
}

// TestCredentialOverHTTP checks that all three clients send the token to a
// plain-HTTP endpoint (Azurite with --oauth), which the SDKs refuse by default.
func TestCredentialOverHTTP(t *testing.T) {
	var mu sync.Mutex
	auth := map[string]string{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auth[strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 2)[0]] = r.Header.Get("Authorization")
		mu.Unlock()
		w.Header().Set("x-ms-error-code", "ResourceNotFound")
		w.WriteHeader(http.StatusNotFound)
	}))
	defer srv.Close()
	a, err := Open(t.Context(), Options{
		BlobURL: srv.URL + "/blob", QueueURL: srv.URL + "/queue", TableURL: srv.URL + "/table",
		Credential: fakeCredential{},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	_, err = a.Store().GetJob(ctx, "j")
	wantKind(t, err, fault.NotFound, "GetJob")
	wantKind(t, a.Queue().Enqueue(ctx, export.Message{Job: "j", Item: "plan"}), fault.NotFound, "Enqueue")
	_, _, err = a.Blobs().Open(ctx, "c", "b")
	wantKind(t, err, fault.NotFound, "Open")
	for _, svc := range []string{"table", "queue", "blob"} {
		if got := auth[svc]; got != "Bearer "+fakeToken {
			t.Errorf("%s service got Authorization %q, want the bearer token", svc, got)
		}
	}
}

const fakeToken = "t0k3n"

type fakeCredential struct{}

func (fakeCredential) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: fakeToken, ExpiresOn: time.Now().Add(time.Hour)}, nil
}

func TestKindOf(t *testing.T) {
	cases := []struct {
		err  error
		want fault.Kind
	}{
		{&azcore.ResponseError{StatusCode: 404, ErrorCode: "BlobNotFound"}, fault.NotFound},
		{&azcore.ResponseError{StatusCode: 409, ErrorCode: "EntityAlreadyExists"}, fault.Conflict},
		{&azcore.ResponseError{StatusCode: 412, ErrorCode: "UpdateConditionNotSatisfied"}, fault.Conflict},
		{&azcore.ResponseError{StatusCode: 403, ErrorCode: "AuthorizationPermissionMismatch"}, fault.Forbidden},
		{&azcore.ResponseError{StatusCode: 401}, fault.Forbidden},
		{&azcore.ResponseError{StatusCode: 400, ErrorCode: "InvalidBlockList"}, fault.Internal},
		{&azcore.ResponseError{StatusCode: 404, ErrorCode: "TableNotFound"}, fault.Internal},
		{&azcore.ResponseError{StatusCode: 404, ErrorCode: "QueueNotFound"}, fault.Internal},
		{&azcore.ResponseError{StatusCode: 408}, fault.Transient},
		{&azcore.ResponseError{StatusCode: 429}, fault.Transient},
		{&azcore.ResponseError{StatusCode: 503, ErrorCode: "ServerBusy"}, fault.Transient},
		{fmt.Errorf("call: %w", &net.OpError{Op: "dial", Err: errors.New("connection refused")}), fault.Transient},
		{context.DeadlineExceeded, fault.Transient},
		{errors.New("something else"), fault.Internal},
	}
	for _, c := range cases {
		err := wrap(c.err, "op")
		if got := fault.KindOf(err); got != c.want {
			t.Errorf("kind of %v = %s, want %s", c.err, got, c.want)
		}
		if !errors.Is(err, c.err) {
			t.Errorf("wrap(%v) lost the cause", c.err)
		}
	}
}

func TestLeaseError(t *testing.T) {
	for _, code := range []string{"PopReceiptMismatch", "MessageNotFound"} {
		err := leaseError(&azcore.ResponseError{StatusCode: 400, ErrorCode: code}, "delete")
		wantKind(t, err, fault.Conflict, code)
	}
	wantKind(t, leaseError(&azcore.ResponseError{StatusCode: 404, ErrorCode: "QueueNotFound"}, "delete"),
		fault.Internal, "QueueNotFound")
}

func TestSplitJoin(t *testing.T) {
	s := strings.Repeat("a€😀", 25_000) // 200,000 bytes of 1-, 3- and 4-byte runes
	chunks := split(s, chunkBytes)
	if len(chunks) != 7 {
		t.Errorf("%d chunks, want 7", len(chunks))
	}
	props := map[string]json.RawMessage{}
	for i, c := range chunks {
		if len(c) > chunkBytes || !utf8.ValidString(c) {
			t.Fatalf("chunk %d: %d bytes, valid UTF-8 %t", i, len(c), utf8.ValidString(c))
		}
		props[chunkName("Data", i)], _ = json.Marshal(c)
	}
	got, err := join(props, "Data")
	if err != nil || got != s {
		t.Fatalf("join gave %d bytes (%v), want the %d bytes split", len(got), err, len(s))
	}
}

func TestASCIIJSON(t *testing.T) {
	in := export.WorkItem{ID: "Patient", Failure: "é€😀\ufffd\"<>& \u2028 x"}
	raw, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	ascii := asciiJSON(raw)
	for i, c := range ascii {
		if c >= utf8.RuneSelf {
			t.Fatalf("byte %d of %s is not ASCII", i, ascii)
		}
	}
	var out export.WorkItem
	if err := json.Unmarshal(ascii, &out); err != nil || out.Failure != in.Failure {
		t.Fatalf("decoded %q (%v), want %q", out.Failure, err, in.Failure)
	}
}

func wantKind(t *testing.T, err error, kind fault.Kind, what string) {
	t.Helper()
	if got := fault.KindOf(err); err == nil || got != kind {
		t.Fatalf("%s: error %v (%s), want %s", what, err, got, kind)
	}
}
