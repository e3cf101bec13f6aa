package export

import (
	"time"
)

// Settings tune the engine. config.Config fills them from app settings.
type Settings struct {
	MaxFileBytes     int64         // roll to a new file before a line would pass this size (64 MiB)
	BlockBytes       int           // stage a block when this many bytes are buffered (4 MiB)
	PageSize         int           // _count sent to the source
	MemberBatch      int           // patient ids per compartment search (Patient/Group)
	ClockMargin      time.Duration // transactionTime = source clock minus this, for in-flight writes
	InvocationBudget time.Duration // a worker invocation stops paging after this and continues in a new message
	Retention        time.Duration // how long files are promised after completion (Expires)
	SystemTypes      []string      // if set, the types of a system export without _type (else the source's CapabilityStatement)
	Lease            time.Duration // how long an item stays owned after its last checkpoint
	StallAfter       time.Duration // a pending item with no owner and no change for this long is enqueued again
	// MaxActivePerOwner is how many unfinished jobs one client (Request.Owner)
	// may have; a kick-off beyond it is fault.Limited. Zero: no limit.
	MaxActivePerOwner int
	// WindowResources splits a type of a system export that holds more
	// resources than this into _lastUpdated windows of at most about this
	// many, each its own work item (windows.go). Zero: one item per type.
	WindowResources int
	// Anonymizers reads de-identification configurations
	// (_anonymizationConfig). It is a port rather than a tuning value, kept
	// here so that New's signature stays as it is; nil: de-identified export
	// is not configured and a kick-off asking for it is fault.Invalid.
	Anonymizers Anonymizers
}

// DefaultWindowResources is the default of Settings.WindowResources: 100
// pages at the default page size, about 100 MB of NDJSON at 1 KB a resource
// (two 64 MiB files), a minute or two of paging on a source answering a page
// in about a second. Smaller windows add count requests at planning, item
// rows, messages and files; larger ones leave workers idle on a big type.
const DefaultWindowResources = 100_000

// DefaultSettings are the production defaults.
func DefaultSettings() Settings {
	return Settings{
		MaxFileBytes:     64 << 20,
		BlockBytes:       4 << 20,
		PageSize:         1000,
		MemberBatch:      100,
		ClockMargin:      2 * time.Second,
		InvocationBudget: 8 * time.Minute,
		Retention:        24 * time.Hour,
		Lease:            time.Minute,
		StallAfter:       15 * time.Minute,

		MaxActivePerOwner: 5,
		WindowResources:   DefaultWindowResources,
	}
}

// Engine runs exports. It is safe for concurrent use: one Engine serves every
// HTTP request and every worker invocation of a process.
//
// Status, Cancel, OpenFile, FileURL and RestartStalled log through the
// caller's logger (zerolog.Ctx), which carries the job id already (httpapi
// adds it), so they do not add it again: a JSON line with two "job" keys
// confuses log queries.
type Engine struct {
	store  Store
	queue  Queue
	blobs  Blobs
	source Source
	now    Clock
	set    Settings
}

// New returns an Engine over the given ports. A nil clock means time.Now.
func New(store Store, queue Queue, blobs Blobs, source Source, set Settings, clock Clock) *Engine {
	if clock == nil {
		clock = time.Now
	}
	return &Engine{store: store, queue: queue, blobs: blobs, source: source, now: clock, set: set}
}

// Phase is where a job stands, as a client sees it.
type Phase int

const (
	InProgress Phase = iota
	Completed
	Failed
)

// OutputFile is one file of a manifest.
type OutputFile struct {
	Type  string // resource type of every line
	Name  string // file name within the job, used in the download URL
	Count int64  // lines in the file
}

// Status is a job's status, derived from the job and its work items.
type Status struct {
	Job         *Job
	Phase       Phase
	Done        int64 // resources written so far
	Total       int64 // resources expected, when TotalKnown
	TotalKnown  bool
	Output      []OutputFile // Completed only
	Errors      []OutputFile // Completed only: OperationOutcome files
	Deleted     []OutputFile // Completed only: Bundle files of the deletions in the _since window
	Failure     error        // Failed only: the cause, with its fault kind and code
	CompletedAt time.Time    // Completed only

	// Files are the files a client may download now, in manifest order:
	// every file once Completed, and while InProgress those already complete
	// for good (see manifestFiles), for partial manifests. Items are the
	// ids of the job's work items in manifest order, which page positions
	// count by (Position.Encode). Both are empty until the plan is done.
	Files []ManifestEntry
	Items []string

	// Progress (see estimateProgress). Percent stays below 100 until the
	// job is Completed: only the manifest means done.
	Planned    bool // the plan is done: the work items, and Total when known, are final
	ItemsDone  int  // work items (one per resource type, or per window of one) finished
	ItemsTotal int  // work items created by the plan
	Percent    int  // estimated share of the export done, 0 to 99 while in progress
}

// Expires is when a completed job's files stop being promised.
func (s *Status) Expires(retention time.Duration) time.Time { return s.CompletedAt.Add(retention) }
