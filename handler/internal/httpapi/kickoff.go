package httpapi

import (
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/fhir"
)

// kickOff answers GET|POST [base]/$export, /Patient/$export and
// /Group/{id}/$export: it validates the request, starts the job and answers
// 202 with the absolute polling URL in Content-Location.
func (s *server) kickOff(w http.ResponseWriter, r *http.Request, rt route) error {
	if n := len(r.URL.RawQuery); n > maxQueryBytes {
		return queryTooLong(n)
	}
	if err := checkAccept(r.Header.Values("Accept")); err != nil {
		return err
	}
	// Prefer: respond-async is the only mode we have. A missing Prefer, or
	// one without respond-async, is treated as respond-async: the IG lets a
	// server assume it, and refusing would only break lax clients.
	lenient := preferLenient(r.Header.Values("Prefer"))
	if rt.level == export.LevelGroup && !validFHIRID(rt.groupID) {
		return invalid("value", "Group id %q is not a valid FHIR id (1-64 characters of A-Z, a-z, 0-9, '-' and '.', not only dots)", clip(rt.groupID))
	}
	params, err := queryParams(r.URL.RawQuery)
	if err != nil {
		return err
	}
	if r.Method == http.MethodPost {
		body, err := bodyParams(w, r)
		if err != nil {
			return err
		}
		params = append(params, body...)
	}
	req, err := s.buildRequest(rt, params, lenient)
	if err != nil {
		return err
	}
	stateOf(r.Context()).types = req.Types // what was asked, if refused
	if err := authorize(r, &req); err != nil {
		return err
	}
	stateOf(r.Context()).types = req.Types // what will be exported
	base := s.baseURL(r)
	req.RequestURL = base + rt.path
	if r.URL.RawQuery != "" {
		req.RequestURL += "?" + r.URL.RawQuery
	}

	job, err := s.engine.KickOff(r.Context(), req)
	if err != nil {
		return err
	}
	if job == nil || job.ID == "" {
		return fault.New(fault.Internal, "the engine returned no job id")
	}
	stateOf(r.Context()).job = job.ID
	w.Header().Set("Content-Location", base+"/jobs/"+url.PathEscape(job.ID))
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// authorize checks that the caller may export what req asks for, and makes
// the caller the job's owner. A token with SMART type scopes (and not the
// app role) may name only those types in _type and _typeFilter (403
// otherwise); without _type it exports just those types, as far as the
// export level has them.
func authorize(r *http.Request, req *export.Request) error {
	st := stateOf(r.Context())
	if st.owner == "" {
		return fault.New(fault.Internal, "kick-off without an authenticated caller")
	}
	p := st.principal
	named := slices.Clone(req.Types)
	for _, f := range req.TypeFilters {
		named = append(named, f.Type)
	}
	if err := p.CanExport(named); err != nil {
		return err
	}
	if all, allowed := p.AllowedTypes(); !all && len(req.Types) == 0 {
		for _, t := range allowed {
			if checkType("scope", t, req.Level) == nil {
				req.Types = append(req.Types, t)
			}
		}
		if len(req.Types) == 0 {
			return fault.New(fault.Forbidden, "the access token's scopes cover no type a %s-level export can hold", req.Level)
		}
	}
	req.Owner = st.owner
	return nil
}

// acceptable are the Accept media ranges under which we answer: the IG
// defines only application/fhir+json, and we treat the generic JSON types
// (and application/json+fhir of older clients) as the same thing.
var acceptable = map[string]bool{
	"*/*": true, "application/*": true, "application/json": true,
	"application/fhir+json": true, "application/json+fhir": true,
}

// checkAccept accepts a missing Accept header or a list that holds at least
// one acceptable media range with a q-value above zero.
func checkAccept(lines []string) error {
	var seen []string
	for _, line := range lines {
		for item := range strings.SplitSeq(line, ",") {
			item = strings.TrimSpace(item)
			if item == "" {
				continue
			}
			mt, params, _ := strings.Cut(item, ";")
			mt = strings.ToLower(strings.TrimSpace(mt))
			seen = append(seen, mt)
			if acceptable[mt] && qValue(params) > 0 {
				return nil
			}
		}
	}
	if len(seen) == 0 {
		return nil
	}
	return invalid("not-supported", "Accept header %q: the kick-off answers only application/fhir+json", clip(strings.Join(lines, ", ")))
}

// qValue returns the q parameter of a media range's parameters (1 when absent).
func qValue(params string) float64 {
	for p := range strings.SplitSeq(params, ";") {
		k, v, ok := strings.Cut(p, "=")
		if ok && strings.EqualFold(strings.TrimSpace(k), "q") {
			q, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return 0
			}
			return q
		}
	}
	return 1
}

// preferLenient parses Prefer as a comma-separated, case-insensitive list of
// preferences over any number of header lines and reports whether
// handling=lenient applies. Unknown preferences are ignored; as RFC 7240
// says, the first handling preference wins; handling=strict is the default.
func preferLenient(lines []string) bool {
	for _, line := range lines {
		for item := range strings.SplitSeq(line, ",") {
			pref, _, _ := strings.Cut(item, ";") // drop preference parameters
			name, value, _ := strings.Cut(pref, "=")
			if !strings.EqualFold(strings.TrimSpace(name), "handling") {
				continue
			}
			value = strings.Trim(strings.TrimSpace(value), `"`)
			return strings.EqualFold(value, "lenient")
		}
	}
	return false
}

// Kick-off parameters we implement.
const (
	paramOutputFormat = "_outputFormat"
	paramSince        = "_since"
	paramUntil        = "_until"
	paramType         = "_type"
	paramTypeFilter   = "_typeFilter"
	paramContainer    = "_container"
	paramElements     = "_elements"
	paramPatient      = "patient"

	paramAllowPartialManifests = "allowPartialManifests"
	paramIncludeAssociatedData = "includeAssociatedData"

	// De-identified export, with Azure's names: a configuration blob in the
	// anonymization container and, optionally, the ETag it must have.
	paramAnonymizationConfig     = "_anonymizationConfig"
	paramAnonymizationConfigEtag = "_anonymizationConfigEtag"
	// Azure's configuration in a container registry image, which this
	// server does not read (see buildRequest).
	paramAnonymizationCollection = "_anonymizationConfigCollectionReference"
)

// maxPatients caps the patient parameter: the ids are kept in the job's
// row, and a client wanting more patients exports a Group.
const maxPatients = 1000

// buildRequest validates the parameters and builds the engine's request.
func (s *server) buildRequest(rt route, params []param, lenient bool) (export.Request, error) {
	req := export.Request{Level: rt.level, OutputFormat: "application/fhir+ndjson", Container: s.container}
	if rt.level == export.LevelGroup {
		req.GroupID = rt.groupID
	}

	// Parameters we don't implement come first: strict mode names them in a
	// 400 so the client can resubmit without them; lenient mode ignores them
	// and says so in the job's warnings. Never does a filter pass silently.
	byName := map[string][]param{}
	for _, p := range params {
		if knownParam(p.name) { // kickOffParams
			if p.err != nil {
				return req, p.err
			}
			byName[p.name] = append(byName[p.name], p)
			continue
		}
		name := p.name
		if name == "" {
			name = "(empty name)"
		}
		if name == paramAnonymizationCollection {
			// Refused even under handling=lenient: ignoring it would export
			// data that is not de-identified to a client that asked for it.
			return req, invalid("not-supported", "parameter %s is not supported: configurations in a container registry cannot be read here; "+
				"upload the configuration to the anonymization container of the export account and name it in %s", name, paramAnonymizationConfig)
		}
		if !lenient {
			return req, invalid("not-supported", "parameter %s is not supported (send Prefer: handling=lenient to have it ignored)", clip(name))
		}
		w := "parameter " + clip(name) + " is not supported and was ignored"
		if !slices.Contains(req.Warnings, w) {
			req.Warnings = append(req.Warnings, w)
		}
	}

	if v, ok, err := single(byName[paramOutputFormat]); err != nil {
		return req, err
	} else if ok {
		f, err := outputFormat(v)
		if err != nil {
			return req, err
		}
		req.OutputFormat = f
	}

	if v, ok, err := single(byName[paramSince]); err != nil {
		return req, err
	} else if ok {
		t, err := fhir.ParseInstant(v)
		if err != nil {
			return req, invalid("value", "_since: %v", err)
		}
		if t.After(s.now()) {
			return req, invalid("value", "_since %s is in the future", clip(v))
		}
		t = t.UTC()
		req.Since = &t
	}

	// _until (IG v3) may lie in the future: the engine stops at the earlier
	// of it and the transaction time, so a later one just exports up to now.
	// One before _since could match nothing and is surely a mistake.
	if v, ok, err := single(byName[paramUntil]); err != nil {
		return req, err
	} else if ok {
		t, err := fhir.ParseInstant(v)
		if err != nil {
			return req, invalid("value", "_until: %v", err)
		}
		t = t.UTC()
		if req.Since != nil && t.Before(*req.Since) {
			return req, invalid("value", "_until %s is before _since", clip(v))
		}
		req.Until = &t
	}

	for _, p := range byName[paramType] {
		if strings.Trim(p.value, ", \t") == "" {
			return req, invalid("value", "_type has an empty value")
		}
		for t := range strings.SplitSeq(p.value, ",") {
			t = strings.TrimSpace(t)
			if t == "" || slices.Contains(req.Types, t) {
				continue
			}
			if err := checkType(paramType, t, rt.level); err != nil {
				return req, err
			}
			req.Types = append(req.Types, t)
		}
	}

	var filterValues []string
	for _, p := range byName[paramTypeFilter] {
		filterValues = append(filterValues, p.value)
	}
	filters, err := parseTypeFilters(filterValues, rt.level, req.Types)
	if err != nil {
		return req, err
	}
	req.TypeFilters = filters

	var elementValues []string
	for _, p := range byName[paramElements] {
		elementValues = append(elementValues, p.value)
	}
	elements, warnings, err := parseElements(elementValues, lenient)
	if err != nil {
		return req, err
	}
	req.Elements = elements
	req.Warnings = append(req.Warnings, warnings...)

	patients, err := parsePatients(byName[paramPatient], rt.level)
	if err != nil {
		return req, err
	}
	req.Patients = patients

	// allowPartialManifests (IG v3) is a FHIR boolean: "true" or "false" in
	// a query, valueBoolean in a body.
	if v, ok, err := single(byName[paramAllowPartialManifests]); err != nil {
		return req, err
	} else if ok {
		if v != "true" && v != "false" {
			return req, invalid("value", "allowPartialManifests %q is not a FHIR boolean: use true or false", clip(v))
		}
		req.AllowPartialManifests = v == "true"
	}

	if err := parseIncludeAssociated(byName[paramIncludeAssociatedData], lenient, &req); err != nil {
		return req, err
	}

	if v, ok, err := single(byName[paramContainer]); err != nil {
		return req, err
	} else if ok {
		if !export.ValidContainerName(v) {
			return req, invalid("value", "_container %q is not a valid blob container name (3-63 characters: lowercase letters, digits and single hyphens, starting and ending with a letter or digit)", clip(v))
		}
		// Only the operator's destinations (EXPORT_CONTAINERS): anything
		// else could put PHI next to the host's keys or outside the export
		// account's retention rule. Refused here, before any side effect.
		if !slices.Contains(s.containers, v) {
			return req, invalid("value", "_container %q is not a destination this server exports to; leave it out to use the default, or ask the operator to add it to EXPORT_CONTAINERS", v)
		}
		req.Container = v
	}
	if req.Container == "" {
		return req, invalid("required", "_container is required: this server has no default output container")
	}
	if err := parseAnonymization(byName, &req); err != nil {
		return req, err
	}
	if req.IncludeAssociated != "" && req.AnonymizationConfig != "" {
		// The Provenance are found from the ids the export wrote, which a
		// de-identified export has replaced.
		return req, invalid("not-supported", "includeAssociatedData cannot be combined with %s", paramAnonymizationConfig)
	}
	req.Lenient = lenient && req.IncludeAssociated != "" // the engine's check of the source needs it
	return req, nil
}

// parseIncludeAssociated reads includeAssociatedData: comma-separated
// values, possibly repeated. Of the IG's values this server implements
// LatestProvenanceResources and RelevantProvenanceResources; with both,
// Relevant (every associated Provenance) includes Latest. Another value is
// refused, or ignored with a warning under handling=lenient. Whether the
// source can serve it is the engine's check at kick-off.
func parseIncludeAssociated(ps []param, lenient bool, req *export.Request) error {
	for _, p := range ps {
		if strings.Trim(p.value, ", \t") == "" {
			return invalid("value", "includeAssociatedData has an empty value")
		}
		for v := range strings.SplitSeq(p.value, ",") {
			switch v = strings.TrimSpace(v); v {
			case "":
			case export.RelevantProvenance:
				req.IncludeAssociated = v
			case export.LatestProvenance:
				if req.IncludeAssociated == "" {
					req.IncludeAssociated = v
				}
			default:
				if !lenient {
					return invalid("not-supported", "includeAssociatedData value %q is not supported: this server implements %s and %s (send Prefer: handling=lenient to have other values ignored)",
						clip(v), export.LatestProvenance, export.RelevantProvenance)
				}
				w := "includeAssociatedData value " + clip(v) + " is not supported and was ignored"
				if !slices.Contains(req.Warnings, w) {
					req.Warnings = append(req.Warnings, w)
				}
			}
		}
	}
	return nil
}

// maxBlobName is Azure's longest blob name.
const maxBlobName = 1024

// parseAnonymization reads _anonymizationConfig and _anonymizationConfigEtag.
// The engine reads and validates the configuration itself; here the name is
// only kept to a plain blob name, as Azure refuses path traversal. An ETag
// without quotes (as the portal shows it) is quoted, as Azure's server does,
// so that it compares equal to the one storage sends.
func parseAnonymization(byName map[string][]param, req *export.Request) error {
	name, hasName, err := single(byName[paramAnonymizationConfig])
	if err != nil {
		return err
	}
	etag, hasETag, err := single(byName[paramAnonymizationConfigEtag])
	if err != nil {
		return err
	}
	if hasETag && !hasName {
		return invalid("required", "_anonymizationConfigEtag is given without _anonymizationConfig, the configuration it pins")
	}
	if !hasName {
		return nil
	}
	if len(name) > maxBlobName || strings.HasPrefix(name, "/") || strings.ContainsAny(name, "\\") ||
		slices.Contains(strings.Split(name, "/"), "..") || strings.ContainsFunc(name, isControl) {
		return invalid("value", "_anonymizationConfig %q is not a plain blob name (at most %d characters, no leading /, no .. segment, no backslash or control character)", clip(name), maxBlobName)
	}
	req.AnonymizationConfig = name
	if hasETag {
		if strings.ContainsFunc(etag, isControl) || strings.Contains(strings.Trim(etag, `"`), `"`) {
			return invalid("value", "_anonymizationConfigEtag %q is not an ETag", clip(etag))
		}
		if !strings.HasPrefix(etag, `"`) {
			etag = `"` + etag + `"`
		}
		req.AnonymizationETag = etag
	}
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// parsePatients reads the patient parameter: one "Patient/<id>"
// valueReference per patient, in a POST body, at Patient or Group level. It
// returns the ids sorted and distinct. A GET query's patient is refused, not
// ignored, even under handling=lenient: the IG defines it for POST only, and
// dropping it would export every patient to a client that asked for a few.
func parsePatients(ps []param, level export.Level) ([]string, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	if level == export.LevelSystem {
		return nil, invalid("not-supported", "patient applies only to Patient and Group level exports (/Patient/$export, /Group/[id]/$export)")
	}
	var ids []string
	for _, p := range ps {
		if !p.ref {
			return nil, invalid("not-supported", "patient is accepted only in a POST Parameters body, as a valueReference such as {\"reference\":\"Patient/123\"}")
		}
		id, ok := strings.CutPrefix(p.value, "Patient/")
		if !ok || !validFHIRID(id) {
			return nil, invalid("value", "patient: %q is not a reference of the form Patient/[id] with a valid FHIR id", clip(p.value))
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	if len(ids) > maxPatients {
		return nil, invalid("too-long", "patient names %d patients, more than the %d this server accepts in one request; export a Group instead", len(ids), maxPatients)
	}
	return ids, nil
}

// single returns the value of a parameter that may be given once. Repeats
// with the same value are tolerated.
func single(ps []param) (string, bool, error) {
	if len(ps) == 0 {
		return "", false, nil
	}
	v := ps[0].value
	for _, p := range ps[1:] {
		if p.value != v {
			return "", false, invalid("value", "%s is given more than once with different values", p.name)
		}
	}
	if strings.TrimSpace(v) == "" {
		return "", false, invalid("value", "%s has an empty value", ps[0].name)
	}
	return v, true, nil
}

// outputFormat accepts the NDJSON names the IG requires (case-insensitive,
// with or without parameters) and returns the canonical one. A '+' that
// query decoding turned into a space is read as '+'.
func outputFormat(v string) (string, error) {
	mt, _, _ := strings.Cut(v, ";")
	switch strings.ToLower(strings.TrimSpace(mt)) {
	case "application/fhir+ndjson", "application/fhir ndjson", "application/ndjson", "ndjson":
		return "application/fhir+ndjson", nil
	}
	return "", invalid("not-supported", "_outputFormat %q is not supported; use application/fhir+ndjson, application/ndjson or ndjson", clip(v))
}

// checkType validates one resource type named by parameter param: an R4
// type that can be exported and, at Patient and Group level, one in the
// Patient compartment (the IG says a server SHOULD refuse the others).
func checkType(param, t string, level export.Level) error {
	if !fhir.IsResourceType(t) {
		return invalid("value", "%s: %q is not a FHIR R4 resource type", param, clip(t))
	}
	if !fhir.IsExportable(t) {
		return invalid("not-supported", "%s: %s resources cannot be exported", param, t)
	}
	if level != export.LevelSystem {
		if _, ok := fhir.PatientCompartment(t); !ok {
			return invalid("not-supported", "%s: %s is not in the Patient compartment, so it cannot be exported at %s level", param, t, level)
		}
	}
	return nil
}

var (
	fhirIDPattern = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)
	// <Type>-<n> and <Type>-errors-<n>, with -w<NNNN> (a window), -deleted (_since; export/deleted.go) or
	// -associated (includeAssociatedData; export/associated.go) after the type.
	fileNamePattern = regexp.MustCompile(`^[A-Za-z]+(?:-w[0-9]{4}|-deleted|-associated)?(?:-errors)?-[0-9]+\.ndjson$`)
)

// validFHIRID accepts a FHIR id, except one made only of dots: "." and ".."
// are path segments, and the source would read /Group/.. as its base URL.
func validFHIRID(id string) bool {
	return fhirIDPattern.MatchString(id) && strings.Trim(id, ".") != ""
}
