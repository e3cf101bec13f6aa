package fhirsample

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The history a Server serves: the current version of every resource, and the
// deletions it was started with (Options.Deletions, the -deletions flag of
// cmd/fhir-sample). Deletions are applied once at start, so the data stays
// read-only while the server runs and history pages are as stable as search
// pages.
//
//	GET {base}/{Type}/_history?_since=&_count=       history-type
//	GET {base}/{Type}/{id}/_history?_since=&_count=  history-instance
//
// Both answer a Bundle of type history, newest first (ties by id, then a
// deletion before the version it follows): a DELETE entry (request.method
// DELETE, request.url Type/id, response.lastModified) for each deletion, and
// a PUT entry with the resource for each current version, at or after
// _since. With Options.NoHistory the CapabilityStatement declares no history
// interaction and both answer 404, as a server without history would.

// Deletion is a resource deleted at an instant. A stored resource last
// updated at or before At is removed at start; one updated after At stays,
// re-created after its deletion, and the history shows both.
type Deletion struct {
	Type string
	ID   string
	At   time.Time
}

// ParseDeletions reads deletions, one a line: "Type/id instant" (RFC 3339).
// Blank lines and lines starting with # are skipped.
func ParseDeletions(r io.Reader) ([]Deletion, error) {
	var out []Deletion
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		ref, at, _ := strings.Cut(line, " ")
		typ, id, _ := strings.Cut(ref, "/")
		t, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(at))
		if err != nil || !isValidResourceType(typ) || !isValidID(id) {
			return nil, fmt.Errorf("deletions line %d: want \"Type/id instant\", got %q", n, line)
		}
		out = append(out, Deletion{Type: typ, ID: id, At: t})
	}
	return out, sc.Err()
}

// applyDeletions removes from st the resources deleted and not re-created,
// and returns the deletions by type, newest first.
func applyDeletions(st *store, deletions []Deletion) (map[string][]Deletion, error) {
	byType := map[string][]Deletion{}
	for _, d := range deletions {
		rt, ok := st.types[d.Type]
		if !ok {
			return nil, fmt.Errorf("deletion of %s/%s: no resource type %s is loaded", d.Type, d.ID, d.Type)
		}
		byType[d.Type] = append(byType[d.Type], d)
		if res, ok := rt.byID[d.ID]; ok && !res.lastUpdated.After(d.At) {
			delete(rt.byID, d.ID)
			rt.resources = slices.DeleteFunc(rt.resources, func(r *resource) bool { return r == res })
		}
	}
	for name, ds := range byType {
		slices.SortFunc(ds, func(a, b Deletion) int { return b.At.Compare(a.At) })
		st.types[name].index()
	}
	return byType, nil
}

// declareHistory adds the history interactions to the CapabilityStatement.
func (s *Server) declareHistory(rest *capabilityRest) {
	if s.opts.NoHistory {
		return
	}
	for i := range rest.Resource {
		rest.Resource[i].Interaction = append(rest.Resource[i].Interaction,
			capabilityInteraction{Code: "history-instance"}, capabilityInteraction{Code: "history-type"})
	}
}

type historyEntry struct {
	FullURL  string          `json:"fullUrl"`
	Resource json.RawMessage `json:"resource,omitempty"`
	Request  struct {
		Method string `json:"method"`
		URL    string `json:"url"`
	} `json:"request"`
	Response struct {
		Status       string `json:"status"`
		LastModified string `json:"lastModified"`
	} `json:"response"`

	at time.Time
	id string
}

type historyLink struct {
	Relation string `json:"relation"`
	URL      string `json:"url"`
}

// serveHistory answers GET {Type}/_history (id "") or {Type}/{id}/_history.
func (s *Server) serveHistory(w http.ResponseWriter, r *http.Request, rt *resourceType, id string) error {
	if s.opts.NoHistory {
		return notFound("this server keeps no history")
	}
	values, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return invalid("malformed query string: %v", err)
	}
	var since time.Time
	count, offset := s.opts.DefaultCount, 0
	for key, vs := range values {
		v := vs[len(vs)-1]
		switch key {
		case "_since":
			if since, err = time.Parse(time.RFC3339Nano, v); err != nil {
				return invalid("_since %q is not an instant", v)
			}
		case "_count":
			if count, err = strconv.Atoi(v); err != nil || count < 0 {
				return invalid("_count %q is not a non-negative integer", v)
			}
			count = min(count, s.opts.MaxCount)
		case "_offset":
			if offset, err = strconv.Atoi(v); err != nil || offset < 0 {
				return invalid("_offset %q is not a non-negative integer", v)
			}
		default:
			return invalid("unknown history parameter %q", key)
		}
	}
	base := s.baseURL(r)
	entries := s.historyOf(base, rt, id, since)
	if id != "" && len(entries) == 0 && rt.byID[id] == nil && !slices.ContainsFunc(s.deletions[rt.name], func(d Deletion) bool { return d.ID == id }) {
		return notFound("resource %s/%s is not known", rt.name, id)
	}
	page := entries[min(offset, len(entries)):min(offset+count, len(entries))]
	self := base + "/" + rt.name
	if id != "" {
		self += "/" + id
	}
	self += "/_history"
	links := []historyLink{{Relation: "self", URL: self + "?" + r.URL.RawQuery}}
	if offset+count < len(entries) && count > 0 {
		values.Set("_offset", strconv.Itoa(offset+count))
		values.Set("_count", strconv.Itoa(count))
		links = append(links, historyLink{Relation: "next", URL: self + "?" + values.Encode()})
	}
	writeJSON(w, http.StatusOK, struct {
		ResourceType string         `json:"resourceType"`
		Type         string         `json:"type"`
		Total        int            `json:"total"`
		Link         []historyLink  `json:"link"`
		Entry        []historyEntry `json:"entry"`
	}{"Bundle", "history", len(entries), links, page})
	return nil
}

// historyOf returns the history of a type (id "") or of one resource at or
// after since, newest first.
func (s *Server) historyOf(base string, rt *resourceType, id string, since time.Time) []historyEntry {
	var out []historyEntry
	for _, d := range s.deletions[rt.name] {
		if (id == "" || d.ID == id) && !d.At.Before(since) {
			e := historyEntry{FullURL: base + "/" + rt.name + "/" + d.ID, at: d.At, id: d.ID}
			e.Request.Method, e.Request.URL = http.MethodDelete, rt.name+"/"+d.ID
			e.Response.Status, e.Response.LastModified = "204", d.At.UTC().Format(time.RFC3339Nano)
			out = append(out, e)
		}
	}
	current := rt.resources
	if id != "" {
		current = nil
		if res := rt.byID[id]; res != nil {
			current = []*resource{res}
		}
	}
	for _, res := range current {
		if res.lastUpdated.Before(since) {
			continue
		}
		e := historyEntry{FullURL: base + "/" + rt.name + "/" + res.id, Resource: json.RawMessage(res.raw), at: res.lastUpdated, id: res.id}
		e.Request.Method, e.Request.URL = http.MethodPut, rt.name+"/"+res.id
		e.Response.Status, e.Response.LastModified = "200", res.lastUpdated.UTC().Format(time.RFC3339Nano)
		out = append(out, e)
	}
	slices.SortStableFunc(out, func(a, b historyEntry) int {
		if c := b.at.Compare(a.at); c != 0 {
			return c
		}
		if c := strings.Compare(a.id, b.id); c != 0 {
			return c
		}
		// At one instant, the re-created version is the newer one.
		return strings.Compare(b.Request.Method, a.Request.Method)
	})
	return out
}
