package httpapi

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/azfhir/bulkexport/handler/internal/fhir"
)

// maxElements caps the distinct _elements entries of one kick-off; R4's
// largest resources have fewer than 100 top-level elements.
const maxElements = 200

// elementNamePattern is a FHIR element name as it appears in JSON: a lower
// case letter, then letters and digits (valueQuantity, birthDate).
var elementNamePattern = regexp.MustCompile(`^[a-z][A-Za-z0-9]{0,63}$`)

// parseElements validates _elements values (comma-separated, repeatable):
// each entry is "name", for every type, or "Type.name", for that R4 type
// only, and names a top-level element (the IG allows no deeper paths). A
// malformed entry is a 400 naming it, or under handling=lenient is left out
// with a warning, as an unsupported parameter is. The entries come back in
// order, without repeats.
func parseElements(values []string, lenient bool) (elements, warnings []string, err error) {
	for _, v := range values {
		if strings.Trim(v, ", \t") == "" {
			if !lenient {
				return nil, nil, invalid("value", "_elements has an empty value")
			}
			warnings = append(warnings, "_elements has an empty value and was ignored")
			continue
		}
		for e := range strings.SplitSeq(v, ",") {
			e = strings.TrimSpace(e)
			if e == "" || slices.Contains(elements, e) {
				continue
			}
			if problem := elementProblem(e); problem != "" {
				if !lenient {
					return nil, nil, invalid("value", "_elements: %q %s", clip(e), problem)
				}
				warnings = append(warnings, fmt.Sprintf("_elements: %q %s; it was ignored", clip(e), problem))
				continue
			}
			if len(elements) == maxElements {
				return nil, nil, invalid("too-long", "_elements names more than %d elements", maxElements)
			}
			elements = append(elements, e)
		}
	}
	return elements, warnings, nil
}

// elementProblem says what is wrong with one _elements entry, or "".
func elementProblem(e string) string {
	typ, name, qualified := strings.Cut(e, ".")
	if !qualified {
		name = typ
	}
	switch {
	case qualified && typ != "" && 'a' <= typ[0] && typ[0] <= 'z':
		return "is not a top-level element (only Type.element or element are allowed)" // code.coding
	case qualified && !fhir.IsResourceType(typ):
		return fmt.Sprintf("does not start with a FHIR R4 resource type (%q is not one)", clip(typ))
	case strings.Contains(name, "."):
		return "is not a top-level element (only Type.element or element are allowed)"
	case !elementNamePattern.MatchString(name):
		return "is not a FHIR element name (a lower-case letter, then letters and digits)"
	}
	return ""
}
