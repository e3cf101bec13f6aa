package export

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

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

// planWindows splits type t, which holds n resources in the job's bounds,
// into windows of at most WindowResources resources each, by counting with
// _summary=count and halving, and returns them as planned items. It returns
// nil when the type stays one item: windows are off, the type is small
// enough, the export is not at system level (see below), or the source
// cannot count the parts (logged with the reason).
//
// Patient and Group exports are not split: the counts the plan has are of
// the whole type, not of the members' compartments, so they would size
// windows on data those exports do not read; their items already run one
// search per compartment parameter and member batch.
//
// Counting a large range can be slow on a real source, so renew (which
// records the plan item, renewing its lease) is called whenever a quarter of
// the lease has passed since the last renewal.
func (e *Engine) planWindows(ctx context.Context, job *Job, t string, n int64, params []string, renew func() error) ([]PlannedItem, error) {
	limit := int64(e.set.WindowResources)
	if limit <= 0 || n <= limit || job.Request.Level != LevelSystem {
		return nil, nil
	}
	parts, err := e.splitWindows(ctx, job, t, n, limit, renew)
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
	zerolog.Ctx(ctx).Info().Str("type", t).Int64("count", n).Int("windows", len(out)).Msg("type split into _lastUpdated windows")
	return out, nil
}

// span is a window being sized: (after, until] holding about count resources.
type span struct {
	after, until time.Time
	count        int64
}

// splitWindows halves (lower, upper] until every part holds at most limit
// resources or is one millisecond wide (one instant, which is never split),
// then merges neighbours while their sum stays within limit (and empty parts
// into a neighbour), so that parts the halving found empty do not become
// items. The lower end is _since, or else just before the earliest
// lastUpdated of the type; the first window is then open below, so it also
// holds anything older that a transaction in flight commits later. Counts of
// a half come from the source; the other half is the difference, so each
// halving costs one request. Splitting stops at about maxWindows parts.
func (e *Engine) splitWindows(ctx context.Context, job *Job, t string, n, limit int64, renew func() error) ([]span, error) {
	renewed := e.now()
	upper := upperBound(job)
	var lower time.Time // exclusive; zero: open
	if s := job.Request.Since; s != nil {
		lower = s.UTC()
	}
	start := lower
	if start.IsZero() {
		first, err := e.firstInstant(ctx, job, t)
		if err != nil {
			return nil, err
		}
		start = first.Truncate(time.Millisecond).Add(-time.Millisecond) // bounds are sent in milliseconds
	}
	if !start.Before(upper) {
		return nil, fmt.Errorf("%w: the earliest lastUpdated of %s is not before the upper bound", errNoWindows, t)
	}

	var parts []span
	requests := 0
	var split func(s span) error
	split = func(s span) error {
		if s.count <= limit || s.until.Sub(s.after) <= time.Millisecond || len(parts)+requests >= maxWindows {
			parts = append(parts, s)
			return nil
		}
		mid := s.after.Add(s.until.Sub(s.after) / 2).Truncate(time.Millisecond)
		if !mid.After(s.after) {
			mid = s.after.Add(time.Millisecond)
		}
		if now := e.now(); now.Sub(renewed) >= e.set.Lease/4 {
			if err := renew(); err != nil {
				return fmt.Errorf("%w: %w", errRenew, err)
			}
			renewed = now
		}
		requests++
		c, err := e.source.Count(ctx, t, boundsQuery(windowJob(job, &Window{After: s.after, Until: mid})).Encode())
		if err != nil {
			return fmt.Errorf("%w: count %s in (%s, %s]: %w", errNoWindows, t, fhir.FormatInstant(s.after), fhir.FormatInstant(mid), err)
		}
		c = min(max(c, 0), s.count)
		if err := split(span{s.after, mid, c}); err != nil {
			return err
		}
		return split(span{mid, s.until, s.count - c})
	}
	if err := split(span{start, upper, n}); err != nil {
		return nil, err
	}

	var merged []span
	for _, p := range parts {
		// A part found empty joins its neighbour whatever its size: it
		// would be an item with nothing to do.
		if last := len(merged) - 1; last >= 0 && (merged[last].count+p.count <= limit || p.count == 0 || merged[last].count == 0) {
			merged[last].until, merged[last].count = p.until, merged[last].count+p.count
			continue
		}
		merged = append(merged, p)
	}
	merged[0].after = lower // open below, or _since: the windows cover exactly the job's range
	return merged, nil
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
