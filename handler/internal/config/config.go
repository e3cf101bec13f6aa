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
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/azfhir/bulkexport/handler/devstorage"
	"github.com/azfhir/bulkexport/handler/internal/auth"
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

// ExportStorage says how to reach the export account: a connection string,
// or its blob service URL with a managed identity.
type ExportStorage struct {
	ConnectionString string
	BlobURL          string
	ClientID         string // user-assigned managed identity; empty for system-assigned
}

// Set reports whether a separate export account is configured.
func (e ExportStorage) Set() bool { return e.ConnectionString != "" || e.BlobURL != "" }

// Config is every setting the handler reads.
type Config struct {
	Storage Storage

	FHIRServerURL string        // FHIR_SERVER_URL: base of the source FHIR R4 server
	FHIRAuth      string        // FHIR_AUTH: "none" or "azure" (Entra ID token via azidentity)
	FHIRScope     string        // FHIR_AUTH_SCOPE: default "<origin of FHIR_SERVER_URL>/.default"
	FHIRClientID  string        // FHIR_AUTH_CLIENT_ID: user-assigned identity for the source; empty: system-assigned
	FHIRAttempts  int           // FHIR_RETRY_ATTEMPTS: tries of one source request while it fails transiently
	FHIRBackoff   time.Duration // FHIR_RETRY_BACKOFF: first backoff ceiling, doubled per try (capped at 30s)

	// Who may call the API (see docs/security.md).
	AuthMode          string   // AUTH_MODE: none, oidc or entra; required, no default
	AuthIssuer        string   // AUTH_ISSUER: oidc's issuer, exactly as the tokens' "iss"
	AuthTenantID      string   // AUTH_TENANT_ID: entra's tenant GUID
	AuthAudiences     []string // AUTH_AUDIENCE: accepted "aud" values (comma list)
	AuthRole          string   // AUTH_ROLE: the app role that may export every type
	AuthTokenEndpoint string   // AUTH_TOKEN_ENDPOINT: published in /.well-known/smart-configuration
	// EXPORT_MAX_ACTIVE_JOBS_PER_CLIENT: unfinished jobs one client may have.
	MaxJobsPerClient int

	Container string // EXPORT_CONTAINER: default destination container
	// EXPORT_CONTAINERS: the containers a kick-off may name in _container
	// (default: just Container; Container is one of them).
	Containers []string
	// EXPORT_ANONYMIZATION_CONTAINER: the container of the export
	// destination account that holds the de-identification configurations
	// a kick-off names in _anonymizationConfig (Azure's name by default).
	AnonymizationContainer string
	// EXPORT_STORAGE (connection string) or EXPORT_STORAGE__blobServiceUri
	// (+ __clientId): a storage account for export files apart from the host
	// account. Zero: the files go to the host account.
	ExportStorage ExportStorage
	// EXPORT_DOWNLOADS: "proxy" (files stream through the service, the
	// owner's token needed) or "sas" (manifest URLs are read-only SAS for
	// one blob, valid for SASTTL from each manifest request).
	Downloads string
	SASTTL    time.Duration // EXPORT_SAS_TTL

	Table   string // EXPORT_TABLE: job table
	Queue   string // EXPORT_QUEUE: work item queue (the worker function's queueName)
	BaseURL string // EXPORT_BASE_URL: public base URL; empty: from each request
	// EXPORT_TRUST_FORWARDED: X-Forwarded-Proto and -Host shape the URLs
	// built from a request only when a proxy in front sets them (the
	// Functions front end); default false, so a bare handler serve does
	// not let clients choose the host of the URLs it hands out.
	TrustForwarded bool

	MaxFileBytes     int64         // EXPORT_MAX_FILE_BYTES
	BlockBytes       int           // EXPORT_BLOCK_BYTES
	PageSize         int           // EXPORT_PAGE_SIZE: _count sent to the source
	MemberBatch      int           // EXPORT_MEMBER_BATCH: ids per search (member patients; Provenance target references)
	SystemTypes      []string      // EXPORT_TYPES: types of a system export without _type; empty: ask the source
	InvocationBudget time.Duration // EXPORT_INVOCATION_BUDGET: paging time per worker invocation
	Retention        time.Duration // EXPORT_RETENTION: Expires of a completed manifest
	RetryAfter       time.Duration // EXPORT_RETRY_AFTER: Retry-After of an in-progress status
	Lease            time.Duration // EXPORT_LEASE: how long a work item stays owned after its last checkpoint
	StallAfter       time.Duration // EXPORT_STALL_AFTER: an unowned pending item unchanged this long is enqueued again
	// EXPORT_WINDOW_RESOURCES: a type of a system export with more resources
	// is split into _lastUpdated windows of about this many, each its own
	// work item; 0 turns windows off.
	WindowResources int
	// EXPORT_SOURCE_CONCURRENCY: the most requests to the source FHIR server
	// in flight at once from this process, lowered while it throttles.
	SourceConcurrency int

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

// DefaultAnonymizationContainer is Azure's container of anonymization
// configurations, so that a configuration uploaded for Azure's de-identified
// export is found here too.
const DefaultAnonymizationContainer = "anonymization"

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
		AuthMode:          strings.ToLower(r.str("AUTH_MODE", "")),
		AuthIssuer:        r.str("AUTH_ISSUER", ""),
		AuthTenantID:      r.str("AUTH_TENANT_ID", ""),
		AuthAudiences:     r.list("AUTH_AUDIENCE"),
		AuthRole:          r.str("AUTH_ROLE", auth.DefaultRole),
		AuthTokenEndpoint: r.str("AUTH_TOKEN_ENDPOINT", ""),
		MaxJobsPerClient:  r.integer("EXPORT_MAX_ACTIVE_JOBS_PER_CLIENT", def.MaxActivePerOwner, 1, 1000),
		Container:         r.str("EXPORT_CONTAINER", "bulk-export"),
		Containers:        r.list("EXPORT_CONTAINERS"),
		ExportStorage:     r.exportStorage(),
		Downloads:         strings.ToLower(r.str("EXPORT_DOWNLOADS", httpapi.DownloadsProxy)),
		SASTTL:            r.duration("EXPORT_SAS_TTL", httpapi.DefaultSASTTL, time.Second, 24*time.Hour),
		Table:             r.str("EXPORT_TABLE", azstore.DefaultTable),
		Queue:             r.str("EXPORT_QUEUE", azstore.DefaultQueue),
		BaseURL:           strings.TrimRight(r.str("EXPORT_BASE_URL", ""), "/"),
		TrustForwarded:    r.boolean("EXPORT_TRUST_FORWARDED", false),
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
		WindowResources:   r.integer("EXPORT_WINDOW_RESOURCES", def.WindowResources, 0, 1_000_000_000),
		SourceConcurrency: r.integer("EXPORT_SOURCE_CONCURRENCY", fhirsource.DefaultConcurrency, 1, 256),
		Workers:           r.integer("EXPORT_WORKERS", 4, 1, 64),
		MaxDequeueCount:   r.integer("EXPORT_MAX_DEQUEUE_COUNT", 5, 1, 100),
		VisibilityTimeout: r.duration("EXPORT_RETRY_DELAY", 30*time.Second, 0, time.Hour),
		RunningVisibility: r.duration("EXPORT_VISIBILITY", 2*time.Minute, 2*time.Second, time.Hour),
		ShutdownGrace:     r.duration("EXPORT_SHUTDOWN_GRACE", queueworker.DefaultGrace, time.Second, 10*time.Minute),
		FunctionsPort:     r.str("FUNCTIONS_CUSTOMHANDLER_PORT", ""),
		LogLevel:          strings.ToLower(r.str("LOG_LEVEL", "info")),
	}
	c.AnonymizationContainer = r.str("EXPORT_ANONYMIZATION_CONTAINER", DefaultAnonymizationContainer)
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
	// The default container is an allowed one: without EXPORT_CONTAINERS
	// the list is just EXPORT_CONTAINER, and without EXPORT_CONTAINER the
	// default is the list's first.
	switch {
	case len(c.Containers) == 0:
		c.Containers = []string{c.Container}
	case r.str("EXPORT_CONTAINER", "") == "":
		c.Container = c.Containers[0]
	}
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
	c.validateAuth(r)
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
	for _, name := range c.Containers {
		if !export.ValidContainerName(name) {
			r.fail("EXPORT_CONTAINERS", "%q is not a valid container name (3-63 lowercase letters, digits and single hyphens)", name)
		}
	}
	for _, name := range append([]string{c.Container}, c.Containers...) {
		if strings.HasPrefix(name, "azure-webjobs-") {
			r.fail("EXPORT_CONTAINERS", "%q is a container of the Functions host (keys, leases): exports must not go there", name)
			break
		}
	}
	if !export.ValidContainerName(c.AnonymizationContainer) {
		r.fail("EXPORT_ANONYMIZATION_CONTAINER", "%q is not a valid container name (3-63 lowercase letters, digits and single hyphens)", c.AnonymizationContainer)
	} else if strings.HasPrefix(c.AnonymizationContainer, "azure-webjobs-") {
		r.fail("EXPORT_ANONYMIZATION_CONTAINER", "%q is a container of the Functions host (keys, leases), not one of configurations", c.AnonymizationContainer)
	}
	if !slices.Contains(c.Containers, c.Container) {
		r.fail("EXPORT_CONTAINER", "(%s) must be one of EXPORT_CONTAINERS (%s)", c.Container, strings.Join(c.Containers, ","))
	}
	c.validateDownloads(r)
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

// validateDownloads checks EXPORT_DOWNLOADS and the export account: SAS URLs
// need a key to sign with, which a connection string without AccountKey
// does not have (a managed identity gets user-delegation keys instead).
func (c *Config) validateDownloads(r *reader) {
	switch c.Downloads {
	case httpapi.DownloadsProxy, httpapi.DownloadsSAS:
	default:
		r.fail("EXPORT_DOWNLOADS", `must be %q or %q, got %q`, httpapi.DownloadsProxy, httpapi.DownloadsSAS, c.Downloads)
	}
	es := c.ExportStorage
	if es.ConnectionString != "" && es.BlobURL != "" {
		r.fail("EXPORT_STORAGE", "give either a connection string or EXPORT_STORAGE__blobServiceUri, not both")
	}
	if es.BlobURL != "" {
		if u, err := url.Parse(es.BlobURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" {
			r.fail("EXPORT_STORAGE__blobServiceUri", "must be an absolute http(s) URL without a query, got %q", es.BlobURL)
		}
	}
	if es.ClientID != "" && es.BlobURL == "" {
		r.fail("EXPORT_STORAGE__clientId", "is only used with EXPORT_STORAGE__blobServiceUri")
	}
	if es.ConnectionString != "" && connectionValue(es.ConnectionString, "AccountName") == "" && connectionValue(es.ConnectionString, "BlobEndpoint") == "" {
		r.fail("EXPORT_STORAGE", "is not a storage connection string (it has neither AccountName nor BlobEndpoint)")
	}
	if c.Downloads != httpapi.DownloadsSAS {
		return
	}
	cs, name := c.Storage.ConnectionString, "AzureWebJobsStorage"
	if es.Set() {
		cs, name = es.ConnectionString, "EXPORT_STORAGE"
	}
	if cs != "" && connectionValue(cs, "AccountKey") == "" {
		r.fail("EXPORT_DOWNLOADS", "is sas, but the %s connection string has no AccountKey to sign download URLs with "+
			"(use a managed identity, which signs with user-delegation keys, or EXPORT_DOWNLOADS=proxy)", name)
	}
}

// validateAuth requires AUTH_MODE (there is no open default: a deployment
// that forgot it must not start) and checks the AUTH_* settings the way the
// Verifier will.
func (c *Config) validateAuth(r *reader) {
	switch auth.Mode(c.AuthMode) {
	case "":
		r.fail("AUTH_MODE", "is required: oidc (AUTH_ISSUER, AUTH_AUDIENCE), entra (AUTH_TENANT_ID, AUTH_AUDIENCE), "+
			"or none (no authentication; for local use only)")
		return
	case auth.ModeNone, auth.ModeOIDC, auth.ModeEntra:
	default:
		r.fail("AUTH_MODE", "must be none, oidc or entra, got %q", c.AuthMode)
		return
	}
	if _, err := auth.New(c.AuthConfig()); err != nil {
		r.fail("AUTH_MODE", "settings are inconsistent: %s", strings.TrimPrefix(err.Error(), "auth: "))
	}
	if c.AuthTokenEndpoint != "" {
		if u, err := url.Parse(c.AuthTokenEndpoint); err != nil || u.Scheme != "https" && u.Scheme != "http" || u.Host == "" {
			r.fail("AUTH_TOKEN_ENDPOINT", "must be an absolute http(s) URL, got %q", c.AuthTokenEndpoint)
		}
	}
}

// AuthConfig is the Verifier's configuration (auth.New).
func (c Config) AuthConfig() auth.Config {
	return auth.Config{
		Mode: auth.Mode(c.AuthMode), Issuer: c.AuthIssuer, TenantID: c.AuthTenantID,
		Audiences: c.AuthAudiences, Role: c.AuthRole,
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
		"authMode": c.AuthMode, "authIssuer": c.AuthIssuer, "authTenantId": c.AuthTenantID,
		"authAudiences": c.AuthAudiences, "authRole": c.AuthRole, "maxActiveJobsPerClient": c.MaxJobsPerClient,
		"container": c.Container, "table": c.Table, "queue": c.Queue, "baseUrl": c.BaseURL, "trustForwarded": c.TrustForwarded,
		"maxFileBytes": c.MaxFileBytes, "blockBytes": c.BlockBytes, "pageSize": c.PageSize,
		"memberBatch": c.MemberBatch, "systemTypes": c.SystemTypes,
		"invocationBudget": c.InvocationBudget.String(), "lease": c.Lease.String(), "stallAfter": c.StallAfter.String(),
		"workers": c.Workers, "maxDequeueCount": c.MaxDequeueCount, "functionsMode": c.FunctionsPort != "",
		"containers": c.Containers, "anonymizationContainer": c.AnonymizationContainer, "exportStorage": c.ExportStorage.describe(), "downloads": c.Downloads,
		"sasTtl": c.SASTTL.String(), "windowResources": c.WindowResources, "sourceConcurrency": c.SourceConcurrency,
	}
}

// describe names the export account for the start-up log, without a key.
func (e ExportStorage) describe() string {
	switch {
	case e.BlobURL != "":
		return "managed identity: " + e.BlobURL
	case e.ConnectionString == "":
		return "the host account (AzureWebJobsStorage)"
	}
	if u := connectionValue(e.ConnectionString, "BlobEndpoint"); u != "" {
		return "connection string: " + u
	}
	return "connection string (account key redacted)"
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

func (r *reader) boolean(name string, def bool) bool {
	s := r.str(name, "")
	if s == "" {
		return def
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		r.fail(name, "must be true or false, got %q", s)
		return def
	}
	r.explicit[name] = true
	return b
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

// exportStorage reads EXPORT_STORAGE (a connection string) or
// EXPORT_STORAGE__blobServiceUri and __clientId (a managed identity).
func (r *reader) exportStorage() ExportStorage {
	return ExportStorage{
		ConnectionString: devstorage.Expand(r.str("EXPORT_STORAGE", "")),
		BlobURL:          strings.TrimRight(r.str("EXPORT_STORAGE__blobServiceUri", ""), "/"),
		ClientID:         r.str("EXPORT_STORAGE__clientId", ""),
	}
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
