package export_test

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// testProvenance is a Provenance of the associated-data tests, with the
// returned resources it is about written out by hand (the oracle does not
// parse references, so it cannot share a mistake with the engine).
type testProvenance struct {
	id          string
	recorded    time.Time
	lastUpdated time.Time
	refs        []string // target references as the source holds them
	about       []string // Type/id of the resources those references name
}

func (p testProvenance) json() string {
	var targets []string
	for _, r := range p.refs {
		targets = append(targets, fmt.Sprintf(`{"reference":%q}`, r))
	}
	return resource("Provenance", p.id, p.lastUpdated, fmt.Sprintf(`"recorded":%q,"target":[%s],"agent":[{"who":{"reference":"Practitioner/x"}}]`,
		p.recorded.Format(time.RFC3339Nano), strings.Join(targets, ",")))
}

// provenanceData adds, to population(5, 7), Provenance resources that
// exercise every rule: one per patient about the patient and all its
// observations (so one Provenance spans several target batches), later ones
// about some observations by versioned and absolute references, a tie on
// recorded, and some that must never be returned (about a type the export
// leaves out, about nothing the source holds, updated after the transaction
// time, a contained reference). It returns the population's lines and the
// Provenance.
func provenanceData(s *fakeSource) (map[string][]string, []testProvenance) {
	want := population(s, 5, 7)
	var provs []testProvenance
	for p := range 5 {
		pv := testProvenance{id: fmt.Sprintf("prov-p%03d", p), recorded: t0.Add(time.Duration(p) * time.Minute), lastUpdated: t0}
		pv.refs = append(pv.refs, fmt.Sprintf("Patient/p%03d", p))
		for o := range 7 {
			pv.refs = append(pv.refs, fmt.Sprintf("Observation/o%03d-%02d", p, o))
		}
		pv.about = pv.refs
		provs = append(provs, pv)
	}
	later := t0.Add(30 * time.Minute)
	provs = append(provs,
		testProvenance{id: "prov-late-1", recorded: later, lastUpdated: t0.Add(time.Minute),
			refs:  []string{"Observation/o001-02/_history/1", "http://source.example/fhir/Observation/o003-06"},
			about: []string{"Observation/o001-02", "Observation/o003-06"}},
		// Two recorded at the same instant about o002-00: the later
		// meta.lastUpdated wins; about o004-01 the same lastUpdated too, so
		// the greater id wins.
		testProvenance{id: "prov-tie-a", recorded: later, lastUpdated: t0.Add(2 * time.Minute),
			refs: []string{"Observation/o002-00", "Observation/o004-01"}, about: []string{"Observation/o002-00", "Observation/o004-01"}},
		testProvenance{id: "prov-tie-b", recorded: later, lastUpdated: t0.Add(time.Minute),
			refs: []string{"Observation/o002-00"}, about: []string{"Observation/o002-00"}},
		testProvenance{id: "prov-tie-c", recorded: later, lastUpdated: t0.Add(2 * time.Minute),
			refs: []string{"Observation/o004-01"}, about: []string{"Observation/o004-01"}},
		// Never returned.
		testProvenance{id: "prov-group", recorded: later, lastUpdated: t0, refs: []string{"Group/g1"}, about: []string{"Group/g1"}},
		testProvenance{id: "prov-unknown", recorded: later, lastUpdated: t0, refs: []string{"Observation/nope"}},
		testProvenance{id: "prov-contained", recorded: later, lastUpdated: t0, refs: []string{"#o000-00"}},
		testProvenance{id: "prov-future", recorded: later, lastUpdated: t0.Add(2 * time.Hour),
			refs: []string{"Patient/p000"}, about: []string{"Patient/p000"}},
	)
	for _, pv := range provs {
		s.add(pv.json())
	}
	s.params = map[string][]string{"Provenance": {"target", "agent"}}
	return want, provs
}

// associatedOracle returns the Provenance lines a job that returned the
// resources of want must hold: every Provenance (updated up to upper) about
// one of them (relevant), or per returned resource the latest (by recorded,
// then lastUpdated, then id).
func associatedOracle(want map[string][]string, provs []testProvenance, upper time.Time, latest bool) []string {
	returned := map[string]bool{}
	for typ, lines := range want {
		for _, l := range lines {
			returned[typ+"/"+decodeID(l)] = true
		}
	}
	best := map[string]testProvenance{}
	chosen := map[string]string{}
	for _, pv := range provs {
		if pv.lastUpdated.After(upper) {
			continue
		}
		for _, a := range pv.about {
			if !returned[a] {
				continue
			}
			if !latest {
				chosen[pv.id] = compact(pv.json())
				continue
			}
			cur, ok := best[a]
			if !ok || pv.recorded.After(cur.recorded) || (pv.recorded.Equal(cur.recorded) &&
				(pv.lastUpdated.After(cur.lastUpdated) || (pv.lastUpdated.Equal(cur.lastUpdated) && pv.id > cur.id))) {
				best[a] = pv
			}
		}
	}
	for _, pv := range best {
		chosen[pv.id] = compact(pv.json())
	}
	var out []string
	for _, l := range chosen {
		out = append(out, l)
	}
	return out
}

func decodeID(line string) string {
	_, rest, _ := strings.Cut(line, `"id":"`)
	id, _, _ := strings.Cut(rest, `"`)
	return id
}

func associatedSettings() Settings {
	set := DefaultSettings()
	// Three references per Provenance search and two Provenance per page:
	// prov-p* is found by three batches, over several pages each.
	set.MaxFileBytes, set.BlockBytes, set.PageSize, set.MemberBatch = 1500, 600, 2, 3
	return set
}

// With Provenance left out of _type, the Provenance output is exactly the
// associated set, each once.
func TestIncludeAssociatedDataReturnsExactlyTheAssociatedProvenance(t *testing.T) {
	for _, mode := range []string{RelevantProvenance, LatestProvenance} {
		t.Run(mode, func(t *testing.T) {
			set := associatedSettings()
			b := setup(t, set, nil)
			want, provs := provenanceData(b.source)
			delete(want, "Group")
			st := b.export(t, Request{Level: LevelSystem, Types: []string{"Patient", "Observation"}, IncludeAssociated: mode}, 5)
			if st.Phase != Completed {
				t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
			}
			want["Provenance"] = associatedOracle(want, provs, st.Job.TransactionTime, mode == LatestProvenance)
			wantExactly(t, b.lines(t, st, set.MaxFileBytes), want)
			if len(want["Provenance"]) < 5 {
				t.Fatalf("the oracle chose %d Provenance; the data must make it choose more", len(want["Provenance"]))
			}
			var files int
			for _, f := range st.Output {
				if f.Type == "Provenance" {
					files++
					if !strings.HasPrefix(f.Name, "Provenance-associated-") {
						t.Errorf("Provenance file %s; want Provenance-associated-<n>.ndjson", f.Name)
					}
				}
			}
			if files < 2 {
				t.Errorf("%d Provenance files; the data must roll over", files)
			}
			if len(st.Errors) != 0 {
				t.Errorf("error files %+v; want none", st.Errors)
			}
		})
	}
	// The two modes differ on this data, so each test above could fail on the other's answer.
	b := setup(t, associatedSettings(), nil)
	want, provs := provenanceData(b.source)
	delete(want, "Group")
	upper := b.source.now
	if r, l := associatedOracle(want, provs, upper, false), associatedOracle(want, provs, upper, true); len(r) == len(l) {
		t.Fatalf("Relevant and Latest choose %d and %d Provenance; the data must tell them apart", len(r), len(l))
	}
}

// The associated Provenance are added to the Provenance the job returns
// anyway, each once: without _since a system export that searches Provenance
// has them all (no associated item is made); with _since the older associated
// ones are added; with a _typeFilter for Provenance those the filter left out.
func TestAssociatedProvenanceIsAddedToTheJobsOwnProvenance(t *testing.T) {
	since := t0.Add(20 * time.Second)
	later := t0.Add(30 * time.Minute).Format(time.RFC3339Nano)
	cases := []struct {
		name   string
		since  *time.Time
		filter []TypeFilter
		// own selects the Provenance the job's ordinary search returns.
		own       func(p testProvenance) bool
		withItem  bool
		returnedL func(typ, line string) bool // the non-Provenance resources returned
	}{
		{name: "no _since", own: func(testProvenance) bool { return true }},
		{name: "_since", since: &since, withItem: true,
			own: func(p testProvenance) bool { return p.lastUpdated.After(since) }},
		{name: "_typeFilter", withItem: true, filter: []TypeFilter{{Type: "Provenance", Query: "recorded=" + url.QueryEscape(later)}},
			own: func(p testProvenance) bool { return p.recorded.Format(time.RFC3339Nano) == later }},
	}
	for _, mode := range []string{RelevantProvenance, LatestProvenance} {
		for _, c := range cases {
			t.Run(mode+"/"+c.name, func(t *testing.T) {
				set := associatedSettings()
				b := setup(t, set, nil)
				all, provs := provenanceData(b.source)
				st := b.export(t, Request{Level: LevelSystem, Types: []string{"Patient", "Observation", "Provenance"}, Since: c.since,
					TypeFilters: c.filter, IncludeAssociated: mode}, 5)
				if st.Phase != Completed {
					t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
				}
				want := map[string][]string{}
				for _, typ := range []string{"Patient", "Observation"} {
					for _, l := range all[typ] {
						if c.since == nil || b.source.lastUpdatedOf(typ, decodeID(l)).After(*c.since) {
							want[typ] = append(want[typ], l)
						}
					}
				}
				union := map[string]string{}
				ownCount := 0
				for _, p := range provs {
					if !p.lastUpdated.After(st.Job.TransactionTime) && c.own(p) {
						union[p.id] = compact(p.json())
						ownCount++
					}
				}
				associated := associatedOracle(want, provs, st.Job.TransactionTime, mode == LatestProvenance)
				added := 0
				for _, l := range associated {
					if _, ok := union[decodeID(l)]; !ok {
						added++
					}
					union[decodeID(l)] = l
				}
				for _, l := range union {
					want["Provenance"] = append(want["Provenance"], l)
				}
				wantExactly(t, b.lines(t, st, set.MaxFileBytes), want)
				_, err := b.store.GetItem(context.Background(), st.Job.ID, "Provenance.associated")
				if c.withItem != (err == nil) {
					t.Errorf("associated item: %v; want one: %v", err, c.withItem)
				}
				if c.withItem && (added == 0 || ownCount == 0 || added == len(associated)) {
					t.Fatalf("premise: %d own Provenance, %d associated, %d of them added; the data must make the job's own and the associated overlap and differ",
						ownCount, len(associated), added)
				}
			})
		}
	}
}

// A storage failure at any write, before or after it took effect, neither
// loses nor repeats a Provenance: the set of written ids is read back from
// the committed files.
func TestAssociatedProvenanceSurvivesAFailureAtAnyWrite(t *testing.T) {
	set := associatedSettings()
	run := func(t *testing.T, fb *failingBlobs) (*bundle, *Status, map[string][]string, int) {
		b := setup(t, set, func(inner Blobs) Blobs { fb.Blobs = inner; return fb })
		want, provs := provenanceData(b.source)
		delete(want, "Group")
		job, err := b.engine.KickOff(context.Background(), Request{Level: LevelSystem, Types: []string{"Patient", "Observation"},
			IncludeAssociated: RelevantProvenance, Container: "bulk-export"})
		if err != nil {
			t.Fatal(err)
		}
		deliveries := b.drain(t, 5)
		st, err := b.engine.Status(context.Background(), job.ID, "")
		if err != nil {
			t.Fatal(err)
		}
		want["Provenance"] = associatedOracle(want, provs, job.TransactionTime, false)
		return b, st, want, deliveries
	}
	clean := &failingBlobs{}
	_, _, _, cleanDeliveries := run(t, clean)
	for i := range 2 * clean.calls {
		failAt, after := i/2+1, i%2 == 1
		fb := &failingBlobs{failAt: failAt, afterCommit: after}
		b, st, want, deliveries := run(t, fb)
		if !fb.fired || deliveries <= cleanDeliveries {
			t.Fatalf("fail at write %d: the injected failure was not seen (fired %v, %d deliveries)", failAt, fb.fired, deliveries)
		}
		if st.Phase != Completed {
			t.Fatalf("fail at write %d (after=%v): phase %v, failure %v", failAt, after, st.Phase, st.Failure)
		}
		wantExactly(t, b.lines(t, st, set.MaxFileBytes), want)
	}
}

// failingProvenanceSource fails its failAt-th Provenance page request.
// The item searches several batches at once, hence the atomic count.
type failingProvenanceSource struct {
	*fakeSource
	failAt int64
	calls  atomic.Int64
}

func (s *failingProvenanceSource) Page(ctx context.Context, u string, visit func(Entry) error) (string, error) {
	if strings.Contains(u, "/Provenance?") {
		if n := s.calls.Add(1); n == s.failAt {
			return "", fault.New(fault.Transient, "injected source failure at Provenance page %d", n)
		}
	}
	return s.fakeSource.Page(ctx, u, visit)
}

// A Provenance search that fails on any page, the first or a later one of
// its batch, is run again without a loss or a repeat; and an item that hands
// on after every batch writes the same lines.
func TestAssociatedProvenanceSurvivesSourceFailuresAndContinuations(t *testing.T) {
	run := func(t *testing.T, set Settings, failAt int64) (*bundle, *Status, map[string][]string, int64) {
		b := setup(t, set, nil)
		want, provs := provenanceData(b.source)
		delete(want, "Group")
		src := &failingProvenanceSource{fakeSource: b.source, failAt: failAt}
		b.engine = New(b.store, b.queue, b.blobs, src, set, nil)
		st := b.export(t, Request{Level: LevelSystem, Types: []string{"Patient", "Observation"}, IncludeAssociated: LatestProvenance}, 5)
		if st.Phase != Completed {
			t.Fatalf("fail at %d: phase %v, failure %v", failAt, st.Phase, st.Failure)
		}
		want["Provenance"] = associatedOracle(want, provs, st.Job.TransactionTime, true)
		return b, st, want, src.calls.Load()
	}
	set := associatedSettings()
	_, _, _, calls := run(t, set, 0)
	if calls < 10 {
		t.Fatalf("a clean export made %d Provenance page requests; want many, over several pages per batch", calls)
	}
	for failAt := int64(1); failAt <= calls; failAt++ {
		b, st, want, got := run(t, set, failAt)
		if got <= calls {
			t.Fatalf("fail at %d: %d requests, as many as a clean run: the failure was not seen", failAt, got)
		}
		wantExactly(t, b.lines(t, st, set.MaxFileBytes), want)
	}

	set.InvocationBudget = time.Nanosecond
	b, st, want, _ := run(t, set, 0)
	wantExactly(t, b.lines(t, st, set.MaxFileBytes), want)
	item, err := b.store.GetItem(context.Background(), st.Job.ID, "Provenance.associated")
	if err != nil {
		t.Fatal(err)
	}
	// Progress: the plan weighed the phase by the other types' counts, and
	// the cursor counted every returned resource looked up.
	returned := len(want["Patient"]) + len(want["Observation"])
	if item.Expected != int64(returned) || item.Cursor.Page != returned {
		t.Errorf("associated item expected %d and looked up %d; want both %d, the returned resources", item.Expected, item.Cursor.Page, returned)
	}
	// A step reads from one output file only, so there is at least one per
	// file of the other types.
	files := slices.DeleteFunc(slices.Clone(st.Output), func(f OutputFile) bool { return f.Type == "Provenance" })
	if item.Attempts <= len(files) {
		t.Errorf("the associated item ran in %d invocations; want more than one per output file (%d files), as it hands on after every step", item.Attempts, len(files))
	}
}

// At Group level the returned resources are the members' compartments, and
// only their Provenance comes back.
func TestGroupExportReturnsTheProvenanceOfTheMembersResources(t *testing.T) {
	set := associatedSettings()
	b := setup(t, set, nil)
	want, provs := provenanceData(b.source)
	// A second Group with two of the five patients.
	b.source.add(resource("Group", "g2", t0, `"type":"person","actual":true,"member":[{"entity":{"reference":"Patient/p001"}},{"entity":{"reference":"Patient/p003"}}]`))
	b.source.params["Observation"] = []string{"subject"}
	b.source.params["Patient"] = []string{"_id"}
	st := b.export(t, Request{Level: LevelGroup, GroupID: "g2", Types: []string{"Patient", "Observation"}, IncludeAssociated: RelevantProvenance}, 5)
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	members := map[string][]string{}
	for typ, lines := range want {
		for _, l := range lines {
			if typ != "Group" && (strings.Contains(l, `"p001"`) || strings.Contains(l, "Patient/p001") || strings.Contains(l, `"p003"`) || strings.Contains(l, "Patient/p003")) {
				members[typ] = append(members[typ], l)
			}
		}
	}
	if len(members["Patient"]) != 2 || len(members["Observation"]) != 14 {
		t.Fatalf("member data: %d patients, %d observations; want 2 and 14", len(members["Patient"]), len(members["Observation"]))
	}
	members["Provenance"] = associatedOracle(members, provs, st.Job.TransactionTime, false)
	wantExactly(t, b.lines(t, st, set.MaxFileBytes), members)
	if got := len(members["Provenance"]); got != 3 { // prov-p001, prov-p003, prov-late-1
		t.Errorf("the oracle chose %d Provenance for the members; the data says 3", got)
	}
}

// A source that cannot search Provenance by target: a strict kick-off is
// refused before anything is created; a lenient one exports as if the
// parameter were absent (every Provenance, by the ordinary search) and says so.
func TestIncludeAssociatedDataNeedsASourceThatSearchesProvenanceByTarget(t *testing.T) {
	b := setup(t, associatedSettings(), nil)
	want, _ := provenanceData(b.source)
	delete(want, "Group")
	b.source.params = map[string][]string{"Provenance": {"agent"}}
	_, err := b.engine.KickOff(context.Background(), Request{Level: LevelSystem, IncludeAssociated: LatestProvenance, Container: "bulk-export"})
	if !fault.Is(err, fault.Invalid) || !strings.Contains(err.Error(), "cannot search Provenance by target") || fault.Code(err) != "not-supported" {
		t.Fatalf("strict kick-off: %v (code %q); want invalid, not-supported, naming the missing search", err, fault.Code(err))
	}
	if n := len(b.queue.Pending()); n != 0 {
		t.Fatalf("a refused kick-off enqueued %d messages", n)
	}

	st := b.export(t, Request{Level: LevelSystem, Types: []string{"Patient", "Observation", "Provenance"}, IncludeAssociated: LatestProvenance, Lenient: true}, 5)
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	var all []string
	for _, l := range b.source.data["Provenance"] {
		if !l.lastUpdated.After(st.Job.TransactionTime) {
			all = append(all, compact(string(l.json)))
		}
	}
	want["Provenance"] = all
	wantExactly(t, b.lines(t, st, 0), want)
	warnings := strings.Join(b.errorLines(t, st), "\n")
	if !strings.Contains(warnings, "cannot search Provenance by target") || !strings.Contains(warnings, "ignored") {
		t.Errorf("error files %q; want the warning that includeAssociatedData was ignored", warnings)
	}
}

// The associated item waits for every other item: a delivery before then
// does nothing (no lease, no attempt), and the watchdog leaves it alone
// while it waits, since it is not stalled.
func TestTheAssociatedItemWaitsForTheOtherItems(t *testing.T) {
	now := t0
	clock := func() time.Time { return now }
	set := associatedSettings()
	b := setup(t, set, nil)
	b.engine = New(b.store, b.queue, b.blobs, b.source, set, clock)
	provenanceData(b.source)
	ctx := context.Background()
	job, err := b.engine.KickOff(ctx, Request{Level: LevelSystem, Types: []string{"Patient", "Observation"}, IncludeAssociated: RelevantProvenance, Container: "bulk-export"})
	if err != nil {
		t.Fatal(err)
	}
	// Run the plan only.
	ds, _ := b.queue.Receive(ctx, 1, time.Minute)
	if out := b.engine.Process(ctx, Message{Job: job.ID, Item: PlanItemID}, Attempt{Number: 1}); out.Action != Settle {
		t.Fatalf("plan: %+v", out)
	}
	b.queue.Delete(ctx, ds[0])
	pending := b.queue.Pending()
	for _, m := range pending {
		if m.Item == "Provenance.associated" {
			t.Fatalf("the plan enqueued the associated item before the others ran: %v", pending)
		}
	}
	if out := b.engine.Process(ctx, Message{Job: job.ID, Item: "Provenance.associated"}, Attempt{Number: 1}); out.Action != Settle {
		t.Fatalf("an early delivery of the associated item: %+v; want it settled", out)
	}
	item, err := b.store.GetItem(ctx, job.ID, "Provenance.associated")
	if err != nil || item.Attempts != 0 || item.LeaseOwner != "" || item.State != ItemPending {
		t.Fatalf("after an early delivery the associated item is %+v (%v); want it untouched", item, err)
	}
	now = now.Add(set.StallAfter + time.Second)
	n, err := b.engine.RestartStalled(ctx, job.ID)
	if err != nil || n != len(pending) {
		t.Fatalf("watchdog restarted %d items (%v); want the %d waiting search items and not the associated one", n, err, len(pending))
	}
	b.drain(t, 5)
	st, err := b.engine.Status(ctx, job.ID, "")
	if err != nil || st.Phase != Completed {
		t.Fatalf("phase %v (%v)", st.Phase, err)
	}
	if !slices.ContainsFunc(st.Output, func(f OutputFile) bool { return f.Type == "Provenance" }) {
		t.Fatalf("the last search item did not start the associated item: output %+v", st.Output)
	}
}
