package export_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	. "github.com/azfhir/bulkexport/handler/internal/export"
)

// deletions gives the fake source a history: population(3, 8) and then,
// after since (t0+30s) and before the transaction time (t0+1h-2s), resources
// deleted once, twice, deleted and re-created inside and after the window,
// and deleted before and after it. It returns the output and the deleted
// lines an export with _since=t0+30s must give.
func deletions(s *fakeSource) (output, deleted map[string][]string) {
	population(s, 3, 8)
	minute := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Minute) }
	obs := func(id string, at time.Time) string {
		return resource("Observation", id, at, `"status":"final","subject":{"reference":"Patient/p000"}`)
	}
	s.remove("Observation", "o001-02", minute(10)) // deleted in the window: listed
	s.remove("Observation", "o000-00", minute(5))  // deleted, then re-created in the window: in output only
	recreated := obs("o000-00", minute(20))
	s.add(recreated)
	s.remove("Observation", "o002-03", minute(15)) // deleted, re-created, deleted again: listed once
	s.add(obs("o002-03", minute(25)))
	s.remove("Observation", "o002-03", minute(30))
	s.remove("Observation", "o002-04", t0.Add(10*time.Second)) // before _since: not listed
	s.remove("Observation", "o001-05", minute(50))             // deleted in the window and re-created after it: listed
	s.add(obs("o001-05", minute(120)))
	s.remove("Observation", "o001-06", minute(100)) // after the transaction time: not listed
	s.remove("Patient", "p001", minute(40))         // another type
	line := func(ref string) string {
		return `{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"` + ref + `"}}]}`
	}
	output = map[string][]string{
		"Patient":     {compact(resource("Patient", "p002", minute(2), `"gender":"female"`))},
		"Observation": {compact(recreated)},
	}
	deleted = map[string][]string{
		"Observation": {line("Observation/o001-02"), line("Observation/o002-03"), line("Observation/o001-05")},
		"Patient":     {line("Patient/p001")},
	}
	return output, deleted
}

// deletedLines downloads the deleted files the status lists and returns their
// lines by the type their names carry, checking type, names and counts.
func (b *bundle) deletedLines(t *testing.T, st *Status, maxBytes int64) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, f := range st.Deleted {
		typ, _, ok := strings.Cut(f.Name, "-deleted-")
		if f.Type != "Bundle" || !ok {
			t.Fatalf("deleted file %s has type %q; want Bundle and a name <Type>-deleted-<n>.ndjson", f.Name, f.Type)
		}
		lines := b.lines(t, &Status{Job: st.Job, Output: []OutputFile{f}}, maxBytes)
		out[typ] = append(out[typ], lines["Bundle"]...)
	}
	return out
}

func TestSinceListsDeletionsInTheWindowOnceAndNeverInOutputUnderFailures(t *testing.T) {
	set := DefaultSettings()
	set.MaxFileBytes, set.BlockBytes, set.PageSize = 250, 120, 2
	since := t0.Add(30 * time.Second)
	run := func(t *testing.T, fb *failingBlobs) (*bundle, *Status, map[string][]string, map[string][]string, int) {
		b := setup(t, set, func(inner Blobs) Blobs { fb.Blobs = inner; return fb })
		output, deleted := deletions(b.source)
		job, err := b.engine.KickOff(context.Background(), Request{Level: LevelSystem, Types: []string{"Observation", "Patient"}, Since: &since, Container: "bulk-export"})
		if err != nil {
			t.Fatal(err)
		}
		deliveries := b.drain(t, 5)
		st, err := b.engine.Status(context.Background(), job.ID, "")
		if err != nil {
			t.Fatal(err)
		}
		return b, st, output, deleted, deliveries
	}
	check := func(t *testing.T, b *bundle, st *Status, output, deleted map[string][]string) {
		t.Helper()
		if st.Phase != Completed {
			t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
		}
		wantExactly(t, b.lines(t, st, set.MaxFileBytes), output)
		wantExactly(t, b.deletedLines(t, st, set.MaxFileBytes), deleted)
		if len(st.Errors) != 0 {
			t.Errorf("error files %+v; want none", st.Errors)
		}
		if st.Done != 2 {
			t.Errorf("Done = %d; want the 2 resources of the output, deletions not counted", st.Done)
		}
	}

	clean := &failingBlobs{}
	b, st, output, deleted, cleanDeliveries := run(t, clean)
	check(t, b, st, output, deleted)
	if names := fileNames(st.Deleted); !slices.Contains(names, "Observation-deleted-2.ndjson") || !slices.Contains(names, "Patient-deleted-1.ndjson") {
		t.Fatalf("deleted files %v; want the Observation deletions rolled over into a second file and a Patient file", names)
	}
	for i := range 2 * clean.calls {
		failAt, after := i/2+1, i%2 == 1
		t.Run(fmt.Sprintf("fail at write %d of %d after=%v", failAt, clean.calls, after), func(t *testing.T) {
			fb := &failingBlobs{failAt: failAt, afterCommit: after}
			b, st, output, deleted, deliveries := run(t, fb)
			if !fb.fired || deliveries <= cleanDeliveries {
				t.Fatalf("the injected failure at write %d was not seen (fired %v, %d deliveries)", failAt, fb.fired, deliveries)
			}
			check(t, b, st, output, deleted)
		})
	}
}

// A history request that fails (the type's pages or a resource's own
// history) is retried from the last checkpoint without losing or repeating a
// line.
func TestAFailedHistoryRequestNeitherLosesNorRepeatsDeletions(t *testing.T) {
	set := DefaultSettings()
	set.MaxFileBytes, set.BlockBytes, set.PageSize = 250, 120, 2
	since := t0.Add(30 * time.Second)
	run := func(failAt int) (*bundle, *Status, map[string][]string, map[string][]string, int) {
		b := setup(t, set, nil)
		output, deleted := deletions(b.source)
		b.source.historyFailAt = failAt
		st := b.export(t, Request{Level: LevelSystem, Types: []string{"Observation", "Patient"}, Since: &since}, 5)
		return b, st, output, deleted, b.source.historyCalls
	}
	_, _, _, _, calls := run(0)
	if calls < 10 {
		t.Fatalf("a clean export made %d history requests; want many to fail", calls)
	}
	for failAt := 1; failAt <= calls; failAt++ {
		b, st, output, deleted, got := run(failAt)
		if got <= calls {
			t.Fatalf("fail at %d: %d history requests, as many as a clean run: the failure was not seen", failAt, got)
		}
		if st.Phase != Completed {
			t.Fatalf("fail at %d: phase %v, failure %v", failAt, st.Phase, st.Failure)
		}
		wantExactly(t, b.lines(t, st, set.MaxFileBytes), output)
		wantExactly(t, b.deletedLines(t, st, set.MaxFileBytes), deleted)
	}
}

// A deleted item that hands on after every history page (the invocation
// budget spent) writes the same lines as one that runs in one go.
func TestDeletedItemContinuedAfterEveryPageWritesTheSameLines(t *testing.T) {
	set := DefaultSettings()
	set.MaxFileBytes, set.BlockBytes, set.PageSize = 250, 120, 2
	set.InvocationBudget = time.Nanosecond
	since := t0.Add(30 * time.Second)
	b := setup(t, set, nil)
	output, deleted := deletions(b.source)
	st := b.export(t, Request{Level: LevelSystem, Types: []string{"Observation", "Patient"}, Since: &since}, 5)
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	wantExactly(t, b.lines(t, st, set.MaxFileBytes), output)
	wantExactly(t, b.deletedLines(t, st, set.MaxFileBytes), deleted)
	items, err := b.store.ListItems(context.Background(), st.Job.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		if it.ID == "Observation.deleted" && it.Attempts < 3 {
			t.Errorf("the Observation deleted item ran in %d invocations; want one per history page", it.Attempts)
		}
	}
}

func fileNames(files []OutputFile) []string {
	var out []string
	for _, f := range files {
		out = append(out, f.Name)
	}
	return out
}

func TestASourceWithoutHistoryGivesAWarningAndTheJobCompletes(t *testing.T) {
	since := t0.Add(30 * time.Second)
	for _, tc := range []struct {
		name         string
		prepare      func(*fakeSource)
		wantDeleted  []string // types whose deletions are still listed
		wantWarnings int
		wantIn       string // a file name prefix the warnings are in
	}{
		{"CapabilityStatement without history-type", func(s *fakeSource) { s.noHistoryType = []string{"Observation"} }, []string{"Patient"}, 1, "OperationOutcome-"},
		{"history request refused", func(s *fakeSource) { s.historyRefused = true }, nil, 2, "Observation-deleted-errors-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := setup(t, Settings{}, nil)
			output, _ := deletions(b.source)
			tc.prepare(b.source)
			st := b.export(t, Request{Level: LevelSystem, Types: []string{"Observation", "Patient"}, Since: &since}, 5)
			if st.Phase != Completed {
				t.Fatalf("phase %v, failure %v; want the job to complete", st.Phase, st.Failure)
			}
			wantExactly(t, b.lines(t, st, 0), output)
			got := b.deletedLines(t, st, 0)
			if types := slices.Sorted(maps.Keys(got)); !slices.Equal(types, tc.wantDeleted) {
				t.Errorf("deletions listed for %v; want %v", types, tc.wantDeleted)
			}
			warnings := b.errorLines(t, st)
			if len(warnings) != tc.wantWarnings || !slices.ContainsFunc(fileNames(st.Errors), func(n string) bool { return strings.HasPrefix(n, tc.wantIn) }) {
				t.Fatalf("error files %v with %d lines; want %d warnings, in a %s file", fileNames(st.Errors), len(warnings), tc.wantWarnings, tc.wantIn)
			}
			for _, w := range warnings {
				if !strings.Contains(w, `"severity":"warning"`) || !strings.Contains(w, "are not listed in this export's deleted files") {
					t.Errorf("warning %s; want a warning that says the deletions are not listed", w)
				}
			}
		})
	}
}

func TestPatientAndGroupExportsListNoDeletionsAndSaySo(t *testing.T) {
	since := t0.Add(30 * time.Second)
	for _, level := range []Level{LevelPatient, LevelGroup} {
		t.Run(string(level), func(t *testing.T) {
			b := setup(t, Settings{}, nil)
			deletions(b.source)
			st := b.export(t, Request{Level: level, GroupID: "g1", Types: []string{"Observation"}, Since: &since}, 5)
			if st.Phase != Completed {
				t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
			}
			if len(st.Deleted) != 0 {
				t.Errorf("deleted files %v; want none: the deleted resources' compartments cannot be checked", fileNames(st.Deleted))
			}
			warnings := b.errorLines(t, st)
			if len(warnings) != 1 || !strings.Contains(warnings[0], "Deleted resources are not listed in Patient and Group exports") {
				t.Errorf("warnings %v; want one saying deletions are not listed", warnings)
			}
		})
	}
}
