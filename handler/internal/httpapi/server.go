// Package httpapi is the FHIR Bulk Data (IG v2.0.0) HTTP API over the export
// engine: kick-off, status, cancel, file download and the CapabilityStatement.
// It validates requests, turns them into export.Requests and maps every error
// to an OperationOutcome in one place (writeError).
package httpapi

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/azfhir/bulkexport/handler/internal/auth"
	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// Engine is what the HTTP API needs from the export engine. *export.Engine
// implements it; tests use a fake.
type Engine interface {
	// KickOff creates a job for a validated request.
	KickOff(ctx context.Context, req export.Request) (*export.Job, error)
	// Status derives the status of owner's job; fault.NotFound for unknown or
	// cancelled jobs and for another owner's. It only reads.
	Status(ctx context.Context, jobID, owner string) (*export.Status, error)
	// RestartStalled enqueues again the work items of a running job whose
	// messages were lost, and says how many; it writes, so only a status
	// poll of a job in progress calls it (never a download).
	RestartStalled(ctx context.Context, jobID string) (int, error)
	// Cancel cancels owner's job; fault.NotFound for unknown or already
	// cancelled jobs and for another owner's.
	Cancel(ctx context.Context, jobID, owner string) error
	// OpenFile opens one output file of owner's job and returns its size;
	// fault.NotFound if absent or another owner's.
	OpenFile(ctx context.Context, jobID, owner, name string) (io.ReadCloser, int64, error)
	// FileURL returns a read-only URL, valid for ttl, for one file of a
	// job that Status returned (Options.Downloads "sas").
	FileURL(ctx context.Context, job *export.Job, name string, ttl time.Duration) (string, error)
}

// Authenticator says who sent a request (AUTH_MODE). *auth.Verifier
// implements it.
type Authenticator interface {
	// Authenticate checks the Authorization header: fault.Unauthenticated
	// (401) for a missing or invalid token, fault.Unavailable when the
	// issuer cannot be reached.
	Authenticate(ctx context.Context, authorization string) (auth.Principal, error)
	// Mode is stated in the CapabilityStatement.
	Mode() auth.Mode
}

var _ Authenticator = (*auth.Verifier)(nil)

// The engine the service wires in must satisfy Engine.
var _ Engine = (*export.Engine)(nil)

// Options configure the API.
type Options struct {
	// BaseURL is the public base URL, e.g. https://x.azurewebsites.net. Empty:
	// absolute URLs are built from each request (X-Forwarded-Proto and
	// X-Forwarded-Host when TrustForwarded and present, else TLS and Host).
	// A path in BaseURL
	// (e.g. https://x.azurewebsites.net/api for a Functions routePrefix "api")
	// is a prefix the routes live under; it is stripped from request paths
	// that carry it.
	BaseURL string
	// DefaultContainer is the blob container used when a kick-off has no _container.
	DefaultContainer string
	// TrustForwarded lets X-Forwarded-Proto and X-Forwarded-Host shape the
	// absolute URLs built from a request (EXPORT_TRUST_FORWARDED). Only a
	// proxy in front that sets them (the Functions front end) makes them
	// trustworthy; a bare handler serve would let any client choose the
	// host name of the polling and file URLs it hands out.
	TrustForwarded bool
	// Containers are the containers a kick-off may name in _container; any
	// other is refused with 400 before anything is created. Empty: just
	// DefaultContainer.
	Containers []string
	// Downloads is DownloadsProxy (default: files stream through the API and
	// need the owner's token) or DownloadsSAS (manifest URLs go to storage
	// directly, read-only, one blob each, valid for SASTTL from each
	// manifest request).
	Downloads string
	// SASTTL is how long a manifest's SAS URLs stay valid. Zero means
	// DefaultSASTTL.
	SASTTL time.Duration
	// Retention is how long completed files are promised (the manifest's
	// Expires header). Zero means export.DefaultSettings().Retention.
	Retention time.Duration
	// RetryAfter is the polling interval suggested to clients. It is sent as
	// whole seconds, clamped to 1..5. Zero means 2s.
	RetryAfter time.Duration
	// Logger receives one JSON line per request (never for GET /), and an
	// audit line (see audit) for kick-offs, manifests, downloads, cancels
	// and refusals. The zero Logger logs nothing.
	Logger zerolog.Logger
	// SoftwareVersion is reported in the CapabilityStatement.
	SoftwareVersion string
	// Auth authenticates every request except GET /, /metadata and
	// /.well-known/smart-configuration. Required: there is no open default.
	Auth Authenticator
	// TokenEndpoint is published in /.well-known/smart-configuration
	// (AUTH_TOKEN_ENDPOINT); empty: none is published.
	TokenEndpoint string
	// ManifestPageFiles is the most files one manifest page lists for a job
	// that allowed partial manifests. Zero means DefaultManifestPageFiles.
	ManifestPageFiles int
}

// Validate reports configuration errors: a BaseURL that is not an absolute
// http(s) URL without query or fragment, or an invalid DefaultContainer.
func (o Options) Validate() error {
	if o.BaseURL != "" {
		u, err := url.Parse(o.BaseURL)
		if err != nil {
			return fmt.Errorf("httpapi: BaseURL %q: %w", o.BaseURL, err)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("httpapi: BaseURL %q must be an absolute http(s) URL without query or fragment", o.BaseURL)
		}
	}
	if o.DefaultContainer != "" && !export.ValidContainerName(o.DefaultContainer) {
		return fmt.Errorf("httpapi: DefaultContainer %q is not a valid blob container name", o.DefaultContainer)
	}
	for _, c := range o.Containers {
		if !export.ValidContainerName(c) {
			return fmt.Errorf("httpapi: Containers: %q is not a valid blob container name", c)
		}
	}
	if o.DefaultContainer != "" && len(o.Containers) > 0 && !slices.Contains(o.Containers, o.DefaultContainer) {
		return fmt.Errorf("httpapi: DefaultContainer %q is not one of Containers", o.DefaultContainer)
	}
	if o.Downloads != "" && o.Downloads != DownloadsProxy && o.Downloads != DownloadsSAS {
		return fmt.Errorf("httpapi: Downloads %q must be %q or %q", o.Downloads, DownloadsProxy, DownloadsSAS)
	}
	if o.SASTTL < 0 {
		return fmt.Errorf("httpapi: SASTTL must not be negative")
	}
	if o.Retention < 0 || o.RetryAfter < 0 {
		return fmt.Errorf("httpapi: Retention and RetryAfter must not be negative")
	}
	if o.Auth == nil {
		return fmt.Errorf("httpapi: Auth is required (AUTH_MODE none, oidc or entra)")
	}
	if o.TokenEndpoint != "" {
		if u, err := url.Parse(o.TokenEndpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("httpapi: TokenEndpoint %q must be an absolute http(s) URL", o.TokenEndpoint)
		}
	}
	return nil
}

// Download modes (EXPORT_DOWNLOADS).
const (
	DownloadsProxy = "proxy"
	DownloadsSAS   = "sas"
)

// DefaultSASTTL is the lifetime of a SAS download URL when Options.SASTTL is
// zero, and the default of EXPORT_SAS_TTL. A client may fetch the manifest
// once and then download every file (the SMART bulk-data-client does); a URL
// is checked when a download starts, so the TTL must cover the start of the
// last download of a large export, not each transfer. One hour is the usual
// lifetime of an Entra ID access token, which the URLs replace; a client
// that needs longer fetches the manifest again and gets fresh URLs.
const DefaultSASTTL = time.Hour

// DefaultRetryAfter is the polling interval suggested when Options.RetryAfter
// is zero, and the default of EXPORT_RETRY_AFTER.
const DefaultRetryAfter = 2 * time.Second

const maxBodyBytes = 1 << 20

// server is the http.Handler New returns.
type server struct {
	engine     Engine
	log        zerolog.Logger
	base       string // BaseURL without trailing slash; "" when built per request
	prefix     string // path of BaseURL without trailing slash, e.g. "/api"; "" for none
	container  string
	forwarded  bool          // Options.TrustForwarded
	containers []string      // allowed _container values
	sasTTL     time.Duration // > 0: manifests carry SAS URLs valid this long
	retention  time.Duration
	retryAfter time.Duration
	version    string
	auth       Authenticator // nil: every authenticated route is refused
	tokenURL   string        // Options.TokenEndpoint
	pageFiles  int           // Options.ManifestPageFiles
	started    time.Time     // the CapabilityStatement's date
	now        func() time.Time
}

// New returns the HTTP API over engine. Call opts.Validate first to catch a
// malformed BaseURL; New uses what it can parse.
func New(engine Engine, opts Options) http.Handler {
	s := &server{
		engine:     engine,
		log:        opts.Logger,
		container:  opts.DefaultContainer,
		forwarded:  opts.TrustForwarded,
		containers: opts.Containers,
		retention:  opts.Retention,
		retryAfter: opts.RetryAfter,
		version:    opts.SoftwareVersion,
		auth:       opts.Auth,
		tokenURL:   opts.TokenEndpoint,
		pageFiles:  cmp.Or(max(opts.ManifestPageFiles, 0), DefaultManifestPageFiles),
		now:        time.Now,
	}
	s.started = s.now()
	if len(s.containers) == 0 && s.container != "" {
		s.containers = []string{s.container}
	}
	if opts.Downloads == DownloadsSAS {
		s.sasTTL = cmp.Or(opts.SASTTL, DefaultSASTTL)
	}
	if s.retention <= 0 {
		s.retention = export.DefaultSettings().Retention
	}
	if s.retryAfter <= 0 {
		s.retryAfter = DefaultRetryAfter
	}
	if opts.BaseURL != "" {
		if u, err := url.Parse(opts.BaseURL); err == nil && u.Host != "" {
			s.prefix = strings.TrimRight(u.EscapedPath(), "/")
			u.Path, u.RawPath, u.RawQuery, u.Fragment = "", "", "", ""
			s.base = strings.TrimRight(u.String(), "/") + s.prefix
		}
	}
	return s
}

// routeKind is what a request path names.
type routeKind int

const (
	routeNone routeKind = iota
	routeRoot
	routeMetadata
	routeKickOff
	routeJob
	routeFile
	routeSmartConfig
)

// route is a matched request path.
type route struct {
	kind    routeKind
	level   export.Level // routeKickOff
	groupID string       // routeKickOff at Group level (not yet validated)
	jobID   string       // routeJob, routeFile
	file    string       // routeFile
	path    string       // the canonical path, e.g. "/Group/g1/$export"
}

// allow lists the methods each route answers.
var allow = map[routeKind]string{
	routeRoot:     "GET, HEAD",
	routeMetadata: "GET, HEAD",
	routeKickOff:  "GET, POST",
	routeJob:      "GET, DELETE",
	routeFile:     "GET",

	routeSmartConfig: "GET, HEAD",
}

// public are the routes anyone may call without a token: the probe, the
// CapabilityStatement and the SMART configuration, which clients read to
// learn how to get a token.
var public = map[routeKind]bool{routeRoot: true, routeMetadata: true, routeSmartConfig: true}

// match routes a request path. It splits the escaped path into segments and
// unescapes each, so "%24export" matches "$export" while an encoded "/" stays
// inside its segment (and then fails id validation).
func (s *server) match(escapedPath string) route {
	p := escapedPath
	if s.prefix != "" && (p == s.prefix || strings.HasPrefix(p, s.prefix+"/")) {
		p = p[len(s.prefix):]
	}
	if p == "" || p == "/" {
		return route{kind: routeRoot, path: "/"}
	}
	if p[0] != '/' {
		return route{}
	}
	raw := strings.Split(p[1:], "/")
	seg := make([]string, len(raw))
	for i, r := range raw {
		v, err := url.PathUnescape(r)
		if err != nil {
			return route{}
		}
		seg[i] = v
	}
	switch {
	case len(seg) == 1 && seg[0] == "$export":
		return route{kind: routeKickOff, level: export.LevelSystem, path: "/$export"}
	case len(seg) == 1 && seg[0] == "metadata":
		return route{kind: routeMetadata, path: "/metadata"}
	case len(seg) == 2 && seg[0] == ".well-known" && seg[1] == "smart-configuration":
		return route{kind: routeSmartConfig, path: "/.well-known/smart-configuration"}
	case len(seg) == 2 && seg[0] == "Patient" && seg[1] == "$export":
		return route{kind: routeKickOff, level: export.LevelPatient, path: "/Patient/$export"}
	case len(seg) == 3 && seg[0] == "Group" && seg[2] == "$export":
		return route{kind: routeKickOff, level: export.LevelGroup, groupID: seg[1],
			path: "/Group/" + url.PathEscape(seg[1]) + "/$export"}
	case len(seg) == 2 && seg[0] == "jobs" && seg[1] != "":
		return route{kind: routeJob, jobID: seg[1], path: "/jobs/" + url.PathEscape(seg[1])}
	case len(seg) == 4 && seg[0] == "jobs" && seg[1] != "" && seg[2] == "files" && seg[3] != "":
		return route{kind: routeFile, jobID: seg[1], file: seg[3],
			path: "/jobs/" + url.PathEscape(seg[1]) + "/files/" + url.PathEscape(seg[3])}
	}
	return route{}
}

// reqState is what a handler learns that the access log line reports.
type reqState struct {
	job string
	err error
	// client is the authenticated caller's client id (auth.Principal
	// ClientID; "anonymous" in AUTH_MODE=none); empty before or without
	// authentication.
	client string
	// owner is the caller's auth.Principal.OwnerKey: the owner of the jobs it
	// starts and the only one that sees them.
	owner     string
	principal auth.Principal
	// types are the resource types a kick-off asked for, for the audit line.
	types []string
}

type stateKey struct{}

func stateOf(ctx context.Context) *reqState {
	if st, ok := ctx.Value(stateKey{}).(*reqState); ok {
		return st
	}
	return &reqState{}
}

// ServeHTTP routes, recovers panics and logs one line per request.
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Every answer: no browser may sniff a file or an error into HTML, and
	// no cache may keep a manifest, a status, a file or an error (they are
	// one client's, and they change). Handlers do not undo these.
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	rt := s.match(r.URL.EscapedPath())
	if rt.kind == routeRoot && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		// The Functions host's readiness probe: cheap, and never logged.
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		return
	}

	start := s.now()
	st := &reqState{}
	lc := s.log.With().Str("method", r.Method).Str("path", r.URL.EscapedPath())
	if id := r.Header.Get("X-Azure-Functions-InvocationId"); id != "" {
		lc = lc.Str("invocationId", id)
	}
	log := lc.Logger()
	ctx := context.WithValue(log.WithContext(r.Context()), stateKey{}, st)
	r = r.WithContext(ctx)
	rec := &recorder{ResponseWriter: w}

	abort := s.serve(rec, r, rt)

	status := rec.status
	if status == 0 {
		status = http.StatusOK
	}
	ev := log.Info()
	if status >= 500 {
		ev = log.Error()
	}
	if st.job != "" {
		ev = ev.Str("job", st.job)
	}
	if st.err != nil {
		ev = ev.Str("error", st.err.Error())
	}
	ev.Int("status", status).Dur("duration", s.now().Sub(start)).Int64("bytes", rec.bytes).Msg("request")
	audit(log, r.Method, rt, st, status, rec.bytes)
	if abort != nil {
		panic(abort)
	}
}

// serve dispatches the request and turns a panic into a 500 OperationOutcome.
// It returns a value to re-panic with when the response cannot be completed
// (http.ErrAbortHandler), so net/http drops the connection.
func (s *server) serve(w *recorder, r *http.Request, rt route) (abort any) {
	defer func() {
		p := recover()
		if p == nil {
			return
		}
		if p == http.ErrAbortHandler {
			abort = p
			return
		}
		err := fault.New(fault.Internal, "internal error while handling %s %s", r.Method, r.URL.EscapedPath())
		zerolog.Ctx(r.Context()).Error().Str("panic", fmt.Sprint(p)).Str("stack", string(debug.Stack())).Msg("handler panicked")
		if w.wroteHeader {
			stateOf(r.Context()).err = err
			abort = http.ErrAbortHandler
			return
		}
		s.writeError(w, r, err)
	}()
	if err := s.dispatch(w, r, rt); err != nil {
		s.writeError(w, r, err)
	}
	return nil
}

// dispatch calls the handler of a route. Handlers return errors; writeError
// answers them.
func (s *server) dispatch(w http.ResponseWriter, r *http.Request, rt route) error {
	if rt.kind == routeNone {
		return notFound("no such endpoint: %s %s", r.Method, r.URL.EscapedPath())
	}
	if !methodAllowed(allow[rt.kind], r.Method) {
		return methodNotAllowed(allow[rt.kind], r.Method, rt.path)
	}
	if !public[rt.kind] {
		if err := s.authenticate(r); err != nil {
			return err
		}
	}
	switch rt.kind {
	case routeRoot:
		w.WriteHeader(http.StatusOK) // a non-GET method cannot get here
		return nil
	case routeMetadata:
		return s.metadata(w, r)
	case routeSmartConfig:
		return s.smartConfiguration(w, r)
	case routeKickOff:
		return s.kickOff(w, r, rt)
	case routeJob:
		if !export.ValidJobID(rt.jobID) {
			return notFound("no export job %q", rt.jobID)
		}
		r = withJob(r, rt.jobID)
		if r.Method == http.MethodDelete {
			return s.cancel(w, r, rt.jobID)
		}
		return s.status(w, r, rt.jobID)
	case routeFile:
		if !export.ValidJobID(rt.jobID) {
			return notFound("no export job %q", rt.jobID)
		}
		return s.download(w, withJob(r, rt.jobID), rt.jobID, rt.file)
	}
	return fault.New(fault.Internal, "unrouted request kind %d", rt.kind)
}

// authenticate checks the request's bearer token and records the caller in
// the request state (for the handlers, the access log and the engine's
// log lines). Its errors are fault.Unauthenticated (401 with a challenge)
// or fault.Unavailable (503).
func (s *server) authenticate(r *http.Request) error {
	if s.auth == nil {
		return fault.New(fault.Internal, "the service has no authentication configured")
	}
	p, err := s.auth.Authenticate(r.Context(), r.Header.Get("Authorization"))
	if err != nil {
		return err
	}
	st := stateOf(r.Context())
	st.principal, st.client, st.owner = p, p.ClientID, p.OwnerKey()
	return nil
}

func methodAllowed(list, method string) bool {
	for m := range strings.SplitSeq(list, ", ") {
		if m == method {
			return true
		}
	}
	return false
}

// withJob records the job id for the access log and adds it to the
// request-scoped logger the engine sees.
func withJob(r *http.Request, jobID string) *http.Request {
	stateOf(r.Context()).job = jobID
	log := zerolog.Ctx(r.Context()).With().Str("job", jobID).Logger()
	return r.WithContext(log.WithContext(r.Context()))
}

// baseURL is the absolute URL the routes live under, without a trailing
// slash: Options.BaseURL, or the scheme and host the client used.
func (s *server) baseURL(r *http.Request) string {
	if s.base != "" {
		return s.base
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	host := r.Host
	if s.forwarded {
		if p := firstValue(r.Header.Get("X-Forwarded-Proto")); p != "" {
			switch strings.ToLower(p) {
			case "http", "https":
				scheme = strings.ToLower(p)
			}
		}
		if h := firstValue(r.Header.Get("X-Forwarded-Host")); h != "" && validHost(h) {
			host = h
		}
	}
	if !validHost(host) {
		host = "localhost"
	}
	return scheme + "://" + host
}

// firstValue returns the first element of a comma-separated header value,
// the one the outermost proxy set.
func firstValue(v string) string {
	first, _, _ := strings.Cut(v, ",")
	return strings.TrimSpace(first)
}

// validHost accepts host[:port] made of the characters a host name, an IPv4
// or a bracketed IPv6 address can hold, so a forged header cannot inject a
// path or credentials into the URLs we hand out.
func validHost(h string) bool {
	if h == "" || len(h) > 255 {
		return false
	}
	for _, c := range h {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '-', c == ':', c == '[', c == ']', c == '_':
		default:
			return false
		}
	}
	return true
}

// recorder remembers the status and size of a response for the access log.
type recorder struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
	bytes       int64
}

func (w *recorder) WriteHeader(code int) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recorder) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *recorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }
