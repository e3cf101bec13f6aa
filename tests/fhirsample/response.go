package fhirsample

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
)

// fhirJSON is the media type of every response.
const fhirJSON = "application/fhir+json"

// requestError is a failed request, answered with an HTTP status and an OperationOutcome.
type requestError struct {
	status      int
	code        string // OperationOutcome issue type, such as "invalid" or "not-found"
	diagnostics string
}

func (e *requestError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.status, e.code, e.diagnostics)
}

// invalid is a 400 for a malformed request.
func invalid(format string, args ...any) *requestError {
	return &requestError{status: http.StatusBadRequest, code: "invalid", diagnostics: fmt.Sprintf(format, args...)}
}

// notSupported is a 400 for a well-formed request asking for something the server does not do.
func notSupported(format string, args ...any) *requestError {
	return &requestError{status: http.StatusBadRequest, code: "not-supported", diagnostics: fmt.Sprintf(format, args...)}
}

// notFound is a 404.
func notFound(format string, args ...any) *requestError {
	return &requestError{status: http.StatusNotFound, code: "not-found", diagnostics: fmt.Sprintf(format, args...)}
}

// operationOutcome is a FHIR OperationOutcome with issues of severity error.
type operationOutcome struct {
	ResourceType string         `json:"resourceType"`
	Issue        []outcomeIssue `json:"issue"`
}

type outcomeIssue struct {
	Severity    string `json:"severity"`
	Code        string `json:"code"`
	Diagnostics string `json:"diagnostics"`
}

// writeError answers a requestError with its status and an OperationOutcome.
func writeError(w http.ResponseWriter, e *requestError) {
	writeJSON(w, e.status, operationOutcome{
		ResourceType: "OperationOutcome",
		Issue:        []outcomeIssue{{Severity: "error", Code: e.code, Diagnostics: e.diagnostics}},
	})
}

// marshalJSON is json.Marshal without HTML escaping, so URLs keep their "&".
func marshalJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// writeJSON marshals v and writes it with the FHIR JSON content type.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := marshalJSON(v)
	if err != nil {
		status = http.StatusInternalServerError
		body = []byte(`{"resourceType":"OperationOutcome","issue":[{"severity":"fatal","code":"exception","diagnostics":"cannot encode the response"}]}`)
	}
	writeBody(w, status, body)
}

// writeBody writes a JSON body with the FHIR JSON content type.
func writeBody(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", fhirJSON)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body) // the client went away; nothing left to tell it
}

// bundleLink is a Bundle.link.
type bundleLink struct {
	Relation string `json:"relation"`
	URL      string `json:"url"`
}

// bundleEntry is a search match: its full URL and the stored resource bytes. An
// injected entry may have another search mode (outcome) and no full URL. A stored
// resource's entry is prebuilt (resource.entry) and only needs the base before it.
type bundleEntry struct {
	prebuilt []byte
	fullURL  string
	raw      []byte
	mode     string // search.mode; empty: match
}

// searchBundle is one page of a searchset Bundle.
type searchBundle struct {
	id      string
	total   int
	base    string // the FHIR base URL, for the fullUrl of prebuilt entries
	links   []bundleLink
	entries []bundleEntry
}

// marshal renders the Bundle into out (empty). It is written by hand so that each
// resource is embedded exactly as stored: encoding/json would compact and HTML-escape a
// json.RawMessage.
func (b searchBundle) marshal(out *bytes.Buffer) error {
	head, err := marshalJSON(struct {
		ResourceType string       `json:"resourceType"`
		ID           string       `json:"id"`
		Type         string       `json:"type"`
		Total        int          `json:"total"`
		Link         []bundleLink `json:"link"`
	}{"Bundle", b.id, "searchset", b.total, b.links})
	if err != nil {
		return fmt.Errorf("encode bundle: %w", err)
	}
	if len(b.entries) == 0 {
		out.Write(head)
		return nil
	}
	base, err := marshalJSON(b.base)
	if err != nil {
		return fmt.Errorf("encode base URL: %w", err)
	}
	base = base[:len(base)-1] // the opening quote stays; the entry closes the string
	size := len(head) + 16
	for _, e := range b.entries {
		size += len(base) + len(e.prebuilt) + len(e.raw) + 64
	}
	out.Grow(size)
	out.Write(head[:len(head)-1]) // drop the closing brace to append the entries
	out.WriteString(`,"entry":[`)
	for i, e := range b.entries {
		if i > 0 {
			out.WriteByte(',')
		}
		if e.prebuilt != nil {
			out.WriteString(`{"fullUrl":`)
			out.Write(base)
			out.Write(e.prebuilt)
			continue
		}
		out.WriteByte('{')
		if e.fullURL != "" {
			fullURL, err := marshalJSON(e.fullURL)
			if err != nil {
				return fmt.Errorf("encode entry fullUrl: %w", err)
			}
			out.WriteString(`"fullUrl":`)
			out.Write(fullURL)
			out.WriteByte(',')
		}
		mode := e.mode
		if mode == "" {
			mode = "match"
		}
		out.WriteString(`"resource":`)
		out.Write(e.raw)
		out.WriteString(`,"search":{"mode":"` + mode + `"}}`)
	}
	out.WriteString(`]}`)
	return nil
}
