package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// param is one kick-off parameter, from the query string or the body.
type param struct {
	name  string
	value string
	err   error // a body parameter whose value is not a string; reported only if we implement it
	// ref marks a value that came from a body's valueReference (its
	// reference), which only the patient parameter takes.
	ref bool
}

// queryParams parses a raw query string in order. A '+' decodes to a space,
// as the Functions host also does; repeated keys stay separate entries.
func queryParams(raw string) ([]param, error) {
	var out []param
	for pair := range strings.SplitSeq(raw, "&") {
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		name, err := url.QueryUnescape(k)
		if err != nil {
			return nil, invalid("structure", "the query string is malformed near %q: %v", clip(k), err)
		}
		value, err := url.QueryUnescape(v)
		if err != nil {
			return nil, invalid("structure", "the query string is malformed: parameter %s: %v", name, err)
		}
		out = append(out, param{name: name, value: value})
	}
	return out, nil
}

// stringValueKeys are the value[x] elements of a Parameters.parameter whose
// JSON is a string; every kick-off parameter we implement takes one of
// these, but patient (valueReference) and allowPartialManifests (valueBoolean).
var stringValueKeys = map[string]bool{
	"valueString": true, "valueCode": true, "valueUri": true, "valueUrl": true,
	"valueCanonical": true, "valueId": true, "valueInstant": true, "valueDateTime": true,
	"valueDate": true, "valueOid": true, "valueUuid": true, "valueMarkdown": true,
}

// bodyParams reads a POST kick-off's Parameters resource.
func bodyParams(w http.ResponseWriter, r *http.Request) ([]param, error) {
	if r.ContentLength > maxBodyBytes {
		return nil, tooLarge()
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, tooLarge()
		}
		return nil, invalid("structure", "reading the request body: %v", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, invalid("required", "the POST body is missing: send a FHIR Parameters resource with a Content-Length (a chunked body does not reach the server), or use GET")
	}
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || (mt != "application/fhir+json" && mt != "application/json") {
		return nil, &httpError{status: http.StatusUnsupportedMediaType, code: "not-supported",
			err: fmt.Errorf("Content-Type %q is not supported: send the Parameters resource as application/fhir+json or application/json", ct)}
	}
	var res struct {
		ResourceType string                       `json:"resourceType"`
		Parameter    []map[string]json.RawMessage `json:"parameter"`
	}
	if err := json.Unmarshal(body, &res); err != nil {
		return nil, invalid("structure", "the body is not valid JSON for a FHIR Parameters resource%s", jsonProblem(err))
	}
	if res.ResourceType != "Parameters" {
		return nil, invalid("structure", "the body must be a FHIR Parameters resource, not resourceType %q", clip(res.ResourceType))
	}
	out := make([]param, 0, len(res.Parameter))
	for i, p := range res.Parameter {
		var name string
		if err := json.Unmarshal(p["name"], &name); err != nil || name == "" {
			return nil, invalid("structure", "Parameters.parameter[%d] has no name", i)
		}
		out = append(out, param{name: name})
		last := &out[len(out)-1]
		var keys []string
		for k := range p {
			if strings.HasPrefix(k, "value") {
				keys = append(keys, k)
			}
		}
		switch {
		case len(keys) != 1:
			last.err = invalid("structure", "parameter %s (Parameters.parameter[%d]) must have exactly one value, such as valueString", name, i)
		case name == paramPatient:
			// The IG defines patient as a valueReference, and only that.
			var ref struct {
				Reference *string `json:"reference"`
			}
			if keys[0] != "valueReference" {
				last.err = invalid("structure", "parameter patient (Parameters.parameter[%d]) must be a valueReference such as {\"reference\":\"Patient/123\"}, not %s", i, keys[0])
			} else if err := json.Unmarshal(p[keys[0]], &ref); err != nil || ref.Reference == nil {
				last.err = invalid("structure", "parameter patient (Parameters.parameter[%d]): valueReference must be an object with a reference such as \"Patient/123\"", i)
			} else {
				last.value, last.ref = *ref.Reference, true
			}
		case name == paramAllowPartialManifests && keys[0] == "valueBoolean":
			var b bool
			if err := json.Unmarshal(p[keys[0]], &b); err != nil {
				last.err = invalid("structure", "parameter %s (Parameters.parameter[%d]): valueBoolean must be true or false", name, i)
			} else {
				last.value = strconv.FormatBool(b)
			}
		case name == paramIncludeAssociatedData && keys[0] == "valueCoding":
			// The 4.0.0 draft of the IG makes it a Coding; its code is the value.
			var coding struct {
				Code *string `json:"code"`
			}
			if err := json.Unmarshal(p[keys[0]], &coding); err != nil || coding.Code == nil {
				last.err = invalid("structure", "parameter %s (Parameters.parameter[%d]): valueCoding must be an object with a code such as \"LatestProvenanceResources\"", name, i)
			} else {
				last.value = *coding.Code
			}
		case !stringValueKeys[keys[0]]:
			last.err = invalid("structure", "parameter %s (Parameters.parameter[%d]) must have a string value such as valueString, not %s", name, i, keys[0])
		default:
			if err := json.Unmarshal(p[keys[0]], &last.value); err != nil {
				last.err = invalid("structure", "parameter %s (Parameters.parameter[%d]): %s must be a JSON string", name, i, keys[0])
			}
		}
	}
	return out, nil
}

// jsonProblem says where a body failed to decode in JSON's own terms: the
// decoder's messages name the Go types it decodes into, which mean nothing
// to a client and say how the server is built.
func jsonProblem(err error) string {
	if e, ok := errors.AsType[*json.SyntaxError](err); ok {
		return fmt.Sprintf(" (syntax error at byte %d)", e.Offset)
	}
	if e, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		if e.Field == "" {
			return fmt.Sprintf(" (it is a JSON %s, not an object)", e.Value)
		}
		return fmt.Sprintf(" (%s must not be a JSON %s)", clip(e.Field), e.Value)
	}
	return ""
}

// maxQueryBytes caps a kick-off's query string. The Functions front end
// (Kestrel) refuses a request line over 8 KiB; a bare handler serve refuses
// the same here, so neither mode parses more. Larger requests use POST.
const maxQueryBytes = 8 << 10

func queryTooLong(n int) error {
	return invalid("too-long", "the query string is %d bytes, more than the %d this server accepts; send long kick-off parameters in a POST body", n, maxQueryBytes)
}

func tooLarge() error {
	return &httpError{status: http.StatusRequestEntityTooLarge, code: "too-long",
		err: fmt.Errorf("the request body is larger than %d bytes", maxBodyBytes)}
}
