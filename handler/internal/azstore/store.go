package azstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// Table layout: PartitionKey is the job id; the RowKey says what the row is.
// The owner index has its own partitions: PartitionKey ownerPrefix + owner
// key, RowKey the job id, no other property (a job id is hex, so it never
// starts with ownerPrefix).
const (
	ownerPrefix = "owner-"

	jobRow       = "job"
	itemPrefix   = "item:"    // + work item id
	memberPrefix = "members:" // + %06d batch index
	// itemEnd is the first RowKey after every "item:..." key (';' follows ':').
	itemEnd = "item;"
)

// Strings are stored as UTF-16, at most 64 KiB per property and 1 MiB per
// entity. A chunk of at most chunkBytes UTF-8 bytes is at most chunkBytes
// UTF-16 code units, so 30,000 keeps a property under 60,000 bytes, and
// maxChunks of them keep the entity under 1 MiB with room for the columns:
// a document of at most 480,000 bytes (after asciiJSON).
const (
	chunkBytes = 30000
	maxChunks  = 16
)

// Store is an export.Store on an Azure table. Jobs and work items are stored
// as JSON in the string properties Data, Data1, Data2, ...; the columns State,
// Type and Done only serve people looking at the table. Updates replace the
// entity with If-Match on the ETag the caller read.
type Store struct {
	table *aztables.Client
	name  string
}

var _ export.Store = (*Store)(nil)

// CreateJob adds the job row and sets job.ETag; fault.Conflict if it exists.
func (s *Store) CreateJob(ctx context.Context, job *export.Job) error {
	body, err := jobEntity(job)
	if err != nil {
		return fault.Wrap(fault.Internal, err, "create job")
	}
	etag, err := s.add(ctx, body)
	if err != nil {
		return fmt.Errorf("create job %s: %w", job.ID, err)
	}
	job.ETag = etag
	return nil
}

// GetJob reads the job row; fault.NotFound if there is none.
func (s *Store) GetJob(ctx context.Context, jobID string) (*export.Job, error) {
	var job export.Job
	etag, err := s.get(ctx, jobID, jobRow, &job)
	if err != nil {
		return nil, fmt.Errorf("get job %s: %w", jobID, err)
	}
	job.ETag = etag
	return &job, nil
}

// UpdateJob replaces the job row if job.ETag is current and sets the new
// ETag: fault.Conflict if it is stale, fault.NotFound if the row is missing.
func (s *Store) UpdateJob(ctx context.Context, job *export.Job) error {
	if err := export.CheckKey(job.ID); err != nil {
		return fault.Wrap(fault.NotFound, err, "update job")
	}
	body, err := jobEntity(job)
	if err != nil {
		return fault.Wrap(fault.Internal, err, "update job %s", job.ID)
	}
	etag, err := s.replace(ctx, body, job.ETag)
	if err != nil {
		return fmt.Errorf("update job %s: %w", job.ID, err)
	}
	job.ETag = etag
	return nil
}

// CreateItem adds the work item row and sets item.ETag; fault.Conflict if it exists.
func (s *Store) CreateItem(ctx context.Context, item *export.WorkItem) error {
	body, err := itemEntity(item)
	if err != nil {
		return fault.Wrap(fault.Internal, err, "create item")
	}
	etag, err := s.add(ctx, body)
	if err != nil {
		return fmt.Errorf("create item %s/%s: %w", item.JobID, item.ID, err)
	}
	item.ETag = etag
	return nil
}

// GetItem reads a work item row; fault.NotFound if there is none.
func (s *Store) GetItem(ctx context.Context, jobID, itemID string) (*export.WorkItem, error) {
	var item export.WorkItem
	if err := export.CheckKey(itemID); err != nil {
		return nil, fault.Wrap(fault.NotFound, err, "get item %q/%q", jobID, itemID)
	}
	etag, err := s.get(ctx, jobID, itemPrefix+itemID, &item)
	if err != nil {
		return nil, fmt.Errorf("get item %s/%s: %w", jobID, itemID, err)
	}
	item.ETag = etag
	return &item, nil
}

// UpdateItem replaces the work item row if item.ETag is current and sets the
// new ETag: fault.Conflict if it is stale, fault.NotFound if the row is missing.
func (s *Store) UpdateItem(ctx context.Context, item *export.WorkItem) error {
	if err := checkItemKeys(item); err != nil {
		return fault.Wrap(fault.NotFound, err, "update item")
	}
	body, err := itemEntity(item)
	if err != nil {
		return fault.Wrap(fault.Internal, err, "update item %s/%s", item.JobID, item.ID)
	}
	etag, err := s.replace(ctx, body, item.ETag)
	if err != nil {
		return fmt.Errorf("update item %s/%s: %w", item.JobID, item.ID, err)
	}
	item.ETag = etag
	return nil
}

// ListItems returns every work item of the job, ordered by id.
func (s *Store) ListItems(ctx context.Context, jobID string) ([]*export.WorkItem, error) {
	filter := fmt.Sprintf("PartitionKey eq '%s' and RowKey ge '%s' and RowKey lt '%s'",
		strings.ReplaceAll(jobID, "'", "''"), itemPrefix, itemEnd)
	pager := s.table.NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filter})
	var items []*export.WorkItem
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, wrap(err, "list items of job %s", jobID)
		}
		for _, raw := range page.Entities {
			item, err := decodeListed(raw)
			if err != nil {
				return nil, fault.Wrap(fault.Internal, err, "list items of job %s", jobID)
			}
			items = append(items, item)
		}
	}
	return items, nil
}

// PutMembers writes (or overwrites) member batch index of the job.
func (s *Store) PutMembers(ctx context.Context, jobID string, index int, ids []string) error {
	body, err := membersEntity(jobID, index, ids)
	if err != nil {
		return fault.Wrap(fault.Internal, err, "put members %q/%d", jobID, index)
	}
	opts := &aztables.UpsertEntityOptions{UpdateMode: aztables.UpdateModeReplace}
	if _, err := s.table.UpsertEntity(ctx, body, opts); err != nil {
		return wrap(err, "put members %s/%d", jobID, index)
	}
	return nil
}

// GetMembers reads member batch index of the job; fault.NotFound if there is none.
func (s *Store) GetMembers(ctx context.Context, jobID string, index int) ([]string, error) {
	props, _, err := s.read(ctx, jobID, memberRow(index))
	if err != nil {
		return nil, fmt.Errorf("get members %s/%d: %w", jobID, index, err)
	}
	joined, err := join(props, "Ids")
	if err != nil {
		return nil, fault.Wrap(fault.Internal, err, "get members %s/%d", jobID, index)
	}
	if joined == "" {
		return []string{}, nil
	}
	return strings.Split(joined, ","), nil
}

// AddOwnerJob adds jobID to owner's index (an upsert: adding again is harmless).
func (s *Store) AddOwnerJob(ctx context.Context, owner, jobID string) error {
	body, err := ownerEntity(owner, jobID)
	if err != nil {
		return fault.Wrap(fault.Internal, err, "index job")
	}
	opts := &aztables.UpsertEntityOptions{UpdateMode: aztables.UpdateModeReplace}
	if _, err := s.table.UpsertEntity(ctx, body, opts); err != nil {
		return wrap(err, "index job %s", jobID)
	}
	return nil
}

// OwnerJobs lists the job ids in owner's index, in RowKey (id) order.
func (s *Store) OwnerJobs(ctx context.Context, owner string) ([]string, error) {
	if err := export.CheckKey(owner); err != nil {
		return nil, fault.Wrap(fault.Internal, err, "list owner's jobs")
	}
	filter := fmt.Sprintf("PartitionKey eq '%s'", strings.ReplaceAll(ownerPrefix+owner, "'", "''"))
	sel := "RowKey"
	pager := s.table.NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filter, Select: &sel})
	var ids []string
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, wrap(err, "list owner's jobs")
		}
		for _, raw := range page.Entities {
			var row struct{ RowKey string }
			if err := json.Unmarshal(raw, &row); err != nil || row.RowKey == "" {
				return nil, fault.New(fault.Internal, "list owner's jobs: a row without RowKey")
			}
			ids = append(ids, row.RowKey)
		}
	}
	return ids, nil
}

// RemoveOwnerJob deletes jobID from owner's index; a missing row is fine.
func (s *Store) RemoveOwnerJob(ctx context.Context, owner, jobID string) error {
	if _, err := ownerEntity(owner, jobID); err != nil {
		return fault.Wrap(fault.Internal, err, "unindex job")
	}
	_, err := s.table.DeleteEntity(ctx, ownerPrefix+owner, jobID, nil)
	if err != nil && kindOf(err) != fault.NotFound {
		return wrap(err, "unindex job %s", jobID)
	}
	return nil
}

func ownerEntity(owner, jobID string) ([]byte, error) {
	if err := export.CheckKey(ownerPrefix + owner); err != nil {
		return nil, err
	}
	if err := export.CheckKey(jobID); err != nil {
		return nil, err
	}
	return json.Marshal(map[string]any{"PartitionKey": ownerPrefix + owner, "RowKey": jobID})
}

func (s *Store) add(ctx context.Context, body []byte) (string, error) {
	resp, err := s.table.AddEntity(ctx, body, nil)
	if err != nil {
		return "", wrap(err, "add entity to %s", s.name)
	}
	return string(resp.ETag), nil
}

func (s *Store) replace(ctx context.Context, body []byte, etag string) (string, error) {
	if etag == "" {
		return "", fault.New(fault.Internal, "no ETag: the entity was not read from the store")
	}
	match := azcore.ETag(etag)
	opts := &aztables.UpdateEntityOptions{IfMatch: &match, UpdateMode: aztables.UpdateModeReplace}
	resp, err := s.table.UpdateEntity(ctx, body, opts)
	if err != nil {
		return "", wrap(err, "replace entity in %s", s.name)
	}
	return string(resp.ETag), nil
}

// get reads one row's JSON document into v and returns the row's ETag.
func (s *Store) get(ctx context.Context, pk, rk string, v any) (string, error) {
	props, etag, err := s.read(ctx, pk, rk)
	if err != nil {
		return "", err
	}
	if err := decodeData(props, v); err != nil {
		return "", fault.Wrap(fault.Internal, err, "row %s/%s", pk, rk)
	}
	return etag, nil
}

func (s *Store) read(ctx context.Context, pk, rk string) (map[string]json.RawMessage, string, error) {
	if err := export.CheckKey(pk); err != nil {
		return nil, "", fault.Wrap(fault.NotFound, err, "read row")
	}
	resp, err := s.table.GetEntity(ctx, pk, rk, nil)
	if err != nil {
		return nil, "", wrap(err, "read row %s/%s of %s", pk, rk, s.name)
	}
	var props map[string]json.RawMessage
	if err := json.Unmarshal(resp.Value, &props); err != nil {
		return nil, "", fault.Wrap(fault.Internal, err, "read row %s/%s of %s", pk, rk, s.name)
	}
	return props, string(resp.ETag), nil
}

func jobEntity(job *export.Job) ([]byte, error) {
	if err := export.CheckKey(job.ID); err != nil {
		return nil, err
	}
	return entity(job.ID, jobRow, job, map[string]any{"State": string(job.State)})
}

func itemEntity(item *export.WorkItem) ([]byte, error) {
	if err := checkItemKeys(item); err != nil {
		return nil, err
	}
	columns := map[string]any{
		"State":           string(item.State),
		"Type":            item.Type,
		"Done":            strconv.FormatInt(item.Done, 10),
		"Done@odata.type": "Edm.Int64",
	}
	return entity(item.JobID, itemPrefix+item.ID, item, columns)
}

func membersEntity(jobID string, index int, ids []string) ([]byte, error) {
	if err := export.CheckKey(jobID); err != nil {
		return nil, err
	}
	if index < 0 || index > 999999 {
		return nil, fmt.Errorf("batch index %d out of range 0..999999", index)
	}
	for _, id := range ids {
		if id == "" || strings.Contains(id, ",") {
			return nil, fmt.Errorf("member id %q: must be non-empty and without commas", id)
		}
	}
	e := map[string]any{"PartitionKey": jobID, "RowKey": memberRow(index)}
	if err := putChunks(e, "Ids", strings.Join(ids, ",")); err != nil {
		return nil, err
	}
	return json.Marshal(e)
}

func memberRow(index int) string { return fmt.Sprintf("%s%06d", memberPrefix, index) }

// entity builds the row for v: its JSON in Data, Data1, ... plus columns.
func entity(pk, rk string, v any, columns map[string]any) ([]byte, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	data = asciiJSON(data)
	e := map[string]any{"PartitionKey": pk, "RowKey": rk}
	for k, c := range columns {
		e[k] = c
	}
	if err := putChunks(e, "Data", string(data)); err != nil {
		return nil, err
	}
	return json.Marshal(e)
}

// putChunks stores s in the properties name, name1, name2, ...
func putChunks(e map[string]any, name, s string) error {
	chunks := split(s, chunkBytes)
	if len(chunks) > maxChunks {
		return fmt.Errorf("%s is %d bytes, more than a table entity holds", name, len(s))
	}
	for i, c := range chunks {
		e[chunkName(name, i)] = c
	}
	return nil
}

// join reads back what putChunks stored.
func join(props map[string]json.RawMessage, name string) (string, error) {
	var b strings.Builder
	for i := 0; ; i++ {
		raw, ok := props[chunkName(name, i)]
		if !ok {
			if i == 0 {
				return "", fmt.Errorf("property %s missing", name)
			}
			return b.String(), nil
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", fmt.Errorf("property %s: %w", chunkName(name, i), err)
		}
		b.WriteString(s)
	}
}

func chunkName(name string, i int) string {
	if i == 0 {
		return name
	}
	return name + strconv.Itoa(i)
}

// asciiJSON escapes every non-ASCII rune of a JSON document as \uXXXX,
// which decodes to the same value. Azurite 3.35 corrupts a multi-byte
// character that straddles a 64 KiB boundary of the request body; an ASCII
// body has none, and each byte is then one UTF-16 unit of the stored string.
func asciiJSON(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); {
		if b[i] < utf8.RuneSelf {
			out = append(out, b[i])
			i++
			continue
		}
		r, size := utf8.DecodeRune(b[i:])
		i += size
		if r1, r2 := utf16.EncodeRune(r); r1 != utf8.RuneError {
			out = fmt.Appendf(out, `\u%04x\u%04x`, r1, r2)
		} else {
			out = fmt.Appendf(out, `\u%04x`, r)
		}
	}
	return out
}

// split cuts s into pieces of at most size bytes without splitting a rune.
func split(s string, size int) []string {
	var out []string
	for len(s) > size {
		cut := size
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		out = append(out, s[:cut])
		s = s[cut:]
	}
	return append(out, s)
}

func decodeData(props map[string]json.RawMessage, v any) error {
	data, err := join(props, "Data")
	if err != nil {
		return err
	}
	return json.Unmarshal([]byte(data), v)
}

// decodeListed decodes a work item row from a list page, ETag included.
func decodeListed(raw []byte) (*export.WorkItem, error) {
	var props map[string]json.RawMessage
	if err := json.Unmarshal(raw, &props); err != nil {
		return nil, err
	}
	var item export.WorkItem
	if err := decodeData(props, &item); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(props["odata.etag"], &item.ETag); err != nil {
		return nil, fmt.Errorf("odata.etag: %w", err)
	}
	return &item, nil
}

func checkItemKeys(item *export.WorkItem) error {
	if err := export.CheckKey(item.JobID); err != nil {
		return err
	}
	return export.CheckKey(item.ID)
}
