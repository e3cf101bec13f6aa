package fhirsample

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure a Server. The zero value is usable.
type Options struct {
	// BasePath is the path of the FHIR base, such as "/fhir" (the default). "/" serves at the root.
	BasePath string
	// DefaultCount is the page size of a search without _count. Default 50.
	DefaultCount int
	// MaxCount caps _count: a larger _count is served as MaxCount. Default 1000.
	MaxCount int
	// FailureInjection enables FailNext, ExpireLinks and SetSearchDelay. Off by default, so a
	// server can never be made to fail by accident.
	FailureInjection bool
	// SearchDelay is latency added to every search request (not to metadata or reads), as
	// a remote FHIR server's would be; SetSearchDelay changes it. Default none.
	SearchDelay time.Duration
	// Deletions are applied at start and served as history (history.go).
	Deletions []Deletion
	// NoHistory serves no history at all, as a server without it would.
	NoHistory bool
}

const (
	defaultBasePath     = "/fhir"
	defaultDefaultCount = 50
	defaultMaxCount     = 1000
	maxFormBodyBytes    = 1 << 20
)

// Server is a read-only FHIR R4 server over an in-memory data set. It is safe for
// concurrent use.
type Server struct {
	opts      Options
	store     *store
	instance  string // binds page tokens to this Server
	startedAt time.Time
	requests  atomic.Int64
	faults    faults
	matches   matchCache
	deletions map[string][]Deletion // by type, newest first (history.go)
}

// New loads every <Type>.ndjson file in dir and returns a Server for it.
func New(dir string, opts Options) (*Server, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	st, err := loadStore(dir)
	if err != nil {
		return nil, fmt.Errorf("fhirsample: %w", err)
	}
	deletions, err := applyDeletions(st, opts.Deletions)
	if err != nil {
		return nil, fmt.Errorf("fhirsample: %w", err)
	}
	return &Server{
		opts:      opts,
		store:     st,
		instance:  rand.Text(),
		startedAt: time.Now(),
		faults:    faults{enabled: opts.FailureInjection, searchDelay: opts.SearchDelay},
		deletions: deletions,
	}, nil
}

// withDefaults validates the options and fills in the defaults.
func (o Options) withDefaults() (Options, error) {
	if o.BasePath == "" {
		o.BasePath = defaultBasePath
	}
	if !strings.HasPrefix(o.BasePath, "/") {
		return o, fmt.Errorf("fhirsample: BasePath %q must start with /", o.BasePath)
	}
	o.BasePath = strings.TrimRight(o.BasePath, "/")
	if o.SearchDelay < 0 {
		return o, fmt.Errorf("fhirsample: SearchDelay %v must not be negative", o.SearchDelay)
	}
	if o.DefaultCount < 0 || o.MaxCount < 0 {
		return o, fmt.Errorf("fhirsample: DefaultCount %d and MaxCount %d must not be negative", o.DefaultCount, o.MaxCount)
	}
	if o.DefaultCount == 0 {
		o.DefaultCount = defaultDefaultCount
	}
	if o.MaxCount == 0 {
		o.MaxCount = defaultMaxCount
	}
	o.DefaultCount = min(o.DefaultCount, o.MaxCount)
	return o, nil
}

// Requests returns the number of HTTP requests the Server's handler has received.
func (s *Server) Requests() int64 { return s.requests.Load() }

// Counts returns the number of loaded resources per resource type.
func (s *Server) Counts() map[string]int {
	counts := make(map[string]int, len(s.store.types))
	for name, rt := range s.store.types {
		counts[name] = len(rt.resources)
	}
	return counts
}

// BasePath returns the path the FHIR API is served under, such as "/fhir" ("" for the root).
func (s *Server) BasePath() string { return s.opts.BasePath }

// Handler returns the HTTP handler serving the FHIR API under Options.BasePath.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	if err := s.route(w, r); err != nil {
		var reqErr *requestError
		if !errors.As(err, &reqErr) {
			reqErr = &requestError{status: http.StatusInternalServerError, code: "exception", diagnostics: err.Error()}
		}
		writeError(w, reqErr)
	}
}

// route dispatches on the path below the base:
//
//	metadata | {Type} | {Type}/_search | {Type}/{id}
func (s *Server) route(w http.ResponseWriter, r *http.Request) error {
	rest, ok := strings.CutPrefix(r.URL.Path, s.opts.BasePath+"/")
	if !ok {
		return notFound("no FHIR endpoint at %s (the base is %s)", r.URL.Path, s.opts.BasePath+"/")
	}
	if !acceptsFHIRJSON(r.Header.Values("Accept")) {
		return &requestError{status: http.StatusNotAcceptable, code: "not-supported",
			diagnostics: "this server answers application/fhir+json only"}
	}
	segments := strings.Split(rest, "/")
	if len(segments) == 1 && segments[0] == "metadata" {
		if err := requireMethod(w, r, http.MethodGet); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, s.capabilityStatement(s.baseURL(r)))
		return nil
	}
	rt, ok := s.store.types[segments[0]]
	if !ok {
		return notFound("unknown resource type %q", segments[0])
	}
	switch {
	case (len(segments) == 2 || len(segments) == 3) && segments[len(segments)-1] == "_history":
		if err := requireMethod(w, r, http.MethodGet); err != nil {
			return err
		}
		return s.serveHistory(w, r, rt, strings.Join(segments[1:len(segments)-1], ""))
	case len(segments) == 1:
		if err := requireMethod(w, r, http.MethodGet); err != nil {
			return err
		}
		return s.search(w, r, rt)
	case len(segments) == 2 && segments[1] == "_search":
		if err := requireMethod(w, r, http.MethodPost); err != nil {
			return err
		}
		return s.search(w, r, rt)
	case len(segments) == 2:
		if err := requireMethod(w, r, http.MethodGet); err != nil {
			return err
		}
		return s.read(w, r, rt, segments[1])
	default:
		return notFound("no FHIR endpoint at %s", r.URL.Path)
	}
}

// requireMethod answers 405 with an Allow header unless r uses method (GET admits HEAD).
func requireMethod(w http.ResponseWriter, r *http.Request, method string) error {
	if r.Method == method || (method == http.MethodGet && r.Method == http.MethodHead) {
		return nil
	}
	w.Header().Set("Allow", method)
	return &requestError{status: http.StatusMethodNotAllowed, code: "not-supported",
		diagnostics: fmt.Sprintf("method %s is not allowed here (this server is read-only; use %s)", r.Method, method)}
}

// acceptsFHIRJSON reports whether the Accept header values admit a JSON response.
func acceptsFHIRJSON(accept []string) bool {
	if len(accept) == 0 {
		return true
	}
	for _, header := range accept {
		for _, mediaRange := range strings.Split(header, ",") {
			mediaType, _, err := mime.ParseMediaType(mediaRange)
			if err != nil {
				continue
			}
			if mediaType == "*/*" || mediaType == "application/*" || isJSONMediaType(mediaType) {
				return true
			}
		}
	}
	return false
}

// baseURL is the absolute URL of the FHIR base as the client addressed it.
func (s *Server) baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + s.opts.BasePath
}

// read answers the stored resource bytes verbatim.
func (s *Server) read(w http.ResponseWriter, _ *http.Request, rt *resourceType, id string) error {
	res, ok := rt.byID[id]
	if !ok {
		return notFound("resource %s/%s is not known", rt.name, id)
	}
	if res.versionID != "" {
		w.Header().Set("ETag", `W/"`+res.versionID+`"`)
	}
	w.Header().Set("Last-Modified", res.lastUpdated.UTC().Format(http.TimeFormat))
	writeBody(w, http.StatusOK, res.raw)
	return nil
}

// search answers a search or a next link with one page of a searchset Bundle.
func (s *Server) search(w http.ResponseWriter, r *http.Request, rt *resourceType) error {
	if err := s.faults.wait(r.Context()); err != nil {
		return err
	}
	if failure, ok := s.faults.takeFailure(); ok {
		if failure.retryAfter != "" {
			w.Header().Set("Retry-After", failure.retryAfter)
		}
		return failure.outcome()
	}
	values, err := searchValues(r)
	if err != nil {
		return err
	}
	if _, ok := values[pageTokenParam]; ok {
		return s.continueSearch(w, r, rt, values)
	}
	q, err := parseSearchQuery(rt, values, s.limits())
	if err != nil {
		return err
	}
	return s.writeSearchPage(w, r, rt, q, 0)
}

func (s *Server) limits() pageLimits {
	return pageLimits{defaultCount: s.opts.DefaultCount, maxCount: s.opts.MaxCount}
}

// searchValues returns the search parameters of a GET query, or of a POST's query and
// form body together. Malformed encodings are rejected rather than skipped.
func searchValues(r *http.Request) (url.Values, error) {
	values, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, invalid("malformed query string: %v", err)
	}
	if r.Method != http.MethodPost {
		return values, nil
	}
	mediaType, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mediaType != "application/x-www-form-urlencoded" {
		return nil, &requestError{status: http.StatusUnsupportedMediaType, code: "not-supported",
			diagnostics: "POST _search needs an application/x-www-form-urlencoded body"}
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxFormBodyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read search form: %w", err)
	}
	if len(body) > maxFormBodyBytes {
		return nil, invalid("search form is larger than %d bytes", maxFormBodyBytes)
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, invalid("malformed search form: %v", err)
	}
	for key, vals := range form {
		values[key] = append(values[key], vals...)
	}
	return values, nil
}

// continueSearch answers a next link: the token must be the only parameter besides _format.
func (s *Server) continueSearch(w http.ResponseWriter, r *http.Request, rt *resourceType, values url.Values) error {
	others := maps.Clone(values)
	delete(others, pageTokenParam)
	delete(others, "_format")
	if len(others) > 0 || len(values[pageTokenParam]) != 1 {
		return invalid("%s must be the only search parameter, given once", pageTokenParam)
	}
	if format, ok := values["_format"]; ok {
		if err := checkFormats(format); err != nil {
			return err
		}
	}
	if s.faults.linksAreExpired() {
		return gone("the search has expired: paging links are expired (failure injection)")
	}
	token, err := decodePageToken(values[pageTokenParam][0], s.instance, rt.name)
	if err != nil {
		return err
	}
	params, err := url.ParseQuery(token.Query)
	if err != nil {
		return invalid("malformed %s: %v", pageTokenParam, err)
	}
	q, err := parseSearchQuery(rt, params, s.limits())
	if err != nil {
		return err
	}
	return s.writeSearchPage(w, r, rt, q, token.Offset)
}

// writeSearchPage runs the query and answers the page starting at offset.
func (s *Server) writeSearchPage(w http.ResponseWriter, r *http.Request, rt *resourceType, q searchQuery, offset int) error {
	matches := s.cachedSearch(rt, q)
	base := s.baseURL(r)
	typeURL := base + "/" + rt.name
	bundle := searchBundle{id: rand.Text(), total: len(matches), base: base}

	selfURL, err := s.pageURL(typeURL, rt.name, q, offset)
	if err != nil {
		return err
	}
	bundle.links = append(bundle.links, bundleLink{Relation: "self", URL: selfURL})
	if q.summaryCount {
		return writeBundle(w, bundle)
	}
	page := matches[min(offset, len(matches)):min(offset+q.pageSize, len(matches))]
	bundle.entries = make([]bundleEntry, 0, len(page)+2)
	for _, res := range page {
		bundle.entries = append(bundle.entries, bundleEntry{prebuilt: res.entry})
	}
	if offset == 0 {
		bundle.entries = append(bundle.entries, s.faults.noise(rt.name)...)
	}
	if next := offset + len(page); len(page) > 0 && next < len(matches) {
		nextURL, err := s.pageURL(typeURL, rt.name, q, next)
		if err != nil {
			return err
		}
		bundle.links = append(bundle.links, bundleLink{Relation: "next", URL: nextURL})
	}
	return writeBundle(w, bundle)
}

// cachedSearch returns the matches of q, from the cache when the same search (its
// filters and order; _count and _summary do not change the matches) ran lately.
func (s *Server) cachedSearch(rt *resourceType, q searchQuery) []*resource {
	key := url.Values{}
	for k, v := range q.params {
		if k != "_count" && k != "_summary" {
			key[k] = v
		}
	}
	cacheKey := rt.name + "?" + key.Encode()
	if matches, ok := s.matches.get(cacheKey); ok {
		return matches
	}
	matches := rt.search(q)
	s.matches.put(cacheKey, matches)
	return matches
}

// pageURL is the URL of the page at offset: the plain search for the first page, a page
// token afterwards.
func (s *Server) pageURL(typeURL, typeName string, q searchQuery, offset int) (string, error) {
	if offset == 0 {
		if len(q.params) == 0 {
			return typeURL, nil
		}
		return typeURL + "?" + q.params.Encode(), nil
	}
	token, err := pageToken{Instance: s.instance, Type: typeName, Query: q.params.Encode(), Offset: offset}.encode()
	if err != nil {
		return "", err
	}
	return typeURL + "?" + url.Values{pageTokenParam: {token}}.Encode(), nil
}

func writeBundle(w http.ResponseWriter, b searchBundle) error {
	out := pageBuffers.Get().(*bytes.Buffer)
	defer func() {
		out.Reset()
		pageBuffers.Put(out)
	}()
	if err := b.marshal(out); err != nil {
		return err
	}
	writeBody(w, http.StatusOK, out.Bytes())
	return nil
}

// pageBuffers recycles the buffers pages are assembled in (a megabyte each at
// _count=1000), so that serving a page does not allocate and clear a new one.
var pageBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}
