package export

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/rs/zerolog"

	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/fhir"
)

// plan runs the plan item: it decides the resource types, snapshots the
// member patients of a Patient or Group export, skips types the source has no
// data for, writes the warnings file, then creates and enqueues one work item
// per type. Every step is idempotent, so a plan that crashed halfway is simply
// run again.
func (e *Engine) plan(ctx context.Context, job *Job, item *WorkItem) error {
	log := zerolog.Ctx(ctx)
	types, err := e.planTypes(ctx, job)
	if err != nil {
		return err
	}

	if job.Request.Level != LevelSystem {
		ids, err := e.members(ctx, job)
		if err != nil {
			return err
		}
		item.Batches = 0
		for batch := range slices.Chunk(ids, max(1, e.set.MemberBatch)) {
			if err := e.store.PutMembers(ctx, job.ID, item.Batches, batch); err != nil {
				return fmt.Errorf("record member batch %d: %w", item.Batches, err)
			}
			item.Batches++
		}
		if item.Batches == 0 {
			types = nil // no member: nothing to export
		}
		log.Info().Int("members", len(ids)).Int("batches", item.Batches).Msg("member patients recorded")
	}

	// Ask the source which types hold data in the job's time bounds; the
	// counts also give progress its denominator.
	var work []*WorkItem
	var expected int64
	exact := job.Request.Level == LevelSystem
	warnings := slices.Clone(job.Request.Warnings)
	var supported map[string][]string
	if job.Request.Level != LevelSystem && len(types) > 0 {
		if supported, err = e.source.SearchParams(ctx); err != nil {
			return fmt.Errorf("read the source's search parameters: %w", err)
		}
	}
	// A plan that recorded its items and died before it was done is run
	// again: it creates exactly the recorded items.
	recorded := len(item.Planned) > 0
	var toPlan []typeToPlan
	for _, t := range types {
		var params []string
		if job.Request.Level != LevelSystem {
			var skipped []string
			params, skipped = compartmentParams(t, supported[t])
			for _, name := range skipped {
				warnings = append(warnings, fmt.Sprintf("The source FHIR server does not support the search parameter %s on %s, by which a resource joins the Patient compartment; %s resources that are in a member's compartment only through it are not in this export.", name, t, t))
			}
			if len(params) == 0 {
				continue
			}
		}
		toPlan = append(toPlan, typeToPlan{Type: t, Params: params})
	}
	// Record the items before creating any, so that a plan run again after
	// a crash creates the same ones (windows depend on counts that change);
	// an earlier run of this plan that recorded them decided the items.
	if !recorded && len(toPlan) > 0 {
		// The types are counted, and split into windows (windows.go), at
		// once; the lease is renewed while that takes long.
		planned, err := e.planItems(ctx, job, toPlan, func() error { return e.record(ctx, item) })
		if err != nil {
			return err
		}
		if len(planned) > 0 {
			item.Planned = planned
			if err := e.record(ctx, item); err != nil {
				return err
			}
		}
	}
	for _, p := range item.Planned {
		if filterQueries(job, p.Type)[0] != "" {
			exact = false
		}
		expected += p.Expected
		work = append(work, &WorkItem{JobID: job.ID, ID: p.ID, Type: p.Type, State: ItemPending, Expected: p.Expected,
			UpdatedAt: e.now().UTC(), Params: p.Params, Window: p.Window})
	}

	// With _since, each type's deletions are an item of their own (deleted.go).
	deleted, notListed, err := e.planDeleted(ctx, job, types)
	if err != nil {
		return err
	}
	work, warnings = append(work, deleted...), append(warnings, notListed...)

	// The anonymization configuration's warnings (anonymize_write.go); a
	// configuration that changed since kick-off fails the job here.
	deidWarnings, err := e.anonymizationWarnings(ctx, job, warnings)
	if err != nil {
		return err
	}
	warnings = append(warnings, deidWarnings...)

	if err := e.writeWarnings(ctx, job, item, warnings); err != nil {
		return err
	}
	if assoc := e.planAssociated(job, types, item.Planned); assoc != nil {
		// Created before the items it waits for start, so that the last of
		// them to finish finds it; enqueued by that one (associated.go).
		if err := e.store.CreateItem(ctx, assoc); err != nil && !fault.Is(err, fault.Conflict) {
			return fmt.Errorf("record work item %s: %w", associatedItemID, err)
		}
	}
	if err := e.startItems(ctx, job, work); err != nil {
		return err
	}
	item.State = ItemDone
	if exact {
		item.Expected = expected
	}
	if err := e.record(ctx, item); err != nil {
		return err
	}
	log.Info().Int("workItems", len(work)).Int64("expected", expected).Msg("export planned")
	if len(work) == 0 {
		e.logIfCompleted(ctx, job) // nothing to export: the job is complete already
	}
	e.startAssociatedIfReady(ctx, job) // when there was nothing else to do

	return e.checkCancelled(ctx, job.ID) // a cancel during planning: remove the warnings file too
}

// planTypes returns the resource types a job covers, sorted.
func (e *Engine) planTypes(ctx context.Context, job *Job) ([]string, error) {
	req := job.Request
	if len(req.Types) > 0 {
		return slices.Sorted(slices.Values(req.Types)), nil
	}
	if req.Level == LevelSystem && len(e.set.SystemTypes) > 0 {
		return slices.Sorted(slices.Values(e.set.SystemTypes)), nil
	}
	offered, err := e.source.Types(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the source's CapabilityStatement: %w", err)
	}
	var out []string
	for _, t := range offered {
		if !fhir.IsExportable(t) {
			continue
		}
		if _, in := fhir.PatientCompartment(t); req.Level != LevelSystem && !in {
			continue
		}
		out = append(out, t)
	}
	sort.Strings(out)
	return slices.Compact(out), nil
}

// members returns the sorted, distinct ids of the patients a Patient or
// Group export covers.
func (e *Engine) members(ctx context.Context, job *Job) ([]string, error) {
	var ids []string
	switch job.Request.Level {
	case LevelGroup:
		body, err := e.source.Read(ctx, "Group", job.Request.GroupID)
		if err != nil {
			if fault.Is(err, fault.NotFound) {
				return nil, fault.New(fault.Permanent, "Group/%s is no longer on the source FHIR server", job.Request.GroupID)
			}
			return nil, fmt.Errorf("read Group/%s: %w", job.Request.GroupID, err)
		}
		ids, err = groupMembers(body)
		if err != nil {
			return nil, fault.Wrap(fault.Permanent, err, "Group/%s", job.Request.GroupID)
		}
	case LevelPatient:
		if len(job.Request.Patients) > 0 {
			// Only those patients: one that is not on the source has an
			// empty compartment, so listing every patient would add nothing.
			ids = slices.Clone(job.Request.Patients)
			sort.Strings(ids)
			return slices.Compact(ids), nil
		}
		q := boundsQuery(&Job{TransactionTime: job.TransactionTime}) // every patient, whatever _since says
		q.Set("_count", fmt.Sprint(max(e.set.PageSize, 1)))
		next := e.source.SearchURL("Patient", q.Encode())
		for next != "" {
			var err error
			next, err = e.source.Page(ctx, next, func(en Entry) error {
				if en.Mode != "" && en.Mode != "match" {
					return nil
				}
				var p struct {
					ResourceType string `json:"resourceType"`
					ID           string `json:"id"`
				}
				if err := json.Unmarshal(en.Resource, &p); err != nil || p.ResourceType != "Patient" || p.ID == "" {
					return nil
				}
				ids = append(ids, p.ID)
				return nil
			})
			if err != nil {
				return nil, fmt.Errorf("list patients: %w", err)
			}
		}
	}
	sort.Strings(ids)
	ids = slices.Compact(ids)
	if len(job.Request.Patients) > 0 {
		// Only the requested patients, and at Group level only those still
		// members when the plan reads the Group.
		want := map[string]bool{}
		for _, id := range job.Request.Patients {
			want[id] = true
		}
		ids = slices.DeleteFunc(ids, func(id string) bool { return !want[id] })
	}
	return ids, nil
}

// groupMembers returns the ids of a Group's active Patient members.
func groupMembers(body []byte) ([]string, error) {
	var g struct {
		ResourceType string `json:"resourceType"`
		Member       []struct {
			Entity struct {
				Reference string `json:"reference"`
			} `json:"entity"`
			Inactive bool `json:"inactive"`
		} `json:"member"`
	}
	if err := json.Unmarshal(body, &g); err != nil {
		return nil, fmt.Errorf("the source sent a Group that is not valid JSON: %w", err)
	}
	if g.ResourceType != "Group" {
		return nil, fmt.Errorf("the source sent a %q where a Group was expected", g.ResourceType)
	}
	var ids []string
	for _, m := range g.Member {
		if id, ok := patientID(m.Entity.Reference); ok && !m.Inactive {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// patientID returns the id of a reference to a Patient ("Patient/123" or an
// absolute URL ending in it, with or without a version).
func patientID(ref string) (string, bool) {
	if i := strings.Index(ref, "/_history/"); i >= 0 {
		ref = ref[:i]
	}
	i := strings.LastIndex(ref, "Patient/")
	if i < 0 || (i > 0 && ref[i-1] != '/') {
		return "", false
	}
	id := ref[i+len("Patient/"):]
	if id == "" || strings.Contains(id, "/") {
		return "", false
	}
	return id, true
}

// writeWarnings writes the job's warnings (parameters ignored under
// handling=lenient, compartment parameters the source cannot search) as an
// NDJSON file of OperationOutcomes, recorded on the plan item so the manifest
// lists it under "error".
func (e *Engine) writeWarnings(ctx context.Context, job *Job, item *WorkItem, warnings []string) error {
	if len(warnings) == 0 {
		return nil
	}
	var buf []byte
	for _, w := range warnings {
		buf = append(buf, fhir.NewOutcome("warning", "not-supported", w).JSON()...)
		buf = append(buf, '\n')
	}
	name := fileName("OperationOutcome", 1)
	blob := job.ID + "/" + name
	if err := e.blobs.StageBlock(ctx, job.Request.Container, blob, 0, buf); err != nil {
		return fmt.Errorf("write warnings: %w", err)
	}
	if _, err := e.blobs.CommitBlocks(ctx, job.Request.Container, blob, 1, Condition{}); err != nil {
		return fmt.Errorf("write warnings: %w", err)
	}
	item.Files = []File{{Name: name, Count: int64(len(warnings)), Bytes: int64(len(buf))}}
	item.Blocks = 1
	return nil
}
