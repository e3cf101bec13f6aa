package export_test

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	. "github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// windowsOf returns the work items of type typ, in id order, checking that
// they are windows that cover the job's range exactly: the first open below
// (no _since), each starting where the one before ends, the last ending at
// the transaction time.
func windowsOf(t *testing.T, b *bundle, job *Job, typ string) []*WorkItem {
	t.Helper()
	items, err := b.store.ListItems(context.Background(), job.ID)
	if err != nil {
		t.Fatal(err)
	}
	var out []*WorkItem
	for _, it := range items {
		if it.Type == typ {
			out = append(out, it)
		}
	}
	for i, it := range out {
		w := it.Window
		if w == nil {
			t.Fatalf("%s item %s has no window", typ, it.ID)
		}
		if want := fmt.Sprintf("%s.w%04d", typ, i+1); it.ID != want || w.N != i+1 {
			t.Errorf("item %d is %s (window %d), want %s", i, it.ID, w.N, want)
		}
		switch {
		case i == 0 && !w.After.IsZero():
			t.Errorf("%s: the first window starts after %v; it must be open below", it.ID, w.After)
		case i > 0 && !w.After.Equal(out[i-1].Window.Until):
			t.Errorf("%s starts after %v, but the window before ends at %v: a gap or an overlap", it.ID, w.After, out[i-1].Window.Until)
		}
		if !w.After.IsZero() && !w.Until.After(w.After) {
			t.Errorf("%s is empty: (%v, %v]", it.ID, w.After, w.Until)
		}
	}
	if n := len(out); n > 0 && !out[n-1].Window.Until.Equal(job.TransactionTime) {
		t.Errorf("the last window ends at %v, not at the transaction time %v", out[n-1].Window.Until, job.TransactionTime)
	}
	return out
}

var windowFile = regexp.MustCompile(`^([A-Za-z]+)(?:-w([0-9]{4}))?-([0-9]+)\.ndjson$`)

// checkManifestOrder checks that the manifest lists files by type, then
// window, then roll-over number.
func checkManifestOrder(t *testing.T, st *Status) {
	t.Helper()
	prev := ""
	for _, f := range st.Output {
		m := windowFile.FindStringSubmatch(f.Name)
		if m == nil {
			t.Fatalf("output file name %q is not <Type>[-wNNNN]-<n>.ndjson", f.Name)
		}
		key := fmt.Sprintf("%s/%s/%08s", m[1], m[2], m[3])
		if key <= prev {
			t.Errorf("manifest lists %s after a file that sorts later (%s then %s)", f.Name, prev, key)
		}
		prev = key
	}
}

func TestWindowsSplitALargeTypeAndWriteEveryResourceOnce(t *testing.T) {
	set := DefaultSettings()
	set.WindowResources, set.PageSize = 5, 2
	set.MaxFileBytes, set.BlockBytes = 800, 300 // several files per window
	b := setup(t, set, nil)
	want := population(b.source, 3, 8) // 24 Observations, one a second; 3 Patients
	delete(want, "Group")
	st := b.export(t, Request{Level: LevelSystem, Types: []string{"Observation", "Patient"}}, 5)
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	wantExactly(t, b.lines(t, st, set.MaxFileBytes), want)
	checkManifestOrder(t, st)

	windows := windowsOf(t, b, st.Job, "Observation")
	if len(windows) < 24/5 {
		t.Fatalf("Observation went into %d items; 24 resources with 5 a window need at least 5", len(windows))
	}
	var sum int64
	for _, w := range windows {
		if w.Done > 5 || w.Expected > 5 {
			t.Errorf("%s holds %d resources (counted %d); the limit is 5", w.ID, w.Done, w.Expected)
		}
		for _, f := range w.Files {
			if !strings.HasPrefix(f.Name, fmt.Sprintf("Observation-w%04d-", w.Window.N)) {
				t.Errorf("%s wrote %s, not a file of its own", w.ID, f.Name)
			}
		}
		sum += w.Done
	}
	if sum != 24 {
		t.Errorf("the windows wrote %d Observations, want 24", sum)
	}
	if p, err := b.store.GetItem(context.Background(), st.Job.ID, "Patient"); err != nil || p.Window != nil {
		t.Errorf("Patient (3 resources) was split or is missing: %+v, %v", p, err)
	}
	if st.ItemsTotal != len(windows)+1 || st.ItemsDone != st.ItemsTotal || st.Done != 27 || st.Total != 27 {
		t.Errorf("progress: %d of %d items, %d of %d resources; want every window counted and 27 of 27",
			st.ItemsDone, st.ItemsTotal, st.Done, st.Total)
	}
}

func TestAnInstantIsNeverSplitAcrossWindows(t *testing.T) {
	set := DefaultSettings()
	set.WindowResources, set.PageSize = 4, 3
	b := setup(t, set, nil)
	tie := t0.Add(10 * time.Minute)
	want := map[string][]string{}
	tied := map[string]bool{}
	for i := range 20 {
		at := t0.Add(time.Duration(i) * time.Minute)
		if i >= 6 && i < 18 { // 12 resources share one instant
			at = tie
		}
		r := resource("Observation", fmt.Sprintf("o%02d", i), at, `"status":"final"`)
		b.source.add(r)
		want["Observation"] = append(want["Observation"], compact(r))
		if at.Equal(tie) {
			tied[compact(r)] = true
		}
	}
	st := b.export(t, Request{Level: LevelSystem}, 5)
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	wantExactly(t, b.lines(t, st, 0), want)

	windows := windowsOf(t, b, st.Job, "Observation")
	if len(windows) < 3 {
		t.Fatalf("%d windows; 8 resources at other instants and 4 a window need more", len(windows))
	}
	holders := 0
	for _, w := range windows {
		lines := b.itemLines(t, st.Job, w)
		n := 0
		for _, l := range lines {
			if tied[l] {
				n++
			}
		}
		if n > 0 {
			holders++
			if n != len(tied) {
				t.Errorf("%s holds %d of the %d resources of one instant: the instant was split", w.ID, n, len(tied))
			}
			if len(lines) != n {
				t.Errorf("%s holds the %d resources of one instant and %d others; a window over its limit must hold one instant only",
					w.ID, n, len(lines)-n)
			}
		} else if w.Done > 4 {
			t.Errorf("%s holds %d resources over several instants; the limit is 4", w.ID, w.Done)
		}
	}
	if holders != 1 {
		t.Errorf("%d windows hold the tied resources, want exactly 1", holders)
	}
}

// itemLines reads every output line an item committed.
func (b *bundle) itemLines(t *testing.T, job *Job, it *WorkItem) []string {
	t.Helper()
	var out []string
	for _, f := range it.Files {
		rc, _, err := b.blobs.Open(context.Background(), job.Request.Container, job.ID+"/"+f.Name)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(rc)
		rc.Close()
		for _, l := range strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n") {
			if l != "" {
				out = append(out, l)
			}
		}
	}
	return out
}

// uncountableSource answers the count of a whole type but fails the count
// of any narrower _lastUpdated range, as a source without range counts would.
type uncountableSource struct{ *fakeSource }

func (s uncountableSource) Count(ctx context.Context, typ, query string) (int64, error) {
	if q, _ := url.ParseQuery(query); len(q["_lastUpdated"]) > 1 {
		return 0, fault.New(fault.Permanent, "the source FHIR server rejected _summary=count with 400 Bad Request")
	}
	return s.fakeSource.Count(ctx, typ, query)
}

func TestASourceThatCannotCountRangesGetsOneItemPerType(t *testing.T) {
	set := DefaultSettings()
	set.WindowResources, set.PageSize = 5, 4
	b := setup(t, set, nil)
	want := map[string][]string{"Observation": population(b.source, 3, 8)["Observation"]}
	b.engine = New(b.store, b.queue, b.blobs, uncountableSource{b.source}, set, nil)
	var logs bytes.Buffer
	ctx := zerolog.New(&logs).WithContext(context.Background())
	job, err := b.engine.KickOff(ctx, Request{Level: LevelSystem, Types: []string{"Observation"}, Container: "bulk-export"})
	if err != nil {
		t.Fatal(err)
	}
	ds, _ := b.queue.Receive(ctx, 1, time.Hour)
	if out := b.engine.Process(ctx, Message{Job: job.ID, Item: PlanItemID}, Attempt{Number: 1}); out != Done() {
		t.Fatalf("plan: %v: %v; a source that cannot count ranges must not fail the export", out, out.Cause)
	}
	b.queue.Delete(ctx, ds[0])
	if !strings.Contains(logs.String(), "without windows") || !strings.Contains(logs.String(), "rejected _summary=count") {
		t.Errorf("the plan did not log why Observation has no windows:\n%s", logs.String())
	}
	b.drain(t, 5)
	st, err := b.engine.Status(ctx, job.ID, "")
	if err != nil || st.Phase != Completed {
		t.Fatalf("status %v, %v", st, err)
	}
	it, err := b.store.GetItem(ctx, job.ID, "Observation")
	if err != nil || it.Window != nil || st.ItemsTotal != 1 {
		t.Fatalf("Observation item %+v (%v), %d items; want one item without a window", it, err, st.ItemsTotal)
	}
	wantExactly(t, b.lines(t, st, 0), want)
}

// createOnceFails fails the first CreateItem of a work item, as a plan that dies after it
// recorded its items and before it created them.
type createOnceFails struct {
	Store
	mu     sync.Mutex // the plan creates items at once
	failed bool
}

func (s *createOnceFails) CreateItem(ctx context.Context, it *WorkItem) error {
	s.mu.Lock()
	fail := !s.failed && it.ID != PlanItemID
	s.failed = s.failed || fail
	s.mu.Unlock()
	if fail {
		return fault.New(fault.Transient, "table storage timed out")
	}
	return s.Store.CreateItem(ctx, it)
}

func TestAPlanRunAgainCreatesTheWindowsItRecorded(t *testing.T) {
	set := DefaultSettings()
	set.WindowResources, set.PageSize = 6, 4
	b := setup(t, set, nil)
	want := map[string][]string{"Observation": population(b.source, 3, 8)["Observation"]}
	store := &createOnceFails{Store: b.store}
	b.engine = New(store, b.queue, b.blobs, b.source, set, nil)
	ctx := context.Background()
	job, err := b.engine.KickOff(ctx, Request{Level: LevelSystem, Types: []string{"Observation"}, Container: "bulk-export"})
	if err != nil {
		t.Fatal(err)
	}
	if out := b.engine.Process(ctx, Message{Job: job.ID, Item: PlanItemID}, Attempt{Number: 1}); out.Action != Retry {
		t.Fatalf("plan with a failing item creation: %v, want a retry", out)
	}
	plan, err := b.store.GetItem(ctx, job.ID, PlanItemID)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Planned) < 4 {
		t.Fatalf("the plan recorded %d items before creating them; want the Observation windows", len(plan.Planned))
	}
	// Between the two runs the data changes so that counting again would
	// split otherwise: 12 more resources inside the first window.
	first := plan.Planned[0].Window
	for i := range 12 {
		r := resource("Observation", fmt.Sprintf("late%02d", i), first.Until.Add(-time.Duration(i+1)*time.Millisecond), `"status":"final"`)
		b.source.add(r)
		want["Observation"] = append(want["Observation"], compact(r))
	}
	b.drain(t, 5)
	st, err := b.engine.Status(ctx, job.ID, "")
	if err != nil || st.Phase != Completed {
		t.Fatalf("status %v, %v", st, err)
	}
	windows := windowsOf(t, b, job, "Observation")
	if len(windows) != len(plan.Planned) {
		t.Fatalf("%d windows created, %d recorded: the plan run again split the type otherwise", len(windows), len(plan.Planned))
	}
	for i, w := range windows {
		if p := plan.Planned[i]; p.ID != w.ID || !p.Window.After.Equal(w.Window.After) || !p.Window.Until.Equal(w.Window.Until) {
			t.Errorf("window %d is %s (%v, %v], recorded %s (%v, %v]", i, w.ID, w.Window.After, w.Window.Until, p.ID, p.Window.After, p.Window.Until)
		}
	}
	wantExactly(t, b.lines(t, st, 0), want)
}

// planWrites counts the writes of a job's plan item.
type planWrites struct {
	Store
	mu sync.Mutex
	n  int
}

func (s *planWrites) UpdateItem(ctx context.Context, it *WorkItem) error {
	if it.ID == PlanItemID {
		s.mu.Lock()
		s.n++
		s.mu.Unlock()
	}
	return s.Store.UpdateItem(ctx, it)
}

// Splitting a large type on a slow source renews the plan's lease as it
// goes, so a plan that counts for longer than its lease keeps its item.
func TestSplittingRenewsThePlansLease(t *testing.T) {
	writes := func(step time.Duration) int {
		set := DefaultSettings()
		set.WindowResources, set.PageSize = 5, 10
		b := setup(t, set, nil)
		want := map[string][]string{"Observation": population(b.source, 3, 8)["Observation"]}
		var mu sync.Mutex
		now := t0
		clock := func() time.Time { mu.Lock(); defer mu.Unlock(); now = now.Add(step); return now }
		store := &planWrites{Store: b.store}
		b.engine = New(store, b.queue, b.blobs, b.source, set, clock)
		st := b.export(t, Request{Level: LevelSystem, Types: []string{"Observation"}}, 5)
		if st.Phase != Completed || st.ItemsTotal < 5 {
			t.Fatalf("phase %v (%v), %d items; want a completed export in windows", st.Phase, st.Failure, st.ItemsTotal)
		}
		wantExactly(t, b.lines(t, st, 0), want)
		return store.n
	}
	still := writes(0)
	// Each reading of the clock is 20 s later: every count request comes
	// more than a quarter of the 1-minute lease after the one before.
	slow := writes(20 * time.Second)
	if slow < still+4 {
		t.Errorf("the plan item was written %d times with slow counts and %d with instant ones; want a renewal before each late count", slow, still)
	}
}
