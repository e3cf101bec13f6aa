package export

import (
	"net/url"
	"strconv"
	"strings"

	"github.com/azfhir/bulkexport/handler/internal/fhir"
)

// boundsQuery is the part of every search that pins the data to the job:
// last updated after _since (when given) and up to the transaction time.
func boundsQuery(job *Job) url.Values {
	q := url.Values{}
	if job.Request.Since != nil {
		q.Add("_lastUpdated", "gt"+fhir.FormatInstant(*job.Request.Since))
	}
	q.Add("_lastUpdated", "le"+fhir.FormatInstant(job.TransactionTime))
	return q
}

// filterQueries returns the _typeFilter queries of type t, or one empty query
// when t is unfiltered. Queries of one type are OR-ed.
func filterQueries(job *Job, t string) []string {
	var out []string
	for _, f := range job.Request.TypeFilters {
		if f.Type == t {
			out = append(out, f.Query)
		}
	}
	if len(out) == 0 {
		return []string{""}
	}
	return out
}

// searchQuery builds the query of one search of an item: bounds, page size,
// one filter query and, for Patient/Group exports, the compartment parameter
// with a batch of member ids.
func searchQuery(job *Job, t, filter string, members []string, pageSize int) string {
	q := boundsQuery(job)
	if pageSize > 0 {
		q.Set("_count", strconv.Itoa(pageSize))
	}
	q.Set("_sort", "_lastUpdated")
	if members != nil {
		param, values := compartmentParam(t, members)
		q.Set(param, values)
	}
	enc := q.Encode()
	if filter != "" {
		enc = filter + "&" + enc
	}
	return enc
}

// compartmentParam returns the search parameter and value that find the
// resources of type t in the compartments of the given patients.
func compartmentParam(t string, members []string) (string, string) {
	link, _ := fhir.PatientCompartment(t)
	if link.Param == "_id" {
		return "_id", strings.Join(members, ",")
	}
	refs := make([]string, len(members))
	for i, id := range members {
		refs[i] = "Patient/" + id
	}
	return link.Param, strings.Join(refs, ",")
}
