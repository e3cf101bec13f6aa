// Package fhirsample is a small, strict, read-only FHIR R4 server for tests and local runs.
//
// It serves a folder of NDJSON files, one per resource type (<Type>.ndjson, one resource
// per line), loaded into memory at start. It stands in for a real FHIR server in the
// end-to-end tests of the Bulk Data $export service, which pages through it with standard
// FHIR search, so it answers the way a strict real server would: anything it does not
// understand is an error, never silently ignored.
//
// Interactions (JSON only; every response has Content-Type application/fhir+json):
//
//	GET  {base}/metadata            CapabilityStatement listing the loaded types and their search parameters
//	GET  {base}/{Type}/{id}         read: the stored line, byte for byte; 404 OperationOutcome if unknown
//	GET  {base}/{Type}?params       search: Bundle of type searchset
//	POST {base}/{Type}/_search      search with an application/x-www-form-urlencoded body
//	GET  {base}/{Type}/_history     history (and {Type}/{id}/_history): current versions and the
//	                                deletions the server was started with (Options.Deletions); see history.go
//
// Search parameters, all combined with AND (a repeated parameter is AND too); comma-separated
// values within one parameter are OR:
//
//   - _id: resource ids.
//   - _lastUpdated: prefixes eq (default), gt, ge, lt, le against meta.lastUpdated. A value with
//     fractional seconds is an exact instant; coarser values (year, month, day, second) stand for
//     the whole period, a date without time in UTC, following FHIR's precision rules. A "+" in the
//     zone offset that arrived decoded as a space is accepted.
//   - patient, subject, beneficiary, performer, author, target: reference parameters matching the
//     top-level element of the same name (patient also looks at subject), a Reference or an array
//     of References. Values are id, Type/id or an absolute URL ending in Type/id; a stored
//     reference matches whether it is relative, versioned (Type/id/_history/v) or absolute. Type
//     and id are both compared (a bare id matches any type); patient and beneficiary only target
//     Patient. target (Provenance.target) serves the export's includeAssociatedData.
//   - code, status, category, clinical-status (element clinicalStatus), type, gender, intent, class:
//     token parameters, values code, system|code, |code or system|, matched against a plain code,
//     a Coding, a CodeableConcept or an array of those.
//
// A reference or token parameter exists for a type when at least one loaded resource of that
// type has its element; the CapabilityStatement lists them. Unknown parameters, modifiers
// (:not, :missing, ...), chains, _elements, _include and friends are answered with 400 and an
// OperationOutcome naming the parameter. An unknown resource type is 404.
//
// Result parameters: _count (default Options.DefaultCount, capped at Options.MaxCount; 0 returns
// no entries), _summary=count (no entries) and _summary=false (the default), _sort with keys
// _lastUpdated and _id, each optionally prefixed with "-"; ties are broken by id, so the order is
// total. Without _sort the order is file order. _format may be json, application/json or
// application/fhir+json. Every searchset Bundle carries total, the number of matches.
//
// Paging: the Bundle has a self link and, while results remain, a next link. Both are absolute
// URLs built from the request's Host header. The next link carries an opaque token that encodes
// the search and the offset, bound to the Server instance: a token from another instance (as
// after a restart) answers 410 Gone. Offsets are stable because the data never changes.
//
// Cost: searches run on indexes built at load time (index.go): per type the resources sorted by
// (_lastUpdated, id), from which a search sorted by _lastUpdated takes the slice its _lastUpdated
// conditions admit by binary search, and per reference element a map from referenced id to
// resources. The matches of recent searches are cached, so a next link or a _summary=count costs
// about its page, not the size of the type, and each resource's entry is pre-serialized, so a page
// is assembled by concatenation. In the benchmarks the server spends less CPU than the service.
//
// Options.SearchDelay (fhir-sample -search-delay) adds latency to every search request, as a
// remote server's would. Failure injection (Server.FailNext, Server.ExpireLinks,
// Server.SetSearchDelay) is available only when Options.FailureInjection is set.
// Server.Requests counts requests served.
package fhirsample
