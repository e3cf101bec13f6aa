package export_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	. "github.com/azfhir/bulkexport/handler/internal/export"
	"io"
	"sort"
	"strings"
	"testing"
	"time"

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
// redelivering failed ones at once, as a queue trigger would.
func (b *bundle) drain(t *testing.T, maxAttempts int) {
	t.Helper()
	ctx := context.Background()
	for range 100000 {
		ds, err := b.queue.Receive(ctx, 1, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 0 {
			return
		}
		d := ds[0]
		var msg Message
		if err := json.Unmarshal([]byte(d.Text), &msg); err != nil {
			t.Fatal(err)
		}
		final := d.DequeueCount >= int64(maxAttempts)
		err = b.engine.Process(ctx, msg, Attempt{Number: int(d.DequeueCount), Final: final})
		if err == nil || final {
			if err := b.queue.Delete(ctx, d); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if !fault.Is(err, fault.Transient) {
			t.Fatalf("Process returned a non-transient error %v before the last delivery", err)
		}
		if err := b.queue.Extend(ctx, &d, 0); err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("queue never drained")
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
	st, err := b.engine.Status(context.Background(), job.ID)
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
		rc, size, err := b.engine.OpenFile(context.Background(), st.Job.ID, f.Name)
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
// hiccup or a process dying between two writes.
type failingBlobs struct {
	Blobs
	calls, failAt int
	afterCommit   bool // fail after the commit took effect, as a crash right after it would
}

func (f *failingBlobs) tick() error {
	f.calls++
	if f.calls == f.failAt {
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

func TestAFailureAtAnyWriteNeitherLosesNorRepeats(t *testing.T) {
	for failAt := 1; failAt <= 60; failAt += 2 {
		after := failAt%4 == 3
		t.Run(fmt.Sprintf("fail at write %d after=%v", failAt, after), func(t *testing.T) {
			set := DefaultSettings()
			set.MaxFileBytes, set.BlockBytes, set.PageSize = 1500, 500, 3
			fb := &failingBlobs{failAt: failAt, afterCommit: after}
			b := setup(t, set, func(inner Blobs) Blobs { fb.Blobs = inner; return fb })
			want := population(b.source, 3, 8)
			delete(want, "Group")
			st := b.export(t, Request{Level: LevelSystem, Types: []string{"Observation", "Patient"}}, 5)
			if st.Phase != Completed {
				t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
			}
			wantExactly(t, b.lines(t, st, set.MaxFileBytes), want)
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
	if st.Phase != Failed || !strings.Contains(st.Failure.Error(), "source said 503") {
		t.Fatalf("phase %v failure %v; want failed naming the cause", st.Phase, st.Failure)
	}

	b.source.failures = []error{fault.New(fault.Permanent, "source rejected _typeFilter: unknown parameter foo")}
	st = b.export(t, Request{Level: LevelSystem, Types: []string{"Patient"}}, 5)
	if st.Phase != Failed || !strings.Contains(st.Failure.Error(), "unknown parameter foo") {
		t.Fatalf("phase %v failure %v; want failed with the source's diagnostics", st.Phase, st.Failure)
	}
}

func TestCancelDeletesFilesAndHidesTheJob(t *testing.T) {
	b := setup(t, Settings{}, nil)
	population(b.source, 2, 2)
	st := b.export(t, Request{Level: LevelSystem}, 5)
	ctx := context.Background()
	if err := b.engine.Cancel(ctx, st.Job.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := b.engine.Status(ctx, st.Job.ID); !fault.Is(err, fault.NotFound) {
		t.Errorf("status after cancel: %v, want not found", err)
	}
	if err := b.engine.Cancel(ctx, st.Job.ID); !fault.Is(err, fault.NotFound) {
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
	st := b.export(t, Request{Level: LevelSystem, Warnings: []string{"parameter _elements is not supported and was ignored"}}, 5)
	if len(st.Errors) != 1 || st.Errors[0].Count != 1 {
		t.Fatalf("errors %+v, want one file with one OperationOutcome", st.Errors)
	}
	rc, _, err := b.engine.OpenFile(context.Background(), st.Job.ID, st.Errors[0].Name)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(rc)
	if !bytes.Contains(data, []byte(`"resourceType":"OperationOutcome"`)) || !bytes.Contains(data, []byte("_elements")) {
		t.Errorf("error file %s", data)
	}
}

// slowSource delays every page, so that two invocations overlap.
type slowSource struct {
	*fakeSource
	delay time.Duration
}

func (s slowSource) Page(ctx context.Context, u string, visit func(Entry) error) (string, error) {
	time.Sleep(s.delay)
	return s.fakeSource.Page(ctx, u, visit)
}

func TestTheSameMessageDeliveredTwiceConcurrentlyWritesOnce(t *testing.T) {
	set := DefaultSettings()
	set.MaxFileBytes, set.BlockBytes, set.PageSize = 3000, 1000, 5
	b := setup(t, set, nil)
	want := population(b.source, 4, 10)
	delete(want, "Group")
	slow := slowSource{fakeSource: b.source, delay: 2 * time.Millisecond}
	b.engine = New(b.store, b.queue, b.blobs, slow, set, nil)
	ctx := context.Background()
	job, err := b.engine.KickOff(ctx, Request{Level: LevelSystem, Types: []string{"Observation", "Patient"}, Container: "bulk-export"})
	if err != nil {
		t.Fatal(err)
	}
	// Run the plan, then deliver every item message twice at once.
	if err := b.engine.Process(ctx, Message{Job: job.ID, Item: PlanItemID}, Attempt{Number: 1}); err != nil {
		t.Fatal(err)
	}
	for _, item := range []string{"Observation", "Patient"} {
		for round := 0; ; round++ {
			it, err := b.store.GetItem(ctx, job.ID, item)
			if err != nil {
				t.Fatal(err)
			}
			if it.State != ItemPending || round > 50 {
				break
			}
			errs := make(chan error, 2)
			for range 2 {
				go func() { errs <- b.engine.Process(ctx, Message{Job: job.ID, Item: item}, Attempt{Number: round + 1}) }()
			}
			<-errs
			<-errs
		}
	}
	st, err := b.engine.Status(ctx, job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	wantExactly(t, b.lines(t, st, set.MaxFileBytes), want)
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

func TestAStalledItemIsEnqueuedAgainByTheStatusWatchdog(t *testing.T) {
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
	if st, _ := b.engine.Status(ctx, job.ID); st.Phase != InProgress || len(b.queue.Pending()) != 0 {
		t.Fatalf("before the stall period the watchdog must not act: phase %v, %d messages", st.Phase, len(b.queue.Pending()))
	}
	now = now.Add(DefaultSettings().StallAfter + time.Second)
	if _, err := b.engine.Status(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := b.engine.Status(ctx, job.ID); err != nil { // a second poll must not enqueue again
		t.Fatal(err)
	}
	if n := len(b.queue.Pending()); n != 1 {
		t.Fatalf("watchdog enqueued %d messages, want 1", n)
	}
	b.drain(t, 5)
	st, err := b.engine.Status(ctx, job.ID)
	if err != nil || st.Phase != Completed {
		t.Fatalf("phase %v err %v failure %v", st.Phase, err, st.Failure)
	}
	wantExactly(t, b.lines(t, st, 0), want)
}
