package fhirsample

import (
	"slices"
	"strings"
)

// search returns the resources of rt that match every filter of q, in file order, or in
// q's sort order with ties broken by id. The result may share its array with the
// indexes: callers must not modify it.
func (rt *resourceType) search(q searchQuery) []*resource {
	cands, ordered := rt.candidates(q)
	if len(q.filters) == 0 && ordered {
		return cands
	}
	var matched []*resource
	for _, res := range cands {
		if q.matches(res) {
			matched = append(matched, res)
		}
	}
	if !ordered {
		slices.SortFunc(matched, q.compare)
	}
	return matched
}

func (q searchQuery) matches(res *resource) bool {
	for _, f := range q.filters {
		if !f(res) {
			return false
		}
	}
	return true
}

// compare orders two resources by the sort keys, then by id, which is unique within a type,
// so the order is total.
func (q searchQuery) compare(a, b *resource) int {
	for _, key := range q.sortKeys {
		if c := key.compare(a, b); c != 0 {
			return c
		}
	}
	return strings.Compare(a.id, b.id)
}

func (k sortKey) compare(a, b *resource) int {
	var c int
	switch k.field {
	case "_lastUpdated":
		c = a.lastUpdated.Compare(b.lastUpdated)
	case "_id":
		c = strings.Compare(a.id, b.id)
	}
	if k.descending {
		return -c
	}
	return c
}
