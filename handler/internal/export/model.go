package export

import (
	"time"
)

// Level is the export level of a kick-off request.
type Level string

const (
	LevelSystem  Level = "system"
	LevelPatient Level = "patient"
	LevelGroup   Level = "group"
)

// TypeFilter is one `_typeFilter` query: a search for one resource type.
// Queries for the same type are OR-ed; a type without a query is unfiltered.
type TypeFilter struct {
	Type  string `json:"type"`
	Query string `json:"query"` // the search parameters, URL-encoded, without the leading "Type?"
}

// Request is a validated kick-off request. The HTTP API builds it; the engine
// trusts it.
type Request struct {
	Level       Level        `json:"level"`
	GroupID     string       `json:"groupId,omitempty"`
	Types       []string     `json:"types,omitempty"` // empty: every type in scope
	Since       *time.Time   `json:"since,omitempty"`
	Until       *time.Time   `json:"until,omitempty"` // _until: searches stop at the earlier of it and transactionTime
	TypeFilters []TypeFilter `json:"typeFilters,omitempty"`
	// Elements is _elements: "name" (every type) or "Type.name" (that type
	// only), top-level element names. A resource of a type any entry applies
	// to keeps only those, resourceType, id, meta and the elements R4
	// requires, and is tagged SUBSETTED.
	Elements []string `json:"elements,omitempty"`
	// Patients is the kick-off's patient parameter: the ids of the patients
	// to export (Patient and Group level), sorted and distinct. Empty: every
	// patient (Patient level) or every member (Group level). At Group level
	// each must be a member of the Group; KickOff refuses the others.
	Patients     []string `json:"patients,omitempty"`
	Container    string   `json:"container"`
	OutputFormat string   `json:"outputFormat"`
	RequestURL   string   `json:"request"`            // the kick-off URL, for the manifest
	Warnings     []string `json:"warnings,omitempty"` // ignored parameters under handling=lenient, the anonymization configuration's warnings
	// Owner is the key of the client that started the job (the HTTP API sets
	// auth.Principal.OwnerKey()). Only that client sees the job: Status,
	// Cancel and OpenFile answer fault.NotFound to any other.
	Owner string `json:"owner,omitempty"`
	// AllowPartialManifests (IG v3) lets a status poll of the running job
	// answer 202 with a manifest page of the files already complete, and
	// pages the manifest (see the HTTP API's status).
	AllowPartialManifests bool `json:"allowPartialManifests,omitempty"`
	// AnonymizationConfig is _anonymizationConfig: the name of the
	// configuration blob in the anonymization container; "" exports the data
	// as it is. AnonymizationETag is the ETag KickOff validated (not the one
	// the client sent, which may be empty): every work item and retry loads
	// exactly that version (Anonymizers.Load).
	AnonymizationConfig string `json:"anonymizationConfig,omitempty"`
	AnonymizationETag   string `json:"anonymizationETag,omitempty"`
	// IncludeAssociated is includeAssociatedData: LatestProvenance or
	// RelevantProvenance, or "" for none. The job's Provenance output is
	// then the Provenance associated with the resources it returns, and no
	// other (associated.go).
	IncludeAssociated string `json:"includeAssociated,omitempty"`
	// Lenient is Prefer: handling=lenient. KickOff then drops a parameter
	// the source cannot serve (includeAssociatedData) with a warning instead
	// of refusing the request.
	Lenient bool `json:"lenient,omitempty"`
}

// The includeAssociatedData values this server implements (the IG's names).
const (
	LatestProvenance   = "LatestProvenanceResources"
	RelevantProvenance = "RelevantProvenanceResources"
)

// JobState is what the job entity itself records. The status a client sees is
// derived from it and from the work items (see Status).
type JobState string

const (
	JobActive    JobState = "active"
	JobCancelled JobState = "cancelled"
)

// Job is one export. It is written once at kick-off; afterwards only a cancel
// changes it. Progress lives in the work items.
type Job struct {
	ID              string    `json:"id"`
	Request         Request   `json:"request"`
	TransactionTime time.Time `json:"transactionTime"`
	CreatedAt       time.Time `json:"createdAt"`
	State           JobState  `json:"state"`
	CancelledAt     time.Time `json:"cancelledAt,omitzero"`

	ETag string `json:"-"` // set by the Store
}

// ItemState is the life cycle of one work item.
type ItemState string

const (
	ItemPending ItemState = "pending" // enqueued, not finished
	ItemDone    ItemState = "done"    // every page committed
	ItemFailed  ItemState = "failed"  // gave up; Failure says why
)

// PlanItemID is the id of the work item that discovers the types (and, for
// Patient and Group exports, the member patients) and creates the other items.
const PlanItemID = "plan"

// File is one committed NDJSON file of a work item.
type File struct {
	Name  string `json:"name"`  // blob name relative to the job folder, e.g. "Observation-1.ndjson"
	Count int64  `json:"count"` // lines (resources) in the file
	Bytes int64  `json:"bytes"`
}

// Cursor is where a work item stands in the source. It is recorded with every
// commit, so a redelivered or continued item resumes exactly there.
type Cursor struct {
	Query int `json:"query"` // index of the _typeFilter query being run (OR-ed queries run one by one)
	Batch int `json:"batch"` // Patient/Group: index of the member batch being searched
	// Param is the index in WorkItem.Params of the compartment parameter being
	// searched (Patient/Group). Each (Param, Batch) pair is one search; rows
	// written before it existed read 0, the first parameter.
	Param int    `json:"param,omitempty"`
	Next  string `json:"next,omitempty"` // the next page to fetch; empty: start the batch (or the search) afresh
	Page  int    `json:"page,omitempty"` // pages of this query and batch passed so far (names a page in error files); the associated item: references looked up
	// Offset is, for the associated Provenance item, the bytes of output
	// file number Batch (in the order associatedRun lists them) whose
	// resources have been looked up.
	Offset int64 `json:"offset,omitempty"`

	// The search is sorted by _lastUpdated. After is the lastUpdated of the
	// last resource passed and Ties the ids passed at exactly that instant, so
	// that a search whose next link the source no longer honours restarts at
	// _lastUpdated=ge<After> and skips what was already written.
	After time.Time `json:"after,omitzero"`
	Ties  []string  `json:"ties,omitempty"`
}

// WorkItem is one unit of export work: one resource type of one job, or the plan.
type WorkItem struct {
	JobID string    `json:"job"`
	ID    string    `json:"id"`   // PlanItemID, the resource type, or <Type>.w<NNNN> for a window (windowItemID)
	Type  string    `json:"type"` // resource type; empty for the plan item
	State ItemState `json:"state"`

	Cursor Cursor `json:"cursor"`
	// Params are the Patient compartment parameters the item searches, in the
	// R4 order (Patient/Group): those of fhir.PatientCompartment the source's
	// CapabilityStatement supports, fixed by the plan so that every invocation
	// agrees on which search owns a resource. Rows written before it existed
	// have none and search the type's first parameter only, as planned.
	Params   []string `json:"params,omitempty"`
	Files    []File   `json:"files,omitempty"`    // committed files in order; the last one may still grow
	Blocks   int      `json:"blocks,omitempty"`   // committed blocks of the last file
	BlobETag string   `json:"blobETag,omitempty"` // ETag of the last file after its last commit: the next commit is If-Match on it
	Done     int64    `json:"done"`               // resources written so far
	Expected int64    `json:"expected,omitempty"` // source's count, when known (progress only)
	Skipped  int64    `json:"skipped,omitempty"`  // duplicates suppressed across member batches and compartment parameters

	// Kind is ItemDeleted for an item that lists its type's deletions
	// (deleted.go), ItemAssociated for the item that finds the Provenance of
	// what the job returns (associated.go), "" for a search item.
	Kind string `json:"kind,omitempty"`

	// The item's error files (<Type>-errors-<n>.ndjson): one OperationOutcome
	// a line for each search outcome entry the source sent and each resource
	// that could not be exported. They are written and fenced like Files.
	ErrorFiles    []File `json:"errorFiles,omitempty"`
	ErrorBlocks   int    `json:"errorBlocks,omitempty"`
	ErrorBlobETag string `json:"errorBlobETag,omitempty"`
	ErrorCount    int64  `json:"errorCount,omitempty"` // lines in ErrorFiles

	Failure     string `json:"failure,omitempty"`     // why the item failed
	FailureCode string `json:"failureCode,omitempty"` // FHIR issue code of the failure
	// FailureKind is the fault kind of the failure (fault.Kind.String), so
	// the status answer is rebuilt with its real kind. Rows written before
	// it existed have none and read as permanent.
	FailureKind string    `json:"failureKind,omitempty"`
	Attempts    int       `json:"attempts,omitempty"` // invocations that started this item
	UpdatedAt   time.Time `json:"updatedAt"`

	// The lease fences concurrent invocations of the same item: only the
	// holder writes, and every write is If-Match on the ETag it last wrote.
	LeaseOwner string    `json:"leaseOwner,omitempty"`
	LeaseUntil time.Time `json:"leaseUntil,omitzero"`

	// Window, when set, bounds the item to the resources of its type last
	// updated in (After, Until]: one of several items of a type the plan split
	// (see windows.go). Nil: the job's own bounds.
	Window *Window `json:"window,omitempty"`

	// Plan item only: the outcome of planning.
	Batches int `json:"batches,omitempty"` // member batches written (Patient/Group)
	// Planned is every work item the plan decided on, recorded before any is
	// created, so that a plan run again after a crash creates the same items
	// (the same windows) instead of counting again and splitting otherwise.
	Planned []PlannedItem `json:"planned,omitempty"`

	ETag string `json:"-"` // set by the Store
}

// Window is a _lastUpdated range (After, Until] of one resource type. After
// zero is no lower bound (or, at planning, the job's _since).
type Window struct {
	N     int       `json:"n"` // 1-based position among the type's windows; names the item and its files
	After time.Time `json:"after,omitzero"`
	Until time.Time `json:"until"`
}

// PlannedItem is a work item as the plan records it before creating it.
type PlannedItem struct {
	ID       string   `json:"id"`
	Type     string   `json:"type"`
	Expected int64    `json:"expected"`
	Params   []string `json:"params,omitempty"`
	Window   *Window  `json:"window,omitempty"`
}

// Message is the text of a queue message: ids only, never data.
type Message struct {
	Job  string `json:"job"`
	Item string `json:"item"`
}
