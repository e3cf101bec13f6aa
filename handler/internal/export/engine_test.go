package export_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/memstore"
)

var t0 = time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)

type bundle struct {
	engine *Engine
	store  *memstore.Store
	queue  *memstore.Queue
	blobs  Blobs
	source *fakeSource
}

func setup(t *testing.T, set Settings, wrapBlobs func(Blobs) Blobs) *bundle {
	t.Helper()
	b := &bundle{store: memstore.NewStore(), queue: memstore.NewQueue(nil), source: newFakeSource(t0.Add(time.Hour))}
	b.blobs = memstore.NewBlobs()
	if wrapBlobs != nil {
		b.blobs = wrapBlobs(b.blobs)
	}
	if set.MaxFileBytes == 0 {
		set = DefaultSettings()
	}
	b.engine = New(b.store, b.queue, b.blobs, b.source, set, nil)
	return b
}

// drain delivers queue messages to the engine until the queue is empty,
// acting on each outcome as the queue adapters do (delete, redeliver at
// once, poison), and returns how many deliveries it made.
func (b *bundle) drain(t *testing.T, maxAttempts int) (deliveries int) {
	t.Helper()
	ctx := context.Background()
	for range 100000 {
		ds, err := b.queue.Receive(ctx, 1, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 0 {
			return deliveries
		}
		deliveries++
		d := ds[0]
		var msg Message
		if err := json.Unmarshal([]byte(d.Text), &msg); err != nil {
			t.Fatal(err)
		}
		final := d.DequeueCount >= int64(maxAttempts)
		out := b.engine.Process(ctx, msg, Attempt{Number: int(d.DequeueCount), Final: final})
		switch out.Action {
		case Settle:
			err = b.queue.Delete(ctx, d)
		case Retry:
			if final {
				t.Fatalf("%s: Process asked for a retry after the last delivery (%v)", msg.Item, out.Cause)
			}
			err = b.queue.Extend(ctx, &d, 0)
		case Poison:
			if !final {
				t.Fatalf("%s: Process poisoned the message before its last delivery (%v)", msg.Item, out.Cause)
			}
			err = b.queue.Poison(ctx, d)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("queue never drained")
	return deliveries
}

// export kicks off req, drains the queue and returns the status.
func (b *bundle) export(t *testing.T, req Request, maxAttempts int) *Status {
	t.Helper()
	if req.Container == "" {
		req.Container = "bulk-export"
	}
	job, err := b.engine.KickOff(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	b.drain(t, maxAttempts)
	st, err := b.engine.Status(context.Background(), job.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// lines downloads every output file and returns its lines by type,
// checking counts and the size limit on the way.
func (b *bundle) lines(t *testing.T, st *Status, maxBytes int64) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, f := range st.Output {
		rc, size, err := b.engine.OpenFile(context.Background(), st.Job.ID, "", f.Name)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(rc)
		rc.Close()
		if int64(len(data)) != size {
			t.Errorf("%s: size %d but %d bytes read", f.Name, size, len(data))
		}
		if maxBytes > 0 && size > maxBytes {
			lines := bytes.Count(data, []byte("\n"))
			if lines != 1 {
				t.Errorf("%s is %d bytes, over the %d limit, with %d lines", f.Name, size, maxBytes, lines)
			}
		}
		if len(data) > 0 && data[len(data)-1] != '\n' {
			t.Errorf("%s does not end with a newline", f.Name)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, 1<<24)
		var n int64
		for sc.Scan() {
			n++
			line := sc.Text()
			if !json.Valid([]byte(line)) {
				t.Fatalf("%s line %d is not JSON: %.80s", f.Name, n, line)
			}
			if !strings.Contains(line, `"resourceType":"`+f.Type+`"`) {
				t.Fatalf("%s line %d is not a %s", f.Name, n, f.Type)
			}
			out[f.Type] = append(out[f.Type], line)
		}
		if n != f.Count {
			t.Errorf("%s: manifest count %d, file has %d lines", f.Name, f.Count, n)
		}
	}
	return out
}

// wantExactly checks that got holds exactly the source's resources of each
// type (compacted), each once.
func wantExactly(t *testing.T, got map[string][]string, want map[string][]string) {
	t.Helper()
	for typ, w := range want {
		g := append([]string(nil), got[typ]...)
		w = append([]string(nil), w...)
		sort.Strings(g)
		sort.Strings(w)
		if strings.Join(g, "\n") != strings.Join(w, "\n") {
			t.Errorf("%s: got %d resources, want %d (duplicates or losses)", typ, len(g), len(w))
		}
	}
	for typ := range got {
		if _, ok := want[typ]; !ok {
			t.Errorf("unexpected type %s in output (%d resources)", typ, len(got[typ]))
		}
	}
}

func compact(s string) string {
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(s)); err != nil {
		panic(err)
	}
	return b.String()
}

// population adds n patients, each with m observations, and a Group of all
// patients, and returns the expected lines by type.
func population(s *fakeSource, n, m int) map[string][]string {
	want := map[string][]string{}
	for p := range n {
		pid := fmt.Sprintf("p%03d", p)
		r := resource("Patient", pid, t0.Add(time.Duration(p)*time.Minute), `"gender":"female"`)
		s.add(r)
		want["Patient"] = append(want["Patient"], compact(r))
		for o := range m {
			status := "final"
			if o%3 == 0 {
				status = "preliminary"
			}
			r := resource("Observation", fmt.Sprintf("o%03d-%02d", p, o), t0.Add(time.Duration(p*m+o)*time.Second),
				fmt.Sprintf(`"status":%q,"subject":{"reference":"Patient/%s"},"valueString":"%s"`, status, pid, strings.Repeat("x", 100)))
			s.add(r)
			want["Observation"] = append(want["Observation"], compact(r))
		}
	}
	var members []string
	for p := range n {
		members = append(members, fmt.Sprintf(`{"entity":{"reference":"Patient/p%03d"}}`, p))
	}
	s.add(resource("Group", "g1", t0, `"type":"person","actual":true,"member":[`+strings.Join(members, ",")+`]`))
	return want
}

func TestSystemExportWritesEveryResourceOnce(t *testing.T) {
	b := setup(t, Settings{}, nil)
	want := population(b.source, 5, 7)
	want["Group"] = []string{compact(string(b.source.data["Group"][0].json))}
	st := b.export(t, Request{Level: LevelSystem}, 5)
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	wantExactly(t, b.lines(t, st, 0), want)
	if st.Done != 41 || !st.TotalKnown || st.Total != 41 {
		t.Errorf("progress %d of %d (known %v), want 41 of 41", st.Done, st.Total, st.TotalKnown)
	}
}

func TestRolloverNeverSplitsALineOrPassesTheLimit(t *testing.T) {
	set := DefaultSettings()
	set.MaxFileBytes, set.BlockBytes, set.PageSize = 2000, 700, 4
	b := setup(t, set, nil)
	want := population(b.source, 4, 10)
	big := resource("Observation", "huge", t0, `"subject":{"reference":"Patient/p000"},"valueString":"`+strings.Repeat("y", 5000)+`"`)
	b.source.add(big)
	want["Observation"] = append(want["Observation"], compact(big))
	st := b.export(t, Request{Level: LevelSystem, Types: []string{"Observation", "Patient"}}, 5)
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	got := b.lines(t, st, set.MaxFileBytes)
	delete(want, "Group")
	wantExactly(t, got, want)
	files := 0
	for _, f := range st.Output {
		if f.Type == "Observation" {
			files++
		}
	}
	if files < 5 {
		t.Errorf("Observation went into %d files; with a 2000-byte limit it needs many", files)
	}
}

func TestSinceAndTransactionTimeBoundTheData(t *testing.T) {
	b := setup(t, Settings{}, nil)
	old := resource("Patient", "old", t0, "")
	mid := resource("Patient", "mid", t0.Add(30*time.Minute), "")
	late := resource("Patient", "late", b.source.now.Add(time.Minute), "") // after the transaction time
	for _, r := range []string{old, mid, late} {
		b.source.add(r)
	}
	since := t0.Add(time.Minute)
	st := b.export(t, Request{Level: LevelSystem, Since: &since}, 5)
	wantExactly(t, b.lines(t, st, 0), map[string][]string{"Patient": {compact(mid)}})
	if !st.Job.TransactionTime.Before(b.source.now) {
		t.Errorf("transaction time %v is not before the source clock %v", st.Job.TransactionTime, b.source.now)
	}
}

func TestGroupExportAcrossBatchesWritesSharedResourcesOnce(t *testing.T) {
	set := DefaultSettings()
	set.MemberBatch, set.PageSize = 2, 3
	b := setup(t, set, nil)
	want := population(b.source, 5, 3)
	// A Provenance-like multi-patient resource: a CareTeam naming patients of
	// two batches in an array subject would be found by both searches.
	shared := resource("Observation", "shared", t0, `"subject":[{"reference":"Patient/p000"},{"reference":"Patient/p004"}]`)
	b.source.add(shared)
	want["Observation"] = append(want["Observation"], compact(shared))
	st := b.export(t, Request{Level: LevelGroup, GroupID: "g1", Types: []string{"Observation", "Patient"}}, 5)
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	delete(want, "Group")
	wantExactly(t, b.lines(t, st, 0), want)
}

func TestTypeFilterQueriesAreORedWithoutDuplicates(t *testing.T) {
	b := setup(t, Settings{}, nil)
	population(b.source, 3, 6)
	st := b.export(t, Request{Level: LevelSystem, Types: []string{"Observation"}, TypeFilters: []TypeFilter{
		{Type: "Observation", Query: "status=final"},
		{Type: "Observation", Query: "status=final,preliminary"},
	}}, 5)
	got := b.lines(t, st, 0)
	if len(got["Observation"]) != 18 {
		t.Errorf("got %d Observations, want all 18 once", len(got["Observation"]))
	}
	st = b.export(t, Request{Level: LevelSystem, Types: []string{"Observation"}, TypeFilters: []TypeFilter{
		{Type: "Observation", Query: "status=preliminary"},
	}}, 5)
	if got := b.lines(t, st, 0); len(got["Observation"]) != 6 {
		t.Errorf("got %d preliminary Observations, want 6", len(got["Observation"]))
	}
}

// failingBlobs fails one chosen call with a transient error, like a storage
// hiccup or a process dying between two writes. failAt 0 never fails, and
// only counts the writes.
type failingBlobs struct {
	Blobs
	calls, failAt int
	afterCommit   bool // fail after the commit took effect, as a crash right after it would
	fired         bool // the failure was injected
}

func (f *failingBlobs) tick() error {
	f.calls++
	if f.calls == f.failAt {
		f.fired = true
		return fault.New(fault.Transient, "injected storage failure at call %d", f.calls)
	}
	return nil
}

func (f *failingBlobs) StageBlock(ctx context.Context, c, b string, n int, d []byte) error {
	if strings.HasPrefix(b, ".preflight/") { // kick-off's own probe: a failure there is the client's answer
		return f.Blobs.StageBlock(ctx, c, b, n, d)
	}
	if err := f.tick(); err != nil {
		return err
	}
	return f.Blobs.StageBlock(ctx, c, b, n, d)
}

func (f *failingBlobs) CommitBlocks(ctx context.Context, c, b string, n int, cond Condition) (string, error) {
	if strings.HasPrefix(b, ".preflight/") {
		return f.Blobs.CommitBlocks(ctx, c, b, n, cond)
	}
	err := f.tick()
	if err != nil && !f.afterCommit {
		return "", err
	}
	etag, cerr := f.Blobs.CommitBlocks(ctx, c, b, n, cond)
	if err != nil {
		return "", err
	}
	return etag, cerr
}

// With windows on, every window is an item of its own, checkpointed, fenced
// and repaired like any other, and a page read ahead is written only where a
// streamed one would be: the same failures neither lose nor repeat.
func TestAFailureAtAnyWriteNeitherLosesNorRepeats(t *testing.T) {
	for _, windows := range []int{0, 5} {
		t.Run(fmt.Sprintf("windows=%d", windows), func(t *testing.T) {
			set := DefaultSettings()
			set.MaxFileBytes, set.BlockBytes, set.PageSize = 1500, 500, 3
			set.WindowResources = windows
			run := func(t *testing.T, fb *failingBlobs) (*bundle, *Status, map[string][]string, int) {
				b := setup(t, set, func(inner Blobs) Blobs { fb.Blobs = inner; return fb })
				want := population(b.source, 3, 8)
				delete(want, "Group")
				job, err := b.engine.KickOff(context.Background(), Request{Level: LevelSystem, Types: []string{"Observation", "Patient"}, Container: "bulk-export"})
				if err != nil {
					t.Fatal(err)
				}
				deliveries := b.drain(t, 5)
				st, err := b.engine.Status(context.Background(), job.ID, "")
				if err != nil {
					t.Fatal(err)
				}
				return b, st, want, deliveries
			}
			// A clean run counts the writes, so that every case below fails one
			// that the export really makes.
			clean := &failingBlobs{}
			_, st, _, cleanDeliveries := run(t, clean)
			if st.Phase != Completed || clean.calls < 20 {
				t.Fatalf("clean run: phase %v, %d writes; want completed with many writes to fail", st.Phase, clean.calls)
			}
			if windows > 0 && st.ItemsTotal < 4 {
				t.Fatalf("clean run with windows of %d: %d items; the 24 Observations were not split", windows, st.ItemsTotal)
			}
			for i := range 2 * clean.calls {
				failAt, after := i/2+1, i%2 == 1 // after matters for commits only
				t.Run(fmt.Sprintf("fail at write %d of %d after=%v", failAt, clean.calls, after), func(t *testing.T) {
					fb := &failingBlobs{failAt: failAt, afterCommit: after}
					b, st, want, deliveries := run(t, fb)
					if !fb.fired {
						t.Fatalf("the export made %d writes and the failure at write %d never fired", fb.calls, failAt)
					}
					if deliveries <= cleanDeliveries {
						t.Errorf("%d deliveries, as many as a clean run: the injected failure was not seen", deliveries)
					}
					if st.Phase != Completed {
						t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
					}
					wantExactly(t, b.lines(t, st, set.MaxFileBytes), want)
				})
			}
		})
	}
}

func TestSourceFailuresAreRetriedThenFailTheJobWithTheCause(t *testing.T) {
	b := setup(t, Settings{}, nil)
	population(b.source, 2, 2)
	b.source.failures = []error{fault.New(fault.Transient, "source said 503")}
	st := b.export(t, Request{Level: LevelSystem, Types: []string{"Patient"}}, 5)
	if st.Phase != Completed {
		t.Fatalf("one transient failure was not retried: %v", st.Failure)
	}

	for range 10 {
		b.source.failures = append(b.source.failures, fault.New(fault.Transient, "source said 503"))
	}
	st = b.export(t, Request{Level: LevelSystem, Types: []string{"Patient"}}, 3)
	if st.Phase != Failed || !strings.Contains(st.Failure.Error(), "source said 503") || !strings.Contains(st.Failure.Error(), "gave up after 3 attempts") {
		t.Fatalf("phase %v failure %v; want failed naming the cause and the attempts", st.Phase, st.Failure)
	}
	if !fault.Is(st.Failure, fault.Transient) {
		t.Errorf("recorded failure has kind %v, want the cause's transient", fault.KindOf(st.Failure))
	}
	if p := b.queue.PoisonQueue().Pending(); len(p) != 1 || p[0].Item != "Patient" {
		t.Errorf("poison queue %+v, want the Patient message that ran out of deliveries", p)
	}

	b.source.failures = []error{fault.New(fault.Permanent, "source rejected _typeFilter: unknown parameter foo")}
	st = b.export(t, Request{Level: LevelSystem, Types: []string{"Patient"}}, 5)
	if st.Phase != Failed || !strings.Contains(st.Failure.Error(), "unknown parameter foo") {
		t.Fatalf("phase %v failure %v; want failed with the source's diagnostics", st.Phase, st.Failure)
	}
	if !fault.Is(st.Failure, fault.Permanent) {
		t.Errorf("recorded failure has kind %v, want permanent", fault.KindOf(st.Failure))
	}
	if p := b.queue.PoisonQueue().Pending(); len(p) != 1 {
		t.Errorf("a permanent failure went to the poison queue too: %+v", p)
	}
}

// denyAfterKickOff answers writes of export files as a storage account
// answers an identity that lost its data role mid-job.
type denyAfterKickOff struct{ Blobs }

func (d denyAfterKickOff) StageBlock(ctx context.Context, c, b string, n int, data []byte) error {
	if strings.HasPrefix(b, ".preflight/") {
		return d.Blobs.StageBlock(ctx, c, b, n, data)
	}
	return fault.New(fault.Forbidden, "403 AuthorizationPermissionMismatch")
}

func TestAStorageRefusalMidJobFailsAtOnceWithItsKind(t *testing.T) {
	b := setup(t, Settings{}, func(inner Blobs) Blobs { return denyAfterKickOff{inner} })
	population(b.source, 2, 2)
	st := b.export(t, Request{Level: LevelSystem, Types: []string{"Patient"}}, 5)
	if st.Phase != Failed || !fault.Is(st.Failure, fault.Forbidden) || !strings.Contains(st.Failure.Error(), "AuthorizationPermissionMismatch") {
		t.Fatalf("phase %v failure %v (kind %v); want failed, forbidden, with the storage error", st.Phase, st.Failure, fault.KindOf(st.Failure))
	}
	it, err := b.store.GetItem(context.Background(), st.Job.ID, "Patient")
	if err != nil {
		t.Fatal(err)
	}
	if it.Attempts != 1 {
		t.Errorf("the item ran %d times; a refusal that retrying cannot fix must fail it at once", it.Attempts)
	}
}

// A failure recorded before kinds were stored reads as permanent, with its code.
func TestAFailureRecordedWithoutAKindReadsAsPermanent(t *testing.T) {
	b := setup(t, Settings{}, nil)
	population(b.source, 1, 1)
	ctx := context.Background()
	job, err := b.engine.KickOff(ctx, Request{Level: LevelSystem, Container: "bulk-export"})
	if err != nil {
		t.Fatal(err)
	}
	plan, err := b.store.GetItem(ctx, job.ID, PlanItemID)
	if err != nil {
		t.Fatal(err)
	}
	plan.State, plan.Failure, plan.FailureCode, plan.FailureKind = ItemFailed, "source rejected the search", "too-costly", ""
	if err := b.store.UpdateItem(ctx, plan); err != nil {
		t.Fatal(err)
	}
	st, err := b.engine.Status(ctx, job.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase != Failed || !fault.Is(st.Failure, fault.Permanent) || fault.Code(st.Failure) != "too-costly" ||
		!strings.Contains(st.Failure.Error(), "source rejected the search") {
		t.Fatalf("phase %v failure %v (kind %v, code %s); want failed, permanent, too-costly", st.Phase, st.Failure, fault.KindOf(st.Failure), fault.Code(st.Failure))
	}
}

// flakyStore fails the next reads of one work item, as a storage outage
// that clears just after a delivery gave up would.
type flakyStore struct {
	Store
	mu    sync.Mutex
	item  string
	fails int
}

func (s *flakyStore) GetItem(ctx context.Context, jobID, itemID string) (*WorkItem, error) {
	s.mu.Lock()
	fail := itemID == s.item && s.fails > 0
	if fail {
		s.fails--
	}
	s.mu.Unlock()
	if fail {
		return nil, fault.New(fault.Transient, "table storage timed out reading %s", itemID)
	}
	return s.Store.GetItem(ctx, jobID, itemID)
}

// The last delivery of a message whose item could not even be read still
// ends the job as failed, instead of leaving it in progress.
func TestALastDeliveryThatCannotReadItsItemFailsTheJob(t *testing.T) {
	b := setup(t, Settings{}, nil)
	population(b.source, 2, 2)
	// Every delivery's read of the item fails; the read that records the
	// failure after the last one succeeds.
	const deliveries = 3
	flaky := &flakyStore{Store: b.store, item: "Patient", fails: deliveries}
	b.engine = New(flaky, b.queue, b.blobs, b.source, DefaultSettings(), nil)
	st := b.export(t, Request{Level: LevelSystem, Types: []string{"Patient"}}, deliveries)
	if flaky.fails != 0 {
		t.Fatalf("%d injected read failures were not used", flaky.fails)
	}
	if st.Phase != Failed || !strings.Contains(st.Failure.Error(), "table storage timed out") ||
		!strings.Contains(st.Failure.Error(), fmt.Sprintf("gave up after %d attempts", deliveries)) {
		t.Fatalf("phase %v failure %v; want failed with the read error after %d attempts", st.Phase, st.Failure, deliveries)
	}
	if p := b.queue.PoisonQueue().Pending(); len(p) != 1 || p[0].Item != "Patient" {
		t.Errorf("poison queue %+v, want the Patient message", p)
	}
}

// stoppingSource closes stop while it serves the nth page of typ, as a
// SIGTERM arriving while a worker is inside that page would.
type stoppingSource struct {
	*fakeSource
	typ   string
	n     int
	stop  chan struct{}
	pages int // pages of typ served
}

func (s *stoppingSource) Page(ctx context.Context, u string, visit func(Entry) error) (string, error) {
	if strings.HasPrefix(u, "fake:///"+s.typ+"?") {
		s.pages++
		if s.pages == s.n {
			close(s.stop)
		}
	}
	return s.fakeSource.Page(ctx, u, visit)
}

func TestAStopMidItemReleasesTheLeaseAndResumesExactlyElsewhere(t *testing.T) {
	set := DefaultSettings()
	set.MaxFileBytes, set.BlockBytes, set.PageSize = 2000, 700, 3
	b := setup(t, set, nil)
	want := map[string][]string{"Observation": population(b.source, 4, 10)["Observation"]}
	pages := (len(want["Observation"]) + set.PageSize - 1) / set.PageSize
	src := &stoppingSource{fakeSource: b.source, typ: "Observation", n: 5, stop: make(chan struct{})}
	b.engine = New(b.store, b.queue, b.blobs, src, set, nil)
	ctx := context.Background()
	job, err := b.engine.KickOff(ctx, Request{Level: LevelSystem, Types: []string{"Observation"}, Container: "bulk-export"})
	if err != nil {
		t.Fatal(err)
	}
	if out := b.engine.Process(ctx, Message{Job: job.ID, Item: PlanItemID}, Attempt{Number: 1}); out != Done() {
		t.Fatalf("plan: %v: %v", out, out.Cause)
	}
	ds, _ := b.queue.Receive(ctx, 32, time.Hour) // the plan's messages: this test delivers by hand
	for _, d := range ds {
		b.queue.Delete(ctx, d)
	}

	msg := Message{Job: job.ID, Item: "Observation"}
	if out := b.engine.Process(ctx, msg, Attempt{Number: 1, Stop: src.stop}); out != Done() {
		t.Fatalf("stopped delivery: %v: %v; want it settled after handing on", out, out.Cause)
	}
	if src.pages != src.n {
		t.Errorf("%d pages fetched; the stop came during page %d and must end paging at that page's end", src.pages, src.n)
	}
	it, err := b.store.GetItem(ctx, job.ID, "Observation")
	if err != nil {
		t.Fatal(err)
	}
	if it.State != ItemPending || it.LeaseOwner != "" || !it.LeaseUntil.IsZero() {
		t.Errorf("after the stop the item is %s, owned by %q until %v; want pending with the lease released", it.State, it.LeaseOwner, it.LeaseUntil)
	}
	if it.Cursor.Next == "" || it.Done != int64(src.n*set.PageSize) {
		t.Errorf("after the stop: cursor %+v, %d resources recorded; want the next page and the %d resources of the pages fetched",
			it.Cursor, it.Done, src.n*set.PageSize)
	}
	var committed int64
	for _, f := range it.Files {
		rc, _, err := b.blobs.Open(ctx, "bulk-export", job.ID+"/"+f.Name)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(rc)
		rc.Close()
		committed += int64(bytes.Count(data, []byte("\n")))
	}
	if committed != it.Done {
		t.Errorf("%d lines committed, %d recorded: the stop did not checkpoint what it wrote", committed, it.Done)
	}
	if p := b.queue.Pending(); len(p) != 1 || p[0] != msg {
		t.Fatalf("queue holds %+v after the stop, want one continuation message", p)
	}

	// Another instance takes the continuation at once: the lease is free.
	if out := b.engine.Process(ctx, msg, Attempt{Number: 1}); out != Done() {
		t.Fatalf("continuation: %v: %v; want it to resume at once", out, out.Cause)
	}
	b.drain(t, 5)
	if src.pages != pages {
		t.Errorf("%d Observation pages fetched in all, want %d: a resumed item fetches each page once", src.pages, pages)
	}
	st, err := b.engine.Status(ctx, job.ID, "")
	if err != nil || st.Phase != Completed {
		t.Fatalf("phase %v (%v), failure %v", st.Phase, err, st.Failure)
	}
	wantExactly(t, b.lines(t, st, set.MaxFileBytes), want)
}

func TestCancelDeletesFilesAndHidesTheJob(t *testing.T) {
	b := setup(t, Settings{}, nil)
	population(b.source, 2, 2)
	st := b.export(t, Request{Level: LevelSystem}, 5)
	ctx := context.Background()
	if err := b.engine.Cancel(ctx, st.Job.ID, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := b.engine.Status(ctx, st.Job.ID, ""); !fault.Is(err, fault.NotFound) {
		t.Errorf("status after cancel: %v, want not found", err)
	}
	if err := b.engine.Cancel(ctx, st.Job.ID, ""); !fault.Is(err, fault.NotFound) {
		t.Errorf("second cancel: %v, want not found", err)
	}
	for _, f := range st.Output {
		if _, _, err := b.blobs.Open(ctx, "bulk-export", st.Job.ID+"/"+f.Name); !fault.Is(err, fault.NotFound) {
			t.Errorf("%s survived the cancel: %v", f.Name, err)
		}
	}
}

func TestUnknownGroupIsNotFoundAtKickOff(t *testing.T) {
	b := setup(t, Settings{}, nil)
	_, err := b.engine.KickOff(context.Background(), Request{Level: LevelGroup, GroupID: "nope", Container: "bulk-export"})
	if !fault.Is(err, fault.NotFound) {
		t.Fatalf("got %v, want not found", err)
	}
}

func TestLenientWarningsBecomeAnErrorFile(t *testing.T) {
	b := setup(t, Settings{}, nil)
	population(b.source, 1, 1)
	st := b.export(t, Request{Level: LevelSystem, Warnings: []string{"parameter organizeOutputBy is not supported and was ignored"}}, 5)
	if len(st.Errors) != 1 || st.Errors[0].Count != 1 {
		t.Fatalf("errors %+v, want one file with one OperationOutcome", st.Errors)
	}
	rc, _, err := b.engine.OpenFile(context.Background(), st.Job.ID, "", st.Errors[0].Name)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(rc)
	if !bytes.Contains(data, []byte(`"resourceType":"OperationOutcome"`)) || !bytes.Contains(data, []byte("organizeOutputBy")) {
		t.Errorf("error file %s", data)
	}
}

// gatedSource holds the first page fetched for one type until the test lets
// it go, so that a second delivery of the same message is made while the
// first is certainly inside a page, holding its lease.
type gatedSource struct {
	*fakeSource
	typ     string
	once    sync.Once
	entered chan struct{} // closed when the held page was asked for
	release chan struct{} // close to let the held page proceed
}

func newGatedSource(s *fakeSource, typ string) *gatedSource {
	return &gatedSource{fakeSource: s, typ: typ, entered: make(chan struct{}), release: make(chan struct{})}
}

func (s *gatedSource) Page(ctx context.Context, u string, visit func(Entry) error) (string, error) {
	if strings.HasPrefix(u, "fake:///"+s.typ+"?") {
		hold := false
		s.once.Do(func() { hold = true })
		if hold {
			close(s.entered)
			<-s.release
		}
	}
	return s.fakeSource.Page(ctx, u, visit)
}

func (s *fakeSource) pages() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// overlapSetup plans an export of Observation and Patient whose first
// Observation page is held, and returns the bundle, the job and the gate.
func overlapSetup(t *testing.T, clock Clock) (*bundle, *Job, *gatedSource, map[string][]string) {
	t.Helper()
	set := DefaultSettings()
	set.MaxFileBytes, set.BlockBytes, set.PageSize = 3000, 1000, 5
	b := setup(t, set, nil)
	want := population(b.source, 4, 10)
	delete(want, "Group")
	gate := newGatedSource(b.source, "Observation")
	b.engine = New(b.store, b.queue, b.blobs, gate, set, clock)
	ctx := context.Background()
	job, err := b.engine.KickOff(ctx, Request{Level: LevelSystem, Types: []string{"Observation", "Patient"}, Container: "bulk-export"})
	if err != nil {
		t.Fatal(err)
	}
	if out := b.engine.Process(ctx, Message{Job: job.ID, Item: PlanItemID}, Attempt{Number: 1}); out != Done() {
		t.Fatalf("plan: %v: %v", out, out.Cause)
	}
	return b, job, gate, want
}

// finish delivers the Patient item, then checks the export is complete and exact.
func (b *bundle) finish(t *testing.T, job *Job, want map[string][]string) {
	t.Helper()
	ctx := context.Background()
	if out := b.engine.Process(ctx, Message{Job: job.ID, Item: "Patient"}, Attempt{Number: 1}); out != Done() {
		t.Fatalf("Patient: %v: %v", out, out.Cause)
	}
	st, err := b.engine.Status(ctx, job.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	wantExactly(t, b.lines(t, st, 3000), want)
}

func TestASecondDeliveryWhileTheFirstRunsStepsBack(t *testing.T) {
	b, job, gate, want := overlapSetup(t, nil)
	ctx := context.Background()
	msg := Message{Job: job.ID, Item: "Observation"}
	first := make(chan Outcome, 1)
	go func() { first <- b.engine.Process(ctx, msg, Attempt{Number: 1}) }()
	<-gate.entered // the first delivery holds the lease and is inside a page

	before := b.source.pages()
	if out := b.engine.Process(ctx, msg, Attempt{Number: 2}); out.Action != Retry {
		t.Errorf("second delivery during the first: %v, want it delivered again later", out)
	}
	if out := b.engine.Process(ctx, msg, Attempt{Number: 5, Final: true}); out != Done() {
		t.Errorf("last delivery during the first: %v, want it dropped (the owner is alive)", out)
	}
	if n := b.source.pages() - before; n != 0 {
		t.Errorf("the overlapping deliveries fetched %d pages; they must not touch the item", n)
	}
	close(gate.release)
	if out := <-first; out != Done() {
		t.Fatalf("first delivery: %v: %v", out, out.Cause)
	}
	b.finish(t, job, want)
}

// A first delivery that stalls inside a page past its lease loses the item
// to a second one, which finishes it; when the first wakes up, every write
// it tries is fenced off, so the files are exactly the second's.
func TestAStalledFirstDeliveryCannotWriteAfterASecondTookOver(t *testing.T) {
	var mu sync.Mutex
	now := t0
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	b, job, gate, want := overlapSetup(t, clock)
	ctx := context.Background()
	msg := Message{Job: job.ID, Item: "Observation"}
	first := make(chan Outcome, 1)
	go func() { first <- b.engine.Process(ctx, msg, Attempt{Number: 1}) }()
	<-gate.entered

	mu.Lock()
	now = now.Add(DefaultSettings().Lease + time.Second) // the first's lease lapses while it is stalled
	mu.Unlock()
	if out := b.engine.Process(ctx, msg, Attempt{Number: 2}); out != Done() {
		t.Fatalf("second delivery after the lease lapsed: %v: %v; want it to take over and finish", out, out.Cause)
	}
	it, err := b.store.GetItem(ctx, job.ID, "Observation")
	if err != nil || it.State != ItemDone {
		t.Fatalf("after the second delivery the item is %+v, %v; want done", it, err)
	}
	before := b.source.pages()
	close(gate.release)
	out := <-first
	if b.source.pages() == before {
		t.Fatal("the stalled delivery did not go on after it was released; the test proves nothing")
	}
	if out.Action == Poison || (out.Action == Settle && out.Cause != nil) {
		t.Errorf("stalled delivery: %v: %v; a lost race must not fail the job", out, out.Cause)
	}
	b.finish(t, job, want)
}

func TestExpiredNextLinksResumeWithoutLossOrRepeatsAcrossTies(t *testing.T) {
	set := DefaultSettings()
	set.PageSize = 4
	b := setup(t, set, nil)
	// 30 Observations, many sharing one instant, so that page boundaries
	// fall inside runs of equal lastUpdated values.
	want := map[string][]string{}
	for i := range 30 {
		at := t0.Add(time.Duration(i/7) * time.Minute) // runs of 7 ties
		r := resource("Observation", fmt.Sprintf("o%02d", (i*11)%30), at, `"status":"final"`)
		b.source.add(r)
		want["Observation"] = append(want["Observation"], compact(r))
	}
	b.source.expireAfter = 3 // after the first pages every next link has expired
	st := b.export(t, Request{Level: LevelSystem, Types: []string{"Observation"}}, 5)
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	wantExactly(t, b.lines(t, st, 0), want)
}

// forbiddenBlobs answers every write as a storage account would to an
// identity without a data role.
type forbiddenBlobs struct{ Blobs }

func (forbiddenBlobs) StageBlock(ctx context.Context, c, b string, n int, d []byte) error {
	return fault.New(fault.Forbidden, "403 AuthorizationPermissionMismatch")
}

func TestKickOffRefusesADestinationItCannotWrite(t *testing.T) {
	b := setup(t, Settings{}, func(inner Blobs) Blobs { return forbiddenBlobs{inner} })
	population(b.source, 1, 1)
	_, err := b.engine.KickOff(context.Background(), Request{Level: LevelSystem, Container: "bulk-export"})
	if !fault.Is(err, fault.Forbidden) || !strings.Contains(err.Error(), "Storage Blob Data Contributor") {
		t.Fatalf("got %v, want a Forbidden error naming the missing role", err)
	}
	if msgs := b.queue.Pending(); len(msgs) != 0 {
		t.Errorf("a refused kick-off left %d messages", len(msgs))
	}
}

func TestAStalledItemIsEnqueuedAgainByTheWatchdogAndNotByReads(t *testing.T) {
	now := t0
	clock := func() time.Time { return now }
	b := setup(t, Settings{}, nil)
	b.engine = New(b.store, b.queue, b.blobs, b.source, DefaultSettings(), clock)
	want := population(b.source, 2, 3)
	delete(want, "Group")
	ctx := context.Background()
	job, err := b.engine.KickOff(ctx, Request{Level: LevelSystem, Types: []string{"Patient", "Observation"}, Container: "bulk-export"})
	if err != nil {
		t.Fatal(err)
	}
	// Lose the plan message, as a purge or a poisoning would.
	ds, _ := b.queue.Receive(ctx, 32, time.Minute)
	for _, d := range ds {
		b.queue.Delete(ctx, d)
	}
	if n, err := b.engine.RestartStalled(ctx, job.ID); n != 0 || err != nil || len(b.queue.Pending()) != 0 {
		t.Fatalf("before the stall period the watchdog must not act: %d restarted (%v), %d messages", n, err, len(b.queue.Pending()))
	}
	now = now.Add(DefaultSettings().StallAfter + time.Second)

	// Reads never write: neither a status nor a download attempt restarts it.
	plan, _ := b.store.GetItem(ctx, job.ID, PlanItemID)
	if st, err := b.engine.Status(ctx, job.ID, ""); err != nil || st.Phase != InProgress {
		t.Fatalf("status: %v, %v", st, err)
	}
	if _, _, err := b.engine.OpenFile(ctx, job.ID, "", "Patient-1.ndjson"); !fault.Is(err, fault.NotFound) {
		t.Fatalf("download of a running job: %v, want not found", err)
	}
	if after, _ := b.store.GetItem(ctx, job.ID, PlanItemID); after.ETag != plan.ETag || len(b.queue.Pending()) != 0 {
		t.Fatalf("a read changed the plan item or enqueued %d messages", len(b.queue.Pending()))
	}

	if n, err := b.engine.RestartStalled(ctx, job.ID); n != 1 || err != nil {
		t.Fatalf("watchdog restarted %d items (%v), want the plan", n, err)
	}
	if n, err := b.engine.RestartStalled(ctx, job.ID); n != 0 || err != nil { // a second poll must not enqueue again
		t.Fatalf("second watchdog run restarted %d items (%v), want none", n, err)
	}
	if n := len(b.queue.Pending()); n != 1 {
		t.Fatalf("watchdog enqueued %d messages, want 1", n)
	}
	b.drain(t, 5)
	st, err := b.engine.Status(ctx, job.ID, "")
	if err != nil || st.Phase != Completed {
		t.Fatalf("phase %v err %v failure %v", st.Phase, err, st.Failure)
	}
	wantExactly(t, b.lines(t, st, 0), want)
}
