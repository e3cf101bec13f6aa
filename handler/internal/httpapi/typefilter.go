package httpapi

import (
	"fmt"
	"maps"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fhir"
)

// filterStart matches the beginning of one _typeFilter query: a resource
// type name followed by '?' (or its encoding, for a double-encoded query).
var filterStart = regexp.MustCompile(`^[A-Z][A-Za-z]*(\?|%3[Ff])`)

// searchParamName is the name of a type's own search parameter
// (general-practitioner, value-quantity) and of a modifier (code:in,
// subject:Patient).
var searchParamName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9\-]*$`)

// allowedUnderscoreParams are the parameters for all resources that select
// resources. Everything else that starts with '_' is refused: the result
// parameters (_include, _sort, _count, _elements, _summary, _total, ...)
// shape a result page, which our paging must control, and _query, _type,
// _offset and _getpagesoffset would run another search or skip part of
// this one. An allow-list, so a parameter a source adds later cannot slip
// through.
var allowedUnderscoreParams = map[string]bool{
	"_id": true, "_lastUpdated": true, "_tag": true, "_profile": true, "_security": true,
	"_source": true, "_list": true, "_has": true, "_text": true, "_content": true, "_language": true,
}

// resultParams are the search result parameters the IG names: refused with
// a message that says why.
var resultParams = map[string]bool{
	"_include": true, "_revinclude": true, "_sort": true, "_elements": true, "_count": true,
	"_summary": true, "_contained": true, "_containedType": true, "_format": true, "_total": true,
}

// Limits on _typeFilter, checked before anything else is done with the
// request: every query is one search per type (or per patient batch) on the
// source, and the queries are stored in the job's table row.
const (
	// maxTypeFilters is the most _typeFilter queries a kick-off may carry.
	maxTypeFilters = 50
	// maxTypeFilterBytes is the most bytes all _typeFilter values may hold
	// together.
	maxTypeFilterBytes = 16 << 10
)

// checkFilterParam checks one parameter name of a _typeFilter query, with
// its modifiers and chains: subject:Patient.name checks subject (modifier
// Patient) and then name; _has:Observation:patient:code checks the type
// Observation, the reference patient and the parameter code.
func checkFilterParam(name string) error {
	for seg := range strings.SplitSeq(name, ".") {
		base, mod, hasMod := strings.Cut(seg, ":")
		switch {
		case base == "_has":
			typ, rest, ok1 := strings.Cut(mod, ":")
			ref, param, ok2 := strings.Cut(rest, ":")
			if !hasMod || !ok1 || !ok2 || !fhir.IsResourceType(typ) || !searchParamName.MatchString(ref) {
				return fmt.Errorf("%s must look like _has:Type:reference:parameter", clip(seg))
			}
			if err := checkFilterParam(param); err != nil {
				return err
			}
			continue
		case resultParams[base]:
			return fmt.Errorf("%s is a result parameter (like _include, _sort, _elements, _count and _summary), which cannot be used in a _typeFilter", base)
		case strings.HasPrefix(base, "_") && !allowedUnderscoreParams[base]:
			return fmt.Errorf("%s cannot be used in a _typeFilter (allowed: the type's search parameters and %s)", clip(base), allowedUnderscoreList)
		case !strings.HasPrefix(base, "_") && !searchParamName.MatchString(base):
			return fmt.Errorf("%q is not a search parameter name", clip(base))
		}
		if hasMod && !searchParamName.MatchString(mod) {
			return fmt.Errorf("%q is not a search parameter modifier", clip(mod))
		}
	}
	return nil
}

// allowedUnderscoreList names allowedUnderscoreParams in a stable order for
// error messages.
var allowedUnderscoreList = func() string {
	names := slices.Sorted(maps.Keys(allowedUnderscoreParams))
	return strings.Join(names, ", ")
}()

// parseTypeFilters parses every _typeFilter value (each may be a v2
// comma-joined list) into filters, in order and without duplicates. types is
// the request's _type list; when it is not empty every filter's type must be
// in it.
//
// The limits on their number and size are checked first, so that an
// oversized request costs no parsing.
func parseTypeFilters(values []string, level export.Level, types []string) ([]export.TypeFilter, error) {
	if len(values) > maxTypeFilters {
		return nil, tooManyFilters(len(values))
	}
	size, count := 0, 0
	for _, v := range values {
		size += len(v)
	}
	if size > maxTypeFilterBytes {
		return nil, invalid("too-long", "the _typeFilter values hold %d bytes, more than the %d this server accepts", size, maxTypeFilterBytes)
	}
	var out []export.TypeFilter
	for _, v := range values {
		if strings.TrimSpace(v) == "" {
			return nil, invalid("value", "_typeFilter has an empty value")
		}
		parts := splitTypeFilter(v)
		if count += len(parts); count > maxTypeFilters {
			return nil, tooManyFilters(count)
		}
		for _, part := range parts {
			f, err := parseTypeFilter(part, level)
			if err != nil {
				return nil, err
			}
			if len(types) > 0 && !slices.Contains(types, f.Type) {
				return nil, invalid("value", "_typeFilter %q filters %s, which is not in _type", clip(part), f.Type)
			}
			if !slices.Contains(out, f) {
				out = append(out, f)
			}
		}
	}
	return out, nil
}

func tooManyFilters(n int) error {
	return invalid("too-long", "the kick-off has %d or more _typeFilter queries, more than the %d this server accepts", n, maxTypeFilters)
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
			return export.TypeFilter{}, invalid("value", "_typeFilter %q is not correctly percent-encoded: %v", clip(orig), err)
		}
		part = d
	}
	typ, query, ok := strings.Cut(part, "?")
	if !ok || typ == "" {
		return export.TypeFilter{}, invalid("value", "_typeFilter %q must look like Type?name=value", clip(orig))
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
			return export.TypeFilter{}, invalid("value", "_typeFilter %q is not correctly percent-encoded", clip(orig))
		case !ok || name == "" || value == "":
			return export.TypeFilter{}, invalid("value", "_typeFilter %q: %q is not a name=value search parameter", clip(orig), clip(pair))
		}
		if err := checkFilterParam(name); err != nil {
			return export.TypeFilter{}, invalid("not-supported", "_typeFilter %q: %v", clip(orig), err)
		}
		pairs = append(pairs, name+"="+url.QueryEscape(value))
	}
	if len(pairs) == 0 {
		return export.TypeFilter{}, invalid("value", "_typeFilter %q has no search parameters after '?'", clip(orig))
	}
	return export.TypeFilter{Type: typ, Query: strings.Join(pairs, "&")}, nil
}
