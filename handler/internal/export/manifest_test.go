package export

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func files(prefix string, counts ...int64) []File {
	out := make([]File, len(counts))
	for i, c := range counts {
		out[i] = File{Name: fmt.Sprintf("%s-%d.ndjson", prefix, i+1), Count: c, Bytes: 100 * c}
	}
	return out
}

func names(es []ManifestEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, fmt.Sprintf("%s:%s:%s", e.Section, e.Type, e.Name))
	}
	return out
}

// TestManifestFilesListsOnlyFilesThatCannotChange: a running item's last
// file may still grow (or be cut back by the repair after a crash), so it is
// left out; a done item's files are all final; a pending plan has nothing
// final. The order is the complete manifest's.
func TestManifestFilesListsOnlyFilesThatCannotChange(t *testing.T) {
	items := []*WorkItem{
		{ID: "Patient", Type: "Patient", State: ItemDone, Files: files("Patient", 5, 3), ErrorFiles: files("Patient-errors", 1)},
		{ID: "Observation", Type: "Observation", State: ItemPending, Files: files("Observation", 7, 7, 2), ErrorFiles: files("Observation-errors", 1)},
		{ID: PlanItemID, State: ItemPending, Files: files("OperationOutcome", 1)},
		{ID: "Condition.deleted", Type: "Condition", Kind: ItemDeleted, State: ItemDone, Files: files("Condition-deleted", 2)},
	}
	// Until the plan is done, the set of items is not final: nothing is listed.
	if got, ids := manifestFiles(items); got != nil || ids != nil {
		t.Errorf("listed %q of items %q before the plan was done", names(got), ids)
	}
	items[2].State = ItemDone
	listed, ids := manifestFiles(items)
	if !slices.Equal(ids, []string{PlanItemID, "Condition.deleted", "Observation", "Patient"}) {
		t.Errorf("items in manifest order: %q", ids)
	}
	got := names(listed)
	want := []string{
		"error:OperationOutcome:OperationOutcome-1.ndjson",
		"deleted:Bundle:Condition-deleted-1.ndjson",
		"output:Observation:Observation-1.ndjson",
		"output:Observation:Observation-2.ndjson",
		// Observation-3 and the only Observation error file are still open.
		"output:Patient:Patient-1.ndjson",
		"output:Patient:Patient-2.ndjson",
		"error:OperationOutcome:Patient-errors-1.ndjson",
	}
	if !slices.Equal(got, want) {
		t.Errorf("listed\n%q\nwant\n%q", got, want)
	}

	items[1].State = ItemDone
	listed, _ = manifestFiles(items)
	got = names(listed)
	if len(got) != 9 || got[0] != "error:OperationOutcome:OperationOutcome-1.ndjson" {
		t.Errorf("after every item is done: %q; want all 9 files, the plan's warnings first", got)
	}
	// Once complete, the pages list what the complete manifest lists, in its order.
	st := deriveStatus(&Job{}, items)
	var want2 []string
	for _, l := range []struct {
		section string
		files   []OutputFile
	}{{"output", st.Output}, {"deleted", st.Deleted}, {"error", st.Errors}} {
		for _, f := range l.files {
			want2 = append(want2, fmt.Sprintf("%s:%s:%s", l.section, f.Type, f.Name))
		}
	}
	var got2 []string
	for _, section := range []Section{SectionOutput, SectionDeleted, SectionError} {
		for _, e := range listed {
			if e.Section == section {
				got2 = append(got2, fmt.Sprintf("%s:%s:%s", e.Section, e.Type, e.Name))
			}
		}
	}
	if !slices.Equal(got2, want2) {
		t.Errorf("the pages of the complete job list\n%q\nthe manifest lists\n%q", got2, want2)
	}
}

func TestPositionEncoding(t *testing.T) {
	items := []string{PlanItemID, "Observation.w0001", "Observation.w0002", "Patient"}
	p := Position{}
	p.set("Observation.w0002", listFiles, 3)
	p.set("Observation.w0002", listErrors, 1)
	p.set("Patient", listFiles, 2)
	enc := p.Encode(items)
	if enc == "" || enc != p.Encode(items) || strings.ContainsAny(enc, "+/=%&") {
		t.Fatalf("Encode = %q: want the same non-empty base64url text each time", enc)
	}
	q, err := DecodePosition(enc, items)
	if err != nil || q.at("Observation.w0002", listFiles) != 3 || q.at("Observation.w0002", listErrors) != 1 ||
		q.at("Patient", listFiles) != 2 || len(q) != 2 {
		t.Fatalf("DecodePosition(%q) = %v, %v", enc, q, err)
	}
	if z := (Position{}).Encode(items); z != "" {
		t.Errorf("the zero position encodes as %q, want \"\" (the polling URL's)", z)
	}
	for _, bad := range []string{"!!", "AAAA", enc + "A", p.Encode(append(items, "Procedure"))} {
		if _, err := DecodePosition(bad, items); err == nil {
			t.Errorf("DecodePosition(%q) accepted a position no link of this job holds", bad)
		}
	}

	// A job split into 3,000 windows: both positions of a page URL must fit
	// well inside the 8 KiB request line of the Functions front end.
	var many []string
	big := Position{}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 3000 {
		id := fmt.Sprintf("Observation.w%04d", i)
		many = append(many, id)
		big.set(id, listFiles, 1+rng.IntN(4)) // windows of one to four files
		big.set(id, listErrors, rng.IntN(7)/6)
	}
	n := len(big.Encode(many))
	if 2*n+200 > 8<<10 { // two positions, the host, the path: room to spare
		t.Errorf("a position of 3,000 items encodes in %d bytes: a page URL would not fit in 8 KiB", n)
	}
	t.Logf("a position of 3,000 items: %d bytes", n)
	// A page's advance over it is a few counts on zeros: a few bytes.
	step := Position{"Observation.w2999": {1}}
	if d := len(big.Sub(big.Add(step)).Encode(many)); d > 64 {
		t.Errorf("a page's advance encodes in %d bytes", d)
	}
}

// follow is what the HTTP API does for a client that polls while the job
// runs: from its position, a closed page of the files listed now (at most
// limit), then the next position. It returns the files handed out.
func follow(t *testing.T, listed []ManifestEntry, pos Position, limit int) ([]ManifestEntry, Position) {
	t.Helper()
	_, next, _ := PageAfter(listed, pos, limit)
	// The page URL carries pos and how far the page takes it.
	take := pos.Sub(next)
	end := pos.Add(take)
	page, ok := PageBetween(listed, pos, end)
	if !ok {
		t.Fatalf("the page from %v taking %v, just linked to, is refused", pos, take)
	}
	return page, end
}

// TestPagesHandOutEveryFileOnceWhileTheExportRuns grows two items file by
// file, with a client following pages between the steps, and checks that the
// files it was handed are exactly the final manifest's, once each, and that
// every page it saw lists the same files when asked again at the end.
func TestPagesHandOutEveryFileOnceWhileTheExportRuns(t *testing.T) {
	obs := &WorkItem{ID: "Observation", Type: "Observation", State: ItemPending}
	pat := &WorkItem{ID: "Patient", Type: "Patient", State: ItemPending}
	plan := &WorkItem{ID: PlanItemID, State: ItemPending, Files: files("OperationOutcome", 2)}
	items := []*WorkItem{plan, obs, pat}

	type seenPage struct {
		from, to Position
		files    []string
	}
	var got []string // files handed out, with their counts then
	var pages []seenPage
	pos := Position{}
	poll := func() {
		before := pos
		listed, _ := manifestFiles(items)
		page, next := follow(t, listed, pos, 2)
		pos = next
		for _, f := range page {
			got = append(got, fmt.Sprintf("%s:%d", f.Name, f.Count))
		}
		pages = append(pages, seenPage{before, next, names(page)})
	}

	poll()
	plan.State = ItemDone
	for step := range 6 {
		// The last file of a running item is still growing.
		obs.Files = files("Observation", append(slices.Repeat([]int64{10}, step), 3)...)
		if step%2 == 0 {
			pat.Files = files("Patient", slices.Repeat([]int64{4}, step/2+1)...)
			pat.ErrorFiles = files("Patient-errors", slices.Repeat([]int64{1}, step/2+1)...)
		}
		poll()
	}
	obs.Files = append(obs.Files, File{Name: "Observation-7.ndjson"}) // rolled over, nothing written yet
	obs.State, pat.State = ItemDone, ItemDone
	for range 10 {
		poll()
	}

	final := deriveStatus(&Job{}, items)
	var want []string
	for _, f := range append(final.Output, final.Errors...) {
		want = append(want, fmt.Sprintf("%s:%d", f.Name, f.Count))
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("handed out\n%q\nthe final manifest has\n%q", got, want)
	}
	listed, _ := manifestFiles(items)
	if page, _, more := PageAfter(listed, pos, 2); len(page) != 0 || more {
		t.Errorf("after the last page, %q remain", names(page))
	}
	for _, p := range pages {
		again, ok := PageBetween(listed, p.from, p.to)
		if !ok || !slices.Equal(names(again), p.files) {
			t.Errorf("page %v..%v listed %q, and %q (ok %v) at the end", p.from, p.to, p.files, names(again), ok)
		}
	}
}

func TestPageBetweenRefusesPagesNeverLinked(t *testing.T) {
	items := []*WorkItem{{ID: PlanItemID, State: ItemDone}, {ID: "Observation", Type: "Observation", State: ItemPending, Files: files("Observation", 1, 1, 1)}}
	listed, _ := manifestFiles(items) // two files: the third is open
	from := Position{"Observation": {1}}
	for _, to := range []Position{
		{"Observation": {3}},                 // the open file
		{"Observation": {0}},                 // backwards
		{},                                   // backwards
		{"Observation": {1}, "Patient": {1}}, // an item with nothing listed
	} {
		if page, ok := PageBetween(listed, from, to); ok {
			t.Errorf("page %v..%v served %q", from, to, names(page))
		}
	}
	page, ok := PageBetween(listed, from, Position{"Observation": {2}})
	if !ok || !slices.Equal(names(page), []string{"output:Observation:Observation-2.ndjson"}) {
		t.Errorf("page 1..2 = %q, %v", names(page), ok)
	}
}
