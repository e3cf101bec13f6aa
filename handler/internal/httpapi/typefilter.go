package httpapi

import (
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/azfhir/bulkexport/handler/internal/export"
)

// filterStart matches the beginning of one _typeFilter query: a resource
// type name followed by '?' (or its encoding, for a double-encoded query).
var filterStart = regexp.MustCompile(`^[A-Z][A-Za-z]*(\?|%3[Ff])`)

// filterParamName is a search parameter name, with modifiers and chains
// (code:in, subject:Patient.name, _has:Observation:patient:code).
var filterParamName = regexp.MustCompile(`^[A-Za-z0-9_\-.:]+$`)

// forbiddenFilterParams are search result parameters: they shape a result
// page rather than select resources, and the IG forbids _include and _sort
// (and v3 _elements) in a _typeFilter.
var forbiddenFilterParams = map[string]bool{
	"_include": true, "_revinclude": true, "_sort": true, "_elements": true,
	"_count": true, "_summary": true, "_contained": true, "_containedType": true, "_format": true,
}

// parseTypeFilters parses every _typeFilter value (each may be a v2
// comma-joined list) into filters, in order and without duplicates. types is
// the request's _type list; when it is not empty every filter's type must be
// in it.
func parseTypeFilters(values []string, level export.Level, types []string) ([]export.TypeFilter, error) {
	var out []export.TypeFilter
	for _, v := range values {
		if strings.TrimSpace(v) == "" {
			return nil, invalid("value", "_typeFilter has an empty value")
		}
		for _, part := range splitTypeFilter(v) {
			f, err := parseTypeFilter(part, level)
			if err != nil {
				return nil, err
			}
			if len(types) > 0 && !slices.Contains(types, f.Type) {
				return nil, invalid("value", "_typeFilter %q filters %s, which is not in _type", part, f.Type)
			}
			if !slices.Contains(out, f) {
				out = append(out, f)
			}
		}
	}
	return out, nil
}

// splitTypeFilter splits a comma-joined _typeFilter value only at commas
// that start a new "Type?" query, because search values may themselves
// contain commas (Observation?code=a,b means code a or b).
func splitTypeFilter(v string) []string {
	var out []string
	for i, piece := range strings.Split(v, ",") {
		trimmed := strings.TrimSpace(piece)
		switch {
		case i == 0 || filterStart.MatchString(trimmed) || len(out) == 0:
			out = append(out, trimmed)
		case trimmed == "":
			// an empty item between queries, as in "A?x=1,,B?y=2"
		default:
			out[len(out)-1] += "," + piece
		}
	}
	for i := range out {
		out[i] = strings.TrimSpace(out[i])
	}
	return out
}

// parseTypeFilter parses one "Type?name=value&..." query. A query that
// arrives still percent-encoded (Observation%3Fstatus%3Dfinal) is decoded
// once. The returned Query is re-encoded canonically: names as given, values
// query-escaped, pairs in the client's order.
//
// Inside the query, '+' means a space, as in any URL query: the source sees
// exactly what it would if the client had sent Type?query to it directly.
func parseTypeFilter(part string, level export.Level) (export.TypeFilter, error) {
	orig := part
	if !strings.Contains(part, "?") && strings.Contains(strings.ToLower(part), "%3f") {
		d, err := url.PathUnescape(part)
		if err != nil {
			return export.TypeFilter{}, invalid("value", "_typeFilter %q is not correctly percent-encoded: %v", orig, err)
		}
		part = d
	}
	typ, query, ok := strings.Cut(part, "?")
	if !ok || typ == "" {
		return export.TypeFilter{}, invalid("value", "_typeFilter %q must look like Type?name=value", orig)
	}
	if err := checkType(paramTypeFilter, typ, level); err != nil {
		return export.TypeFilter{}, err
	}
	var pairs []string
	for pair := range strings.SplitSeq(query, "&") {
		if pair == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		name, err1 := url.QueryUnescape(k)
		value, err2 := url.QueryUnescape(v)
		switch {
		case err1 != nil || err2 != nil:
			return export.TypeFilter{}, invalid("value", "_typeFilter %q is not correctly percent-encoded", orig)
		case !ok || name == "" || value == "":
			return export.TypeFilter{}, invalid("value", "_typeFilter %q: %q is not a name=value search parameter", orig, pair)
		case !filterParamName.MatchString(name):
			return export.TypeFilter{}, invalid("value", "_typeFilter %q: %q is not a search parameter name", orig, name)
		}
		base, _, _ := strings.Cut(name, ":")
		if forbiddenFilterParams[base] {
			return export.TypeFilter{}, invalid("not-supported", "_typeFilter %q: %s is not allowed in a _typeFilter (result parameters such as _include, _sort, _elements, _count and _summary cannot be used)", orig, base)
		}
		pairs = append(pairs, name+"="+url.QueryEscape(value))
	}
	if len(pairs) == 0 {
		return export.TypeFilter{}, invalid("value", "_typeFilter %q has no search parameters after '?'", orig)
	}
	return export.TypeFilter{Type: typ, Query: strings.Join(pairs, "&")}, nil
}
