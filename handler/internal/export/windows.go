package export

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/fhir"
)

// A type with many resources is one work item per _lastUpdated window, so
// that its pages are fetched by several workers at once instead of one after
// another. Each window is an ordinary work item (its own cursor, lease,
// checkpoints, repair and files) whose searches carry the window's bounds
// instead of the job's; nothing else differs, so the exactly-once argument of
// docs/design.md holds for each window, and the windows of a type partition
// its range: (after, b1], (b1, b2], ..., (bn-1, upper]. A resource has one
// lastUpdated, so it is in exactly one window; the server evaluates gt b and
// le b on the same instant, so an instant is never split across windows and
// resources that share one stay together.

const (
	// maxWindows caps the windows of one type, and so the count requests the
	// plan makes for it and the size of the plan row that records them.
	maxWindows = 1000
	// windowDigits is the width of the window number in item ids and file
	// names, so that they sort in window order as text.
	windowDigits = 4
)

// windowItemID is the id of window n of type t: "Observation.w0003".
func windowItemID(t string, n int) string { return fmt.Sprintf("%s.w%0*d", t, windowDigits, n) }

// filePrefix is the name prefix of an item's files: its type, and for a
// window its number ("Observation-w0003"), so that a manifest sorted by
// type, then item, lists files by type, window and roll-over number.
func filePrefix(item *WorkItem) string {
	if item.Window == nil {
		return item.Type
	}
	return fmt.Sprintf("%s-w%0*d", item.Type, windowDigits, item.Window.N)
}

// windowJob returns a copy of job whose bounds are those of the item's
// window, so that every search the item makes (boundsQuery) carries them.
func windowJob(job *Job, w *Window) *Job {
	if w == nil {
		return job
	}
	wj := *job
	wj.Request.Since = nil
	if !w.After.IsZero() {
		after := w.After
		wj.Request.Since = &after
	}
	wj.Request.Until = nil
	wj.TransactionTime = w.Until
	return &wj
}

// errNoWindows is why a type was not split: counting or finding its first
// instant failed. The type is then one item, as with windows off.
var errNoWindows = errors.New("cannot split into windows")

// errRenew marks a failure to renew the plan's lease while splitting: the
// plan stops (another invocation may own it), it does not fall back.
var errRenew = errors.New("renew the plan's lease")

const (
	// maxFanOut caps the parts one range is cut into per round of counting.
	maxFanOut = 16
	// countsInFlight caps the goroutines that wait to count at once during a
	// plan. It is not what bounds the load on the source: the source's own
	// limiter (fhirsource, EXPORT_SOURCE_CONCURRENCY) caps the requests in
	// flight per process, for the plan and the running items together.
	countsInFlight = 64
)

// typeToPlan is a type the plan has to count: its name and, for a Patient or
// Group export, its compartment search parameters.
type typeToPlan struct {
	Type   string
	Params []string
}

// renewer renews the plan's lease (records the plan item) whenever a
// quarter of the lease has passed since the last renewal. Counting runs on
// several goroutines; they share one renewer, which records the item one
// call at a time.
type renewer struct {
	mu    sync.Mutex
	e     *Engine
	last  time.Time
	renew func() error
}

func (r *renewer) due() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := r.e.now(); now.Sub(r.last) >= r.e.set.Lease/4 {
		if err := r.renew(); err != nil {
			return fmt.Errorf("%w: %w", errRenew, err)
		}
		r.last = now
	}
	return nil
}

// planItems counts every type and splits the large ones into windows, and
// returns the planned items in type order, then window order; types without
// data in the job's bounds get none. On a source that answers in hundreds of
// milliseconds the plan is a chain of round trips, so the types are counted
// at once, and so are the parts of a range (splitWindows): the plan takes
// one round trip per level of splitting instead of one per count. The result
// does not depend on the order the answers come in.
func (e *Engine) planItems(ctx context.Context, job *Job, types []typeToPlan, renew func() error) ([]PlannedItem, error) {
	r := &renewer{e: e, last: e.now(), renew: renew}
	sem := make(chan struct{}, countsInFlight)
	perType := make([][]PlannedItem, len(types))
	g, gctx := errgroup.WithContext(ctx)
	for i, tp := range types {
		g.Go(func() error {
			items, err := e.planType(gctx, job, tp, sem, r)
			perType[i] = items
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	var out []PlannedItem
	for _, items := range perType {
		out = append(out, items...)
	}
	return out, nil
}

// planType counts type tp and returns its planned items: none when it has no
// data, its windows when it is split, or else one item.
func (e *Engine) planType(ctx context.Context, job *Job, tp typeToPlan, sem chan struct{}, r *renewer) ([]PlannedItem, error) {
	t := tp.Type
	sem <- struct{}{}
	n, err := e.source.Count(ctx, t, boundsQuery(job).Encode())
	<-sem
	if err != nil {
		return nil, fmt.Errorf("count %s on the source: %w", t, err)
	}
	if n == 0 {
		return nil, nil
	}
	windows, err := e.planWindows(ctx, job, t, n, tp.Params, sem, r)
	if err != nil || windows != nil {
		return windows, err
	}
	return []PlannedItem{{ID: t, Type: t, Expected: n, Params: tp.Params}}, nil
}

// windowsOn reports whether the job's types may be split into windows.
//
// Patient and Group exports are not split: the counts the plan has are of
// the whole type, not of the members' compartments, so they would size
// windows on data those exports do not read; their items already run one
// search per compartment parameter and member batch.
func (e *Engine) windowsOn(job *Job) bool {
	return e.set.WindowResources > 0 && job.Request.Level == LevelSystem
}

// planWindows splits type t, which holds n resources in the job's bounds,
// into windows of at most WindowResources resources each, by counting with
// _summary=count, and returns them as planned items. It returns nil when
// the type stays one item: windows are off, the type is small enough, the
// export is not at system level (windowsOn), or the source cannot count the
// parts (logged with the reason).
//
// Counting a large range can be slow on a real source, so r renews the
// plan's lease before a count whenever a quarter of the lease has passed.
func (e *Engine) planWindows(ctx context.Context, job *Job, t string, n int64, params []string, sem chan struct{}, r *renewer) ([]PlannedItem, error) {
	limit := int64(e.set.WindowResources)
	if !e.windowsOn(job) || n <= limit {
		return nil, nil
	}
	parts, rounds, err := e.splitWindows(ctx, job, t, n, limit, sem, r)
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, errRenew) {
			return nil, err
		}
		zerolog.Ctx(ctx).Warn().Err(err).Str("type", t).Int64("count", n).
			Msg("the source could not count parts of this type; it is exported as one work item, without windows")
		return nil, nil
	}
	if len(parts) < 2 {
		return nil, nil
	}
	out := make([]PlannedItem, len(parts))
	for i, p := range parts {
		w := &Window{N: i + 1, After: p.after, Until: p.until}
		out[i] = PlannedItem{ID: windowItemID(t, w.N), Type: t, Expected: p.count, Params: params, Window: w}
	}
	zerolog.Ctx(ctx).Info().Str("type", t).Int64("count", n).Int("windows", len(out)).Int("countRounds", rounds).
		Msg("type split into _lastUpdated windows")
	return out, nil
}

// span is a window being sized: (after, until] holding about count resources.
type span struct {
	after, until time.Time
	count        int64
}

// splitWindows cuts (lower, upper] into parts of at most limit resources
// (splitSpans), then merges neighbours while their sum stays within limit
// (and empty parts into a neighbour), so that parts found empty do not
// become items, evening out the sizes of the windows (balancedCap). The lower end is _since, or else just before the earliest
// lastUpdated of the type; the first window is then open below, so it also
// holds anything older that a transaction in flight commits later.
func (e *Engine) splitWindows(ctx context.Context, job *Job, t string, n, limit int64, sem chan struct{}, r *renewer) ([]span, int, error) {
	upper := upperBound(job)
	var lower time.Time // exclusive; zero: open
	if s := job.Request.Since; s != nil {
		lower = s.UTC()
	}
	start := lower
	if start.IsZero() {
		sem <- struct{}{}
		f, err := e.firstInstant(ctx, job, t)
		<-sem
		if err != nil {
			return nil, 0, err
		}
		start = f.Truncate(time.Millisecond).Add(-time.Millisecond) // bounds are sent in milliseconds
	}
	if !start.Before(upper) {
		return nil, 0, fmt.Errorf("%w: the earliest lastUpdated of %s is not before the upper bound", errNoWindows, t)
	}
	count := func(ctx context.Context, after, until time.Time) (int64, error) {
		if err := r.due(); err != nil {
			return 0, err
		}
		sem <- struct{}{}
		defer func() { <-sem }()
		c, err := e.source.Count(ctx, t, boundsQuery(windowJob(job, &Window{After: after, Until: until})).Encode())
		if err != nil {
			return 0, fmt.Errorf("%w: count %s in (%s, %s]: %w", errNoWindows, t, fhir.FormatInstant(after), fhir.FormatInstant(until), err)
		}
		return c, nil
	}
	parts, rounds, err := splitSpans(ctx, span{start, upper, n}, limit, maxFanOut, count)
	if err != nil {
		return nil, rounds, err
	}

	merged := mergeSpans(parts, balancedCap(parts, limit))
	merged[0].after = lower // open below, or _since: the windows cover exactly the job's range
	return merged, rounds, nil
}

// mergeSpans merges neighbours while their sum stays within capacity, and a
// part found empty into its neighbour whatever its size: it would be an item
// with nothing to do.
func mergeSpans(parts []span, capacity int64) []span {
	var merged []span
	for _, p := range parts {
		if last := len(merged) - 1; last >= 0 && (merged[last].count+p.count <= capacity || p.count == 0 || merged[last].count == 0) {
			merged[last].until, merged[last].count = p.until, merged[last].count+p.count
			continue
		}
		merged = append(merged, p)
	}
	return merged
}

// balancedCap is the smallest capacity up to limit with which mergeSpans
// makes no more windows than with limit itself. Merging up to the limit
// leaves some windows near it and others half as large; the windows run at
// once, so the largest decides how long the type takes, and with the same
// number of items the largest is smaller. (The count of windows is the
// same, so this costs no item; the parts are the same, so no request.)
func balancedCap(parts []span, limit int64) int64 {
	want := len(mergeSpans(parts, limit))
	lo, hi := int64(1), limit
	for lo < hi {
		mid := lo + (hi-lo)/2
		if len(mergeSpans(parts, mid)) <= want {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return hi
}

// splitSpans cuts s until every part holds at most limit resources or is one
// millisecond wide (one instant, which is never split), in rounds: each
// round cuts every part still too large into k parts of equal duration and
// counts all of them but the last at once (the last is the difference), so
// the plan waits for one round trip per round, not per count. k is twice the
// parts the count asks for (so that one round usually suffices even when the
// data is uneven), at least 2 and at most maxFan; with maxFan 2 this is the
// halving of a serial split, round by round, and gives the same parts.
// Splitting stops at about maxWindows parts. The parts depend only on the
// counts, not on the order they are answered in. It also returns the
// rounds it took.
func splitSpans(ctx context.Context, s span, limit int64, maxFan int, count func(ctx context.Context, after, until time.Time) (int64, error)) ([]span, int, error) {
	parts := []span{s}
	for rounds := 0; ; rounds++ {
		type cut struct {
			part   int
			bounds []time.Time // after, the cuts, until
			counts []int64     // of all parts but the last
		}
		var cuts []*cut
		budget := maxWindows - len(parts)
		for i, p := range parts {
			if p.count <= limit || p.until.Sub(p.after) <= time.Millisecond || budget < 1 {
				continue
			}
			k := int(min(int64(maxFan), max(2, 2*((p.count+limit-1)/limit))))
			k = min(k, budget+1)
			b := cutPoints(p, k)
			budget -= len(b) - 2
			cuts = append(cuts, &cut{part: i, bounds: b, counts: make([]int64, len(b)-2)})
		}
		if len(cuts) == 0 {
			return parts, rounds, nil
		}
		g, gctx := errgroup.WithContext(ctx)
		for _, c := range cuts {
			for j := range c.counts {
				g.Go(func() error {
					n, err := count(gctx, c.bounds[j], c.bounds[j+1])
					c.counts[j] = n
					return err
				})
			}
		}
		if err := g.Wait(); err != nil {
			return nil, rounds + 1, err
		}
		next := make([]span, 0, len(parts)+len(cuts))
		from := 0
		for _, c := range cuts {
			next = append(next, parts[from:c.part]...)
			p := parts[c.part]
			left := p.count
			for j, n := range c.counts {
				n = min(max(n, 0), left) // counts taken at different moments may disagree
				next = append(next, span{c.bounds[j], c.bounds[j+1], n})
				left -= n
			}
			next = append(next, span{c.bounds[len(c.bounds)-2], p.until, left})
			from = c.part + 1
		}
		parts = append(next, parts[from:]...)
	}
}

// cutPoints returns the bounds of k parts of p of about equal duration, on
// whole milliseconds (bounds are sent in milliseconds): p.after, k-1 cuts
// strictly between, p.until; fewer parts when p is too narrow for k.
func cutPoints(p span, k int) []time.Time {
	out := []time.Time{p.after}
	width := p.until.Sub(p.after)
	for i := 1; i < k; i++ {
		c := p.after.Add(width / time.Duration(k) * time.Duration(i)).Truncate(time.Millisecond)
		if prev := out[len(out)-1]; !c.After(prev) {
			c = prev.Add(time.Millisecond)
		}
		if !c.Before(p.until) {
			break
		}
		out = append(out, c)
	}
	return append(out, p.until)
}

// firstInstant returns the earliest lastUpdated of type t in the job's
// bounds: the first resource of a search sorted by _lastUpdated.
func (e *Engine) firstInstant(ctx context.Context, job *Job, t string) (time.Time, error) {
	q := boundsQuery(job)
	q.Set("_sort", "_lastUpdated")
	q.Set("_count", "1")
	var first time.Time
	_, err := e.source.Page(ctx, e.source.SearchURL(t, q.Encode()), func(en Entry) error {
		if first.IsZero() && (en.Mode == "" || en.Mode == "match") {
			first = decodeHead(en.Resource).LastUpdated
		}
		return nil
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: find the earliest %s: %w", errNoWindows, t, err)
	}
	if first.IsZero() {
		return time.Time{}, fmt.Errorf("%w: the first %s of a search sorted by _lastUpdated has no meta.lastUpdated", errNoWindows, t)
	}
	return first.UTC(), nil
}

// itemsStartingAtOnce caps the work items the plan creates and enqueues at
// once.
const itemsStartingAtOnce = 8

// startItems creates and enqueues the work items, several at once and the
// largest first. With windows a plan has tens of items, and one after
// another they took seconds on a busy storage account while the first ones
// already ran; the largest first, so that the longest items are not the
// last to find a free worker. Each item is created before it is enqueued,
// and the plan marks itself done only after all are, so a plan run again
// creates (or finds) and enqueues them all, as before.
func (e *Engine) startItems(ctx context.Context, job *Job, work []*WorkItem) error {
	order := slices.Clone(work)
	slices.SortStableFunc(order, func(a, b *WorkItem) int { return cmp.Compare(b.Expected, a.Expected) })
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(itemsStartingAtOnce)
	for _, w := range order {
		g.Go(func() error {
			if err := e.store.CreateItem(gctx, w); err != nil && !fault.Is(err, fault.Conflict) {
				return fmt.Errorf("record work item %s: %w", w.ID, err)
			}
			if err := e.queue.Enqueue(gctx, Message{Job: job.ID, Item: w.ID}); err != nil {
				return fmt.Errorf("enqueue work item %s: %w", w.ID, err)
			}
			return nil
		})
	}
	return g.Wait()
}
