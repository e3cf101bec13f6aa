// Package storetest is the conformance suite of the engine's storage ports:
// the same cases run against the in-memory implementation (memstore) and the
// Azure one (azstore on Azurite), so that unit tests on memstore prove
// something about production. Each Run function is a set of t.Run cases.
package storetest

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// RunStore checks an export.Store. newStore returns an empty store for each case.
func RunStore(t *testing.T, newStore func(t *testing.T) export.Store) {
	cases := []struct {
		name string
		run  func(t *testing.T, s export.Store)
	}{
		{"JobRoundTrip", testJobRoundTrip},
		{"ItemRoundTripLarge", testItemRoundTripLarge},
		{"ItemMultiByteText", testItemMultiByteText},
		{"StaleJobETag", testStaleJobETag},
		{"StaleItemETag", testStaleItemETag},
		{"UpdateWithoutETag", testUpdateWithoutETag},
		{"CreateTwice", testCreateTwice},
		{"Missing", testMissing},
		{"InvalidIDs", testInvalidIDs},
		{"ListItems", testListItems},
		{"ListItemsPaged", testListItemsPaged},
		{"Members", testMembers},
		{"OwnerIndex", testOwnerIndex},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.run(t, newStore(t))
		})
	}
}

var (
	t0 = time.Date(2026, 11, 27, 10, 15, 2, 123456789, time.UTC)
	t1 = t0.Add(90 * time.Minute)
)

func sampleJob(id string) *export.Job {
	since := t0.Add(-48 * time.Hour)
	until := t0.Add(-time.Hour)
	return &export.Job{
		ID: id,
		Request: export.Request{
			Level:        export.LevelGroup,
			GroupID:      "g-1",
			Types:        []string{"Patient", "Observation"},
			Since:        &since,
			Until:        &until,
			TypeFilters:  []export.TypeFilter{{Type: "Observation", Query: "code=1234-5&status=final"}},
			Container:    "exports",
			OutputFormat: "application/fhir+ndjson",
			RequestURL:   "https://fhir.example/Group/g-1/$export?_type=Patient,Observation",
			Warnings:     []string{"ignored organizeOutputBy"},
			Owner:        strings.Repeat("ab", 32),
			Elements:     []string{"id", "Observation.status"},
			Patients:     maxPatients(),
			// Partial manifests change what status polls answer.
			AllowPartialManifests: true,
			IncludeAssociated:     export.LatestProvenance,
			Lenient:               true,
			// Every work item loads exactly this configuration version.
			AnonymizationConfig: "configs/hipaa-r4.json",
			AnonymizationETag:   `"0x8DC1234567890AB"`,
		},
		TransactionTime: t0,
		CreatedAt:       t0.Add(time.Second),
		State:           export.JobActive,
	}
}

// maxPatients is a patient parameter at the HTTP API's limit (1000 ids of
// 64 characters), so the round trip proves a job row holds the largest one.
func maxPatients() []string {
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = fmt.Sprintf("%04d%s", i, strings.Repeat("p", 60))
	}
	return ids
}

func sampleItem(jobID, id string) *export.WorkItem {
	return &export.WorkItem{
		JobID: jobID,
		ID:    id,
		Type:  id,
		State: export.ItemPending,
		Cursor: export.Cursor{Query: 1, Batch: 2, Next: "https://fhir.example/Observation?_getpages=abc&_offset=400",
			After: t1.Add(-time.Hour), Ties: []string{"o-1", "o-2"}, Page: 5, Param: 1, Offset: 123456},
		Params:      []string{"subject", "performer"},
		Files:       []export.File{{Name: id + "-1.ndjson", Count: 10, Bytes: 4096}},
		Blocks:      3,
		Done:        10,
		Expected:    25,
		Skipped:     1,
		Failure:     "source said no",
		FailureCode: "not-supported",
		FailureKind: "permanent",
		Attempts:    2,
		UpdatedAt:   t1,
		LeaseOwner:  "instance-1/invocation-7",
		LeaseUntil:  t1.Add(10 * time.Minute),
		BlobETag:    `"0x8DCAFE"`,
		Batches:     4,
		Kind:        export.ItemDeleted,
		Window:      &export.Window{N: 3, After: t1.Add(-2 * time.Hour), Until: t1.Add(-time.Hour)},
		Planned: []export.PlannedItem{
			{ID: id + ".w0001", Type: id, Expected: 2000, Params: []string{"subject"}, Window: &export.Window{N: 1, After: t1.Add(-4 * time.Hour), Until: t1.Add(-3 * time.Hour)}},
			{ID: id + ".deleted", Type: id},
		},

		ErrorFiles:    []export.File{{Name: id + "-errors-1.ndjson", Count: 2, Bytes: 300}},
		ErrorBlocks:   1,
		ErrorBlobETag: `"0x8DBEEF"`,
		ErrorCount:    2,
	}
}

// manyFiles returns n files whose JSON is about 70 bytes each.
func manyFiles(n int) []export.File {
	files := make([]export.File, n)
	for i := range files {
		files[i] = export.File{Name: fmt.Sprintf("Observation-%05d.ndjson", i+1), Count: int64(1000 + i), Bytes: 64 << 20}
	}
	return files
}

func testJobRoundTrip(t *testing.T, s export.Store) {
	ctx := t.Context()
	job := sampleJob("job-roundtrip")
	job.CancelledAt = t1
	requireAllSet(t, job, "sample job")
	mustOK(t, s.CreateJob(ctx, job), "CreateJob")
	if job.ETag == "" {
		t.Fatal("CreateJob did not set the ETag")
	}
	got := mustGetJob(t, s, job.ID)
	wantEqual(t, got, job, "job after create")

	got.State = export.JobCancelled
	got.CancelledAt = t1.Add(time.Hour)
	old := got.ETag
	mustOK(t, s.UpdateJob(ctx, got), "UpdateJob")
	if got.ETag == "" || got.ETag == old {
		t.Fatalf("UpdateJob set ETag %q, want a new one (was %q)", got.ETag, old)
	}
	wantEqual(t, mustGetJob(t, s, job.ID), got, "job after update")
}

func testItemRoundTripLarge(t *testing.T, s export.Store) {
	ctx := t.Context()
	item := sampleItem("job-large", "Observation")
	item.Files = manyFiles(2000)
	requireAllSet(t, item, "sample item")
	if n := jsonLen(t, item); n <= 130_000 {
		t.Fatalf("test item JSON is %d bytes, want > 130,000", n)
	}
	mustOK(t, s.CreateItem(ctx, item), "CreateItem")
	if item.ETag == "" {
		t.Fatal("CreateItem did not set the ETag")
	}
	got := mustGetItem(t, s, item.JobID, item.ID)
	wantEqual(t, got, item, "item after create")

	// Shrinking must not leave old chunks behind; growing must add them.
	for _, n := range []int{1, 3000} {
		got.Files = manyFiles(n)
		got.Done = int64(n)
		mustOK(t, s.UpdateItem(ctx, got), "UpdateItem")
		wantEqual(t, mustGetItem(t, s, item.JobID, item.ID), got, fmt.Sprintf("item with %d files", n))
	}
}

func testItemMultiByteText(t *testing.T, s export.Store) {
	ctx := t.Context()
	item := sampleItem("job-utf8", "Patient")
	// Runes of 2, 3 and 4 bytes make chunk boundaries fall inside runes.
	item.Failure = strings.Repeat("é€😀x", 12_000)
	mustOK(t, s.CreateItem(ctx, item), "CreateItem")
	wantEqual(t, mustGetItem(t, s, item.JobID, item.ID), item, "item with multi-byte text")
}

func testStaleJobETag(t *testing.T, s export.Store) {
	ctx := t.Context()
	job := sampleJob("job-stale")
	mustOK(t, s.CreateJob(ctx, job), "CreateJob")
	a, b := mustGetJob(t, s, job.ID), mustGetJob(t, s, job.ID)
	a.State = export.JobCancelled
	mustOK(t, s.UpdateJob(ctx, a), "first UpdateJob")
	b.Request.Warnings = []string{"lost update"}
	wantKind(t, s.UpdateJob(ctx, b), fault.Conflict, "UpdateJob with a stale ETag")
	wantEqual(t, mustGetJob(t, s, job.ID), a, "job after the lost race")
}

func testStaleItemETag(t *testing.T, s export.Store) {
	ctx := t.Context()
	item := sampleItem("job-stale", "Condition")
	mustOK(t, s.CreateItem(ctx, item), "CreateItem")
	a, b := mustGetItem(t, s, item.JobID, item.ID), mustGetItem(t, s, item.JobID, item.ID)
	a.Done = 99
	mustOK(t, s.UpdateItem(ctx, a), "first UpdateItem")
	b.Done = 42
	wantKind(t, s.UpdateItem(ctx, b), fault.Conflict, "UpdateItem with a stale ETag")
	wantEqual(t, mustGetItem(t, s, item.JobID, item.ID), a, "item after the lost race")
	// The ETag the create returned is stale too.
	wantKind(t, s.UpdateItem(ctx, item), fault.Conflict, "UpdateItem with the create's ETag")
}

func testUpdateWithoutETag(t *testing.T, s export.Store) {
	ctx := t.Context()
	job := sampleJob("job-noetag")
	mustOK(t, s.CreateJob(ctx, job), "CreateJob")
	job.ETag = ""
	job.State = export.JobCancelled
	wantKind(t, s.UpdateJob(ctx, job), fault.Internal, "UpdateJob without an ETag")
	if got := mustGetJob(t, s, job.ID); got.State != export.JobActive {
		t.Fatalf("job state %q after a refused update, want %q", got.State, export.JobActive)
	}
}

func testCreateTwice(t *testing.T, s export.Store) {
	ctx := t.Context()
	job := sampleJob("job-twice")
	mustOK(t, s.CreateJob(ctx, job), "CreateJob")
	again := sampleJob(job.ID)
	again.State = export.JobCancelled
	wantKind(t, s.CreateJob(ctx, again), fault.Conflict, "second CreateJob")
	wantEqual(t, mustGetJob(t, s, job.ID), job, "job after a second create")

	item := sampleItem(job.ID, "Observation")
	mustOK(t, s.CreateItem(ctx, item), "CreateItem")
	dup := sampleItem(job.ID, "Observation")
	dup.Done = 7
	wantKind(t, s.CreateItem(ctx, dup), fault.Conflict, "second CreateItem")
	wantEqual(t, mustGetItem(t, s, item.JobID, item.ID), item, "item after a second create")
}

func testMissing(t *testing.T, s export.Store) {
	ctx := t.Context()
	_, err := s.GetJob(ctx, "job-none")
	wantKind(t, err, fault.NotFound, "GetJob of a missing job")
	_, err = s.GetItem(ctx, "job-none", "Observation")
	wantKind(t, err, fault.NotFound, "GetItem of a missing job")

	job := sampleJob("job-present")
	mustOK(t, s.CreateJob(ctx, job), "CreateJob")
	_, err = s.GetItem(ctx, job.ID, "Observation")
	wantKind(t, err, fault.NotFound, "GetItem of a missing item")
	_, err = s.GetItem(ctx, job.ID, export.PlanItemID)
	wantKind(t, err, fault.NotFound, "GetItem of a missing plan item")
	_, err = s.GetMembers(ctx, job.ID, 0)
	wantKind(t, err, fault.NotFound, "GetMembers of a missing batch")

	ghost := sampleJob("job-ghost")
	ghost.ETag = job.ETag
	wantKind(t, s.UpdateJob(ctx, ghost), fault.NotFound, "UpdateJob of a missing job")
	item := sampleItem(job.ID, "Observation")
	item.ETag = job.ETag
	wantKind(t, s.UpdateItem(ctx, item), fault.NotFound, "UpdateItem of a missing item")
}

func testInvalidIDs(t *testing.T, s export.Store) {
	ctx := t.Context()
	for _, id := range []string{"a/b", `a\b`, "a#b", "a?b", "a\tb", ""} {
		_, err := s.GetJob(ctx, id)
		wantKind(t, err, fault.NotFound, fmt.Sprintf("GetJob(%q)", id))
		_, err = s.GetItem(ctx, "job", id)
		wantKind(t, err, fault.NotFound, fmt.Sprintf("GetItem(job, %q)", id))
		if err := s.CreateJob(ctx, sampleJob(id)); err == nil {
			t.Errorf("CreateJob(%q) succeeded, want an error", id)
		}
	}
}

func testListItems(t *testing.T, s export.Store) {
	ctx := t.Context()
	job, other := sampleJob("job-list"), sampleJob("job-list2")
	mustOK(t, s.CreateJob(ctx, job), "CreateJob")
	mustOK(t, s.CreateJob(ctx, other), "CreateJob")
	var want []*export.WorkItem
	for _, id := range []string{"Patient", export.PlanItemID, "Observation"} {
		item := sampleItem(job.ID, id)
		mustOK(t, s.CreateItem(ctx, item), "CreateItem")
		want = append(want, item)
	}
	mustOK(t, s.CreateItem(ctx, sampleItem(other.ID, "Encounter")), "CreateItem")
	mustOK(t, s.PutMembers(ctx, job.ID, 0, []string{"p1", "p2"}), "PutMembers")
	// Updating must not change what is listed, only the ETag.
	want[0].Done = 11
	mustOK(t, s.UpdateItem(ctx, want[0]), "UpdateItem")

	got, err := s.ListItems(ctx, job.ID)
	mustOK(t, err, "ListItems")
	byID := map[string]*export.WorkItem{}
	for _, item := range got {
		byID[item.ID] = item
	}
	if len(got) != len(want) || len(byID) != len(want) {
		t.Fatalf("ListItems returned %d items %v, want %d", len(got), ids(got), len(want))
	}
	for _, w := range want {
		wantEqual(t, byID[w.ID], w, "listed item "+w.ID)
	}

	none, err := s.ListItems(ctx, "job-without-items")
	mustOK(t, err, "ListItems of a job without items")
	if len(none) != 0 {
		t.Fatalf("ListItems of a job without items returned %v", ids(none))
	}
}

// testListItemsPaged makes the table service answer in more than one page
// (1,000 entities per page).
func testListItemsPaged(t *testing.T, s export.Store) {
	ctx := t.Context()
	const n = 1010
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			item := sampleItem("job-paged", fmt.Sprintf("Type%04d", i))
			item.Files = nil
			errs <- s.CreateItem(ctx, item)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		mustOK(t, err, "CreateItem")
	}
	got, err := s.ListItems(ctx, "job-paged")
	mustOK(t, err, "ListItems")
	seen := map[string]bool{}
	for _, item := range got {
		seen[item.ID] = true
	}
	if len(got) != n || len(seen) != n {
		t.Fatalf("ListItems returned %d items (%d distinct), want %d", len(got), len(seen), n)
	}
}

func testMembers(t *testing.T, s export.Store) {
	ctx := t.Context()
	big := make([]string, 5000)
	for i := range big {
		big[i] = fmt.Sprintf("patient-%08d-0000-4000-8000-%012d", i, i)
	}
	mustOK(t, s.PutMembers(ctx, "job-members", 0, big), "PutMembers big")
	mustOK(t, s.PutMembers(ctx, "job-members", 1, []string{"a", "b.c", "D-9"}), "PutMembers small")
	wantMembers(t, s, "job-members", 0, big)
	wantMembers(t, s, "job-members", 1, []string{"a", "b.c", "D-9"})

	mustOK(t, s.PutMembers(ctx, "job-members", 0, []string{"only"}), "PutMembers overwrite")
	wantMembers(t, s, "job-members", 0, []string{"only"})
	mustOK(t, s.PutMembers(ctx, "job-members", 2, nil), "PutMembers empty")
	wantMembers(t, s, "job-members", 2, nil)

	if err := s.PutMembers(ctx, "job-members", 3, []string{"a,b"}); err == nil {
		t.Error("PutMembers with a comma in an id succeeded, want an error")
	}
	_, err := s.GetMembers(ctx, "job-members", 3)
	wantKind(t, err, fault.NotFound, "GetMembers of a refused batch")
}

// testOwnerIndex: each owner sees just its own job ids, in id order; adding
// twice lists once; removing one (or one never added) leaves the others.
func testOwnerIndex(t *testing.T, s export.Store) {
	ctx := t.Context()
	alice, bob := strings.Repeat("a1", 32), strings.Repeat("b2", 32)
	got, err := s.OwnerJobs(ctx, alice)
	mustOK(t, err, "OwnerJobs of an empty index")
	if len(got) != 0 {
		t.Fatalf("OwnerJobs of an empty index = %q, want none", got)
	}
	for _, id := range []string{"job-3", "job-1", "job-2", "job-1"} {
		mustOK(t, s.AddOwnerJob(ctx, alice, id), "AddOwnerJob "+id)
	}
	mustOK(t, s.AddOwnerJob(ctx, bob, "job-9"), "AddOwnerJob bob")
	wantOwnerJobs(t, s, alice, []string{"job-1", "job-2", "job-3"})
	wantOwnerJobs(t, s, bob, []string{"job-9"})

	mustOK(t, s.RemoveOwnerJob(ctx, alice, "job-2"), "RemoveOwnerJob")
	mustOK(t, s.RemoveOwnerJob(ctx, alice, "job-never"), "RemoveOwnerJob of a job never added")
	mustOK(t, s.RemoveOwnerJob(ctx, alice, "job-9"), "RemoveOwnerJob of another owner's job")
	wantOwnerJobs(t, s, alice, []string{"job-1", "job-3"})
	wantOwnerJobs(t, s, bob, []string{"job-9"})
}

func wantOwnerJobs(t *testing.T, s export.Store, owner string, want []string) {
	t.Helper()
	got, err := s.OwnerJobs(t.Context(), owner)
	mustOK(t, err, "OwnerJobs")
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("OwnerJobs(%s...) = %q, want %q", owner[:4], got, want)
	}
}

func wantMembers(t *testing.T, s export.Store, jobID string, index int, want []string) {
	t.Helper()
	got, err := s.GetMembers(t.Context(), jobID, index)
	mustOK(t, err, "GetMembers")
	if len(got) != len(want) || (len(want) > 0 && !reflect.DeepEqual(got, want)) {
		t.Fatalf("GetMembers(%s, %d) = %d ids, want %d (first got %q)", jobID, index, len(got), len(want), first(got))
	}
}

// requireAllSet fails if a sample leaves an exported field (other than ETag)
// zero, so that a field added to the model is covered by the round trips.
func requireAllSet(t *testing.T, v any, what string) {
	t.Helper()
	for _, path := range zeroFields(reflect.ValueOf(v), what) {
		t.Errorf("%s is zero: set it in the storetest sample so the round trip covers it", path)
	}
}

func zeroFields(v reflect.Value, path string) []string {
	if v.IsZero() {
		return []string{path}
	}
	switch v.Kind() {
	case reflect.Pointer:
		return zeroFields(v.Elem(), path)
	case reflect.Slice:
		if v.Len() == 0 {
			return []string{path}
		}
		return zeroFields(v.Index(0), path+"[0]")
	case reflect.Struct:
		var out []string
		for i := range v.NumField() {
			f := v.Type().Field(i)
			if f.IsExported() && f.Name != "ETag" {
				out = append(out, zeroFields(v.Field(i), path+"."+f.Name)...)
			}
		}
		return out
	}
	return nil
}

func mustGetJob(t *testing.T, s export.Store, id string) *export.Job {
	t.Helper()
	job, err := s.GetJob(t.Context(), id)
	mustOK(t, err, "GetJob")
	return job
}

func mustGetItem(t *testing.T, s export.Store, jobID, id string) *export.WorkItem {
	t.Helper()
	item, err := s.GetItem(t.Context(), jobID, id)
	mustOK(t, err, "GetItem")
	return item
}

func mustOK(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func wantKind(t *testing.T, err error, kind fault.Kind, what string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want %s", what, kind)
	}
	if got := fault.KindOf(err); got != kind {
		t.Fatalf("%s: %s error %v, want %s", what, got, err, kind)
	}
}

// wantEqual compares every field, ETag included.
func wantEqual[T any](t *testing.T, got, want *T, what string) {
	t.Helper()
	if got == nil || !reflect.DeepEqual(got, want) {
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		t.Fatalf("%s differs:\n got  %.600s\n want %.600s\n(ETags or other fields outside the JSON may differ)", what, g, w)
	}
}

func jsonLen(t *testing.T, v any) int {
	t.Helper()
	b, err := json.Marshal(v)
	mustOK(t, err, "marshal")
	return len(b)
}

func ids(items []*export.WorkItem) []string {
	out := make([]string, len(items))
	for i, item := range items {
		out[i] = item.ID
	}
	return out
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}
