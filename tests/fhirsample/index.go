package fhirsample

import (
	"container/list"
	"slices"
	"strings"
	"sync"
	"time"
)

// The indexes below make a search cost about its page, not the size of its
// type, so that in a benchmark the sample server spends less CPU than the
// service that pages through it. They are built once at load time and never
// change while the data set does not.

// index builds the type's search indexes: the resources in (_lastUpdated,
// id) order, and per reference element the resources that refer to each id.
// It must run again whenever rt.resources changes.
func (rt *resourceType) index() {
	for i, res := range rt.resources {
		res.seq = i
	}
	rt.sorted = slices.Clone(rt.resources)
	slices.SortFunc(rt.sorted, func(a, b *resource) int {
		if c := a.lastUpdated.Compare(b.lastUpdated); c != 0 {
			return c
		}
		return strings.Compare(a.id, b.id)
	})
	rt.referrers = map[string]map[string][]*resource{}
	for _, res := range rt.resources {
		for element, refs := range res.elements.references {
			byID := rt.referrers[element]
			if byID == nil {
				byID = map[string][]*resource{}
				rt.referrers[element] = byID
			}
			for i, ref := range refs {
				if slices.ContainsFunc(refs[:i], func(r reference) bool { return r.id == ref.id }) {
					continue // listed once per resource
				}
				byID[ref.id] = append(byID[ref.id], res)
			}
		}
	}
}

// instantRange is the instants [from, to) a _lastUpdated condition admits;
// a zero bound is open.
type instantRange struct{ from, to time.Time }

// bounds returns the range of instants the condition admits.
func (c dateCondition) bounds() instantRange {
	switch c.prefix {
	case prefixEq:
		return instantRange{from: c.period.start, to: c.period.end}
	case prefixGt:
		return instantRange{from: c.period.end}
	case prefixGe:
		return instantRange{from: c.period.start}
	case prefixLt:
		return instantRange{to: c.period.start}
	default: // prefixLe
		return instantRange{to: c.period.end}
	}
}

// referenceNarrowing is one reference parameter occurrence: the resources
// it can match are among those whose elements refer to one of ids.
type referenceNarrowing struct {
	elements []string
	ids      []string
}

// candidates returns the resources a search has to test with its filters, in
// the order the search answers them (its sort order, or file order), and
// whether that order is already final. A reference parameter narrows to the
// referring resources; otherwise a search sorted by _lastUpdated takes the
// slice of the sorted index that its _lastUpdated conditions admit.
func (rt *resourceType) candidates(q searchQuery) (cands []*resource, ordered bool) {
	if len(q.references) > 0 {
		n := q.references[0]
		seen := map[*resource]bool{}
		for _, element := range n.elements {
			for _, id := range n.ids {
				for _, res := range rt.referrers[element][id] {
					if !seen[res] {
						seen[res] = true
						cands = append(cands, res)
					}
				}
			}
		}
		slices.SortFunc(cands, func(a, b *resource) int { return a.seq - b.seq })
		return cands, len(q.sortKeys) == 0
	}
	if !q.sortedByLastUpdated() {
		return rt.resources, len(q.sortKeys) == 0
	}
	lo, hi := 0, len(rt.sorted)
	for _, r := range q.lastUpdatedRanges {
		if !r.from.IsZero() {
			i, _ := slices.BinarySearchFunc(rt.sorted, r.from, func(res *resource, t time.Time) int {
				if res.lastUpdated.Before(t) {
					return -1
				}
				return 1
			})
			lo = max(lo, i)
		}
		if !r.to.IsZero() {
			i, _ := slices.BinarySearchFunc(rt.sorted, r.to, func(res *resource, t time.Time) int {
				if res.lastUpdated.Before(t) {
					return -1
				}
				return 1
			})
			hi = min(hi, i)
		}
	}
	if lo >= hi {
		return nil, true
	}
	return rt.sorted[lo:hi], true
}

// sortedByLastUpdated reports whether the query's order is the sorted
// index's: _lastUpdated ascending, then id ascending.
func (q searchQuery) sortedByLastUpdated() bool {
	switch len(q.sortKeys) {
	case 1:
		return q.sortKeys[0] == sortKey{field: "_lastUpdated"}
	case 2:
		return q.sortKeys[0] == sortKey{field: "_lastUpdated"} && q.sortKeys[1] == sortKey{field: "_id"}
	}
	return false
}

// matchCache keeps the matches of the most recent searches, so that the
// pages after the first (and a _summary=count before them) do not run the
// search again: a next link carries the search and an offset.
type matchCache struct {
	mu      sync.Mutex
	entries map[string]*list.Element
	order   list.List // most recent first; values are *cachedMatches
}

type cachedMatches struct {
	key     string
	matches []*resource
}

// matchCacheSize bounds the cache: with windows, a job runs a few searches
// per type at a time, and an entry is a slice of pointers.
const matchCacheSize = 64

func (c *matchCache) get(key string) ([]*resource, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(e)
	return e.Value.(*cachedMatches).matches, true
}

func (c *matchCache) put(key string, matches []*resource) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = map[string]*list.Element{}
	}
	if e, ok := c.entries[key]; ok {
		c.order.MoveToFront(e)
		return
	}
	c.entries[key] = c.order.PushFront(&cachedMatches{key: key, matches: matches})
	if c.order.Len() > matchCacheSize {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.entries, last.Value.(*cachedMatches).key)
	}
}
