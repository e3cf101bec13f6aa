package export_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	. "github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// fakeSource is an in-memory FHIR source for engine unit tests. It supports
// what the engine sends: _lastUpdated gt/le, _id, _count, compartment
// reference parameters, and token parameters matched against a top-level
// string element (status=final). Pages are offsets in next links.
type fakeSource struct {
	mu       sync.Mutex
	now      time.Time
	data     map[string][]fakeResource
	maxCount int
	requests int
	failures []error // returned by the next Page calls, in order
	// expireAfter makes every next link fail as expired once that many
	// pages have been served (0: never).
	expireAfter int
	// params, when set, is what SearchParams answers: the source's
	// CapabilityStatement search parameters by type.
	params map[string][]string

	// history is every version of every resource, in the order made: what
	// HistoryPage serves (newest first). add records a PUT, remove a DELETE.
	history []fakeVersion
	// noHistoryType lists the types whose CapabilityStatement lacks
	// history-type; historyRefused makes every history request answer 404.
	noHistoryType  []string
	historyRefused bool
	// historyFailAt makes the history request with that number (1-based,
	// counted in historyCalls) fail transiently, as a dropped connection would.
	historyFailAt, historyCalls int
}

type fakeVersion struct {
	typ, id, method string
	at              time.Time
}

type fakeResource struct {
	json        []byte
	id          string
	lastUpdated time.Time
	fields      map[string]any
}

func newFakeSource(now time.Time) *fakeSource {
	return &fakeSource{now: now, data: map[string][]fakeResource{}, maxCount: 1000}
}

// add stores a resource given as JSON; it must have resourceType, id and meta.lastUpdated.
func (s *fakeSource) add(raw string) {
	var fields map[string]any
	if err := json.Unmarshal([]byte(raw), &fields); err != nil {
		panic(err)
	}
	typ := fields["resourceType"].(string)
	lu, err := time.Parse(time.RFC3339Nano, fields["meta"].(map[string]any)["lastUpdated"].(string))
	if err != nil {
		panic(err)
	}
	s.data[typ] = append(s.data[typ], fakeResource{json: []byte(raw), id: fields["id"].(string), lastUpdated: lu, fields: fields})
	s.history = append(s.history, fakeVersion{typ: typ, id: fields["id"].(string), method: "PUT", at: lu})
}

// remove deletes typ/id at the instant at, as a DELETE version in the history.
func (s *fakeSource) remove(typ, id string, at time.Time) {
	s.data[typ] = slices.DeleteFunc(s.data[typ], func(r fakeResource) bool { return r.id == id })
	s.history = append(s.history, fakeVersion{typ: typ, id: id, method: "DELETE", at: at})
}

func (s *fakeSource) HistoryTypes(ctx context.Context) ([]string, error) {
	types, _ := s.Types(ctx)
	for _, v := range s.history {
		types = append(types, v.typ)
	}
	slices.Sort(types)
	return slices.DeleteFunc(slices.Compact(types), func(t string) bool { return slices.Contains(s.noHistoryType, t) }), nil
}

func (s *fakeSource) HistoryURL(typ, id, query string) string {
	if id != "" {
		typ += "/" + id
	}
	return "fake:///" + typ + "/_history?" + query
}

// HistoryPage serves the versions at or after _since, newest first, in
// pages of _count at _offset.
func (s *fakeSource) HistoryPage(ctx context.Context, pageURL string, visit func(HistoryEntry) error) (string, error) {
	s.mu.Lock()
	s.requests++
	s.mu.Unlock()
	s.mu.Lock()
	s.historyCalls++
	fail := s.historyCalls == s.historyFailAt
	s.mu.Unlock()
	if fail {
		return "", fault.New(fault.Transient, "injected failure of history request %d", s.historyFailAt)
	}
	if s.historyRefused {
		return "", fmt.Errorf("%w: %w", ErrNoHistory, fault.New(fault.Permanent, "404 Not Found: GET %s", pageURL))
	}
	u, err := url.Parse(pageURL)
	if err != nil {
		return "", err
	}
	parts := strings.Split(strings.TrimPrefix(strings.TrimSuffix(u.Path, "/_history"), "/"), "/")
	q := u.Query()
	since, err := time.Parse(time.RFC3339Nano, q.Get("_since"))
	if err != nil {
		return "", err
	}
	var hits []fakeVersion
	for _, v := range slices.Backward(s.history) {
		if v.typ == parts[0] && (len(parts) == 1 || v.id == parts[1]) && !v.at.Before(since) {
			hits = append(hits, v)
		}
	}
	slices.SortStableFunc(hits, func(a, b fakeVersion) int { return b.at.Compare(a.at) })
	count, _ := strconv.Atoi(q.Get("_count"))
	if count <= 0 {
		count = s.maxCount
	}
	offset, _ := strconv.Atoi(q.Get("_offset"))
	end := min(offset+count, len(hits))
	for _, v := range hits[offset:end] {
		if err := visit(HistoryEntry{Method: v.method, Type: v.typ, ID: v.id, At: v.at}); err != nil {
			return "", err
		}
	}
	if end >= len(hits) {
		return "", nil
	}
	q.Set("_offset", strconv.Itoa(end))
	return "fake://" + u.Path + "?" + q.Encode(), nil
}

func (s *fakeSource) Now(ctx context.Context) (time.Time, error) { return s.now, nil }

func (s *fakeSource) Types(ctx context.Context) ([]string, error) {
	var out []string
	for t := range s.data {
		out = append(out, t)
	}
	slices.Sort(out)
	return out, nil
}

func (s *fakeSource) SearchParams(ctx context.Context) (map[string][]string, error) {
	return s.params, nil
}

func (s *fakeSource) Read(ctx context.Context, typ, id string) ([]byte, error) {
	for _, r := range s.data[typ] {
		if r.id == id {
			return r.json, nil
		}
	}
	return nil, fault.New(fault.NotFound, "%s/%s not found", typ, id)
}

func (s *fakeSource) SearchURL(typ, query string) string { return "fake:///" + typ + "?" + query }

func (s *fakeSource) Count(ctx context.Context, typ, query string) (int64, error) {
	q, err := url.ParseQuery(query)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, r := range s.data[typ] {
		if matches(r, q) {
			n++
		}
	}
	return int64(n), nil
}

func (s *fakeSource) Page(ctx context.Context, pageURL string, visit func(Entry) error) (string, error) {
	s.mu.Lock()
	s.requests++
	if len(s.failures) > 0 {
		err := s.failures[0]
		s.failures = s.failures[1:]
		s.mu.Unlock()
		return "", err
	}
	s.mu.Unlock()
	u, err := url.Parse(pageURL)
	if err != nil {
		return "", err
	}
	typ := strings.TrimPrefix(u.Path, "/")
	q := u.Query()
	count := s.maxCount
	if c, err := strconv.Atoi(q.Get("_count")); err == nil && c < count {
		count = c
	}
	offset, _ := strconv.Atoi(q.Get("_offset"))
	if offset > 0 && s.expireAfter > 0 && s.requests > s.expireAfter {
		return "", fault.New(fault.Permanent, "410 Gone: the paging state for this search has expired")
	}
	var hits []fakeResource
	for _, r := range s.data[typ] {
		if matches(r, q) {
			hits = append(hits, r)
		}
	}
	if q.Get("_sort") == "_lastUpdated" {
		slices.SortStableFunc(hits, func(a, b fakeResource) int {
			if c := a.lastUpdated.Compare(b.lastUpdated); c != 0 {
				return c
			}
			return strings.Compare(a.id, b.id)
		})
	}
	end := min(offset+count, len(hits))
	for _, r := range hits[offset:end] {
		// Pretty-printed on purpose: the engine must compact.
		var pretty bytes.Buffer
		_ = json.Indent(&pretty, r.json, "", "  ")
		if err := visit(Entry{Resource: pretty.Bytes(), Mode: "match"}); err != nil {
			return "", err
		}
	}
	if end >= len(hits) {
		return "", nil
	}
	q.Set("_offset", strconv.Itoa(end))
	return "fake:///" + typ + "?" + q.Encode(), nil
}

func matches(r fakeResource, q url.Values) bool {
	for key, values := range q {
		for _, v := range values {
			switch key {
			case "_count", "_offset", "_summary", "_sort":
			case "_lastUpdated":
				t, err := time.Parse(time.RFC3339Nano, v[2:])
				if err != nil {
					panic(err)
				}
				switch v[:2] {
				case "gt":
					if !r.lastUpdated.After(t) {
						return false
					}
				case "le":
					if r.lastUpdated.After(t) {
						return false
					}
				case "ge":
					if r.lastUpdated.Before(t) {
						return false
					}
				default:
					panic("unsupported prefix " + v)
				}
			case "_id":
				if !slices.Contains(strings.Split(v, ","), r.id) {
					return false
				}
			case "patient", "subject", "performer", "author":
				refs := strings.Split(v, ",")
				found := false
				fields := []string{key}
				if key == "patient" || key == "subject" {
					fields = []string{"patient", "subject"}
				}
				for _, field := range fields {
					for _, ref := range fieldRefs(r.fields[field]) {
						if slices.Contains(refs, ref) {
							found = true
						}
					}
				}
				if !found {
					return false
				}
			case "target":
				// Provenance.target: any version, relative or absolute, as a
				// FHIR server matches a reference search.
				found := false
				for _, ref := range fieldRefs(r.fields["target"]) {
					if before, _, ok := strings.Cut(ref, "/_history/"); ok {
						ref = before
					}
					if parts := strings.Split(ref, "/"); len(parts) >= 2 && slices.Contains(strings.Split(v, ","), strings.Join(parts[len(parts)-2:], "/")) {
						found = true
					}
				}
				if !found {
					return false
				}
			default:
				got, _ := r.fields[key].(string)
				if !slices.Contains(strings.Split(v, ","), got) {
					return false
				}
			}
		}
	}
	return true
}

func fieldRefs(v any) []string {
	switch x := v.(type) {
	case map[string]any:
		if s, ok := x["reference"].(string); ok {
			return []string{s}
		}
	case []any:
		var out []string
		for _, el := range x {
			out = append(out, fieldRefs(el)...)
		}
		return out
	}
	return nil
}

// lastUpdatedOf returns the meta.lastUpdated of typ/id.
func (s *fakeSource) lastUpdatedOf(typ, id string) time.Time {
	for _, r := range s.data[typ] {
		if r.id == id {
			return r.lastUpdated
		}
	}
	panic("no " + typ + "/" + id)
}

// resource builds a compact test resource.
func resource(typ, id string, lastUpdated time.Time, extra string) string {
	s := fmt.Sprintf(`{"resourceType":%q,"id":%q,"meta":{"lastUpdated":%q}`, typ, id, lastUpdated.UTC().Format(time.RFC3339Nano))
	if extra != "" {
		s += "," + extra
	}
	return s + "}"
}
