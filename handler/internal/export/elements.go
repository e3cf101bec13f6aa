package export

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/azfhir/bulkexport/handler/internal/fhir"
)

// SubsettedSystem and SubsettedCode are the meta.tag the Bulk Data IG asks
// for on a resource that _elements trimmed.
const (
	SubsettedSystem = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
	SubsettedCode   = "SUBSETTED"
)

var subsettedTag = []byte(`{"system":"` + SubsettedSystem + `","code":"` + SubsettedCode + `","display":"subsetted"}`)

// elementSet is what _elements keeps of one resource type: top-level JSON
// keys. A nil set means the type is not subsetted.
type elementSet map[string]bool

// elementsFor resolves a request's _elements (Request.Elements: "name" for
// every type, "Type.name" for one type) for resource type t. It returns nil
// when no entry applies to t, so a resource of a type the client did not
// name is written whole; otherwise the named elements plus resourceType,
// id, meta and the elements R4 requires of t.
func elementsFor(elements []string, t string) elementSet {
	var set elementSet
	for _, e := range elements {
		name := e
		if typ, n, qualified := strings.Cut(e, "."); qualified {
			if typ != t {
				continue
			}
			name = n
		}
		if set == nil {
			set = elementSet{"resourceType": true, "id": true, "meta": true}
			for _, m := range fhir.MandatoryElements(t) {
				set[m] = true
			}
		}
		set[name] = true
	}
	return set
}

// choiceTypes are the R4 data types a choice element (value[x]) can take;
// "value" in _elements keeps valueQuantity, valueString and so on.
var choiceTypes = map[string]bool{
	"Base64Binary": true, "Boolean": true, "Canonical": true, "Code": true, "Date": true,
	"DateTime": true, "Decimal": true, "Id": true, "Instant": true, "Integer": true,
	"Markdown": true, "Oid": true, "PositiveInt": true, "String": true, "Time": true,
	"UnsignedInt": true, "Uri": true, "Url": true, "Uuid": true, "Address": true, "Age": true,
	"Annotation": true, "Attachment": true, "CodeableConcept": true, "Coding": true,
	"ContactPoint": true, "Count": true, "Distance": true, "Duration": true, "HumanName": true,
	"Identifier": true, "Money": true, "Period": true, "Quantity": true, "Range": true,
	"Ratio": true, "Reference": true, "SampledData": true, "Signature": true, "Timing": true,
	"ContactDetail": true, "Contributor": true, "DataRequirement": true, "Expression": true,
	"ParameterDefinition": true, "RelatedArtifact": true, "TriggerDefinition": true,
	"UsageContext": true, "Dosage": true, "Meta": true,
}

// keeps reports whether the top-level JSON key k survives: a kept element,
// its primitive extension (_status for status), or a typed variant of a
// kept choice element (valueQuantity for value).
func (s elementSet) keeps(k []byte) bool {
	k = bytes.TrimPrefix(k, []byte("_"))
	if s[string(k)] {
		return true
	}
	for i := 1; i < len(k); i++ {
		if 'A' <= k[i] && k[i] <= 'Z' {
			return s[string(k[:i])] && choiceTypes[string(k[i:])]
		}
	}
	return false
}

// subsetResource returns the resource with only the top-level elements of
// keep, and the SUBSETTED tag added to meta.tag (after the tags it has,
// once: a resource already tagged keeps its tags as they are). Key order
// and values are kept byte for byte. It is a pure function of its input,
// so a page written again after a crash gives the same bytes. The input is
// one compact JSON object, as the work item has it after json.Compact.
func subsetResource(resource []byte, keep elementSet) ([]byte, error) {
	if out, ok := subsetCompact(resource, keep); ok {
		return out, nil
	}
	return subsetDecoded(resource, keep)
}

// subsetCompact is the fast path of subsetResource: one pass over compact
// JSON with the head scanner, copying the spans of kept members. ok is false
// for anything it does not handle (whitespace, escapes in a key), which the
// decoding path then takes.
func subsetCompact(resource []byte, keep elementSet) ([]byte, bool) {
	s := scanner{b: resource}
	if !s.eat('{') {
		return nil, false
	}
	out := make([]byte, 0, len(resource)+len(subsettedTag)+16)
	out = append(out, '{')
	sawMeta := false
	for first := true; ; first = false {
		if s.eat('}') {
			break
		}
		if !first && !s.eat(',') {
			return nil, false
		}
		start := s.i
		key, ok := s.str()
		if !ok || !s.eat(':') {
			return nil, false
		}
		valueStart := s.i
		if !s.skip() {
			return nil, false
		}
		if !keep.keeps(key) {
			continue
		}
		if len(out) > 1 {
			out = append(out, ',')
		}
		if string(key) == "meta" {
			sawMeta = true
			meta, ok := tagSubsettedCompact(resource[valueStart:s.i])
			if !ok {
				return nil, false
			}
			out = append(out, resource[start:valueStart]...)
			out = append(out, meta...)
			continue
		}
		out = append(out, resource[start:s.i]...)
	}
	if s.i != len(resource) {
		return nil, false
	}
	if !sawMeta {
		out = appendMember(out, "meta", append(append([]byte(`{"tag":[`), subsettedTag...), "]}"...))
	}
	return append(out, '}'), true
}

// subsetDecoded is subsetResource for any valid JSON object.
func subsetDecoded(resource []byte, keep elementSet) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(resource))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("the resource is not a JSON object")
	}
	out := make([]byte, 0, len(resource)+len(subsettedTag)+16)
	out = append(out, '{')
	sawMeta := false
	for dec.More() {
		key, raw, err := nextMember(dec)
		if err != nil {
			return nil, err
		}
		if !keep.keeps([]byte(key)) {
			continue
		}
		if key == "meta" {
			sawMeta = true
			if raw, err = tagSubsetted(raw); err != nil {
				return nil, err
			}
		}
		out = appendMember(out, key, raw)
	}
	if !sawMeta {
		out = appendMember(out, "meta", append(append([]byte(`{"tag":[`), subsettedTag...), "]}"...))
	}
	return append(out, '}'), nil
}

// tagSubsettedCompact is tagSubsetted for compact JSON, fast for the usual
// meta without tags: the tag array goes in before the closing brace.
func tagSubsettedCompact(meta []byte) ([]byte, bool) {
	s := scanner{b: meta}
	if !s.eat('{') {
		return nil, false
	}
	for first := true; ; first = false {
		if s.eat('}') {
			break
		}
		if !first && !s.eat(',') {
			return nil, false
		}
		key, ok := s.str()
		if !ok || !s.eat(':') || !s.skip() {
			return nil, false
		}
		if string(key) == "tag" {
			out, err := tagSubsetted(meta)
			return out, err == nil
		}
	}
	if s.i != len(meta) {
		return nil, false
	}
	out := make([]byte, 0, len(meta)+len(subsettedTag)+10)
	out = append(out, meta[:len(meta)-1]...)
	if len(meta) > 2 {
		out = append(out, ',')
	}
	out = append(out, `"tag":[`...)
	out = append(out, subsettedTag...)
	return append(out, "]}"...), true
}

// tagSubsetted adds the SUBSETTED tag to a meta object's tag array, keeping
// every other meta element and tag in place.
func tagSubsetted(meta json.RawMessage) (json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(meta))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("meta is not a JSON object")
	}
	out := make([]byte, 0, len(meta)+len(subsettedTag)+10)
	out = append(out, '{')
	sawTag := false
	for dec.More() {
		key, raw, err := nextMember(dec)
		if err != nil {
			return nil, err
		}
		if key == "tag" {
			sawTag = true
			var tags []json.RawMessage
			if err := json.Unmarshal(raw, &tags); err != nil {
				return nil, fmt.Errorf("meta.tag is not a JSON array")
			}
			if !hasSubsettedTag(tags) {
				tags = append(tags, subsettedTag)
			}
			list := []byte{'['}
			for i, t := range tags {
				if i > 0 {
					list = append(list, ',')
				}
				list = append(list, t...)
			}
			raw = append(list, ']')
		}
		out = appendMember(out, key, raw)
	}
	if !sawTag {
		out = appendMember(out, "tag", append(append([]byte{'['}, subsettedTag...), ']'))
	}
	return append(out, '}'), nil
}

func hasSubsettedTag(tags []json.RawMessage) bool {
	for _, t := range tags {
		var c struct{ System, Code string }
		if json.Unmarshal(t, &c) == nil && c.System == SubsettedSystem && c.Code == SubsettedCode {
			return true
		}
	}
	return false
}

// nextMember reads one key and its raw value of the object dec is in.
func nextMember(dec *json.Decoder) (string, json.RawMessage, error) {
	tok, err := dec.Token()
	if err != nil {
		return "", nil, fmt.Errorf("the resource is not valid JSON: %w", err)
	}
	key, ok := tok.(string)
	if !ok {
		return "", nil, fmt.Errorf("the resource is not valid JSON")
	}
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return "", nil, fmt.Errorf("the resource is not valid JSON: %w", err)
	}
	return key, raw, nil
}

// appendMember writes "key":value after a comma when out holds a member.
func appendMember(out []byte, key string, raw []byte) []byte {
	if out[len(out)-1] != '{' {
		out = append(out, ',')
	}
	k, _ := json.Marshal(key) // a string always encodes
	out = append(out, k...)
	out = append(out, ':')
	return append(out, raw...)
}
