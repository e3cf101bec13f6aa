// Package memstore implements the export engine's storage ports (Store,
// Queue, Blobs) in memory, with the same semantics as the Azure adapters in
// azstore, for unit tests and local experiments. Everything is goroutine-safe.
package memstore

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// Store is an in-memory export.Store. Entities are kept as JSON, so callers
// never share memory with the store, and every write gets a new ETag.
type Store struct {
	mu      sync.Mutex
	etag    int64
	jobs    map[string]record
	items   map[itemKey]record
	members map[memberKey][]string
	owners  map[string]map[string]bool // owner -> job ids
}

type record struct {
	data []byte
	etag string
}

type itemKey struct{ job, item string }

type memberKey struct {
	job   string
	index int
}

var _ export.Store = (*Store)(nil)

// NewStore returns an empty Store.
func NewStore() *Store {
	return &Store{
		jobs:    map[string]record{},
		items:   map[itemKey]record{},
		members: map[memberKey][]string{},
		owners:  map[string]map[string]bool{},
	}
}

// CreateJob stores a new job and sets job.ETag; fault.Conflict if it exists.
func (s *Store) CreateJob(ctx context.Context, job *export.Job) error {
	if err := export.CheckKey(job.ID); err != nil {
		return fault.Wrap(fault.Internal, err, "create job")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.jobs[job.ID]; ok {
		return fault.New(fault.Conflict, "create job %s: already exists", job.ID)
	}
	rec, err := s.record(job)
	if err != nil {
		return fault.Wrap(fault.Internal, err, "create job %s", job.ID)
	}
	s.jobs[job.ID] = rec
	job.ETag = rec.etag
	return nil
}

// GetJob returns the job with its ETag; fault.NotFound if there is none.
func (s *Store) GetJob(ctx context.Context, jobID string) (*export.Job, error) {
	s.mu.Lock()
	rec, ok := s.jobs[jobID]
	s.mu.Unlock()
	if !ok {
		return nil, fault.New(fault.NotFound, "get job %s: not found", jobID)
	}
	var job export.Job
	if err := rec.decode(&job); err != nil {
		return nil, fault.Wrap(fault.Internal, err, "get job %s", jobID)
	}
	return &job, nil
}

// UpdateJob replaces the job if job.ETag is current and sets the new ETag:
// fault.Conflict if it is stale, fault.NotFound if the job does not exist.
func (s *Store) UpdateJob(ctx context.Context, job *export.Job) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.jobs[job.ID]
	if err := checkSwap(ok, old, job.ETag); err != nil {
		return fault.Wrap(fault.KindOf(err), err, "update job %s", job.ID)
	}
	rec, err := s.record(job)
	if err != nil {
		return fault.Wrap(fault.Internal, err, "update job %s", job.ID)
	}
	s.jobs[job.ID] = rec
	job.ETag = rec.etag
	return nil
}

// CreateItem stores a new work item and sets item.ETag; fault.Conflict if it exists.
func (s *Store) CreateItem(ctx context.Context, item *export.WorkItem) error {
	if err := checkItemKeys(item); err != nil {
		return fault.Wrap(fault.Internal, err, "create item")
	}
	key := itemKey{item.JobID, item.ID}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.items[key]; ok {
		return fault.New(fault.Conflict, "create item %s/%s: already exists", item.JobID, item.ID)
	}
	rec, err := s.record(item)
	if err != nil {
		return fault.Wrap(fault.Internal, err, "create item %s/%s", item.JobID, item.ID)
	}
	s.items[key] = rec
	item.ETag = rec.etag
	return nil
}

// GetItem returns the work item with its ETag; fault.NotFound if there is none.
func (s *Store) GetItem(ctx context.Context, jobID, itemID string) (*export.WorkItem, error) {
	s.mu.Lock()
	rec, ok := s.items[itemKey{jobID, itemID}]
	s.mu.Unlock()
	if !ok {
		return nil, fault.New(fault.NotFound, "get item %s/%s: not found", jobID, itemID)
	}
	var item export.WorkItem
	if err := rec.decode(&item); err != nil {
		return nil, fault.Wrap(fault.Internal, err, "get item %s/%s", jobID, itemID)
	}
	return &item, nil
}

// UpdateItem replaces the work item if item.ETag is current and sets the new
// ETag: fault.Conflict if it is stale, fault.NotFound if the item does not exist.
func (s *Store) UpdateItem(ctx context.Context, item *export.WorkItem) error {
	key := itemKey{item.JobID, item.ID}
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.items[key]
	if err := checkSwap(ok, old, item.ETag); err != nil {
		return fault.Wrap(fault.KindOf(err), err, "update item %s/%s", item.JobID, item.ID)
	}
	rec, err := s.record(item)
	if err != nil {
		return fault.Wrap(fault.Internal, err, "update item %s/%s", item.JobID, item.ID)
	}
	s.items[key] = rec
	item.ETag = rec.etag
	return nil
}

// ListItems returns the job's work items ordered by id, as the table does.
func (s *Store) ListItems(ctx context.Context, jobID string) ([]*export.WorkItem, error) {
	s.mu.Lock()
	var recs []record
	for k, rec := range s.items {
		if k.job == jobID {
			recs = append(recs, rec)
		}
	}
	s.mu.Unlock()
	items := make([]*export.WorkItem, len(recs))
	for i, rec := range recs {
		items[i] = new(export.WorkItem)
		if err := rec.decode(items[i]); err != nil {
			return nil, fault.Wrap(fault.Internal, err, "list items of job %s", jobID)
		}
	}
	slices.SortFunc(items, func(a, b *export.WorkItem) int { return strings.Compare(a.ID, b.ID) })
	return items, nil
}

// PutMembers stores (or overwrites) member batch index of the job.
func (s *Store) PutMembers(ctx context.Context, jobID string, index int, ids []string) error {
	if err := checkMembers(jobID, index, ids); err != nil {
		return fault.Wrap(fault.Internal, err, "put members %s/%d", jobID, index)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.members[memberKey{jobID, index}] = append([]string(nil), ids...)
	return nil
}

// GetMembers returns member batch index of the job; fault.NotFound if there is none.
func (s *Store) GetMembers(ctx context.Context, jobID string, index int) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids, ok := s.members[memberKey{jobID, index}]
	if !ok {
		return nil, fault.New(fault.NotFound, "get members %s/%d: not found", jobID, index)
	}
	return append([]string(nil), ids...), nil
}

// AddOwnerJob adds jobID to owner's index.
func (s *Store) AddOwnerJob(ctx context.Context, owner, jobID string) error {
	if err := checkOwnerKeys(owner, jobID); err != nil {
		return fault.Wrap(fault.Internal, err, "index job")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.owners[owner] == nil {
		s.owners[owner] = map[string]bool{}
	}
	s.owners[owner][jobID] = true
	return nil
}

// OwnerJobs returns the job ids in owner's index, ordered by id.
func (s *Store) OwnerJobs(ctx context.Context, owner string) ([]string, error) {
	if err := export.CheckKey(owner); err != nil {
		return nil, fault.Wrap(fault.Internal, err, "list owner's jobs")
	}
	s.mu.Lock()
	ids := make([]string, 0, len(s.owners[owner]))
	for id := range s.owners[owner] {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	slices.Sort(ids)
	return ids, nil
}

// RemoveOwnerJob removes jobID from owner's index, if it is there.
func (s *Store) RemoveOwnerJob(ctx context.Context, owner, jobID string) error {
	if err := checkOwnerKeys(owner, jobID); err != nil {
		return fault.Wrap(fault.Internal, err, "unindex job")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.owners[owner], jobID)
	return nil
}

func checkOwnerKeys(owner, jobID string) error {
	if err := export.CheckKey(owner); err != nil {
		return err
	}
	return export.CheckKey(jobID)
}

// record encodes v under a fresh ETag. The caller holds s.mu.
func (s *Store) record(v any) (record, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return record{}, err
	}
	s.etag++
	return record{data: data, etag: fmt.Sprintf(`W/"%d"`, s.etag)}, nil
}

func (r record) decode(v any) error {
	if err := json.Unmarshal(r.data, v); err != nil {
		return err
	}
	switch e := v.(type) {
	case *export.Job:
		e.ETag = r.etag
	case *export.WorkItem:
		e.ETag = r.etag
	}
	return nil
}

// checkSwap is the compare of compare-and-swap.
func checkSwap(exists bool, old record, etag string) error {
	switch {
	case !exists:
		return fault.New(fault.NotFound, "not found")
	case etag == "":
		return fault.New(fault.Internal, "no ETag: the entity was not read from the store")
	case etag != old.etag:
		return fault.New(fault.Conflict, "ETag %s is stale", etag)
	}
	return nil
}

func checkItemKeys(item *export.WorkItem) error {
	if err := export.CheckKey(item.JobID); err != nil {
		return err
	}
	return export.CheckKey(item.ID)
}

func checkMembers(jobID string, index int, ids []string) error {
	if err := export.CheckKey(jobID); err != nil {
		return err
	}
	if index < 0 || index > 999999 {
		return fmt.Errorf("batch index %d out of range 0..999999", index)
	}
	for _, id := range ids {
		if id == "" || strings.Contains(id, ",") {
			return fmt.Errorf("member id %q: must be non-empty and without commas", id)
		}
	}
	return nil
}
