package fhirsource

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/fhir"
)

// HistoryTypes lists the resource types the source's CapabilityStatement
// declares for rest mode server with the history-type interaction, or with
// no interaction list (the statement is silent, and the history request
// itself will tell).
func (c *Client) HistoryTypes(ctx context.Context) ([]string, error) {
	cs, err := c.capabilities(ctx)
	if err != nil {
		return nil, err
	}
	var types []string
	for _, rest := range cs.Rest {
		if rest.Mode != "server" {
			continue
		}
		for _, r := range rest.Resource {
			offered := len(r.Interaction) == 0
			for _, in := range r.Interaction {
				offered = offered || in.Code == "history-type"
			}
			if offered && r.Type != "" {
				types = append(types, r.Type)
			}
		}
	}
	return types, nil
}

// HistoryURL returns [base]/resourceType/_history, or
// [base]/resourceType/id/_history when id is set, with the query (already
// URL-encoded).
func (c *Client) HistoryURL(resourceType, id, query string) string {
	u := c.baseURL + "/" + resourceType
	if id != "" {
		u += "/" + url.PathEscape(id)
	}
	u += "/_history"
	if query != "" {
		u += "?" + query
	}
	return u
}

// HistoryPage fetches the history page at pageURL and calls visit for each
// entry, in order, while the body streams in, with the same rules as Page:
// the URL and the next link stay under the base URL, and a failure is
// retried only while no entry has been visited. An answer of 400, 404, 405
// or 501 (the source has no such history) is an error that matches
// export.ErrNoHistory and keeps its fault kind.
func (c *Client) HistoryPage(ctx context.Context, pageURL string, visit func(export.HistoryEntry) error) (string, error) {
	page, err := c.checkPageURL(pageURL, "history page")
	if err != nil {
		return "", err
	}
	op := "GET " + page.EscapedPath()
	var next string
	err = c.get(ctx, page, fault.Permanent, func(resp *http.Response) (bool, error) {
		next = ""
		visited, err := decodeHistory(resp.Body, func(link string) error {
			if next != "" {
				return nil
			}
			n, err := c.resolveNext(page, link)
			next = n
			return err
		}, visit)
		if pe, ok := err.(pageError); ok {
			err = bodyError(ctx, pe.error, op)
			return visited == 0 && fault.Is(err, fault.Transient), err
		}
		return false, err
	})
	if err != nil {
		if noHistory(err) {
			return "", fmt.Errorf("%w: %w", export.ErrNoHistory, err)
		}
		return "", err
	}
	return next, nil
}

// noHistory reports whether err is the source's answer 400, 404, 405 or 501:
// it has no history of that kind.
func noHistory(err error) bool {
	switch answerStatus(err) {
	case http.StatusBadRequest, http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusNotImplemented:
		return true
	}
	return false
}

// historyEntry is what is read of a history Bundle entry; the resource's
// other elements are parsed past, not kept.
type historyEntry struct {
	FullURL string `json:"fullUrl"`
	Request struct {
		Method string `json:"method"`
		URL    string `json:"url"`
	} `json:"request"`
	Response struct {
		LastModified string `json:"lastModified"`
	} `json:"response"`
	Resource struct {
		ResourceType string `json:"resourceType"`
		ID           string `json:"id"`
		Meta         struct {
			LastUpdated string `json:"lastUpdated"`
		} `json:"meta"`
	} `json:"resource"`
}

// entry converts a decoded entry: the resource is named by request.url, else
// fullUrl, else the resource itself; the time is response.lastModified, else
// meta.lastUpdated (an instant that does not parse reads as none).
func (h *historyEntry) entry() export.HistoryEntry {
	e := export.HistoryEntry{Method: strings.ToUpper(h.Request.Method)}
	for _, ref := range []string{h.Request.URL, h.FullURL} {
		if t, id, ok := typeAndID(ref); ok {
			e.Type, e.ID = t, id
			break
		}
	}
	if e.Type == "" {
		e.Type, e.ID = h.Resource.ResourceType, h.Resource.ID
	}
	for _, at := range []string{h.Response.LastModified, h.Resource.Meta.LastUpdated} {
		if t, err := fhir.ParseInstant(at); at != "" && err == nil {
			e.At = t
			break
		}
	}
	return e
}

// typeAndID reads "Type/id" at the end of a relative or absolute reference,
// without its query or version ("Patient/1/_history/2").
func typeAndID(ref string) (string, string, bool) {
	ref, _, _ = strings.Cut(ref, "?")
	if i := strings.Index(ref, "/_history"); i >= 0 {
		ref = ref[:i]
	}
	segs := strings.Split(strings.TrimRight(ref, "/"), "/")
	if len(segs) < 2 {
		return "", "", false
	}
	t, id := segs[len(segs)-2], segs[len(segs)-1]
	if !typePattern.MatchString(t) || !idPattern.MatchString(id) {
		return "", "", false
	}
	return t, id, true
}

// decodeHistory walks a history Bundle token by token, as decodePage walks a
// search Bundle: visit is called for each entry as soon as it is decoded and
// onNext for each next link. Failures are classified as decodePage's.
func decodeHistory(r io.Reader, onNext func(string) error, visit func(export.HistoryEntry) error) (visited int, err error) {
	dec := json.NewDecoder(r)
	if err := historyDelim(dec, '{'); err != nil {
		return 0, err
	}
	var resourceType string
	var skip json.RawMessage
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
				return visited, fault.New(fault.Permanent, "the source FHIR server answered a history request with a %q, not a Bundle", truncate(resourceType, 64))
			}
		case "entry":
			tok, err := dec.Token()
			if err != nil {
				return visited, pageError{err}
			}
			if tok == nil {
				continue
			}
			if d, ok := tok.(json.Delim); !ok || d != '[' {
				return visited, fault.New(fault.Permanent, "the source FHIR server sent a history Bundle whose entry is not an array")
			}
			for dec.More() {
				var h historyEntry
				if err := dec.Decode(&h); err != nil {
					return visited, pageError{err}
				}
				visited++
				if err := visit(h.entry()); err != nil {
					return visited, err
				}
			}
			if err := historyDelim(dec, ']'); err != nil {
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
	if err := historyDelim(dec, '}'); err != nil {
		return visited, err
	}
	if resourceType != "Bundle" {
		return visited, fault.New(fault.Permanent, "the source FHIR server answered a history request with JSON that has no resourceType Bundle")
	}
	return visited, nil
}

// historyDelim reads the next token of a history Bundle and checks it is want.
func historyDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return pageError{err}
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fault.New(fault.Permanent, "the source FHIR server sent a history page that is not a JSON Bundle (expected %q, got %v)", want, tok)
	}
	return nil
}
