package export

// estimateProgress fills the progress fields of a status from the work items.
//
// Each item weighs what the source counted for its type at planning
// (Expected): a finished item counts in full, a running one by the resources
// it has committed, up to its count. For a system export without _typeFilter
// the counts are exact and the estimate is Done/Total. Otherwise they are
// upper bounds (a Patient or Group export counts every resource of the type,
// not only the members'; a filter matches fewer), so a running item is
// credited less than its true share and the estimate catches up when the
// item finishes. The estimate only grows, since Done and the finished items
// only grow and the counts are fixed by the plan. It is 0 until the plan is
// done, because until then the items and their counts are not all known,
// and at most 99, because only the manifest means complete.
func estimateProgress(st *Status, plan *WorkItem, items []*WorkItem) {
	var weight, credit float64
	for _, it := range items {
		if it.ID == PlanItemID {
			continue
		}
		st.ItemsTotal++
		w := float64(max(it.Expected, 1)) // never 0: the plan creates items only for types with data
		done := it.Done
		if it.Kind == ItemAssociated {
			// Its count is of the resources it looks up (the plan's counts
			// of the other items); its cursor counts those looked up.
			done = int64(it.Cursor.Page)
		}
		c := min(float64(done), w)
		if it.State == ItemDone {
			st.ItemsDone++
			c = w
		}
		weight += w
		credit += c
	}
	st.Planned = plan != nil && plan.State == ItemDone
	if !st.Planned || weight == 0 {
		return
	}
	st.Percent = min(99, int(100*credit/weight))
}
