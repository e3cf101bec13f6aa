package export

import (
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/fhir"
)

// boundsQuery is the part of every search that pins the data to the job:
// last updated after _since (when given) and up to the transaction time, or
// up to _until when that is earlier.
func boundsQuery(job *Job) url.Values {
	q := url.Values{}
	if job.Request.Since != nil {
		q.Add("_lastUpdated", "gt"+fhir.FormatInstant(*job.Request.Since))
	}
	q.Add("_lastUpdated", "le"+fhir.FormatInstant(upperBound(job)))
	return q
}

// upperBound is the latest lastUpdated the job exports: the transaction
// time, or _until when the client asked for an earlier one. A later _until
// changes nothing: data past the transaction time may still be in flight.
func upperBound(job *Job) time.Time {
	if u := job.Request.Until; u != nil && u.Before(job.TransactionTime) {
		return *u
	}
	return job.TransactionTime
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
// one filter query and, for Patient/Group exports, one compartment parameter
// with a batch of member ids.
func searchQuery(job *Job, filter, param string, members []string, pageSize int) string {
	q := boundsQuery(job)
	if pageSize > 0 {
		q.Set("_count", strconv.Itoa(pageSize))
	}
	q.Set("_sort", "_lastUpdated")
	if members != nil {
		q.Set(param, compartmentValue(param, members))
	}
	enc := q.Encode()
	if filter != "" {
		enc = filter + "&" + enc
	}
	return enc
}

// compartmentValue returns the value of compartment parameter param that
// finds the resources in the compartments of the given patients: their ids
// for _id, else references to them.
func compartmentValue(param string, members []string) string {
	if param == "_id" {
		return strings.Join(members, ",")
	}
	refs := make([]string, len(members))
	for i, id := range members {
		refs[i] = "Patient/" + id
	}
	return strings.Join(refs, ",")
}

// itemParams returns the compartment parameters a Patient/Group work item
// searches: those the plan fixed. An item planned before the plan fixed them
// searches only the first, as it did when it was planned (it may be half
// way through that search, and the source may not support the others).
func itemParams(item *WorkItem) []fhir.CompartmentParam {
	all, _ := fhir.PatientCompartment(item.Type)
	if item.Params == nil {
		return all[:min(1, len(all))]
	}
	var out []fhir.CompartmentParam
	for _, name := range item.Params {
		for _, p := range all {
			if p.Name == name {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

// compartmentParams splits the Patient compartment parameters of type t into
// those to search and those skipped because the source's CapabilityStatement
// does not list them for t (supported). _id is common to every type and is
// always searched; a type the statement lists no parameters for at all says
// nothing about them, so every parameter is searched (a refused search then
// fails the item with its cause instead of being guessed around).
func compartmentParams(t string, supported []string) (search, skipped []string) {
	all, _ := fhir.PatientCompartment(t)
	for _, p := range all {
		if p.Name == "_id" || len(supported) == 0 || slices.Contains(supported, p.Name) {
			search = append(search, p.Name)
		} else {
			skipped = append(skipped, p.Name)
		}
	}
	return search, skipped
}
