// Package fhirsource is the FHIR R4 REST client the export engine reads from:
// it implements export.Source over HTTP, streams search pages without holding
// them in memory, retries transient failures, and gives every failure a
// fault kind.
package fhirsource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

var _ export.Source = (*Client)(nil)

// Defaults and limits of the retry policy. The defaults are those of
// FHIR_RETRY_ATTEMPTS and FHIR_RETRY_BACKOFF (config reads them from here):
// eight tries, with ceilings from 1s doubling to maxBackoff, wait up to about
// 90 seconds in all, so bursts of 429s and 503s are ridden out inside one
// delivery.
const (
	DefaultMaxAttempts = 8
	DefaultBaseBackoff = time.Second
	// maxBackoff caps the exponential backoff between attempts.
	maxBackoff = 30 * time.Second
	// maxRetryAfter is the longest Retry-After we wait for inside a call. A
	// source that asks for longer gets its wish: the call fails at once with a
	// fault.Transient that carries the Retry-After, so the work item is
	// redelivered later instead of holding a worker.
	maxRetryAfter = 2 * time.Minute
	// maxSmallBody bounds the bodies read whole: the CapabilityStatement and
	// the _summary=count Bundle.
	maxSmallBody = 64 << 20

	defaultUserAgent = "azfhir-bulkexport"
)

// Options configure a Client.
type Options struct {
	// BaseURL is the source's FHIR base, such as http://127.0.0.1:8080/fhir.
	BaseURL string
	// HTTPClient sends the requests. The default has dial and TLS handshake
	// timeouts of 10s and a response header timeout of 60s, and no overall
	// timeout because pages stream; the caller's context bounds a call.
	// Whatever the client, redirects are followed only within BaseURL's
	// origin.
	HTTPClient *http.Client
	// Token, when set, adds "Authorization: Bearer <token>" to every request.
	Token TokenSource
	// MaxAttempts is how many times a request is tried while it fails
	// transiently (default DefaultMaxAttempts).
	MaxAttempts int
	// BaseBackoff is the first retry's backoff ceiling (default
	// DefaultBaseBackoff). The ceiling doubles per attempt up to 30s and the
	// wait is drawn uniformly below it (full jitter). A Retry-After on the
	// answer replaces it.
	BaseBackoff time.Duration
	// UserAgent is sent on every request (default "azfhir-bulkexport").
	UserAgent string
	// Concurrency caps the requests in flight at once (default
	// DefaultConcurrency). A 429 or 503 lowers the cap for every caller of
	// the Client and a Retry-After holds them all back; successes raise it
	// again (see limiter).
	Concurrency int
}

// TokenSource returns a bearer token for the source. It is called before
// every request, so it should cache (azidentity credentials do). For Azure
// Health Data Services, main wires an azidentity credential with the scope
// "<BaseURL origin>/.default".
type TokenSource interface {
	Token(ctx context.Context) (string, error)
}

// Client is a FHIR R4 REST client for one source server. It is safe for
// concurrent use.
type Client struct {
	base        *url.URL
	baseURL     string // base.String() without a trailing slash
	hc          *http.Client
	token       TokenSource
	maxAttempts int
	baseBackoff time.Duration
	userAgent   string
	limit       *limiter
	// sleep waits d or until ctx is done; tests replace it to record waits.
	sleep func(ctx context.Context, d time.Duration) error
}

// New returns a Client for the source at o.BaseURL, which must be an absolute
// http or https URL without query, fragment or user info.
func New(o Options) (*Client, error) {
	base, err := parseBase(o.BaseURL)
	if err != nil {
		return nil, err
	}
	c := &Client{
		base:        base,
		baseURL:     base.String(),
		token:       o.Token,
		maxAttempts: o.MaxAttempts,
		baseBackoff: o.BaseBackoff,
		userAgent:   o.UserAgent,
		sleep:       sleepCtx,
	}
	if c.maxAttempts <= 0 {
		c.maxAttempts = DefaultMaxAttempts
	}
	if c.baseBackoff <= 0 {
		c.baseBackoff = DefaultBaseBackoff
	}
	if c.userAgent == "" {
		c.userAgent = defaultUserAgent
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	c.limit = newLimiter(o.Concurrency)
	var hc http.Client
	if o.HTTPClient != nil {
		hc = *o.HTTPClient // a shallow copy shares the transport and its connections
	} else {
		hc = http.Client{Transport: defaultTransport()}
	}
	hc.CheckRedirect = sameOriginRedirects(base, hc.CheckRedirect)
	c.hc = &hc
	return c, nil
}

func parseBase(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("fhirsource: the source base URL is empty")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("fhirsource: the source base URL is not a URL: %w", err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("fhirsource: the source base URL %q must be absolute with scheme http or https", raw)
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("fhirsource: the source base URL %q has no host", raw)
	case u.User != nil:
		return nil, fmt.Errorf("fhirsource: the source base URL must not carry user info; use a token source")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, fmt.Errorf("fhirsource: the source base URL %q must not have a query or fragment", raw)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = strings.TrimRight(u.RawPath, "/")
	return u, nil
}

func defaultTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = 10 * time.Second
	t.ResponseHeaderTimeout = 60 * time.Second
	// The workers of a process page one host in parallel (at most
	// Options.Concurrency at once, two per work item while one page is read
	// ahead): keep that many connections open for reuse. DisableCompression
	// stays false, so every request asks for gzip (see attempt).
	t.MaxIdleConnsPerHost = 32
	return t
}

// sameOriginRedirects refuses a redirect that leaves the base URL's origin:
// the request carries the bearer token and must never reach another host.
func sameOriginRedirects(base *url.URL, next func(*http.Request, []*http.Request) error) func(*http.Request, []*http.Request) error {
	return func(req *http.Request, via []*http.Request) error {
		if !sameOrigin(req.URL, base) {
			return fault.New(fault.Permanent, "the source FHIR server redirected to %s, outside its origin %s; the redirect is not followed so that the access token is never sent elsewhere",
				originOf(req.URL), originOf(base))
		}
		if !underBasePath(req.URL, base) {
			// Same origin, another application: as for next links.
			return fault.New(fault.Permanent, "the source FHIR server redirected outside its base path %s; the redirect is not followed",
				strings.TrimRight(base.Path, "/"))
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= 10 {
			return fault.New(fault.Permanent, "the source FHIR server redirected more than 10 times")
		}
		return nil
	}
}

// Now returns the source's clock: the Date header of its answer to
// GET [base]/metadata, or the local clock if it sends none. A failure means
// the source cannot be reached or does not answer 2xx.
func (c *Client) Now(ctx context.Context) (time.Time, error) {
	var now time.Time
	err := c.get(ctx, c.endpoint("metadata"), fault.Permanent, func(resp *http.Response) (bool, error) {
		now = time.Now()
		if d, err := http.ParseTime(resp.Header.Get("Date")); err == nil {
			now = d
		}
		return false, nil
	})
	if err != nil {
		return time.Time{}, err
	}
	return now.UTC(), nil
}

// sourceCapabilities is the part of a CapabilityStatement the client reads.
type sourceCapabilities struct {
	ResourceType string `json:"resourceType"`
	Rest         []struct {
		Mode     string `json:"mode"`
		Resource []struct {
			Type        string `json:"type"`
			Interaction []struct {
				Code string `json:"code"`
			} `json:"interaction"`
			SearchParam []struct {
				Name string `json:"name"`
			} `json:"searchParam"`
		} `json:"resource"`
	} `json:"rest"`
}

// capabilities reads the source's CapabilityStatement.
func (c *Client) capabilities(ctx context.Context) (*sourceCapabilities, error) {
	u := c.endpoint("metadata")
	var cs sourceCapabilities
	err := c.get(ctx, u, fault.Permanent, func(resp *http.Response) (bool, error) {
		return decodeSmall(ctx, resp.Body, &cs, "GET "+u.EscapedPath())
	})
	if err != nil {
		return nil, err
	}
	if cs.ResourceType != "CapabilityStatement" {
		return nil, fault.New(fault.Permanent, "the source FHIR server answered GET %s with a %q, not a CapabilityStatement", u.EscapedPath(), cs.ResourceType)
	}
	return &cs, nil
}

// SearchParams lists, by resource type, the search parameters the source's
// CapabilityStatement declares for rest mode server. A type declared with no
// searchParam list is absent: the statement says nothing about it.
func (c *Client) SearchParams(ctx context.Context) (map[string][]string, error) {
	cs, err := c.capabilities(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, rest := range cs.Rest {
		if rest.Mode != "server" {
			continue
		}
		for _, r := range rest.Resource {
			for _, p := range r.SearchParam {
				if r.Type != "" && p.Name != "" {
					out[r.Type] = append(out[r.Type], p.Name)
				}
			}
		}
	}
	return out, nil
}

// Types lists the resource types the source's CapabilityStatement declares
// for rest mode server with the search-type interaction (or with no
// interaction list), in its order and without duplicates.
func (c *Client) Types(ctx context.Context) ([]string, error) {
	cs, err := c.capabilities(ctx)
	if err != nil {
		return nil, err
	}
	var types []string
	seen := map[string]bool{}
	for _, rest := range cs.Rest {
		if rest.Mode != "server" {
			continue
		}
		for _, r := range rest.Resource {
			searchable := len(r.Interaction) == 0
			for _, in := range r.Interaction {
				searchable = searchable || in.Code == "search-type"
			}
			if searchable && r.Type != "" && !seen[r.Type] {
				seen[r.Type] = true
				types = append(types, r.Type)
			}
		}
	}
	return types, nil
}

var (
	typePattern = regexp.MustCompile(`^[A-Z][A-Za-z]{0,63}$`)
	idPattern   = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)
)

// Read returns the JSON of resourceType/id as the source sent it;
// fault.NotFound if the source answers 404 or 410. An id that is not a valid
// FHIR id is fault.Invalid and is not sent.
func (c *Client) Read(ctx context.Context, resourceType, id string) ([]byte, error) {
	if !typePattern.MatchString(resourceType) {
		return nil, fault.New(fault.Invalid, "%q is not a FHIR resource type", resourceType)
	}
	if !idPattern.MatchString(id) || strings.Trim(id, ".") == "" {
		// An id of dots would be a path segment: /Group/.. is the base.
		return nil, fault.New(fault.Invalid, "%q is not a valid FHIR id", id)
	}
	var body []byte
	err := c.get(ctx, c.endpoint(resourceType+"/"+id), fault.NotFound, func(resp *http.Response) (bool, error) {
		var err error
		if body, err = io.ReadAll(resp.Body); err != nil {
			return true, bodyError(ctx, err, "read "+resourceType+"/"+id)
		}
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	return body, nil
}

// SearchURL returns [base]/resourceType?query. The query must already be
// URL-encoded; it is not encoded again.
func (c *Client) SearchURL(resourceType string, query string) string {
	if query == "" {
		return c.baseURL + "/" + resourceType
	}
	return c.baseURL + "/" + resourceType + "?" + query
}

// Count returns Bundle.total of the search resourceType?query asked with
// _summary=count (which replaces any _count and _summary of the query).
func (c *Client) Count(ctx context.Context, resourceType string, query string) (int64, error) {
	var kept []string
	for _, p := range strings.Split(query, "&") {
		key, _, _ := strings.Cut(p, "=")
		if p == "" || key == "_count" || key == "_summary" {
			continue
		}
		kept = append(kept, p)
	}
	kept = append(kept, "_summary=count")
	u, err := url.Parse(c.SearchURL(resourceType, strings.Join(kept, "&")))
	if err != nil {
		return 0, fault.Wrap(fault.Permanent, err, "the count search for %s is not a valid URL", resourceType)
	}
	var b struct {
		ResourceType string `json:"resourceType"`
		Total        *int64 `json:"total"`
	}
	op := "GET " + u.EscapedPath()
	err = c.get(ctx, u, fault.Permanent, func(resp *http.Response) (bool, error) {
		return decodeSmall(ctx, resp.Body, &b, op)
	})
	if err != nil {
		return 0, err
	}
	if b.ResourceType != "Bundle" {
		return 0, fault.New(fault.Permanent, "the source FHIR server answered %s?_summary=count with a %q, not a Bundle", op, b.ResourceType)
	}
	if b.Total == nil {
		return 0, fault.New(fault.Permanent, "the source FHIR server answered %s?_summary=count without Bundle.total", op)
	}
	return *b.Total, nil
}

// endpoint returns [base]/rel; rel holds only URL-safe characters.
func (c *Client) endpoint(rel string) *url.URL {
	u := *c.base
	u.Path = c.base.Path + "/" + rel
	if c.base.RawPath != "" {
		u.RawPath = c.base.RawPath + "/" + rel
	}
	return &u
}

// decodeSmall decodes a body of at most maxSmallBody bytes into v. Its
// retry result is true for a transient failure: nothing has been handed on.
func decodeSmall(ctx context.Context, body io.Reader, v any, op string) (bool, error) {
	if err := json.NewDecoder(io.LimitReader(body, maxSmallBody)).Decode(v); err != nil {
		err = bodyError(ctx, err, op)
		return fault.Is(err, fault.Transient), err
	}
	return false, nil
}
