package export

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"
)

// Store keeps jobs and work items. Updates are compare-and-swap on the ETag
// the entity was read with; a lost race is a fault.Conflict. Missing entities
// are fault.NotFound.
type Store interface {
	CreateJob(ctx context.Context, job *Job) error // sets job.ETag
	GetJob(ctx context.Context, jobID string) (*Job, error)
	UpdateJob(ctx context.Context, job *Job) error // If-Match job.ETag; sets the new ETag

	CreateItem(ctx context.Context, item *WorkItem) error // fault.Conflict if it exists; sets item.ETag
	GetItem(ctx context.Context, jobID, itemID string) (*WorkItem, error)
	UpdateItem(ctx context.Context, item *WorkItem) error // If-Match item.ETag; sets the new ETag
	ListItems(ctx context.Context, jobID string) ([]*WorkItem, error)

	// PutMembers stores batch number index of a Patient/Group export's member
	// patient ids (overwriting it); GetMembers reads it back.
	PutMembers(ctx context.Context, jobID string, index int, ids []string) error
	GetMembers(ctx context.Context, jobID string, index int) ([]string, error)

	// The owner index lists the jobs of each client (Request.Owner), so that
	// a kick-off can count the client's unfinished jobs without scanning
	// every job. The engine adds a job before creating it and removes it once
	// it has seen it finished, so the index stays about as small as the cap.
	// owner must pass CheckKey.
	AddOwnerJob(ctx context.Context, owner, jobID string) error    // adding it again is not an error
	OwnerJobs(ctx context.Context, owner string) ([]string, error) // job ids ordered by id (oldest first)
	RemoveOwnerJob(ctx context.Context, owner, jobID string) error // a missing entry is not an error
}

// CheckKey rejects a job or item id that a Store cannot hold as a key (the
// Azure Table key rules). Every Store checks ids with it, so the in-memory
// one refuses exactly what the Azure one refuses.
func CheckKey(id string) error {
	if id == "" || len(id) > 512 {
		return fmt.Errorf("id %q: must be 1 to 512 bytes", id)
	}
	if strings.ContainsAny(id, `/\#?`) {
		return fmt.Errorf("id %q: must not contain / \\ # or ?", id)
	}
	for _, r := range id {
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return fmt.Errorf("id %q: must not contain control characters", id)
		}
	}
	return nil
}

// Queue takes work item messages.
type Queue interface {
	Enqueue(ctx context.Context, msg Message) error
}

// Blobs stores NDJSON files as block blobs: blocks are staged under
// deterministic ids (0, 1, 2, ...) and a file holds exactly the first n blocks
// once CommitBlocks(n) returns. Every commit sets Content-Type
// application/fhir+ndjson. Staging a block again with the same id replaces it.
type Blobs interface {
	EnsureContainer(ctx context.Context, container string) error
	StageBlock(ctx context.Context, container, blob string, block int, data []byte) error
	// CommitBlocks commits blocks 0..blocks-1 if the blob meets cond, and
	// returns the blob's new ETag. A failed condition is a fault.Conflict:
	// another invocation wrote the blob, so this one must not.
	CommitBlocks(ctx context.Context, container, blob string, blocks int, cond Condition) (string, error)
	Delete(ctx context.Context, container, blob string) error // a missing blob is not an error
	DeletePrefix(ctx context.Context, container, prefix string) error
	Open(ctx context.Context, container, blob string) (io.ReadCloser, int64, error) // fault.NotFound
	// ReadURL returns a URL that lets whoever holds it read this one blob,
	// and nothing else, until ttl has passed (EXPORT_DOWNLOADS=sas). It does
	// not check that the blob exists.
	ReadURL(ctx context.Context, container, blob string, ttl time.Duration) (string, error)
	// ReadSmall reads a whole small blob (an anonymization configuration)
	// and returns it with its ETag. ifMatch, when not "", must be the blob's
	// ETag. Errors name the container or blob, and carry no storage response
	// text, so a caller may show them to a client: fault.NotFound for a
	// missing container or blob, fault.Conflict when the ETag differs,
	// fault.Invalid when the blob is larger than max bytes.
	ReadSmall(ctx context.Context, container, blob, ifMatch string, max int64) ([]byte, string, error)
}

// MaxBlocksPerBlob is the most committed blocks a blob can hold (Azure's
// limit). The file writer finishes a file before it reaches it; every Blobs
// refuses block numbers past it, so the in-memory one fails where Azure would.
const MaxBlocksPerBlob = 50000

var containerName = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9]|-[a-z0-9]){2,62}$`)

// ValidContainerName reports whether s can name a Blobs container: 3 to 63
// lowercase letters, digits and single inner hyphens (Azure's rule). The HTTP
// API checks _container with it and config checks EXPORT_CONTAINER, so a
// name that passes is one the destination accepts.
func ValidContainerName(s string) bool { return len(s) <= 63 && containerName.MatchString(s) }

// Condition guards a commit. The zero value commits unconditionally.
type Condition struct {
	IfMatch   string // commit only if the blob still has this ETag
	IfMissing bool   // commit only if the blob does not exist yet
}

// Entry is one entry of a search result page.
type Entry struct {
	Resource []byte // the resource's JSON as the source sent it
	Mode     string // search.mode: "match", "include" or "outcome" ("" counts as match)
	// Compact reports that the source adapter has already validated Resource
	// as JSON and removed its insignificant whitespace (what json.Compact
	// does), so the engine writes it without another pass over its bytes.
	Compact bool
}

// Source is the FHIR server the data comes from.
type Source interface {
	// Now returns the source's clock (its HTTP Date) and proves it is reachable.
	Now(ctx context.Context) (time.Time, error)
	// Types lists the resource types the source's CapabilityStatement can search.
	Types(ctx context.Context) ([]string, error)
	// SearchParams lists, by resource type, the search parameters the source's
	// CapabilityStatement declares. A type it declares no parameters for is
	// absent (the statement says nothing about it).
	SearchParams(ctx context.Context) (map[string][]string, error)
	// Read returns one resource; fault.NotFound if the source has none.
	Read(ctx context.Context, resourceType, id string) ([]byte, error)
	// SearchURL builds the absolute URL of the first page of a search.
	SearchURL(resourceType string, query string) string
	// Count returns the total of a search (with _summary=count).
	Count(ctx context.Context, resourceType string, query string) (int64, error)
	// Page fetches one page, calls visit for each entry in order, and returns
	// the absolute URL of the next page ("" on the last page). visit's bytes
	// are only valid during the call.
	Page(ctx context.Context, pageURL string, visit func(Entry) error) (next string, err error)

	// HistoryTypes lists the resource types whose history the source's
	// CapabilityStatement offers: those declared with the history-type
	// interaction, or with no interaction list (the statement is silent; a
	// refusal then comes from the history request itself).
	HistoryTypes(ctx context.Context) ([]string, error)
	// HistoryURL builds the absolute URL of the first page of
	// [resourceType]/_history (id "") or [resourceType]/[id]/_history, with
	// query (URL-encoded).
	HistoryURL(resourceType, id, query string) string
	// HistoryPage fetches one page of a history Bundle, calls visit for each
	// entry in order, and returns the absolute URL of the next page. A source
	// that answers the request with 400, 404, 405 or 501 gives an error
	// matching ErrNoHistory (and keeping its fault kind).
	HistoryPage(ctx context.Context, pageURL string, visit func(HistoryEntry) error) (next string, err error)
}

// HistoryEntry is what the export reads of one history Bundle entry.
type HistoryEntry struct {
	Method string // request.method: "DELETE", "PUT", "POST", ...
	// Type and ID name the resource of the entry: from request.url
	// ("Patient/123"), else fullUrl, else the entry's resource.
	Type string
	ID   string
	// At is when the version was made: response.lastModified, else the
	// resource's meta.lastUpdated; zero if the entry says neither.
	At time.Time
}

// ErrNoHistory marks a history request the source refused as unsupported.
var ErrNoHistory = errors.New("the source FHIR server does not support this history request")

// Clock is the engine's time source; tests use a fixed one.
type Clock func() time.Time
