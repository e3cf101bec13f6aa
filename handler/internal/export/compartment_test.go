package export_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	. "github.com/azfhir/bulkexport/handler/internal/export"
)

// compartmentPopulation is population(3, 4) in a Group plus resources in a
// member's compartment only through a second parameter (performer, author),
// or through several parameters and member batches at once, and an outsider
// whose own data must stay out. It returns the expected lines.
func compartmentPopulation(s *fakeSource) map[string][]string {
	want := population(s, 3, 4) // members p000 p001 p002; batches of 2: {p000 p001} {p002}
	delete(want, "Group")
	s.add(resource("Patient", "zz-outsider", t0, `"gender":"male"`))
	add := func(r string, in bool) {
		s.add(r)
		if in {
			typ := readType(r)
			want[typ] = append(want[typ], compact(r))
		}
	}
	out := `{"reference":"Patient/zz-outsider"}`
	// Only through performer, in the second batch.
	add(resource("Observation", "perf-only", t0.Add(30*time.Minute), `"subject":`+out+`,"performer":[{"reference":"Patient/p002"}]`), true)
	// subject (batch 2) and performer (batch 1): found by two searches.
	add(resource("Observation", "subj-and-perf", t0.Add(30*time.Minute), `"subject":{"reference":"Patient/p002"},"performer":[{"reference":"Patient/p000"}]`), true)
	// performer names members of both batches.
	add(resource("Observation", "perf-two-batches", t0.Add(30*time.Minute), `"subject":`+out+`,"performer":[{"reference":"Patient/p002"},{"reference":"Patient/p001"}]`), true)
	add(resource("Observation", "outsider-only", t0.Add(30*time.Minute), `"subject":`+out+`,"performer":[`+out+`]`), false)
	// A DocumentReference in the compartment only as author.
	add(resource("DocumentReference", "authored", t0.Add(30*time.Minute), `"subject":`+out+`,"author":[{"reference":"Patient/p001"}]`), true)
	return want
}

func readType(r string) string {
	var h struct{ ResourceType string }
	_ = json.Unmarshal([]byte(r), &h)
	return h.ResourceType
}

// TestGroupExportHasEveryCompartmentParameterOnceUnderFailures runs a Group
// export whose resources reach members through several parameters and
// batches, failing every storage write in turn: each resource in a member's
// compartment must be in the output exactly once.
func TestGroupExportHasEveryCompartmentParameterOnceUnderFailures(t *testing.T) {
	set := DefaultSettings()
	set.MaxFileBytes, set.BlockBytes, set.PageSize, set.MemberBatch = 1500, 500, 2, 2
	req := Request{Level: LevelGroup, GroupID: "g1", Types: []string{"DocumentReference", "Observation", "Patient"}, Container: "bulk-export"}
	run := func(t *testing.T, fb *failingBlobs) (*bundle, *Status, map[string][]string) {
		b := setup(t, set, func(inner Blobs) Blobs { fb.Blobs = inner; return fb })
		want := compartmentPopulation(b.source)
		job, err := b.engine.KickOff(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		b.drain(t, 5)
		st, err := b.engine.Status(context.Background(), job.ID, "")
		if err != nil {
			t.Fatal(err)
		}
		return b, st, want
	}
	clean := &failingBlobs{}
	b, st, want := run(t, clean)
	if st.Phase != Completed {
		t.Fatalf("clean run: phase %v, failure %v", st.Phase, st.Failure)
	}
	wantExactly(t, b.lines(t, st, set.MaxFileBytes), want)
	for i := range 2 * clean.calls {
		failAt, after := i/2+1, i%2 == 1
		t.Run(fmt.Sprintf("fail at write %d of %d after=%v", failAt, clean.calls, after), func(t *testing.T) {
			fb := &failingBlobs{failAt: failAt, afterCommit: after}
			b, st, want := run(t, fb)
			if !fb.fired {
				t.Fatalf("the failure at write %d never fired", failAt)
			}
			if st.Phase != Completed {
				t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
			}
			wantExactly(t, b.lines(t, st, set.MaxFileBytes), want)
		})
	}
}

// TestACompartmentParameterTheSourceLacksIsAWarning: the source's
// CapabilityStatement lists no performer for Observation, so the export
// searches subject only and says so in an error file.
func TestACompartmentParameterTheSourceLacksIsAWarning(t *testing.T) {
	set := DefaultSettings()
	set.MemberBatch = 2
	b := setup(t, set, nil)
	want := compartmentPopulation(b.source)
	b.source.params = map[string][]string{"Observation": {"_lastUpdated", "subject"}, "Patient": {"_id"}}
	st := b.export(t, Request{Level: LevelGroup, GroupID: "g1", Types: []string{"Observation", "Patient"}}, 5)
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	var obs []string
	for _, l := range want["Observation"] {
		if !bytes.Contains([]byte(l), []byte(`"id":"perf-only"`)) && !bytes.Contains([]byte(l), []byte(`"id":"perf-two-batches"`)) {
			obs = append(obs, l)
		}
	}
	wantExactly(t, b.lines(t, st, 0), map[string][]string{"Observation": obs, "Patient": want["Patient"]})
	var warnings []byte
	for _, f := range st.Errors {
		rc, _, err := b.engine.OpenFile(context.Background(), st.Job.ID, "", f.Name)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(rc)
		rc.Close()
		warnings = append(warnings, data...)
	}
	for _, must := range []string{`"severity":"warning"`, "performer on Observation", "link on Patient"} {
		if !bytes.Contains(warnings, []byte(must)) {
			t.Errorf("error files %s\nwant a warning containing %q", warnings, must)
		}
	}
}

// TestAnItemPlannedBeforeParametersSearchesOnlyItsFirst: an item row written
// before items recorded their compartment parameters (a deployment during a
// job) resumes as it was planned, by the type's first parameter, instead of
// starting searches the source may refuse.
func TestAnItemPlannedBeforeParametersSearchesOnlyItsFirst(t *testing.T) {
	set := DefaultSettings()
	set.MemberBatch = 2
	b := setup(t, set, nil)
	want := compartmentPopulation(b.source)
	job, err := b.engine.KickOff(context.Background(), Request{Level: LevelGroup, GroupID: "g1", Types: []string{"Observation"}, Container: "bulk-export"})
	if err != nil {
		t.Fatal(err)
	}
	// Run the plan only, then make the Observation item look like an old row.
	ctx := context.Background()
	ds, err := b.queue.Receive(ctx, 1, time.Hour)
	if err != nil || len(ds) != 1 {
		t.Fatalf("receive the plan: %v, %d messages", err, len(ds))
	}
	var msg Message
	if err := json.Unmarshal([]byte(ds[0].Text), &msg); err != nil || msg.Item != PlanItemID {
		t.Fatalf("first message %s: %v", ds[0].Text, err)
	}
	if out := b.engine.Process(ctx, msg, Attempt{Number: 1}); out.Action != Settle {
		t.Fatalf("plan: %+v", out)
	}
	if err := b.queue.Delete(ctx, ds[0]); err != nil {
		t.Fatal(err)
	}
	item, err := b.store.GetItem(ctx, job.ID, "Observation")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(item.Params, []string{"subject", "performer"}) {
		t.Fatalf("the plan fixed parameters %q, want subject and performer", item.Params)
	}
	item.Params = nil
	if err := b.store.UpdateItem(ctx, item); err != nil {
		t.Fatal(err)
	}
	b.drain(t, 5)
	st, err := b.engine.Status(ctx, job.ID, "")
	if err != nil || st.Phase != Completed {
		t.Fatalf("status %+v, %v", st, err)
	}
	var bySubject []string
	for _, l := range want["Observation"] {
		if !strings.Contains(l, `"id":"perf-only"`) && !strings.Contains(l, `"id":"perf-two-batches"`) {
			bySubject = append(bySubject, l)
		}
	}
	wantExactly(t, b.lines(t, st, 0), map[string][]string{"Observation": bySubject})
}
