package fhirsample

import (
	"encoding/json"
	"regexp"
	"strings"
)

// paramKind is the FHIR search parameter type of an element parameter.
type paramKind int

const (
	referenceParam paramKind = iota + 1
	tokenParam
)

// String returns the FHIR name of the search parameter type, as used in a CapabilityStatement.
func (k paramKind) String() string {
	switch k {
	case referenceParam:
		return "reference"
	case tokenParam:
		return "token"
	default:
		return "unknown"
	}
}

// elementParam is a search parameter that matches top-level elements of a resource.
type elementParam struct {
	name     string
	kind     paramKind
	elements []string // top-level elements searched; a match in any of them is a match
	// targetType, when set, is the only resource type a reference parameter may point to.
	targetType string
	// absentOn is a resource type on which the parameter never exists.
	absentOn string
}

// elementParams returns the reference and token parameters the server knows, sorted by name.
func elementParams() []elementParam {
	return []elementParam{
		// author and performer reach a patient's compartment as a second
		// parameter (DocumentReference, Observation): the export must search them.
		{name: "author", kind: referenceParam, elements: []string{"author"}},
		{name: "beneficiary", kind: referenceParam, elements: []string{"beneficiary"}, targetType: "Patient"},
		{name: "category", kind: tokenParam, elements: []string{"category"}},
		{name: "class", kind: tokenParam, elements: []string{"class"}},
		{name: "clinical-status", kind: tokenParam, elements: []string{"clinicalStatus"}},
		{name: "code", kind: tokenParam, elements: []string{"code"}},
		{name: "gender", kind: tokenParam, elements: []string{"gender"}},
		{name: "intent", kind: tokenParam, elements: []string{"intent"}},
		{name: "patient", kind: referenceParam, elements: []string{"patient", "subject"}, targetType: "Patient", absentOn: "Patient"},
		{name: "performer", kind: referenceParam, elements: []string{"performer"}},
		{name: "status", kind: tokenParam, elements: []string{"status"}},
		{name: "subject", kind: referenceParam, elements: []string{"subject"}},
		// target is Provenance's: the export's includeAssociatedData finds the
		// Provenance of the resources it returned with it.
		{name: "target", kind: referenceParam, elements: []string{"target"}},
		{name: "type", kind: tokenParam, elements: []string{"type"}},
	}
}

// reference is a parsed literal reference Type/id.
type reference struct {
	resourceType string
	id           string
}

// token is one code held by an element: a plain code (such as status) or a Coding.
type token struct {
	system    string
	code      string
	plainCode bool // the element is a bare code string, which has no explicit system
}

// searchElements holds the values of the searchable top-level elements of one resource,
// extracted once at load time.
type searchElements struct {
	references map[string][]reference // element name -> references
	tokens     map[string][]token     // element name -> codes
}

// has reports whether the resource has at least one value in any of the elements.
func (e searchElements) has(p elementParam) bool {
	for _, name := range p.elements {
		if len(e.references[name]) > 0 || len(e.tokens[name]) > 0 {
			return true
		}
	}
	return false
}

// extractSearchElements picks the searchable elements out of a resource's top-level fields.
func extractSearchElements(fields map[string]json.RawMessage) searchElements {
	// The maps are made only when needed: a 540 MB benchmark set has over
	// 400,000 resources, and empty maps are most of a resource's overhead.
	var elems searchElements
	for _, p := range elementParams() {
		for _, name := range p.elements {
			raw, ok := fields[name]
			if !ok {
				continue
			}
			switch p.kind {
			case referenceParam:
				if refs := parseReferenceElement(raw); len(refs) > 0 {
					if elems.references == nil {
						elems.references = map[string][]reference{}
					}
					elems.references[name] = refs
				}
			case tokenParam:
				if toks := parseTokenElement(raw); len(toks) > 0 {
					if elems.tokens == nil {
						elems.tokens = map[string][]token{}
					}
					elems.tokens[name] = toks
				}
			}
		}
	}
	return elems
}

// parseReferenceElement reads a Reference or an array of References, keeping the literal
// references it can resolve to Type/id.
func parseReferenceElement(raw json.RawMessage) []reference {
	type referenceJSON struct {
		Reference string `json:"reference"`
	}
	var many []referenceJSON
	if err := json.Unmarshal(raw, &many); err != nil {
		var one referenceJSON
		if err := json.Unmarshal(raw, &one); err != nil {
			return nil
		}
		many = []referenceJSON{one}
	}
	var refs []reference
	for _, r := range many {
		if ref, ok := parseLiteralReference(r.Reference); ok {
			refs = append(refs, ref)
		}
	}
	return refs
}

var (
	idPattern           = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)
	resourceTypePattern = regexp.MustCompile(`^[A-Z][A-Za-z]{1,63}$`)
)

// isValidID reports whether s is a valid FHIR logical id.
func isValidID(s string) bool { return idPattern.MatchString(s) }

// isValidResourceType reports whether s is shaped like a FHIR resource type name.
func isValidResourceType(s string) bool { return resourceTypePattern.MatchString(s) }

// parseLiteralReference parses "Type/id", "Type/id/_history/v" or an absolute URL ending
// in one of those. Contained ("#x") and urn: references do not resolve.
func parseLiteralReference(s string) (reference, bool) {
	if i := strings.Index(s, "/_history/"); i >= 0 {
		s = s[:i]
	}
	parts := strings.Split(s, "/")
	if len(parts) < 2 {
		return reference{}, false
	}
	if len(parts) > 2 && !strings.HasPrefix(s, "http://") && !strings.HasPrefix(s, "https://") {
		return reference{}, false
	}
	ref := reference{resourceType: parts[len(parts)-2], id: parts[len(parts)-1]}
	if !isValidResourceType(ref.resourceType) || !isValidID(ref.id) {
		return reference{}, false
	}
	return ref, true
}

// parseTokenElement reads a code string, a Coding, a CodeableConcept, or an array of those.
func parseTokenElement(raw json.RawMessage) []token {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil
	}
	return collectTokens(v, nil)
}

func collectTokens(v any, out []token) []token {
	switch x := v.(type) {
	case string:
		return append(out, token{code: x, plainCode: true})
	case []any:
		for _, item := range x {
			out = collectTokens(item, out)
		}
		return out
	case map[string]any:
		codings, isConcept := x["coding"].([]any)
		if !isConcept {
			return appendCoding(x, out)
		}
		for _, c := range codings {
			if coding, ok := c.(map[string]any); ok {
				out = appendCoding(coding, out)
			}
		}
		return out
	default:
		return out
	}
}

func appendCoding(coding map[string]any, out []token) []token {
	system, _ := coding["system"].(string)
	code, _ := coding["code"].(string)
	if system == "" && code == "" {
		return out
	}
	return append(out, token{system: system, code: code})
}
