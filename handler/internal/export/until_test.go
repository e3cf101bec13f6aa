package export_test

import (
	"testing"
	"time"

	. "github.com/azfhir/bulkexport/handler/internal/export"
)

func TestUntilBoundsTheDataWithSinceAndNeverPassesTheTransactionTime(t *testing.T) {
	b := setup(t, Settings{}, nil)
	old := resource("Patient", "old", t0, "")
	mid := resource("Patient", "mid", t0.Add(20*time.Minute), "")
	edge := resource("Patient", "edge", t0.Add(40*time.Minute), "") // exactly at _until: included
	after := resource("Patient", "after", t0.Add(50*time.Minute), "")
	late := resource("Patient", "late", b.source.now.Add(time.Minute), "") // after the transaction time
	for _, r := range []string{old, mid, edge, after, late} {
		b.source.add(r)
	}
	since, until := t0.Add(time.Minute), t0.Add(40*time.Minute)
	cases := []struct {
		name string
		req  Request
		want []string
	}{
		{"since and until", Request{Level: LevelSystem, Since: &since, Until: &until}, []string{mid, edge}},
		{"until alone", Request{Level: LevelSystem, Until: &until}, []string{old, mid, edge}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := b.export(t, c.req, 5)
			var want []string
			for _, r := range c.want {
				want = append(want, compact(r))
			}
			wantExactly(t, b.lines(t, st, 0), map[string][]string{"Patient": want})
		})
	}
	t.Run("an _until after the transaction time is capped by it", func(t *testing.T) {
		future := b.source.now.Add(time.Hour)
		st := b.export(t, Request{Level: LevelSystem, Since: &since, Until: &future}, 5)
		wantExactly(t, b.lines(t, st, 0), map[string][]string{"Patient": {compact(mid), compact(edge), compact(after)}})
	})
}
