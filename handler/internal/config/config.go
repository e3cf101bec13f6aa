// Package config reads the service's settings from the environment (Azure
// Functions app settings arrive as environment variables), applies defaults
// and validates them before any work starts.
//
// Each default lives with the package that uses the setting (export,
// fhirsource, azstore, httpapi) and is read from there, so a package used
// without config behaves as the service does. A default that depends on
// another setting follows that setting's value; only two values a user set
// can contradict each other.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/azfhir/bulkexport/handler/devstorage"
	"github.com/azfhir/bulkexport/handler/internal/azstore"
	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fhir"
	"github.com/azfhir/bulkexport/handler/internal/fhirsource"
	"github.com/azfhir/bulkexport/handler/internal/httpapi"
	"github.com/azfhir/bulkexport/handler/internal/queueworker"
)

// Storage says how to reach the storage account: a connection string, or
// service URLs with a managed identity (AzureWebJobsStorage__* settings).
type Storage struct {
	ConnectionString string
	BlobURL          string
	QueueURL         string
	TableURL         string
	ClientID         string // user-assigned managed identity; empty for system-assigned
}

// Config is every setting the handler reads.
type Config struct {
	Storage Storage

	FHIRServerURL string        // FHIR_SERVER_URL: base of the source FHIR R4 server
	FHIRAuth      string        // FHIR_AUTH: "none" or "azure" (Entra ID token via azidentity)
	FHIRScope     string        // FHIR_AUTH_SCOPE: default "<origin of FHIR_SERVER_URL>/.default"
	FHIRClientID  string        // FHIR_AUTH_CLIENT_ID: user-assigned identity for the source; empty: system-assigned
	FHIRAttempts  int           // FHIR_RETRY_ATTEMPTS: tries of one source request while it fails transiently
	FHIRBackoff   time.Duration // FHIR_RETRY_BACKOFF: first backoff ceiling, doubled per try (capped at 30s)

	Container string // EXPORT_CONTAINER: default destination container
	Table     string // EXPORT_TABLE: job table
	Queue     string // EXPORT_QUEUE: work item queue (the worker function's queueName)
	BaseURL   string // EXPORT_BASE_URL: public base URL; empty: from each request

	MaxFileBytes     int64         // EXPORT_MAX_FILE_BYTES
	BlockBytes       int           // EXPORT_BLOCK_BYTES
	PageSize         int           // EXPORT_PAGE_SIZE: _count sent to the source
	MemberBatch      int           // EXPORT_MEMBER_BATCH: patient ids per compartment search
	SystemTypes      []string      // EXPORT_TYPES: types of a system export without _type; empty: ask the source
	InvocationBudget time.Duration // EXPORT_INVOCATION_BUDGET: paging time per worker invocation
	Retention        time.Duration // EXPORT_RETENTION: Expires of a completed manifest
	RetryAfter       time.Duration // EXPORT_RETRY_AFTER: Retry-After of an in-progress status
	Lease            time.Duration // EXPORT_LEASE: how long a work item stays owned after its last checkpoint
	StallAfter       time.Duration // EXPORT_STALL_AFTER: an unowned pending item unchanged this long is enqueued again

	// Standalone mode only (in Functions, host.json's extensions.queues decide).
	Workers           int           // EXPORT_WORKERS: concurrent work items per process
	MaxDequeueCount   int           // EXPORT_MAX_DEQUEUE_COUNT: deliveries before a message is poisoned
	VisibilityTimeout time.Duration // EXPORT_RETRY_DELAY: wait before a failed message is delivered again
	RunningVisibility time.Duration // EXPORT_VISIBILITY: a running message stays hidden this long, renewed at half-time

	// EXPORT_SHUTDOWN_GRACE: on SIGTERM, how long requests and work items in
	// flight may run on (work items hand on at their next page boundary).
	ShutdownGrace time.Duration

	FunctionsPort string // FUNCTIONS_CUSTOMHANDLER_PORT: set by the Functions host
	LogLevel      string // LOG_LEVEL: debug, info, warn, error
}

// Load reads the configuration through getenv (os.Getenv in main) and
// validates it. The error names every setting that is wrong and why.
func Load(getenv func(string) string) (Config, error) {
	r := reader{getenv: getenv, explicit: map[string]bool{}}
	def := export.DefaultSettings()
	c := Config{
		Storage:           r.storage(),
		FHIRServerURL:     strings.TrimRight(r.str("FHIR_SERVER_URL", ""), "/"),
		FHIRAuth:          strings.ToLower(r.str("FHIR_AUTH", "none")),
		FHIRScope:         r.str("FHIR_AUTH_SCOPE", ""),
		FHIRClientID:      r.str("FHIR_AUTH_CLIENT_ID", ""),
		FHIRAttempts:      r.integer("FHIR_RETRY_ATTEMPTS", fhirsource.DefaultMaxAttempts, 1, 20),
		FHIRBackoff:       r.duration("FHIR_RETRY_BACKOFF", fhirsource.DefaultBaseBackoff, 10*time.Millisecond, time.Minute),
		Container:         r.str("EXPORT_CONTAINER", "bulk-export"),
		Table:             r.str("EXPORT_TABLE", azstore.DefaultTable),
		Queue:             r.str("EXPORT_QUEUE", azstore.DefaultQueue),
		BaseURL:           strings.TrimRight(r.str("EXPORT_BASE_URL", ""), "/"),
		MaxFileBytes:      int64(r.integer("EXPORT_MAX_FILE_BYTES", int(def.MaxFileBytes), 1024, 4<<30)),
		BlockBytes:        r.integer("EXPORT_BLOCK_BYTES", def.BlockBytes, 1024, 100<<20),
		PageSize:          r.integer("EXPORT_PAGE_SIZE", def.PageSize, 1, 10000),
		MemberBatch:       r.integer("EXPORT_MEMBER_BATCH", def.MemberBatch, 1, 1000),
		SystemTypes:       r.list("EXPORT_TYPES"),
		InvocationBudget:  r.duration("EXPORT_INVOCATION_BUDGET", def.InvocationBudget, time.Second, 24*time.Hour),
		Retention:         r.duration("EXPORT_RETENTION", def.Retention, time.Minute, 365*24*time.Hour),
		RetryAfter:        r.duration("EXPORT_RETRY_AFTER", httpapi.DefaultRetryAfter, time.Second, 5*time.Second),
		Lease:             r.duration("EXPORT_LEASE", def.Lease, 2*time.Second, time.Hour),
		StallAfter:        r.duration("EXPORT_STALL_AFTER", def.StallAfter, 5*time.Second, 24*time.Hour),
		Workers:           r.integer("EXPORT_WORKERS", 4, 1, 64),
		MaxDequeueCount:   r.integer("EXPORT_MAX_DEQUEUE_COUNT", 5, 1, 100),
		VisibilityTimeout: r.duration("EXPORT_RETRY_DELAY", 30*time.Second, 0, time.Hour),
		RunningVisibility: r.duration("EXPORT_VISIBILITY", 2*time.Minute, 2*time.Second, time.Hour),
		ShutdownGrace:     r.duration("EXPORT_SHUTDOWN_GRACE", queueworker.DefaultGrace, time.Second, 10*time.Minute),
		FunctionsPort:     r.str("FUNCTIONS_CUSTOMHANDLER_PORT", ""),
		LogLevel:          strings.ToLower(r.str("LOG_LEVEL", "info")),
	}
	c.follow(&r)
	c.validate(&r)
	if len(r.errs) > 0 {
		return Config{}, fmt.Errorf("invalid configuration:\n  %w", errors.Join(r.errs...))
	}
	return c, nil
}

// follow makes an unset setting whose default depends on another setting
// agree with that setting's value, so that changing one documented setting
// never stops the service (EXPORT_MAX_FILE_BYTES=1048576 alone gives 1 MiB
// blocks). When both are set, validate reports a contradiction.
func (c *Config) follow(r *reader) {
	// A block is never larger than a file.
	switch {
	case !r.explicit["EXPORT_BLOCK_BYTES"]:
		c.BlockBytes = int(min(int64(c.BlockBytes), c.MaxFileBytes))
	case !r.explicit["EXPORT_MAX_FILE_BYTES"]:
		c.MaxFileBytes = max(c.MaxFileBytes, int64(c.BlockBytes))
	}
	// The watchdog waits well past a lease, so it never restarts an item
	// whose owner is alive.
	switch {
	case !r.explicit["EXPORT_STALL_AFTER"]:
		c.StallAfter = max(c.StallAfter, 2*c.Lease)
	case !r.explicit["EXPORT_LEASE"]:
		c.Lease = min(c.Lease, c.StallAfter/2)
	}
}

func (c *Config) validate(r *reader) {
	if c.FHIRServerURL == "" {
		r.fail("FHIR_SERVER_URL", "is required: the base URL of the source FHIR R4 server, e.g. https://example.fhir.azurehealthcareapis.com")
	} else if u, err := url.Parse(c.FHIRServerURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		r.fail("FHIR_SERVER_URL", "must be an absolute http(s) URL, got %q", c.FHIRServerURL)
	}
	if c.FHIRAuth != "none" && c.FHIRAuth != "azure" {
		r.fail("FHIR_AUTH", `must be "none" or "azure", got %q`, c.FHIRAuth)
	}
	if c.BaseURL != "" {
		if u, err := url.Parse(c.BaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" {
			r.fail("EXPORT_BASE_URL", "must be an absolute http(s) URL without a query, got %q", c.BaseURL)
		}
	}
	if !export.ValidContainerName(c.Container) {
		r.fail("EXPORT_CONTAINER", "%q is not a valid container name (3-63 lowercase letters, digits and single hyphens)", c.Container)
	}
	if !azstore.ValidTableName(c.Table) {
		r.fail("EXPORT_TABLE", "%q is not a valid table name (3-63 letters and digits, starting with a letter)", c.Table)
	}
	if !azstore.ValidQueueName(c.Queue) {
		r.fail("EXPORT_QUEUE", "%q is not a valid queue name (3-56 lowercase letters, digits and single hyphens, so that -poison still fits)", c.Queue)
	}
	for _, t := range c.SystemTypes {
		if !fhir.IsExportable(t) {
			r.fail("EXPORT_TYPES", "%q is not an exportable FHIR R4 resource type", t)
		}
	}
	if int64(c.BlockBytes) > c.MaxFileBytes {
		r.fail("EXPORT_BLOCK_BYTES", "(%d) must not exceed EXPORT_MAX_FILE_BYTES (%d)", c.BlockBytes, c.MaxFileBytes)
	}
	if c.StallAfter <= c.Lease {
		r.fail("EXPORT_STALL_AFTER", "(%s) must be longer than EXPORT_LEASE (%s), or a running item would be enqueued again", c.StallAfter, c.Lease)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		r.fail("LOG_LEVEL", `must be debug, info, warn or error, got %q`, c.LogLevel)
	}
	if c.FunctionsPort != "" {
		if p, err := strconv.Atoi(c.FunctionsPort); err != nil || p < 1 || p > 65535 {
			r.fail("FUNCTIONS_CUSTOMHANDLER_PORT", "must be a port number, got %q", c.FunctionsPort)
		}
	}
}

// Fields returns the configuration for the start-up log line, without secrets.
func (c Config) Fields() map[string]any {
	storage := "connection string (account key redacted)"
	if c.Storage.ConnectionString == "" {
		storage = "managed identity: " + c.Storage.BlobURL
	} else if u := connectionValue(c.Storage.ConnectionString, "BlobEndpoint"); u != "" {
		storage = "connection string: " + u
	}
	return map[string]any{
		"storage": storage, "fhirServerUrl": c.FHIRServerURL, "fhirAuth": c.FHIRAuth,
		"container": c.Container, "table": c.Table, "queue": c.Queue, "baseUrl": c.BaseURL,
		"maxFileBytes": c.MaxFileBytes, "blockBytes": c.BlockBytes, "pageSize": c.PageSize,
		"memberBatch": c.MemberBatch, "systemTypes": c.SystemTypes,
		"invocationBudget": c.InvocationBudget.String(), "lease": c.Lease.String(), "stallAfter": c.StallAfter.String(),
		"workers": c.Workers, "maxDequeueCount": c.MaxDequeueCount, "functionsMode": c.FunctionsPort != "",
	}
}

func connectionValue(cs, key string) string {
	for _, part := range strings.Split(cs, ";") {
		if k, v, ok := strings.Cut(part, "="); ok && strings.EqualFold(strings.TrimSpace(k), key) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// reader collects every problem instead of stopping at the first, and which
// settings were given a valid value (the others have their defaults).
type reader struct {
	getenv   func(string) string
	errs     []error
	explicit map[string]bool
}

func (r *reader) fail(name, format string, args ...any) {
	r.errs = append(r.errs, fmt.Errorf("%s %s", name, fmt.Sprintf(format, args...)))
}

func (r *reader) str(name, def string) string {
	if v := strings.TrimSpace(r.getenv(name)); v != "" {
		return v
	}
	return def
}

func (r *reader) integer(name string, def, lo, hi int) int {
	s := r.str(name, "")
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		r.fail(name, "must be a whole number from %d to %d, got %q", lo, hi, s)
		return def
	}
	r.explicit[name] = true
	return n
}

func (r *reader) duration(name string, def, lo, hi time.Duration) time.Duration {
	s := r.str(name, "")
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		if n, nerr := strconv.Atoi(s); nerr == nil {
			d, err = time.Duration(n)*time.Second, nil
		}
	}
	if err != nil || d < lo || d > hi {
		r.fail(name, "must be a duration from %s to %s (like 30s or 8m), got %q", lo, hi, s)
		return def
	}
	r.explicit[name] = true
	return d
}

func (r *reader) list(name string) []string {
	var out []string
	for _, p := range strings.Split(r.str(name, ""), ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// storage reads AzureWebJobsStorage: a connection string, or the
// identity-based AzureWebJobsStorage__*ServiceUri settings.
func (r *reader) storage() Storage {
	cs := devstorage.Expand(r.str("AzureWebJobsStorage", ""))
	s := Storage{
		ConnectionString: cs,
		BlobURL:          r.str("AzureWebJobsStorage__blobServiceUri", ""),
		QueueURL:         r.str("AzureWebJobsStorage__queueServiceUri", ""),
		TableURL:         r.str("AzureWebJobsStorage__tableServiceUri", ""),
		ClientID:         r.str("AzureWebJobsStorage__clientId", ""),
	}
	if s.ConnectionString != "" {
		if connectionValue(cs, "AccountName") == "" && connectionValue(cs, "BlobEndpoint") == "" {
			r.fail("AzureWebJobsStorage", "is not a storage connection string (it has neither AccountName nor BlobEndpoint)")
		}
		return s
	}
	if account := r.str("AzureWebJobsStorage__accountName", ""); account != "" {
		def := func(v, svc string) string {
			if v != "" {
				return v
			}
			return "https://" + account + "." + svc + ".core.windows.net"
		}
		s.BlobURL, s.QueueURL, s.TableURL = def(s.BlobURL, "blob"), def(s.QueueURL, "queue"), def(s.TableURL, "table")
	}
	if s.BlobURL == "" || s.QueueURL == "" || s.TableURL == "" {
		r.fail("AzureWebJobsStorage", "is required: a storage connection string (UseDevelopmentStorage=true for Azurite), "+
			"or AzureWebJobsStorage__accountName / __blobServiceUri, __queueServiceUri and __tableServiceUri for a managed identity")
	}
	return s
}
