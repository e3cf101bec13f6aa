package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/tests/bulkclient"
	"github.com/azfhir/bulkexport/tests/exportcheck"
	"github.com/azfhir/bulkexport/tests/fhirsample"
	"github.com/azfhir/bulkexport/tests/testproc"
)

// The tests of includeAssociatedData compute the Provenance an export must
// add with their own oracle (wantAssociated), written from the Bulk Data IG
// and the README, not from the engine: a Provenance is associated with a
// returned resource when one of its target references resolves to it.

// assocData is the sample data plus a generated Provenance.ndjson and a
// patient who is not a member of the sample Group.
type assocData struct {
	dir     string
	groupID string
	members map[string]bool // "Patient/<id>" of the Group's members
}

// assocOutsider is the added patient who is not a member of the Group.
const assocOutsider = "h1-outsider"

// newAssocData copies the sample data into a temporary folder and writes
// Provenance.ndjson into it: one Provenance per patient targeting the Patient
// and all its Encounters; Provenance of groups of three Observations, and a
// later-recorded one of some of those Observations alone (with a relative,
// a versioned, an absolute and an absolute versioned target); one of
// Organization and Practitioner only; one last updated in 2099 and an
// earlier one of the same Observation; two pairs with equal recorded
// instants, one pair told apart by meta.lastUpdated and one by id; one of a
// resource that does not exist; and one of the outsider, whose Patient and
// Encounter are added too. Every Provenance has a policy, an optional element
// that _elements can drop.
func newAssocData(t *testing.T) assocData {
	t.Helper()
	d := assocData{dir: t.TempDir(), members: map[string]bool{}}
	files, err := filepath.Glob(filepath.Join(dataDir, "*.ndjson"))
	if err != nil || len(files) == 0 {
		t.Fatalf("sample data: %v", err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d.dir, filepath.Base(f)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	src := fixture(t, nil)
	var g struct {
		ID     string
		Member []struct{ Entity struct{ Reference string } }
	}
	if err := json.Unmarshal([]byte(src["Group"][0]), &g); err != nil || len(g.Member) == 0 {
		t.Fatalf("the sample data has no Group with members: %v", err)
	}
	d.groupID = g.ID
	for _, m := range g.Member {
		d.members[m.Entity.Reference] = true
	}
	ids := func(typ string) []string {
		var out []string
		for _, line := range src[typ] {
			var r struct{ ID string }
			json.Unmarshal([]byte(line), &r)
			out = append(out, r.ID)
		}
		return out
	}
	observations := ids("Observation")
	if len(observations) < 50 || len(ids("Organization")) == 0 || len(ids("Practitioner")) == 0 {
		t.Fatalf("the sample data lacks the resources the Provenance refer to")
	}

	appendLines(t, filepath.Join(d.dir, "Patient.ndjson"),
		`{"resourceType":"Patient","id":"`+assocOutsider+`","meta":{"versionId":"1","lastUpdated":"2024-05-01T00:00:00.000Z"},"gender":"other"}`)
	appendLines(t, filepath.Join(d.dir, "Encounter.ndjson"),
		`{"resourceType":"Encounter","id":"h1-outsider-encounter","meta":{"versionId":"1","lastUpdated":"2024-05-01T00:00:00.000Z"},"status":"finished","class":{"code":"AMB"},"subject":{"reference":"Patient/`+assocOutsider+`"}}`)

	var provs []string
	add := func(id, lastUpdated, recorded string, targets ...string) {
		type reference struct {
			Reference string `json:"reference"`
		}
		p := struct {
			ResourceType string `json:"resourceType"`
			ID           string `json:"id"`
			Meta         struct {
				VersionID   string `json:"versionId"`
				LastUpdated string `json:"lastUpdated"`
			} `json:"meta"`
			Target   []reference `json:"target"`
			Recorded string      `json:"recorded"`
			Policy   []string    `json:"policy"` // optional: what _elements drops
			Agent    []struct {
				Who struct {
					Display string `json:"display"`
				} `json:"who"`
			} `json:"agent"`
		}{ResourceType: "Provenance", ID: id, Recorded: recorded, Policy: []string{"http://example.org/policy/" + id}}
		p.Meta.VersionID, p.Meta.LastUpdated = "1", lastUpdated
		for _, r := range targets {
			p.Target = append(p.Target, reference{Reference: r})
		}
		p.Agent = make([]struct {
			Who struct {
				Display string `json:"display"`
			} `json:"who"`
		}, 1)
		p.Agent[0].Who.Display = "e2e test"
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		provs = append(provs, string(b))
	}
	at := func(base string, minutes int) string {
		ts, err := time.Parse(time.RFC3339, base)
		if err != nil {
			t.Fatal(err)
		}
		return ts.Add(time.Duration(minutes) * time.Minute).Format("2006-01-02T15:04:05.000Z")
	}

	// One per patient, as Synthea writes them: the Patient and every
	// Encounter of theirs, far more targets than one batch holds in the
	// SIGKILL test.
	encountersOf := map[string][]string{}
	for _, line := range src["Encounter"] {
		var e struct {
			ID      string
			Subject struct{ Reference string }
		}
		json.Unmarshal([]byte(line), &e)
		encountersOf[e.Subject.Reference] = append(encountersOf[e.Subject.Reference], "Encounter/"+e.ID)
	}
	for i, id := range ids("Patient") {
		add(fmt.Sprintf("h1-patient-%d", i), at("2024-06-02T00:00:00Z", i), at("2024-06-01T00:00:00Z", i),
			append([]string{"Patient/" + id}, encountersOf["Patient/"+id]...)...)
	}
	add("h1-outsider", "2024-06-03T00:00:00.000Z", "2024-06-03T00:00:00.000Z", "Patient/"+assocOutsider, "Encounter/h1-outsider-encounter")

	// Observations 0..29 in groups of three, and a later one of 0, 3, 6, ...
	// and of every Observation of the last two groups: those two group
	// Provenance are relevant but never the latest.
	for j := range 10 {
		var targets []string
		for k := 3 * j; k < 3*j+3; k++ {
			targets = append(targets, "Observation/"+observations[k])
		}
		add(fmt.Sprintf("h1-obs-group-%d", j), at("2024-07-02T00:00:00Z", j), "2024-07-01T00:00:00.000Z", targets...)
	}
	for k := range 30 {
		if k%3 != 0 && k < 24 {
			continue
		}
		target := "Observation/" + observations[k]
		switch k {
		case 3:
			target += "/_history/1"
		case 6:
			target = "https://ehr.example.org/fhir/" + target
		case 9:
			target = "http://ehr.example.org/fhir/" + target + "/_history/1"
		}
		add(fmt.Sprintf("h1-obs-later-%d", k), at("2024-08-02T00:00:00Z", k), "2024-08-01T00:00:00.000Z", target)
	}
	add("h1-elsewhere", "2024-09-01T00:00:00.000Z", "2024-09-01T00:00:00.000Z",
		"Organization/"+ids("Organization")[0], "Practitioner/"+ids("Practitioner")[0])
	add("h1-future", "2099-01-01T00:00:00.000Z", "2099-01-01T00:00:00.000Z", "Observation/"+observations[40])
	add("h1-before-future", "2024-09-02T00:00:00.000Z", "2024-09-02T00:00:00.000Z", "Observation/"+observations[40])
	// Equal recorded instants written differently: the later
	// meta.lastUpdated decides, then the greater id.
	add("h1-tie-lastupdated-a", "2024-10-02T00:00:00.000Z", "2024-10-01T12:00:00.000Z", "Observation/"+observations[41])
	add("h1-tie-lastupdated-b", "2024-10-01T00:00:00.000Z", "2024-10-01T14:00:00.000+02:00", "Observation/"+observations[41])
	add("h1-tie-id-a", "2024-10-03T00:00:00.000Z", "2024-10-03T00:00:00.000Z", "Observation/"+observations[42])
	add("h1-tie-id-b", "2024-10-03T00:00:00.000Z", "2024-10-03T00:00:00.000Z", "Observation/"+observations[42])
	add("h1-orphan", "2024-10-04T00:00:00.000Z", "2024-10-04T00:00:00.000Z", "Observation/h1-does-not-exist")
	appendLines(t, filepath.Join(d.dir, "Provenance.ndjson"), provs...)
	return d
}

func appendLines(t *testing.T, file string, lines ...string) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, l := range lines {
		if _, err := f.WriteString(l + "\n"); err != nil {
			t.Fatal(err)
		}
	}
}

// serve runs a sample FHIR server on dir in-process and returns it with its
// FHIR base URL.
func (d assocData) serve(t *testing.T, opts fhirsample.Options) (*fhirsample.Server, string) {
	t.Helper()
	srv, err := fhirsample.New(d.dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return srv, hs.URL + "/fhir"
}

// source returns the data's compacted lines of the given types whose
// meta.lastUpdated is at or before until (zero: no bound) and that keep
// accepts (all if nil).
func (d assocData) source(t *testing.T, types []string, until time.Time, keep func(typ string, r map[string]any) bool) map[string][]string {
	return exportcheck.Fixture(t, d.dir, func(typ string, r map[string]any) bool {
		return slices.Contains(types, typ) && (until.IsZero() || !lastUpdated(r).After(until)) && (keep == nil || keep(typ, r))
	})
}

// compartment returns the resources of types in the compartment of one of
// patients ("Patient/<id>"), following compartmentElements.
func (d assocData) compartment(t *testing.T, patients map[string]bool, types []string) map[string][]string {
	return d.source(t, types, time.Time{}, func(typ string, r map[string]any) bool {
		if typ == "Patient" {
			return patients["Patient/"+r["id"].(string)]
		}
		for _, el := range compartmentElements[typ] {
			for _, ref := range refsOf(r[el]) {
				if patients[ref] {
					return true
				}
			}
		}
		return false
	})
}

// resolveReference returns the Type/id a literal reference points at:
// relative, versioned or absolute (http or https), the version dropped.
func resolveReference(ref string) (string, bool) {
	if i := strings.Index(ref, "/_history/"); i >= 0 {
		ref = ref[:i]
	}
	parts := strings.Split(ref, "/")
	absolute := strings.HasPrefix(ref, "http://") || strings.HasPrefix(ref, "https://")
	if len(parts) < 2 || (len(parts) > 2 && !absolute) || parts[len(parts)-2] == "" || parts[len(parts)-1] == "" {
		return "", false
	}
	return parts[len(parts)-2] + "/" + parts[len(parts)-1], true
}

// wantAssociated returns the Provenance lines of the data that an export
// whose output is returned must add: those last updated at or before
// cutoff with a target resolving to a returned resource; with latest, for
// each returned resource only the one recorded last (ties: the later
// meta.lastUpdated, then the greater id). Each once.
func (d assocData) wantAssociated(t *testing.T, returned map[string][]string, cutoff time.Time, latest bool) []string {
	t.Helper()
	inOutput := map[string]bool{}
	for typ, lines := range returned {
		for _, line := range lines {
			var r struct{ ID string }
			json.Unmarshal([]byte(line), &r)
			inOutput[typ+"/"+r.ID] = true
		}
	}
	type candidate struct {
		id, line              string
		recorded, lastUpdated time.Time
	}
	byTarget := map[string][]candidate{}
	for _, line := range exportcheck.Fixture(t, d.dir, func(typ string, _ map[string]any) bool { return typ == "Provenance" })["Provenance"] {
		var p struct {
			ID   string
			Meta struct{ LastUpdated string }
			// recorded is an instant: it is compared as one, not as text.
			Recorded string
			Target   []struct{ Reference string }
		}
		if err := json.Unmarshal([]byte(line), &p); err != nil {
			t.Fatal(err)
		}
		c := candidate{id: p.ID, line: line}
		var err1, err2 error
		c.recorded, err1 = time.Parse(time.RFC3339Nano, p.Recorded)
		c.lastUpdated, err2 = time.Parse(time.RFC3339Nano, p.Meta.LastUpdated)
		if err1 != nil || err2 != nil {
			t.Fatalf("Provenance %s: %v %v", p.ID, err1, err2)
		}
		if c.lastUpdated.After(cutoff) {
			continue
		}
		seen := map[string]bool{}
		for _, target := range p.Target {
			if key, ok := resolveReference(target.Reference); ok && inOutput[key] && !seen[key] {
				seen[key] = true
				byTarget[key] = append(byTarget[key], c)
			}
		}
	}
	chosen := map[string]string{}
	for _, cands := range byTarget {
		if !latest {
			for _, c := range cands {
				chosen[c.id] = c.line
			}
			continue
		}
		best := slices.MaxFunc(cands, func(a, b candidate) int {
			if c := a.recorded.Compare(b.recorded); c != 0 {
				return c
			}
			if c := a.lastUpdated.Compare(b.lastUpdated); c != 0 {
				return c
			}
			return strings.Compare(a.id, b.id)
		})
		chosen[best.id] = best.line
	}
	out := make([]string, 0, len(chosen))
	for _, line := range chosen {
		out = append(out, line)
	}
	return out
}

// assocCase is what one export must deliver, and the premises that make the
// comparison prove something: Provenance ids the expected set must hold and
// must not hold.
type assocCase struct {
	returned         map[string][]string // the non-Provenance output
	latest           bool
	until            time.Time // _until, zero if none
	mustHave, mustNo []string
	// own selects the Provenance the export returns anyway (its _type names
	// Provenance or is absent), of those last updated up to the cutoff: the
	// associated ones are added to them, each Provenance once. Nil: none.
	own      func(r map[string]any) bool
	noErrors bool // the export must report nothing in its error files
}

// check compares an export with the case: the non-Provenance output, and
// the Provenance computed by wantAssociated, in Provenance-associated files.
func (c assocCase) check(t *testing.T, d assocData, m bulkclient.Manifest, got map[string][][]byte, errs [][]byte) {
	t.Helper()
	cutoff, err := time.Parse(time.RFC3339Nano, m.TransactionTime)
	if err != nil {
		t.Fatalf("manifest transactionTime %q: %v", m.TransactionTime, err)
	}
	if !c.until.IsZero() && c.until.Before(cutoff) {
		cutoff = c.until
	}
	provenance := d.wantAssociated(t, c.returned, cutoff, c.latest)
	holds := func(id string) bool {
		return slices.ContainsFunc(provenance, func(l string) bool { return strings.Contains(l, `"id":"`+id+`"`) })
	}
	for _, id := range c.mustHave {
		if !holds(id) {
			t.Fatalf("premise: Provenance %s is not in the expected set", id)
		}
	}
	for _, id := range c.mustNo {
		if holds(id) {
			t.Fatalf("premise: Provenance %s is in the expected set", id)
		}
	}
	if c.own != nil {
		union := map[string]string{}
		for _, line := range provenance {
			var r struct{ ID string }
			json.Unmarshal([]byte(line), &r)
			union[r.ID] = line
		}
		for _, line := range exportcheck.Fixture(t, d.dir, func(typ string, r map[string]any) bool {
			return typ == "Provenance" && !lastUpdated(r).After(cutoff) && c.own(r)
		})["Provenance"] {
			var r struct{ ID string }
			json.Unmarshal([]byte(line), &r)
			union[r.ID] = line
		}
		provenance = provenance[:0]
		for _, line := range union {
			provenance = append(provenance, line)
		}
	}
	want := map[string][]string{"Provenance": provenance}
	for typ, lines := range c.returned {
		want[typ] = lines
	}
	exportcheck.SameResources(t, got, want)
	associatedName := regexp.MustCompile(`^Provenance-associated-[0-9]+\.ndjson$`)
	for _, f := range m.Output {
		u, err := url.Parse(f.URL)
		if f.Type == "Provenance" && c.own == nil && (err != nil || !associatedName.MatchString(path.Base(u.Path))) {
			t.Errorf("Provenance output file %s is not named Provenance-associated-<n>.ndjson", f.URL)
		}
	}
	if c.noErrors && len(errs) > 0 {
		t.Errorf("error files hold %d lines, want none:\n%s", len(errs), joinLines(errs))
	}
}

// kickOff sends a kick-off request (a GET, or a POST of a Parameters body)
// and returns the status and body.
func kickOff(t *testing.T, base, method, path, body string, lenient bool) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx(t), method, base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/fhir+json")
	req.Header.Set("Prefer", "respond-async")
	if lenient {
		req.Header.Set("Prefer", "respond-async, handling=lenient")
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// waitAndDownload waits for the export a kick-off accepted and downloads it.
func waitAndDownload(t *testing.T, client *bulkclient.Client, resp *http.Response, body []byte) (bulkclient.Manifest, map[string][][]byte, [][]byte) {
	t.Helper()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("kick-off answered %d: %s", resp.StatusCode, body)
	}
	return waitAndDownloadAll(t, client, resp.Header.Get("Content-Location"))
}

var assocTypes = []string{"Patient", "Encounter", "Observation"}

// TestIncludeAssociatedDataAtSystemLevel: the Provenance of exactly the
// returned resources, once each, whatever form their target references take,
// and no other when _type leaves Provenance out; when _type names Provenance
// or is absent, they are added to the Provenance returned anyway, each once.
func TestIncludeAssociatedDataAtSystemLevel(t *testing.T) {
	d := newAssocData(t)
	_, fhirURL := d.serve(t, fhirsample.Options{})
	svc := startService(t, "FHIR_SERVER_URL="+fhirURL)
	all := d.source(t, assocTypes, time.Time{}, nil)
	export := func(t *testing.T, path string) (bulkclient.Manifest, map[string][][]byte, [][]byte) {
		res, err := svc.client.Export(ctx(t), path)
		if err != nil {
			t.Fatal(err)
		}
		return res.Manifest, res.Resources, res.Errors
	}
	never := []string{"h1-future", "h1-orphan", "h1-elsewhere"}

	t.Run("Relevant", func(t *testing.T) {
		m, got, errs := export(t, "/$export?_type=Patient,Encounter,Observation&includeAssociatedData=RelevantProvenanceResources")
		assocCase{returned: all, noErrors: true,
			mustHave: []string{"h1-patient-0", "h1-outsider", "h1-obs-group-8", "h1-obs-later-3", "h1-obs-later-6", "h1-obs-later-9",
				"h1-tie-lastupdated-b", "h1-tie-id-a", "h1-before-future"},
			mustNo: never,
		}.check(t, d, m, got, errs)
	})
	t.Run("Latest", func(t *testing.T) {
		m, got, errs := export(t, "/$export?_type=Patient,Encounter,Observation&includeAssociatedData=LatestProvenanceResources")
		assocCase{returned: all, latest: true, noErrors: true,
			mustHave: []string{"h1-patient-0", "h1-obs-group-0", "h1-obs-later-3", "h1-obs-later-6", "h1-obs-later-9",
				"h1-tie-lastupdated-a", "h1-tie-id-b", "h1-before-future"},
			mustNo: append([]string{"h1-obs-group-8", "h1-obs-group-9", "h1-tie-lastupdated-b", "h1-tie-id-a"}, never...),
		}.check(t, d, m, got, errs)
	})
	t.Run("BothValuesInAPOSTNamingProvenance", func(t *testing.T) {
		body := `{"resourceType":"Parameters","parameter":[` +
			`{"name":"_type","valueString":"Patient,Encounter,Observation,Provenance"},` +
			`{"name":"includeAssociatedData","valueString":"LatestProvenanceResources"},` +
			`{"name":"includeAssociatedData","valueString":"RelevantProvenanceResources"}]}`
		resp, b := kickOff(t, svc.base, http.MethodPost, "/$export", body, false)
		m, got, errs := waitAndDownload(t, svc.client, resp, b)
		// _type names Provenance: every Provenance up to the transaction
		// time is returned anyway, the associated ones among them.
		assocCase{returned: all, noErrors: true, own: func(map[string]any) bool { return true },
			mustHave: []string{"h1-obs-group-8", "h1-tie-lastupdated-b"}, mustNo: never,
		}.check(t, d, m, got, errs)
	})
	t.Run("LatestWithoutType", func(t *testing.T) {
		m, got, errs := export(t, "/$export?includeAssociatedData=LatestProvenanceResources")
		everyType := exportcheck.Fixture(t, d.dir, func(typ string, _ map[string]any) bool { return typ != "Provenance" })
		assocCase{returned: everyType, latest: true, noErrors: true, own: func(map[string]any) bool { return true },
			mustHave: []string{"h1-elsewhere", "h1-tie-lastupdated-a"},
			mustNo:   []string{"h1-future", "h1-orphan", "h1-obs-group-9"},
		}.check(t, d, m, got, errs)
	})
	t.Run("RelevantSince", func(t *testing.T) {
		// The patients' Provenance were last updated before _since; their
		// Patients that changed after it are returned, and so are they.
		since := time.Date(2024, 6, 10, 0, 0, 0, 0, time.UTC)
		returned := d.source(t, []string{"Patient"}, time.Time{}, func(_ string, r map[string]any) bool { return lastUpdated(r).After(since) })
		if n := len(d.wantAssociated(t, returned, since, false)); n == 0 {
			t.Fatal("premise: no Provenance last updated before _since targets a Patient updated after it")
		}
		m, got, errs := export(t, "/$export?_type=Patient&includeAssociatedData=RelevantProvenanceResources&_since="+since.Format(time.RFC3339))
		assocCase{returned: returned, noErrors: true}.check(t, d, m, got, errs)
	})
	t.Run("ElementsApplyToProvenance", func(t *testing.T) {
		m, got, errs := export(t, "/$export?_type=Patient&includeAssociatedData=RelevantProvenanceResources&_elements=Provenance.target")
		if len(errs) > 0 {
			t.Errorf("error files hold %d lines, want none:\n%s", len(errs), joinLines(errs))
		}
		patients := d.source(t, []string{"Patient"}, time.Time{}, nil)
		exportcheck.SameResources(t, map[string][][]byte{"Patient": got["Patient"]}, patients)
		cutoff, err := time.Parse(time.RFC3339Nano, m.TransactionTime)
		if err != nil {
			t.Fatal(err)
		}
		// Each associated Provenance once, without the optional policy, with
		// the SUBSETTED tag, and otherwise as the source has it.
		want := map[string]map[string]any{}
		for _, line := range d.wantAssociated(t, patients, cutoff, false) {
			var r map[string]any
			json.Unmarshal([]byte(line), &r)
			if r["policy"] == nil {
				t.Fatalf("premise: the source Provenance has no policy to drop: %s", line)
			}
			delete(r, "policy")
			want[r["id"].(string)] = r
		}
		if len(got["Provenance"]) != len(want) || len(want) == 0 {
			t.Errorf("%d Provenance exported, want %d", len(got["Provenance"]), len(want))
		}
		for _, line := range got["Provenance"] {
			var r map[string]any
			if err := json.Unmarshal(line, &r); err != nil {
				t.Fatal(err)
			}
			id, _ := r["id"].(string)
			src, ok := want[id]
			if !ok {
				t.Errorf("Provenance %q is not associated with a returned Patient, or is exported twice", id)
				continue
			}
			delete(want, id)
			if !hasSubsettedTag(r) {
				t.Errorf("Provenance %s has no SUBSETTED tag: %s", id, line)
			}
			if meta, ok := r["meta"].(map[string]any); ok {
				delete(meta, "tag") // the source has none
			}
			if !reflect.DeepEqual(r, src) {
				t.Errorf("Provenance %s is not the source's without policy: %s", id, line)
			}
		}
	})
	t.Run("RelevantSinceWithProvenanceInType", func(t *testing.T) {
		// The export returns the Provenance updated after _since anyway;
		// the patients' older Provenance are added, and none twice.
		since := time.Date(2024, 6, 10, 0, 0, 0, 0, time.UTC)
		after := func(r map[string]any) bool { return lastUpdated(r).After(since) }
		returned := d.source(t, []string{"Patient", "Observation"}, time.Time{}, func(_ string, r map[string]any) bool { return after(r) })
		// Premise: some associated Provenance are returned anyway (updated
		// after _since), so that writing them again would show.
		both := 0
		for _, line := range d.wantAssociated(t, returned, time.Now(), false) {
			var r map[string]any
			json.Unmarshal([]byte(line), &r)
			if after(r) {
				both++
			}
		}
		if both == 0 {
			t.Fatal("premise: no associated Provenance was updated after _since")
		}
		m, got, errs := export(t, "/$export?_type=Patient,Observation,Provenance&includeAssociatedData=RelevantProvenanceResources&_since="+since.Format(time.RFC3339))
		assocCase{returned: returned, noErrors: true, own: after,
			mustHave: []string{"h1-patient-0"},
		}.check(t, d, m, got, errs)
	})
	t.Run("LatestWithAProvenanceTypeFilter", func(t *testing.T) {
		// The filter returns some of the patients' Provenance anyway; the
		// others are added, and none twice.
		from := time.Date(2024, 6, 2, 0, 5, 0, 0, time.UTC)
		filter := url.QueryEscape("Provenance?_lastUpdated=gt" + from.Format(time.RFC3339))
		m, got, errs := export(t, "/$export?_type=Patient,Provenance&includeAssociatedData=LatestProvenanceResources&_typeFilter="+filter)
		assocCase{returned: d.source(t, []string{"Patient"}, time.Time{}, nil), latest: true, noErrors: true,
			own:      func(r map[string]any) bool { return lastUpdated(r).After(from) },
			mustHave: []string{"h1-patient-0", "h1-patient-9", "h1-outsider"},
		}.check(t, d, m, got, errs)
	})
	t.Run("RelevantUntil", func(t *testing.T) {
		// Up to the fourth patient's Provenance: the later ones are out,
		// though their targets are returned.
		until := time.Date(2024, 6, 2, 0, 3, 0, 0, time.UTC)
		m, got, errs := export(t, "/$export?_type=Patient,Encounter&includeAssociatedData=RelevantProvenanceResources&_until="+until.Format(time.RFC3339))
		assocCase{returned: d.source(t, []string{"Patient", "Encounter"}, until, nil), until: until, noErrors: true,
			mustHave: []string{"h1-patient-3"}, mustNo: []string{"h1-patient-4", "h1-outsider"},
		}.check(t, d, m, got, errs)
	})
}

// TestIncludeAssociatedDataAtPatientAndGroupLevel: at Group level the
// Provenance of the members' returned resources and not the outsider's;
// at Patient level everyone's.
func TestIncludeAssociatedDataAtPatientAndGroupLevel(t *testing.T) {
	d := newAssocData(t)
	_, fhirURL := d.serve(t, fhirsample.Options{})
	svc := startService(t, "FHIR_SERVER_URL="+fhirURL, "EXPORT_MEMBER_BATCH=4")
	if d.members["Patient/"+assocOutsider] {
		t.Fatal("premise: the outsider is a member of the Group")
	}
	t.Run("GroupLatest", func(t *testing.T) {
		res, err := svc.client.Export(ctx(t), "/Group/"+d.groupID+"/$export?_type=Patient,Encounter,Observation&includeAssociatedData=LatestProvenanceResources")
		if err != nil {
			t.Fatal(err)
		}
		assocCase{returned: d.compartment(t, d.members, assocTypes), latest: true,
			mustHave: []string{"h1-patient-0", "h1-obs-later-6", "h1-tie-lastupdated-a"},
			mustNo:   []string{"h1-outsider", "h1-obs-group-9", "h1-future"},
		}.check(t, d, res.Manifest, res.Resources, res.Errors)
	})
	t.Run("PatientRelevant", func(t *testing.T) {
		everyone := map[string]bool{}
		for _, line := range d.source(t, []string{"Patient"}, time.Time{}, nil)["Patient"] {
			var r struct{ ID string }
			json.Unmarshal([]byte(line), &r)
			everyone["Patient/"+r.ID] = true
		}
		res, err := svc.client.Export(ctx(t), "/Patient/$export?_type=Patient,Encounter&includeAssociatedData=RelevantProvenanceResources")
		if err != nil {
			t.Fatal(err)
		}
		assocCase{returned: d.compartment(t, everyone, []string{"Patient", "Encounter"}),
			mustHave: []string{"h1-patient-0", "h1-outsider"},
			mustNo:   []string{"h1-obs-group-0", "h1-future"},
		}.check(t, d, res.Manifest, res.Resources, res.Errors)
	})
}

// provenanceSearches counts the source's Provenance requests (searches and
// their next pages) and slows each down, so that a test can kill the handler
// while the export looks up associated Provenance, which it does only once
// the rest of the output is written.
type provenanceSearches struct {
	next  http.Handler
	delay time.Duration
	n     atomic.Int64
}

func (s *provenanceSearches) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasSuffix(r.URL.Path, "/Provenance") || strings.HasSuffix(r.URL.Path, "/Provenance/_search") {
		s.n.Add(1)
		time.Sleep(s.delay)
	}
	s.next.ServeHTTP(w, r)
}

// TestIncludeAssociatedDataSurvivesSIGKILL kills the handler twice while it
// searches the Provenance of the returned resources in batches of seven
// targets and pages of five: every associated Provenance still comes exactly
// once, though the Provenance of a patient targets the resources of several
// batches.
func TestIncludeAssociatedDataSurvivesSIGKILL(t *testing.T) {
	d := newAssocData(t)
	srv, err := fhirsample.New(d.dir, fhirsample.Options{})
	if err != nil {
		t.Fatal(err)
	}
	searches := &provenanceSearches{next: srv.Handler(), delay: 50 * time.Millisecond}
	hs := httptest.NewServer(searches)
	t.Cleanup(hs.Close)
	p := newProcess(t, hs.URL+"/fhir",
		"EXPORT_PAGE_SIZE=5", "EXPORT_MEMBER_BATCH=7", "EXPORT_BLOCK_BYTES=1024",
		"EXPORT_LEASE=2s", "EXPORT_VISIBILITY=2s", "EXPORT_RETRY_DELAY=1s", "EXPORT_STALL_AFTER=30s",
		"EXPORT_WORKERS=4", "EXPORT_MAX_DEQUEUE_COUNT=50")
	client := &bulkclient.Client{Base: p.base(), MaxWait: 3 * time.Minute}
	statusURL, err := client.KickOff(ctx(t), "/$export?_type=Patient,Encounter&includeAssociatedData=RelevantProvenanceResources")
	if err != nil {
		t.Fatal(err)
	}
	// Kill once the first Provenance searches are under way (nothing of
	// the associated item committed yet), and again once it has committed
	// Provenance: the restarted item then meets Provenance it has written in
	// later batches (Encounter's file comes first, the patients' Provenance
	// are found again in Patient's), and must read them back to skip them.
	jobID := path.Base(statusURL)
	committed := func() bool {
		for _, b := range blobsUnder(t, p.setting("EXPORT_CONTAINER"), jobID+"/Provenance-associated-") {
			if !strings.HasSuffix(b, "(0 bytes)") {
				return true
			}
		}
		return false
	}
	kills, done := 0, false
	for _, ready := range []func() bool{
		func() bool { return searches.n.Load() > 0 },
		committed,
	} {
		for deadline := time.Now().Add(time.Minute); !ready() && !done; {
			if time.Now().After(deadline) {
				t.Fatalf("%d Provenance requests after a minute, and the kill's moment has not come", searches.n.Load())
			}
			time.Sleep(25 * time.Millisecond)
			done = !ready() && finished(t, statusURL)
		}
		if done {
			break
		}
		p.kill()
		kills++
		p.start()
	}
	m, got, errs := waitAndDownloadAll(t, client, statusURL)
	if kills < 2 {
		t.Fatalf("the export finished after %d kills in its Provenance searches; the test needs 2, the second after a commit", kills)
	}
	assocCase{returned: d.source(t, []string{"Patient", "Encounter"}, time.Time{}, nil), noErrors: true,
		mustHave: []string{"h1-patient-0", "h1-patient-9", "h1-outsider"},
	}.check(t, d, m, got, errs)
	t.Logf("killed the handler %d times during the Provenance searches (%d Provenance requests in all)", kills, searches.n.Load())
}

// TestIncludeAssociatedDataRefusals: what the service cannot do exactly as
// asked is refused with a 400 OperationOutcome before any work starts, and
// the same request without includeAssociatedData is accepted, so the
// parameter is what was refused.
func TestIncludeAssociatedDataRefusals(t *testing.T) {
	d := newAssocData(t)
	_, fhirURL := d.serve(t, fhirsample.Options{})
	anonContainer := "anon-" + testproc.RandomSuffix()
	uploadHIPAASample(t, anonContainer, "hipaa.json")
	assoc := startService(t, "FHIR_SERVER_URL="+fhirURL, "EXPORT_ANONYMIZATION_CONTAINER="+anonContainer)
	shared := startService(t) // its source has no Provenance, so no target search
	cases := []struct {
		name       string
		svc        *service
		path, with string // the request without and with includeAssociatedData
		lenient    bool
		mention    []string // the diagnostics name one of these
	}{
		{"source without the target search", shared, "/$export?_type=Patient", "&includeAssociatedData=LatestProvenanceResources", false,
			[]string{"includeAssociatedData"}},
		{"unknown value", assoc, "/$export?_type=Patient", "&includeAssociatedData=LatestProvenanceResources,OtherResources", false,
			[]string{"OtherResources", "includeAssociatedData"}},
		{"custom value", assoc, "/$export?_type=Patient", "&includeAssociatedData=_h1Custom", false,
			[]string{"_h1Custom", "includeAssociatedData"}},
		{"with _anonymizationConfig", assoc, "/$export?_type=Patient&_anonymizationConfig=hipaa.json", "&includeAssociatedData=RelevantProvenanceResources", false,
			[]string{"includeAssociatedData", "_anonymizationConfig"}},
		{"with _anonymizationConfig, lenient", assoc, "/$export?_type=Patient&_anonymizationConfig=hipaa.json", "&includeAssociatedData=RelevantProvenanceResources", true,
			[]string{"includeAssociatedData", "_anonymizationConfig"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := kickOff(t, c.svc.base, http.MethodGet, c.path+c.with, "", c.lenient)
			resp.Body = io.NopCloser(strings.NewReader(string(body)))
			checkOutcome(t, c.name, resp, http.StatusBadRequest)
			if !slices.ContainsFunc(c.mention, func(m string) bool { return strings.Contains(string(body), m) }) {
				t.Errorf("the OperationOutcome mentions none of %v: %s", c.mention, body)
			}
			if !c.lenient { // the lenient case's strict twin has made the check
				acceptedThenCancelled(t, c.svc, c.path)
			}
		})
	}
}

// acceptedThenCancelled kicks off path, requires a 202 and cancels the job.
func acceptedThenCancelled(t *testing.T, svc *service, path string) {
	t.Helper()
	resp, body := kickOff(t, svc.base, http.MethodGet, path, "", false)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("premise: %s without includeAssociatedData answered %d: %s", path, resp.StatusCode, body)
	}
	req, err := http.NewRequestWithContext(ctx(t), http.MethodDelete, resp.Header.Get("Content-Location"), nil)
	if err != nil {
		t.Fatal(err)
	}
	cancel, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	cancel.Body.Close()
	if cancel.StatusCode != http.StatusAccepted {
		t.Errorf("cancel of the premise's export answered %d", cancel.StatusCode)
	}
}

// TestIncludeAssociatedDataLenient: under handling=lenient what cannot be
// done is left out with a warning in the error files, and the rest of the
// export is the one asked for.
func TestIncludeAssociatedDataLenient(t *testing.T) {
	t.Run("source without the target search", func(t *testing.T) {
		svc := startService(t)
		resp, body := kickOff(t, svc.base, http.MethodGet, "/$export?_type=Patient&includeAssociatedData=RelevantProvenanceResources", "", true)
		_, got, errs := waitAndDownload(t, svc.client, resp, body)
		sameResources(t, got, fixture(t, func(typ string, _ map[string]any) bool { return typ == "Patient" }))
		checkWarning(t, errs, "includeAssociatedData")
	})
	t.Run("unknown value beside a known one", func(t *testing.T) {
		d := newAssocData(t)
		_, fhirURL := d.serve(t, fhirsample.Options{})
		svc := startService(t, "FHIR_SERVER_URL="+fhirURL)
		resp, body := kickOff(t, svc.base, http.MethodGet, "/$export?_type=Patient&includeAssociatedData=_h1Custom,LatestProvenanceResources", "", true)
		m, got, errs := waitAndDownload(t, svc.client, resp, body)
		assocCase{returned: d.source(t, []string{"Patient"}, time.Time{}, nil), latest: true,
			mustHave: []string{"h1-patient-0", "h1-outsider"}, mustNo: []string{"h1-obs-group-0"},
		}.check(t, d, m, got, errs)
		checkWarning(t, errs, "_h1Custom")
	})
}

// checkWarning requires exactly one error line: a warning OperationOutcome
// whose text mentions mention.
func checkWarning(t *testing.T, errs [][]byte, mention string) {
	t.Helper()
	if len(errs) != 1 || !strings.Contains(string(errs[0]), `"severity":"warning"`) || !strings.Contains(string(errs[0]), mention) {
		t.Errorf("error files hold %q; want one warning OperationOutcome mentioning %s", errs, mention)
	}
}
