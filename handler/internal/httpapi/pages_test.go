package httpapi_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/httpapi"
)

const pagedJob = "01900000000000000000000000080000000000000000"

// pagedItems are the work items of the fake job, in manifest order.
var pagedItems = []string{"plan", "Observation", "Patient"}

// entry is a file of the fake job: item it of the given section.
func entry(item string, index int, count int64) export.ManifestEntry {
	e := export.ManifestEntry{OutputFile: export.OutputFile{Type: item, Name: fmt.Sprintf("%s-%d.ndjson", item, index+1), Count: count},
		Section: export.SectionOutput, Item: item, Index: index}
	if item == "plan" {
		e.Type, e.Name, e.Section = "OperationOutcome", "OperationOutcome-1.ndjson", export.SectionError
	}
	return e
}

func partialStatus(phase export.Phase, files ...export.ManifestEntry) *export.Status {
	st := &export.Status{
		Job: &export.Job{ID: pagedJob, TransactionTime: txTime,
			Request: export.Request{RequestURL: "https://fhir.example.org/$export?allowPartialManifests=true", AllowPartialManifests: true}},
		Phase: phase, Files: files, Items: pagedItems,
	}
	if phase == export.Completed {
		st.CompletedAt = completed
	}
	return st
}

type page struct {
	TransactionTime string `json:"transactionTime"`
	Output          []struct {
		Type, URL string
		Count     int64
	} `json:"output"`
	Error []struct {
		Type, URL string
		Count     int64
	} `json:"error"`
	Deleted []json.RawMessage `json:"deleted"`
	Link    []struct {
		Relation, URL string
	} `json:"link"`
}

func (p page) next() string {
	for _, l := range p.Link {
		if l.Relation == "next" {
			return l.URL
		}
	}
	return ""
}

func (p page) files() []string {
	var out []string
	for _, f := range p.Output {
		out = append(out, fmt.Sprintf("%s %s %d", f.Type, f.URL, f.Count))
	}
	for _, f := range p.Error {
		out = append(out, fmt.Sprintf("%s %s %d", f.Type, f.URL, f.Count))
	}
	return out
}

// get asks for an absolute URL of the API, following one 303 as an HTTP
// client does, and returns the final answer and the URL it came from.
func (b *bundle) get(t *testing.T, abs string) (*httptest.ResponseRecorder, string) {
	t.Helper()
	target, ok := strings.CutPrefix(abs, "http://example.com")
	if !ok {
		t.Fatalf("URL %q is not under the base URL", abs)
	}
	rec := b.call("GET", target, hdr("Accept", "application/json"), "")
	if rec.Code == http.StatusSeeOther {
		loc := rec.Header().Get("Location")
		if rec.Body.Len() != 0 {
			t.Errorf("303 with a body: %s", rec.Body)
		}
		return b.get(t, loc)
	}
	return rec, abs
}

func decodePage(t *testing.T, rec *httptest.ResponseRecorder) page {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); !strings.Contains(ct, "application/json") {
		t.Fatalf("manifest page Content-Type %q", ct)
	}
	var p page
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
		t.Fatalf("manifest page is not JSON: %v: %s", err, rec.Body)
	}
	if p.TransactionTime == "" || p.Error == nil || p.Deleted == nil {
		t.Fatalf("a page lacks the fields every manifest repeats: %s", rec.Body)
	}
	return p
}

// TestPartialManifestPagesWhileTheExportRuns follows the pages as the SMART
// bulk-data-client does (poll; on a manifest with a next link take its
// files and go on at the link; stop at a 200 without one) while the job
// gains files, and checks that the files it took are the final set, once
// each, and that every page it saw lists the same files when fetched again.
func TestPartialManifestPagesWhileTheExportRuns(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *httpapi.Options) { o.ManifestPageFiles = 2 })
	final := []export.ManifestEntry{entry("plan", 0, 1), entry("Observation", 0, 10), entry("Observation", 1, 10),
		entry("Observation", 2, 4), entry("Patient", 0, 3), entry("Patient", 1, 0), entry("Patient", 2, 5)}
	steps := []*export.Status{
		partialStatus(export.InProgress), // planning: nothing yet
		partialStatus(export.InProgress, final[1], final[4], final[5]),
		partialStatus(export.InProgress, final[1], final[4], final[5]), // nothing new
		partialStatus(export.InProgress, final[0], final[1], final[2], final[4], final[5]),
		partialStatus(export.Completed, final...),
	}

	url := "http://example.com/jobs/" + pagedJob
	seen := map[string][]string{} // page URL -> its files
	var took []string
	step := 0
	for polls := 0; ; polls++ {
		if polls > 40 {
			t.Fatal("the pages never ended")
		}
		b.engine.status = steps[min(step, len(steps)-1)]
		step++
		rec, from := b.get(t, url)
		if rec.Code == http.StatusAccepted && rec.Body.Len() == 0 {
			if rec.Header().Get("Retry-After") == "" || rec.Header().Get("X-Progress") == "" {
				t.Errorf("a 202 lacks Retry-After or X-Progress: %v", rec.Header())
			}
			continue
		}
		if rec.Code != http.StatusAccepted && rec.Code != http.StatusOK {
			t.Fatalf("page %s: status %d: %s", from, rec.Code, rec.Body)
		}
		p := decodePage(t, rec)
		if rec.Code == http.StatusAccepted && (p.next() == "" || rec.Header().Get("Retry-After") == "") {
			t.Fatalf("a partial manifest without a next link or Retry-After, which the SMART client would never read: %s", rec.Body)
		}
		if rec.Code == http.StatusOK && rec.Header().Get("Expires") == "" {
			t.Errorf("a page of the complete manifest has no Expires")
		}
		if _, again := seen[from]; again {
			t.Fatalf("page %s handed out twice", from)
		}
		if len(p.files()) > 2 {
			t.Errorf("page %s lists %d files, more than ManifestPageFiles", from, len(p.files()))
		}
		seen[from] = p.files()
		took = append(took, p.files()...)
		if p.next() == "" {
			if rec.Code != http.StatusOK {
				t.Fatalf("the last page answered %d", rec.Code)
			}
			break
		}
		if !strings.HasPrefix(p.next(), "http://example.com/jobs/"+pagedJob+"?") {
			t.Fatalf("next link %q is not a page of the job's status URL", p.next())
		}
		url = p.next()
	}

	var want []string
	for _, f := range final {
		if f.Count > 0 {
			want = append(want, fmt.Sprintf("%s http://example.com/jobs/%s/files/%s %d", f.Type, pagedJob, f.Name, f.Count))
		}
	}
	slices.Sort(took)
	slices.Sort(want)
	if !slices.Equal(took, want) {
		t.Errorf("the pages handed out\n%q\nthe final manifest is\n%q", took, want)
	}
	if len(seen) < 3 {
		t.Errorf("only %d pages: the test did not page", len(seen))
	}
	// Every page, fetched again now, lists what it listed then.
	for u, files := range seen {
		rec, _ := b.get(t, u)
		if rec.Code != http.StatusOK {
			t.Errorf("page %s fetched again: %d", u, rec.Code)
			continue
		}
		if got := decodePage(t, rec).files(); !slices.Equal(got, files) {
			t.Errorf("page %s listed %q, now %q", u, files, got)
		}
	}
	// The polling URL of the completed job starts the complete manifest.
	rec, _ := b.get(t, "http://example.com/jobs/"+pagedJob)
	if p := decodePage(t, rec); rec.Code != http.StatusOK || len(p.files()) != 2 || p.next() == "" {
		t.Errorf("polling URL of the completed job: %d, %q, next %q; want the first 2 files and a next link", rec.Code, p.files(), p.next())
	}
}

// TestManifestPagesRefuseWhatNoLinkHolds: a page position that is not ours,
// or that goes past the files complete now, is a 404, never a guess.
func TestManifestPagesRefuseWhatNoLinkHolds(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.engine.status = partialStatus(export.InProgress, entry("Observation", 0, 10))
	at := func(n int) string { return export.Position{"Observation": {n}}.Encode(pagedItems) }
	otherJob := export.Position{"Observation": {1}}.Encode([]string{"plan", "Observation", "Patient", "Procedure"})
	for _, q := range []string{
		"from=Observation:1",               // not our encoding
		"from=" + at(1) + "A",              // trailing garbage
		"from=&take=" + at(2),              // the second file is not complete
		"from=" + at(1) + "&take=" + at(1), // past the files complete
		"from=" + otherJob,                 // another job's items
	} {
		rec := b.call("GET", "/jobs/"+pagedJob+"?"+q, hdr("Accept", "application/json"), "")
		checkOutcome(t, rec, http.StatusNotFound)
	}
	rec := b.call("GET", "/jobs/"+pagedJob+"?from=&take="+at(1), hdr("Accept", "application/json"), "")
	if rec.Code != http.StatusAccepted || len(decodePage(t, rec).files()) != 1 {
		t.Errorf("the page of the complete file: %d %s", rec.Code, rec.Body)
	}
	// A partial manifest hands out files: it is audited as a manifest.
	audited := 0
	for _, l := range b.logs.lines(t) {
		if l["audit"] == true && l["action"] == "manifest" && l["status"] == float64(http.StatusAccepted) {
			audited++
		}
	}
	if audited != 1 {
		t.Errorf("%d manifest audit lines for one partial manifest page", audited)
	}
	for _, o := range b.engine.owners {
		if o != anonymousOwner {
			t.Errorf("a page was looked up for owner %q, not the caller", o)
		}
	}
}

// TestJobWithoutPartialManifestsIsNotPaged: a job that did not ask for
// partial manifests answers 202 without a body while it runs, whatever
// files are complete, and its manifest is one page without a link.
func TestJobWithoutPartialManifestsIsNotPaged(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *httpapi.Options) { o.ManifestPageFiles = 1 })
	st := partialStatus(export.InProgress, entry("Observation", 0, 10), entry("Observation", 1, 10))
	st.Job.Request.AllowPartialManifests = false
	b.engine.status = st
	rec := b.call("GET", "/jobs/"+pagedJob, hdr("Accept", "application/json"), "")
	if rec.Code != http.StatusAccepted || rec.Body.Len() != 0 {
		t.Errorf("running job without allowPartialManifests: %d %q", rec.Code, rec.Body)
	}
	done := completedStatus([]export.OutputFile{{Type: "Observation", Name: "Observation-1.ndjson", Count: 10}, {Type: "Observation", Name: "Observation-2.ndjson", Count: 10}}, nil)
	b.engine.status = done
	rec = b.call("GET", "/jobs/"+done.Job.ID, hdr("Accept", "application/json"), "")
	if p := decodePage(t, rec); rec.Code != http.StatusOK || len(p.Output) != 2 || p.Link != nil {
		t.Errorf("completed job without allowPartialManifests: %d %s", rec.Code, rec.Body)
	}
}

// TestCapabilityStatementListsExactlyTheAcceptedParameters probes the
// kick-off with each parameter the Bulk Data IG defines (and a few it does
// not) and compares the ones the parser knows, at each level, with those the
// CapabilityStatement names for that level's operation.
func TestCapabilityStatementListsExactlyTheAcceptedParameters(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rec := b.call("GET", "/metadata", nil, "")
	var cs struct {
		Rest []struct {
			Resource []struct {
				Type      string
				Operation []struct{ Name, Documentation string }
			}
			Operation []struct{ Name, Documentation string }
		}
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &cs); err != nil || len(cs.Rest) != 1 {
		t.Fatalf("metadata: %v: %s", err, rec.Body)
	}
	backquoted := regexp.MustCompile("`([^`]+)`")
	stated := func(doc string) []string {
		var out []string
		for _, m := range backquoted.FindAllStringSubmatch(doc, -1) {
			out = append(out, m[1])
		}
		slices.Sort(out)
		return out
	}
	docs := map[string]string{"/$export": cs.Rest[0].Operation[0].Documentation}
	for _, r := range cs.Rest[0].Resource {
		path := "/" + r.Type + "/$export"
		if r.Type == "Group" {
			path = "/Group/g1/$export"
		}
		docs[path] = r.Operation[0].Documentation
	}
	candidates := []string{"_outputFormat", "_since", "_until", "_type", "_elements", "patient", "includeAssociatedData",
		"_typeFilter", "organizeOutputBy", "allowPartialManifests", "_container", "_count", "foo",
		"_anonymizationConfig", "_anonymizationConfigEtag", "_anonymizationConfigCollectionReference"}
	for path, doc := range docs {
		var accepted []string
		for _, name := range candidates {
			rec := b.call("GET", path+"?"+name+"=%00", hdr("Accept", "application/fhir+json"), "")
			_, diag := checkOutcome(t, rec, http.StatusBadRequest) // the value is never valid
			unknown := strings.Contains(diag, "parameter "+name+" is not supported")
			// patient is known at every level but used only at Patient and Group.
			wrongLevel := strings.Contains(diag, "applies only to Patient and Group")
			if !unknown && !wrongLevel {
				accepted = append(accepted, name)
			}
		}
		slices.Sort(accepted)
		if got := stated(doc); !slices.Equal(got, accepted) {
			t.Errorf("%s: the CapabilityStatement states %q, the kick-off accepts %q", path, got, accepted)
		}
	}
	if len(docs) != 3 {
		t.Errorf("operations documented: %d, want 3", len(docs))
	}
}
