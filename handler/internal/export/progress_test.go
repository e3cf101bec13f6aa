package export

import "testing"

func TestStatusProgress(t *testing.T) {
	plan := func(state ItemState, expected int64) *WorkItem {
		return &WorkItem{ID: PlanItemID, State: state, Expected: expected}
	}
	item := func(typ string, state ItemState, done, expected int64) *WorkItem {
		return &WorkItem{ID: typ, Type: typ, State: state, Done: done, Expected: expected}
	}
	for _, tc := range []struct {
		name        string
		items       []*WorkItem
		wantPercent int
		wantItems   [2]int // done, total
		wantPlanned bool
	}{
		{name: "planning", items: []*WorkItem{plan(ItemPending, 0)}},
		{name: "planning with some items already created", items: []*WorkItem{plan(ItemPending, 0), item("Patient", ItemDone, 10, 10)},
			wantItems: [2]int{1, 1}},
		{name: "exact counts: resources written of the total",
			items:       []*WorkItem{plan(ItemDone, 38483), item("Observation", ItemPending, 16531, 30000), item("Patient", ItemPending, 0, 8483)},
			wantPercent: 42, wantItems: [2]int{0, 2}, wantPlanned: true}, // 16531/38483 = 42.96%
		{name: "upper bounds: a finished item counts in full",
			items:       []*WorkItem{plan(ItemDone, 0), item("Observation", ItemPending, 100, 3000), item("Patient", ItemDone, 4, 1000)},
			wantPercent: 27, wantItems: [2]int{1, 2}, wantPlanned: true}, // (100 + 1000) / 4000
		{name: "upper bounds: a running item is credited at most its count",
			items:       []*WorkItem{plan(ItemDone, 0), item("Observation", ItemPending, 5000, 3000), item("Patient", ItemPending, 0, 1000)},
			wantPercent: 75, wantItems: [2]int{0, 2}, wantPlanned: true},
		{name: "every item written but not yet finished stays below 100",
			items:       []*WorkItem{plan(ItemDone, 20), item("Observation", ItemPending, 10, 10), item("Patient", ItemPending, 10, 10)},
			wantPercent: 99, wantItems: [2]int{0, 2}, wantPlanned: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := deriveStatus(&Job{}, tc.items)
			if st.Phase != InProgress {
				t.Fatalf("phase %v, want in progress", st.Phase)
			}
			if st.Percent != tc.wantPercent || st.ItemsDone != tc.wantItems[0] || st.ItemsTotal != tc.wantItems[1] || st.Planned != tc.wantPlanned {
				t.Errorf("percent %d, items %d of %d, planned %v; want %d, %d of %d, %v",
					st.Percent, st.ItemsDone, st.ItemsTotal, st.Planned, tc.wantPercent, tc.wantItems[0], tc.wantItems[1], tc.wantPlanned)
			}
		})
	}
}

// TestStatusProgressOnlyGrows follows one export item by item, checkpoint by
// checkpoint: the percentage a client sees never goes back.
func TestStatusProgressOnlyGrows(t *testing.T) {
	items := []*WorkItem{{ID: PlanItemID, State: ItemPending},
		{ID: "Observation", Type: "Observation", State: ItemPending, Expected: 500},
		{ID: "Patient", Type: "Patient", State: ItemPending, Expected: 50}}
	last := -1
	check := func(step string) {
		t.Helper()
		p := deriveStatus(&Job{}, items).Percent
		if p < last || p > 99 {
			t.Fatalf("%s: %d%% after %d%%", step, p, last)
		}
		last = p
	}
	check("planning")
	items[0].State = ItemDone
	check("planned")
	for items[1].Done < 400 { // the source's count was an upper bound: 400 of 500 match
		items[1].Done += 37
		check("Observation checkpoint")
	}
	items[1].State = ItemDone
	check("Observation done")
	for items[2].Done < 50 {
		items[2].Done += 10
		check("Patient checkpoint")
	}
	if last < 90 {
		t.Errorf("%d%% with every resource written", last)
	}
}

// The associated Provenance phase (includeAssociatedData) is weighed from the
// plan on, by what it will look up, and credited as its cursor moves: the
// percentage grows through it instead of waiting at 99.
func TestStatusProgressGrowsThroughTheAssociatedPhase(t *testing.T) {
	items := []*WorkItem{{ID: PlanItemID, State: ItemDone, Expected: 500},
		{ID: "Observation", Type: "Observation", State: ItemPending, Expected: 500},
		{ID: "Provenance.associated", Type: "Provenance", Kind: ItemAssociated, State: ItemPending, Expected: 500}}
	if st := deriveStatus(&Job{}, items); st.TotalKnown {
		t.Errorf("the total is %d and known; want it unknown, as the Provenance the phase adds are not counted ahead", st.Total)
	}
	last := -1
	check := func(step string) int {
		t.Helper()
		p := deriveStatus(&Job{}, items).Percent
		if p < last || p > 99 {
			t.Fatalf("%s: %d%% after %d%%", step, p, last)
		}
		last = p
		return p
	}
	check("planned")
	items[1].Done, items[1].State = 500, ItemDone
	if p := check("Observation done"); p != 50 {
		t.Errorf("%d%% with the search done and the associated phase to come; want 50", p)
	}
	items[2].Done = 3 // Provenance written: not what the phase is weighed by
	for items[2].Cursor.Page < 500 {
		items[2].Cursor.Page += 100
		check("associated step")
	}
	if last != 99 {
		t.Errorf("%d%% with every reference looked up; want 99", last)
	}
}
