package fhirsample

import (
	"slices"
	"strings"
)

// search returns the resources of rt that match every filter of q, in file order, or in
// q's sort order with ties broken by id.
func (rt *resourceType) search(q searchQuery) []*resource {
	var matched []*resource
	for _, res := range rt.resources {
		if q.matches(res) {
			matched = append(matched, res)
		}
	}
	if len(q.sortKeys) > 0 {
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
