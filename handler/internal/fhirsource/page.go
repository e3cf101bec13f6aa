package fhirsource

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// Page fetches the search page at pageURL and calls visit for each entry, in
// order, while the body streams in: the page is never held in memory, only
// one entry at a time, and the Entry's bytes are reused for the next entry.
// It returns the page's next link, resolved against pageURL ("" on the last
// page).
//
// pageURL and the next link must have the origin (scheme, host, port) of the
// base URL and a path under the base path (see underBase), because requests
// carry the bearer token and the source host may serve more than FHIR;
// anything else is fault.Permanent. A visit error stops the page and is
// returned as is.
//
// A failure is retried inside Page only while no entry has been visited.
// Once visit has run, the caller has acted on part of the page (written
// resources to a file), and fetching the page again here would hand it those
// entries twice. So a failure after that point, such as a connection reset in
// the middle of the body, is returned as fault.Transient without a retry: the
// caller resumes from its last checkpoint (a page URL saved with the output it
// had committed), so every entry is written once.
func (c *Client) Page(ctx context.Context, pageURL string, visit func(export.Entry) error) (string, error) {
	page, err := url.Parse(pageURL)
	if err != nil || !page.IsAbs() {
		return "", fault.New(fault.Permanent, "the page URL %q is not an absolute URL", pageURL)
	}
	if !sameOrigin(page, c.base) {
		return "", fault.New(fault.Permanent, "the page URL points at %s, not at the source FHIR server %s; it is not fetched so that the access token is never sent elsewhere",
			originOf(page), originOf(c.base))
	}
	if !c.underBase(page) {
		return "", fault.New(fault.Permanent, "the page URL leaves the source's base path %s; it is not fetched", c.basePath())
	}
	op := "GET " + page.EscapedPath()
	var next string
	err = c.get(ctx, page, fault.Permanent, func(resp *http.Response) (bool, error) {
		next = ""
		visited, err := decodePage(resp.Body, func(link string) error {
			if next != "" {
				return nil // the first next link wins
			}
			n, err := c.resolveNext(page, link)
			next = n
			return err
		}, visit)
		if pe, ok := err.(pageError); ok {
			err = bodyError(ctx, pe.error, op)
			// Retried only while nothing was visited; see above.
			return visited == 0 && fault.Is(err, fault.Transient), err
		}
		return false, err // nil, visit's own error, or a permanent fault
	})
	if err != nil {
		return "", err
	}
	return next, nil
}

// basePath is the path of the source's base URL without a trailing slash
// ("" for a base at the root of its host).
func (c *Client) basePath() string {
	return strings.TrimRight(c.base.Path, "/")
}

// underBase reports whether u (of the base's origin) is the base URL or
// below it: a same-origin link elsewhere (/admin/secret) may be another
// application, and a source that hands one out is not followed there. The
// decoded path is checked, and a dot segment anywhere refuses the link,
// since a server may undo an encoded "%2e%2e" after this check.
func (c *Client) underBase(u *url.URL) bool { return underBasePath(u, c.base) }

func underBasePath(u, base *url.URL) bool {
	for seg := range strings.SplitSeq(u.Path, "/") {
		if seg == "." || seg == ".." {
			return false
		}
	}
	b := strings.TrimRight(base.Path, "/")
	return b == "" || u.Path == b || strings.HasPrefix(u.Path, b+"/")
}

// resolveNext resolves a next link against the page it came from and checks
// that it stays at the source.
func (c *Client) resolveNext(page *url.URL, link string) (string, error) {
	ref, err := url.Parse(link)
	if err != nil || link == "" {
		return "", fault.New(fault.Permanent, "the source FHIR server's next link %q is not a URL", truncate(link, 200))
	}
	u := page.ResolveReference(ref)
	if !sameOrigin(u, c.base) {
		return "", fault.New(fault.Permanent, "the source FHIR server's next link points at %s, not at the source %s; it is not followed so that the access token is never sent elsewhere",
			originOf(u), originOf(c.base))
	}
	if !c.underBase(u) {
		// The link itself is not repeated: its query may carry a
		// server's paging secrets, and it points where we never go.
		return "", fault.New(fault.Permanent, "the source FHIR server's next link leaves its base path %s; it is not followed, so that nothing outside the FHIR API (and no other application on that host) is read or exported",
			c.basePath())
	}
	u.Fragment, u.RawFragment = "", ""
	next := u.String()
	if next == page.String() {
		return "", fault.New(fault.Permanent, "the source FHIR server's next link for %s points at the same page", page.EscapedPath())
	}
	return next, nil
}

// pageError marks a failure to read or decode the page body (as opposed to an
// error returned by visit or by the next-link check).
type pageError struct{ error }

// searchMode is Bundle.entry.search.mode; decoding the usual codes allocates
// nothing.
type searchMode string

func (m *searchMode) UnmarshalJSON(b []byte) error {
	switch string(b) {
	case `"match"`:
		*m = "match"
	case `"include"`:
		*m = "include"
	case `"outcome"`:
		*m = "outcome"
	case "null":
		*m = ""
	default:
		return json.Unmarshal(b, (*string)(m))
	}
	return nil
}

type bundleEntry struct {
	Resource json.RawMessage `json:"resource"`
	Search   struct {
		Mode searchMode `json:"mode"`
	} `json:"search"`
}

type bundleLink struct {
	Relation string `json:"relation"`
	URL      string `json:"url"`
}

// decodePage walks a Bundle token by token: it calls visit for each entry as
// soon as the entry is decoded and onNext for each next link, wherever "link"
// stands. visited counts the calls to visit. A failure to read the body or an
// invalid body is a pageError; a non-Bundle is fault.Permanent; errors from
// onNext and visit are returned as they are.
func decodePage(r io.Reader, onNext func(string) error, visit func(export.Entry) error) (visited int, err error) {
	dec := json.NewDecoder(r)
	if err := expectDelim(dec, '{'); err != nil {
		return 0, err
	}
	var (
		resourceType string
		entry        bundleEntry     // its Resource buffer is reused entry after entry
		skip         json.RawMessage // likewise for skipped values
	)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return visited, pageError{err}
		}
		switch key, _ := tok.(string); key {
		case "resourceType":
			if err := dec.Decode(&resourceType); err != nil {
				return visited, pageError{err}
			}
			if resourceType != "Bundle" {
				return visited, fault.New(fault.Permanent, "the source FHIR server answered a search with a %q, not a Bundle", truncate(resourceType, 64))
			}
		case "entry":
			tok, err := dec.Token()
			if err != nil {
				return visited, pageError{err}
			}
			if tok == nil { // "entry": null
				continue
			}
			if d, ok := tok.(json.Delim); !ok || d != '[' {
				return visited, fault.New(fault.Permanent, "the source FHIR server sent a Bundle whose entry is not an array")
			}
			for dec.More() {
				entry.Resource = entry.Resource[:0]
				entry.Search.Mode = ""
				if err := dec.Decode(&entry); err != nil {
					return visited, pageError{err}
				}
				if len(entry.Resource) == 0 || string(entry.Resource) == "null" {
					continue // an entry without a resource has nothing to export
				}
				visited++
				if err := visit(export.Entry{Resource: entry.Resource, Mode: string(entry.Search.Mode)}); err != nil {
					return visited, err
				}
			}
			if err := expectDelim(dec, ']'); err != nil {
				return visited, err
			}
		case "link":
			var links []bundleLink
			if err := dec.Decode(&links); err != nil {
				return visited, pageError{err}
			}
			for _, l := range links {
				if l.Relation == "next" {
					if err := onNext(l.URL); err != nil {
						return visited, err
					}
				}
			}
		default:
			skip = skip[:0]
			if err := dec.Decode(&skip); err != nil {
				return visited, pageError{err}
			}
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return visited, err
	}
	if resourceType != "Bundle" {
		return visited, fault.New(fault.Permanent, "the source FHIR server answered a search with JSON that has no resourceType Bundle")
	}
	return visited, nil
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return pageError{err}
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fault.New(fault.Permanent, "the source FHIR server sent a page that is not a JSON Bundle (expected %q, got %v)", want, tok)
	}
	return nil
}
