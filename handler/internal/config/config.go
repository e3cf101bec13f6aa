// Package config reads the service's settings from the environment (Azure
// Functions app settings arrive as environment variables), applies defaults
// and validates them before any work starts.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/fhir"
)

// DevelopmentStorage is the full Azurite connection string on its default
// ports. The Go SDKs reject the short form UseDevelopmentStorage=true, which
// the Functions host accepts, so Load expands it to this.
const DevelopmentStorage = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;" +
	"AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;" +
	"BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;" +
	"TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"

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

	FunctionsPort string // FUNCTIONS_CUSTOMHANDLER_PORT: set by the Functions host
	LogLevel      string // LOG_LEVEL: debug, info, warn, error
}

// QueueName is the default work item queue, and the queueName of
// functions/ExportWorker/function.json (a test keeps them equal).
const QueueName = "export-workitems"

var (
	containerName = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9]|-[a-z0-9]){2,62}$`)
	tableName     = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9]{2,62}$`)
	queueName     = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9]|-[a-z0-9]){2,55}$`)
)

// ValidContainerName reports whether s is a valid Azure blob container name.
func ValidContainerName(s string) bool { return len(s) <= 63 && containerName.MatchString(s) }

// Load reads the configuration through getenv (os.Getenv in main) and
// validates it. The error names every setting that is wrong and why.
func Load(getenv func(string) string) (Config, error) {
	r := reader{getenv: getenv}
	c := Config{
		Storage:           r.storage(),
		FHIRServerURL:     strings.TrimRight(r.str("FHIR_SERVER_URL", ""), "/"),
		FHIRAuth:          strings.ToLower(r.str("FHIR_AUTH", "none")),
		FHIRScope:         r.str("FHIR_AUTH_SCOPE", ""),
		FHIRClientID:      r.str("FHIR_AUTH_CLIENT_ID", ""),
		FHIRAttempts:      r.integer("FHIR_RETRY_ATTEMPTS", 8, 1, 20),
		FHIRBackoff:       r.duration("FHIR_RETRY_BACKOFF", time.Second, 10*time.Millisecond, time.Minute),
		Container:         r.str("EXPORT_CONTAINER", "bulk-export"),
		Table:             r.str("EXPORT_TABLE", "exportjobs"),
		Queue:             r.str("EXPORT_QUEUE", QueueName),
		BaseURL:           strings.TrimRight(r.str("EXPORT_BASE_URL", ""), "/"),
		MaxFileBytes:      int64(r.integer("EXPORT_MAX_FILE_BYTES", 64<<20, 1024, 4<<30)),
		BlockBytes:        r.integer("EXPORT_BLOCK_BYTES", 4<<20, 1024, 100<<20),
		PageSize:          r.integer("EXPORT_PAGE_SIZE", 1000, 1, 10000),
		MemberBatch:       r.integer("EXPORT_MEMBER_BATCH", 100, 1, 1000),
		SystemTypes:       r.list("EXPORT_TYPES"),
		InvocationBudget:  r.duration("EXPORT_INVOCATION_BUDGET", 8*time.Minute, time.Second, 24*time.Hour),
		Retention:         r.duration("EXPORT_RETENTION", 24*time.Hour, time.Minute, 365*24*time.Hour),
		RetryAfter:        r.duration("EXPORT_RETRY_AFTER", 2*time.Second, time.Second, 5*time.Second),
		Lease:             r.duration("EXPORT_LEASE", time.Minute, 2*time.Second, time.Hour),
		StallAfter:        r.duration("EXPORT_STALL_AFTER", 15*time.Minute, 5*time.Second, 24*time.Hour),
		Workers:           r.integer("EXPORT_WORKERS", 4, 1, 64),
		MaxDequeueCount:   r.integer("EXPORT_MAX_DEQUEUE_COUNT", 5, 1, 100),
		VisibilityTimeout: r.duration("EXPORT_RETRY_DELAY", 30*time.Second, 0, time.Hour),
		RunningVisibility: r.duration("EXPORT_VISIBILITY", 2*time.Minute, 2*time.Second, time.Hour),
		FunctionsPort:     r.str("FUNCTIONS_CUSTOMHANDLER_PORT", ""),
		LogLevel:          strings.ToLower(r.str("LOG_LEVEL", "info")),
	}
	c.validate(&r)
	if len(r.errs) > 0 {
		return Config{}, fmt.Errorf("invalid configuration:\n  %w", errors.Join(r.errs...))
	}
	return c, nil
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
	if !ValidContainerName(c.Container) {
		r.fail("EXPORT_CONTAINER", "%q is not a valid container name (3-63 lowercase letters, digits and single hyphens)", c.Container)
	}
	if !tableName.MatchString(c.Table) {
		r.fail("EXPORT_TABLE", "%q is not a valid table name (3-63 letters and digits, starting with a letter)", c.Table)
	}
	if !queueName.MatchString(c.Queue) {
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
		"invocationBudget": c.InvocationBudget.String(), "workers": c.Workers,
		"maxDequeueCount": c.MaxDequeueCount, "functionsMode": c.FunctionsPort != "",
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

// reader collects every problem instead of stopping at the first.
type reader struct {
	getenv func(string) string
	errs   []error
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
	cs := r.str("AzureWebJobsStorage", "")
	if strings.EqualFold(strings.ReplaceAll(cs, " ", ""), "UseDevelopmentStorage=true") {
		cs = DevelopmentStorage
	}
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
