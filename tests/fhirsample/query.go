package fhirsample

import (
	"fmt"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// searchQuery is a parsed, validated search on one resource type.
type searchQuery struct {
	filters      []resourceFilter // all must match
	pageSize     int
	summaryCount bool
	sortKeys     []sortKey
	// params are the accepted parameters, without _format, for self links and page tokens;
	// parsing them again yields the same query.
	params url.Values
	// What the indexes can use (index.go); filters still decide every match.
	lastUpdatedRanges []instantRange       // one per single-valued _lastUpdated occurrence
	references        []referenceNarrowing // one per reference parameter occurrence
}

// resourceFilter is one search parameter occurrence, its comma-separated values already ORed.
type resourceFilter func(*resource) bool

// sortKey is one _sort key.
type sortKey struct {
	field      string // "_id" or "_lastUpdated"
	descending bool
}

// pageLimits are the server's page size settings.
type pageLimits struct {
	defaultCount int
	maxCount     int
}

// unsupportedStandardParams are FHIR search and result parameters the server knows of but
// does not implement; they are rejected as unsupported rather than unknown.
func unsupportedStandardParams() []string {
	return []string{
		"_contained", "_containedType", "_content", "_elements", "_filter", "_has", "_include",
		"_list", "_profile", "_query", "_revinclude", "_security", "_source", "_tag", "_text",
		"_total", "_type",
	}
}

// parseSearchQuery validates the parameters of a search on rt. Parameters are visited in
// name order so that the first error reported is deterministic.
func parseSearchQuery(rt *resourceType, values url.Values, limits pageLimits) (searchQuery, error) {
	q := searchQuery{pageSize: limits.defaultCount, params: url.Values{}}
	for _, key := range slices.Sorted(maps.Keys(values)) {
		if err := q.addParam(rt, key, values[key], limits); err != nil {
			return searchQuery{}, err
		}
	}
	return q, nil
}

// addParam validates one parameter (all its occurrences) and adds it to the query.
func (q *searchQuery) addParam(rt *resourceType, key string, values []string, limits pageLimits) error {
	name, modifier, hasModifier := strings.Cut(key, ":")
	param, isElementParam := rt.params[name]
	if err := checkParamName(rt, name, isElementParam); err != nil {
		return err
	}
	if hasModifier {
		return notSupported("modifier %q on search parameter %q is not supported", ":"+modifier, name)
	}
	if err := checkValuesPresent(key, values); err != nil {
		return err
	}
	if name == "_format" {
		return checkFormats(values)
	}
	q.params[key] = slices.Clone(values)
	switch name {
	case "_count":
		return q.setPageSize(values, limits)
	case "_summary":
		return q.setSummary(values)
	case "_sort":
		return q.setSort(values)
	case "_id":
		return q.addFilters(values, idFilter)
	case "_lastUpdated":
		if err := q.addFilters(values, lastUpdatedFilter); err != nil {
			return err
		}
		for _, v := range values {
			if parts := splitUnescaped(v, ','); len(parts) == 1 {
				cond, _ := parseDateCondition(v) // valid: addFilters parsed it
				q.lastUpdatedRanges = append(q.lastUpdatedRanges, cond.bounds())
			}
		}
		return nil
	}
	switch param.kind {
	case referenceParam:
		if err := q.addFilters(values, func(v string) (resourceFilter, error) { return referenceFilter(param, v) }); err != nil {
			return err
		}
		for _, v := range values {
			n := referenceNarrowing{elements: param.elements}
			for _, part := range splitUnescaped(v, ',') {
				ref, _ := parseReferenceValue(param, part) // valid: addFilters parsed it
				n.ids = append(n.ids, ref.id)
			}
			q.references = append(q.references, n)
		}
		return nil
	case tokenParam:
		return q.addFilters(values, func(v string) (resourceFilter, error) { return tokenFilter(param, v) })
	default:
		return invalid("search parameter %q has no kind", name)
	}
}

// checkParamName rejects parameters that do not exist for the type.
func checkParamName(rt *resourceType, name string, isElementParam bool) error {
	switch name {
	case "_format", "_count", "_summary", "_sort", "_id", "_lastUpdated":
		return nil
	}
	if isElementParam {
		return nil
	}
	if slices.Contains(unsupportedStandardParams(), name) {
		return notSupported("search parameter %q is not supported by this server", name)
	}
	if isKnownElementParam(name) {
		return invalid("search parameter %q does not exist for resource type %s", name, rt.name)
	}
	return invalid("unknown search parameter %q for resource type %s", name, rt.name)
}

func isKnownElementParam(name string) bool {
	for _, p := range elementParams() {
		if p.name == name {
			return true
		}
	}
	return false
}

// checkValuesPresent rejects empty values.
func checkValuesPresent(key string, values []string) error {
	for _, v := range values {
		if v == "" {
			return invalid("search parameter %q has an empty value", key)
		}
	}
	return nil
}

// checkFormats accepts only JSON formats; a "+" decoded as a space is tolerated.
func checkFormats(values []string) error {
	for _, v := range values {
		if !isJSONMediaType(strings.ReplaceAll(v, " ", "+")) {
			return &requestError{
				status:      http.StatusNotAcceptable,
				code:        "not-supported",
				diagnostics: fmt.Sprintf("_format %q is not supported: this server speaks application/fhir+json only", v),
			}
		}
	}
	return nil
}

// isJSONMediaType reports whether a _format value or media type names FHIR JSON.
func isJSONMediaType(value string) bool {
	mediaType, _, err := mime.ParseMediaType(value)
	if err != nil {
		mediaType = strings.ToLower(strings.TrimSpace(value))
	}
	switch mediaType {
	case "json", "application/json", "application/fhir+json", "application/json+fhir":
		return true
	default:
		return false
	}
}

func (q *searchQuery) setPageSize(values []string, limits pageLimits) error {
	if len(values) != 1 {
		return invalid("_count may appear only once")
	}
	n, err := strconv.Atoi(values[0])
	if err != nil || n < 0 || strings.TrimLeft(values[0], "0123456789") != "" {
		return invalid("_count %q is not a non-negative integer", values[0])
	}
	q.pageSize = min(n, limits.maxCount)
	return nil
}

func (q *searchQuery) setSummary(values []string) error {
	if len(values) != 1 {
		return invalid("_summary may appear only once")
	}
	switch values[0] {
	case "count":
		q.summaryCount = true
		return nil
	case "false":
		return nil
	case "true", "text", "data":
		return notSupported("_summary=%s is not supported (use count or false)", values[0])
	default:
		return invalid("_summary %q is not one of true, text, data, count, false", values[0])
	}
}

func (q *searchQuery) setSort(values []string) error {
	if len(values) != 1 {
		return invalid("_sort may appear only once")
	}
	for _, field := range strings.Split(values[0], ",") {
		key := sortKey{field: field}
		key.field, key.descending = strings.CutPrefix(field, "-")
		if key.field != "_lastUpdated" && key.field != "_id" {
			return notSupported("_sort by %q is not supported (use _lastUpdated or _id, optionally prefixed with -)", field)
		}
		q.sortKeys = append(q.sortKeys, key)
	}
	return nil
}

// addFilters adds one filter per occurrence of a parameter (AND); each occurrence's
// comma-separated values are ORed.
func (q *searchQuery) addFilters(values []string, parse func(string) (resourceFilter, error)) error {
	for _, value := range values {
		var alternatives []resourceFilter
		for _, part := range splitUnescaped(value, ',') {
			if part == "" {
				return invalid("empty item in the list %q", value)
			}
			f, err := parse(part)
			if err != nil {
				return err
			}
			alternatives = append(alternatives, f)
		}
		q.filters = append(q.filters, anyOf(alternatives))
	}
	return nil
}

func anyOf(filters []resourceFilter) resourceFilter {
	return func(res *resource) bool {
		for _, f := range filters {
			if f(res) {
				return true
			}
		}
		return false
	}
}

func idFilter(value string) (resourceFilter, error) {
	if !isValidID(value) {
		return nil, invalid("_id %q is not a valid id", value)
	}
	return func(res *resource) bool { return res.id == value }, nil
}

func lastUpdatedFilter(value string) (resourceFilter, error) {
	cond, err := parseDateCondition(value)
	if err != nil {
		return nil, invalid("_lastUpdated: %v", err)
	}
	return func(res *resource) bool { return cond.matches(res.lastUpdated) }, nil
}

// referenceFilter matches a reference parameter value: id, Type/id or an absolute URL
// ending in Type/id. A bare id matches any type the parameter may refer to.
func referenceFilter(param elementParam, value string) (resourceFilter, error) {
	want, err := parseReferenceValue(param, value)
	if err != nil {
		return nil, err
	}
	return func(res *resource) bool {
		for _, element := range param.elements {
			for _, ref := range res.elements.references[element] {
				if referenceMatches(param, want, ref) {
					return true
				}
			}
		}
		return false
	}, nil
}

func parseReferenceValue(param elementParam, value string) (reference, error) {
	if isValidID(value) {
		return reference{resourceType: param.targetType, id: value}, nil
	}
	ref, ok := parseLiteralReference(value)
	if !ok {
		return reference{}, invalid("%s %q is not an id, Type/id or absolute URL ending in Type/id", param.name, value)
	}
	if param.targetType != "" && ref.resourceType != param.targetType {
		return reference{}, invalid("%s refers to %s only, not %s", param.name, param.targetType, ref.resourceType)
	}
	return ref, nil
}

func referenceMatches(param elementParam, want, got reference) bool {
	if param.targetType != "" && got.resourceType != param.targetType {
		return false
	}
	return got.id == want.id && (want.resourceType == "" || want.resourceType == got.resourceType)
}

// tokenQuery is one token search value: code, system|code, |code or system|.
type tokenQuery struct {
	system      string
	code        string // empty: any code in system
	systemGiven bool   // false: any system
}

func parseTokenValue(value string) (tokenQuery, error) {
	parts := splitUnescaped(value, '|')
	switch len(parts) {
	case 1:
		return tokenQuery{code: unescapeSearchValue(parts[0])}, nil
	case 2:
		q := tokenQuery{system: unescapeSearchValue(parts[0]), code: unescapeSearchValue(parts[1]), systemGiven: true}
		if q.system == "" && q.code == "" {
			return tokenQuery{}, invalid("token %q has neither system nor code", value)
		}
		return q, nil
	default:
		return tokenQuery{}, invalid("token %q has more than one unescaped '|'", value)
	}
}

// matches reports whether a stored code satisfies the token. A plain code element has no
// explicit system, so it matches "code" and "|code" but never "system|code".
func (q tokenQuery) matches(t token) bool {
	if t.plainCode {
		return q.code == t.code && (!q.systemGiven || q.system == "")
	}
	if q.systemGiven && q.system != t.system {
		return false
	}
	return q.code == "" || q.code == t.code
}

func tokenFilter(param elementParam, value string) (resourceFilter, error) {
	want, err := parseTokenValue(value)
	if err != nil {
		return nil, invalid("%s: %v", param.name, err)
	}
	return func(res *resource) bool {
		for _, element := range param.elements {
			for _, t := range res.elements.tokens[element] {
				if want.matches(t) {
					return true
				}
			}
		}
		return false
	}, nil
}

// splitUnescaped splits s at every sep not escaped with a backslash; parts keep their escapes.
func splitUnescaped(s string, sep byte) []string {
	var parts []string
	start := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case sep:
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	return append(parts, s[start:])
}

// unescapeSearchValue removes FHIR search escapes: "\," "\|" "\$" "\\".
func unescapeSearchValue(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
