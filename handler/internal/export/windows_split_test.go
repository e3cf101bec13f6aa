package export

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// instants is the lastUpdated of every resource of a fake type; count
// answers _summary=count over (after, until] from it.
type instants []time.Time

func (in instants) count(after, until time.Time) int64 {
	var n int64
	for _, t := range in {
		if t.After(after) && !t.After(until) {
			n++
		}
	}
	return n
}

// serialHalving is the split before counts ran at once: depth first, one
// count request at a time, each range halved. splitSpans with maxFan 2 must
// find the same parts.
func serialHalving(s span, limit int64, count func(after, until time.Time) int64) []span {
	var parts []span
	var split func(s span)
	split = func(s span) {
		if s.count <= limit || s.until.Sub(s.after) <= time.Millisecond {
			parts = append(parts, s)
			return
		}
		mid := s.after.Add(s.until.Sub(s.after) / 2).Truncate(time.Millisecond)
		if !mid.After(s.after) {
			mid = s.after.Add(time.Millisecond)
		}
		c := min(max(count(s.after, mid), 0), s.count)
		split(span{s.after, mid, c})
		split(span{mid, s.until, s.count - c})
	}
	split(s)
	return parts
}

// dataSets are lastUpdated distributions that split differently: even,
// bunched in bursts with ties (as copies of one data set share instants),
// and one instant holding more than the limit.
func dataSets() map[string]instants {
	base := time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC)
	rng := rand.New(rand.NewPCG(1, 2))
	even, bursts, tie := instants{}, instants{}, instants{}
	for i := range 500 {
		even = append(even, base.Add(time.Duration(i)*time.Minute))
	}
	for b := range 7 {
		at := base.Add(time.Duration(rng.IntN(400*24)) * time.Hour)
		for i := range 40 + rng.IntN(120) {
			for range 1 + i%3 { // ties: up to three resources a millisecond
				bursts = append(bursts, at.Add(time.Duration(i*(b+1))*time.Millisecond))
			}
		}
	}
	for i := range 60 {
		tie = append(tie, base.Add(time.Duration(i)*time.Second))
	}
	for range 80 {
		tie = append(tie, base.Add(30*time.Second+time.Millisecond))
	}
	return map[string]instants{"even": even, "bursts with ties": bursts, "one instant over the limit": tie}
}

// whole is the span splitting starts from: just before the first instant to
// an upper bound after the last, as splitWindows makes it.
func whole(in instants) span {
	first, last := slices.MinFunc(in, time.Time.Compare), slices.MaxFunc(in, time.Time.Compare)
	return span{first.Truncate(time.Millisecond).Add(-time.Millisecond), last.Add(time.Hour), int64(len(in))}
}

func TestSplitInRoundsFindsTheSerialHalvingsWindows(t *testing.T) {
	for name, in := range dataSets() {
		for _, limit := range []int64{7, 25, 100} {
			t.Run(fmt.Sprintf("%s/limit=%d", name, limit), func(t *testing.T) {
				want := serialHalving(whole(in), limit, in.count)
				got, _, err := splitSpans(context.Background(), whole(in), limit, 2,
					func(_ context.Context, after, until time.Time) (int64, error) { return in.count(after, until), nil })
				if err != nil {
					t.Fatal(err)
				}
				if len(want) < 3 {
					t.Fatalf("the serial split found %d parts: the data set does not test splitting", len(want))
				}
				if !slices.Equal(got, want) {
					t.Errorf("counting in rounds found %d parts, the serial halving %d:\n got %v\nwant %v", len(got), len(want), got, want)
				}
			})
		}
	}
}

// With a fan-out above 2 the parts differ from the halving's (a range is cut
// into up to k parts of equal duration, not in halves), so what must hold is
// what the windows promise: the parts cover the range without gap or
// overlap, each holds what the source counts in it, and only a single
// instant holds more than the limit; and the plan waits for fewer rounds of
// round trips than halving takes.
func TestSplitWithAWideFanOutKeepsTheWindowRulesInFewerRounds(t *testing.T) {
	for name, in := range dataSets() {
		for _, limit := range []int64{7, 25, 100} {
			t.Run(fmt.Sprintf("%s/limit=%d", name, limit), func(t *testing.T) {
				count := func(_ context.Context, after, until time.Time) (int64, error) { return in.count(after, until), nil }
				s := whole(in)
				parts, rounds, err := splitSpans(context.Background(), s, limit, maxFanOut, count)
				if err != nil {
					t.Fatal(err)
				}
				var sum int64
				for i, p := range parts {
					if i == 0 && !p.after.Equal(s.after) || i > 0 && !p.after.Equal(parts[i-1].until) {
						t.Errorf("part %d starts at %v: a gap or an overlap", i, p.after)
					}
					if c := in.count(p.after, p.until); c != p.count {
						t.Errorf("part %d (%v, %v] was sized %d, holds %d", i, p.after, p.until, p.count, c)
					}
					if p.count > limit && p.until.Sub(p.after) > time.Millisecond {
						t.Errorf("part %d holds %d > %d resources over more than one instant", i, p.count, limit)
					}
					sum += p.count
				}
				if !parts[len(parts)-1].until.Equal(s.until) || sum != s.count {
					t.Errorf("the parts end at %v and hold %d; want %v and %d", parts[len(parts)-1].until, sum, s.until, s.count)
				}
				_, halving, err := splitSpans(context.Background(), s, limit, 2, count)
				if err != nil {
					t.Fatal(err)
				}
				if rounds >= halving {
					t.Errorf("fan-out %d took %d rounds of counts, halving %d: no fewer round trips", maxFanOut, rounds, halving)
				}
			})
		}
	}
}

// The counts of one round are in flight together: a count that waits until
// all of its round have started is answered, where a split that counted
// one at a time would wait forever (the guard fails it instead).
func TestSplitCountsARoundAtOnce(t *testing.T) {
	in := dataSets()["even"] // 500 resources, one a minute
	const limit = 50         // 10 parts' worth: the first round cuts into maxFanOut parts
	var mu sync.Mutex
	inFlight, most := 0, 0
	all := make(chan struct{})
	guard := time.After(10 * time.Second)
	count := func(ctx context.Context, after, until time.Time) (int64, error) {
		mu.Lock()
		inFlight++
		most = max(most, inFlight)
		if most == maxFanOut-1 {
			select {
			case <-all:
			default:
				close(all)
			}
		}
		mu.Unlock()
		defer func() { mu.Lock(); inFlight--; mu.Unlock() }()
		select {
		case <-all:
		case <-guard:
			return 0, fmt.Errorf("only %d counts were in flight together, want the %d of the first round", most, maxFanOut-1)
		}
		return in.count(after, until), nil
	}
	parts, rounds, err := splitSpans(context.Background(), whole(in), limit, maxFanOut, count)
	if err != nil {
		t.Fatal(err)
	}
	if most < maxFanOut-1 {
		t.Errorf("at most %d counts in flight together, want %d", most, maxFanOut-1)
	}
	if len(parts) < int(int64(len(in))/limit) || rounds != 1 {
		t.Errorf("%d parts in %d rounds; 500 evenly spread resources and a limit of 50 need at least 10 parts in one round", len(parts), rounds)
	}
}

// Windows run at once, so the largest decides how long a type takes: the
// merge evens the windows out without making more of them.
func TestMergedWindowsAreEvenedOutWithoutMoreItems(t *testing.T) {
	base := time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC)
	var parts []span
	for i, n := range []int64{1900, 100, 1000, 1000, 100} {
		parts = append(parts, span{base.Add(time.Duration(i) * time.Hour), base.Add(time.Duration(i+1) * time.Hour), n})
	}
	sizes := func(ss []span) []int64 {
		var out []int64
		for i, s := range ss {
			if i > 0 && !s.after.Equal(ss[i-1].until) {
				t.Errorf("window %d starts at %v, the one before ends at %v", i, s.after, ss[i-1].until)
			}
			out = append(out, s.count)
		}
		return out
	}
	if got, want := sizes(mergeSpans(parts, 2000)), []int64{2000, 2000, 100}; !slices.Equal(got, want) {
		t.Fatalf("merging up to the limit gives %v, want %v: the premise of this test", got, want)
	}
	got := mergeSpans(parts, balancedCap(parts, 2000))
	if s, want := sizes(got), []int64{1900, 1100, 1100}; !slices.Equal(s, want) {
		t.Errorf("evened out: %v, want %v (three windows, the largest as small as the parts allow)", s, want)
	}
	if !got[0].after.Equal(parts[0].after) || !got[len(got)-1].until.Equal(parts[len(parts)-1].until) {
		t.Errorf("the windows cover (%v, %v], want (%v, %v]", got[0].after, got[len(got)-1].until, parts[0].after, parts[len(parts)-1].until)
	}
}
