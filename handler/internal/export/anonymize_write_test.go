package export_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// fakeAnonymizer is a deterministic stand-in for package deid: it hashes
// ids and the ids of Patient references, and drops gender and valueString
// (the "PHI" of population). A resource whose JSON holds failOn fails, as a
// rule that cannot process it would.
type fakeAnonymizer struct {
	skip   bool
	failOn string
}

func (f *fakeAnonymizer) SkipErrors() bool { return f.skip }

func (f *fakeAnonymizer) AnonymizedID(id string) string {
	sum := sha256.Sum256([]byte("key:" + id))
	return hex.EncodeToString(sum[:8])
}

func (f *fakeAnonymizer) Anonymize(resource []byte) ([]byte, error) {
	var r map[string]any
	if err := json.Unmarshal(resource, &r); err != nil {
		return nil, errors.New("anonymization failed on a resource of unknown type: the resource is not readable")
	}
	if f.failOn != "" && strings.Contains(string(resource), f.failOn) {
		return nil, fmt.Errorf("anonymization rule 1 (Observation.valueString) failed on a %s resource: injected", r["resourceType"])
	}
	if id, ok := r["id"].(string); ok {
		r["id"] = f.AnonymizedID(id)
	}
	delete(r, "gender")
	delete(r, "valueString")
	if s, ok := r["subject"].(map[string]any); ok {
		if ref, ok := s["reference"].(string); ok {
			if pid, ok := strings.CutPrefix(ref, "Patient/"); ok {
				s["reference"] = "Patient/" + f.AnonymizedID(pid)
			}
		}
	}
	// resourceType and id first, as a FHIR server and package deid write them.
	out := fmt.Appendf(nil, `{"resourceType":%q`, r["resourceType"])
	if id, ok := r["id"].(string); ok {
		out = fmt.Appendf(out, `,"id":%q`, id)
	}
	keys := make([]string, 0, len(r))
	for k := range r {
		if k != "resourceType" && k != "id" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		v, _ := json.Marshal(r[k])
		out = fmt.Appendf(out, `,%q:%s`, k, v)
	}
	return append(out, '}'), nil
}

// fakeAnonymizers serves one configuration, "cfg", at ETag etag; changing
// etag after kick-off is a configuration edited mid-job.
type fakeAnonymizers struct {
	mu       sync.Mutex
	anon     *fakeAnonymizer
	etag     string
	warnings []string
	loads    int
}

func (f *fakeAnonymizers) Check(ctx context.Context, name, etag string) (string, []string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if name != "cfg" {
		return "", nil, fault.New(fault.Invalid, "the anonymization configuration %q does not exist", name)
	}
	if etag != "" && etag != f.etag {
		return "", nil, fault.New(fault.Invalid, "the anonymization configuration %q does not have the ETag %s", name, etag)
	}
	return f.etag, f.warnings, nil
}

func (f *fakeAnonymizers) Load(ctx context.Context, name, etag string) (Anonymizer, []string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.loads++
	if name != "cfg" || etag != f.etag {
		return nil, nil, fault.New(fault.Permanent, "the anonymization configuration %q changed or was deleted after the export was accepted", name)
	}
	return f.anon, f.warnings, nil
}

// anonymized is what the fake makes of the expected lines.
func anonymized(t *testing.T, a *fakeAnonymizer, want map[string][]string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for typ, lines := range want {
		for _, l := range lines {
			got, err := a.Anonymize([]byte(l))
			if err != nil {
				t.Fatal(err)
			}
			out[typ] = append(out[typ], string(got))
		}
	}
	return out
}

// deidSetup is setup with de-identification configured.
func deidSetup(t *testing.T, set Settings, anons *fakeAnonymizers, wrapBlobs func(Blobs) Blobs) *bundle {
	t.Helper()
	if set.MaxFileBytes == 0 {
		set = DefaultSettings()
	}
	set.Anonymizers = anons
	return setup(t, set, wrapBlobs)
}

// Under processingErrors: skip, every resource is written once and
// anonymized, the one that fails is left out and reported by its type and
// anonymized id only, and a failure at any write changes none of that.
func TestDeidentifiedExportIsExactUnderFailuresAndSkipsWhatFails(t *testing.T) {
	set := DefaultSettings()
	set.MaxFileBytes, set.BlockBytes, set.PageSize = 1500, 500, 3
	const marker = "FAILS-TO-ANONYMIZE"
	run := func(t *testing.T, fb *failingBlobs) (*bundle, *Status, map[string][]string, int) {
		anons := &fakeAnonymizers{anon: &fakeAnonymizer{skip: true, failOn: marker}, etag: `"v1"`}
		b := deidSetup(t, set, anons, func(inner Blobs) Blobs { fb.Blobs = inner; return fb })
		want := population(b.source, 3, 8)
		delete(want, "Group")
		b.source.add(resource("Observation", "bad-one", t0.Add(3*time.Second), `"status":"final","valueString":"`+marker+`"`))
		job, err := b.engine.KickOff(context.Background(), Request{Level: LevelSystem, Types: []string{"Observation", "Patient"},
			Container: "bulk-export", AnonymizationConfig: "cfg"})
		if err != nil {
			t.Fatal(err)
		}
		if job.Request.AnonymizationETag != `"v1"` {
			t.Fatalf("the job recorded ETag %q, want the one validated at kick-off", job.Request.AnonymizationETag)
		}
		deliveries := b.drain(t, 5)
		st, err := b.engine.Status(context.Background(), job.ID, "")
		if err != nil {
			t.Fatal(err)
		}
		return b, st, anonymized(t, anons.anon, want), deliveries
	}
	check := func(t *testing.T, b *bundle, st *Status, want map[string][]string) {
		t.Helper()
		if st.Phase != Completed {
			t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
		}
		got := b.lines(t, st, set.MaxFileBytes)
		wantExactly(t, got, want)
		for _, l := range got["Observation"] {
			if strings.Contains(l, `"o00`) || strings.Contains(l, "Patient/p00") || strings.Contains(l, "xxxx") {
				t.Fatalf("an original id, reference or value reached the output: %s", l)
			}
		}
		errs := b.errorLines(t, st)
		if len(errs) != 1 {
			t.Fatalf("error lines %q; want the one skipped resource once", errs)
		}
		hashed := (&fakeAnonymizer{}).AnonymizedID("bad-one")
		if !strings.Contains(errs[0], "Observation/"+hashed) || !strings.Contains(errs[0], "rule 1 (Observation.valueString)") ||
			strings.Contains(errs[0], "bad-one") || strings.Contains(errs[0], marker) {
			t.Errorf("the skipped resource's OperationOutcome must name its type, anonymized id and rule and nothing of the resource: %s", errs[0])
		}
	}

	clean := &failingBlobs{}
	b, st, want, cleanDeliveries := run(t, clean)
	check(t, b, st, want)
	for i := range 2 * clean.calls {
		failAt, after := i/2+1, i%2 == 1
		t.Run(fmt.Sprintf("fail at write %d of %d after=%v", failAt, clean.calls, after), func(t *testing.T) {
			fb := &failingBlobs{failAt: failAt, afterCommit: after}
			b, st, want, deliveries := run(t, fb)
			if !fb.fired || deliveries <= cleanDeliveries {
				t.Fatalf("the injected failure at write %d was not seen (fired %v, %d deliveries)", failAt, fb.fired, deliveries)
			}
			check(t, b, st, want)
		})
	}
}

// Under processingErrors: raise, the first resource that fails fails the
// job for good, with the rule and the type and nothing of the resource, and
// the message is not delivered again.
func TestDeidentifiedExportUnderRaiseFailsTheJobNamingTheRule(t *testing.T) {
	const marker = "FAILS-TO-ANONYMIZE"
	anons := &fakeAnonymizers{anon: &fakeAnonymizer{failOn: marker}, etag: `"v1"`}
	set := DefaultSettings()
	set.PageSize = 2
	b := deidSetup(t, set, anons, nil)
	population(b.source, 2, 4)
	b.source.add(resource("Observation", "bad-one", t0.Add(5*time.Second), `"status":"final","valueString":"`+marker+`"`))
	st := b.export(t, Request{Level: LevelSystem, Types: []string{"Observation"}, AnonymizationConfig: "cfg"}, 5)
	if st.Phase != Failed {
		t.Fatalf("phase %v; want failed", st.Phase)
	}
	msg := st.Failure.Error()
	if !fault.Is(st.Failure, fault.Permanent) || !strings.Contains(msg, "rule 1 (Observation.valueString) failed on a Observation resource") ||
		!strings.Contains(msg, "raise") || strings.Contains(msg, "bad-one") || strings.Contains(msg, marker) {
		t.Errorf("failure %q (kind %v); want permanent, naming the rule, the type and raise, and nothing of the resource", msg, fault.KindOf(st.Failure))
	}
	if p := b.queue.PoisonQueue().Pending(); len(p) != 0 {
		t.Errorf("poison queue %+v; a permanent failure is recorded and settled, not retried", p)
	}
}

// A de-identified job that fails for a cause other than its
// de-identification shows the client only the kind of failure: the source's
// own words (here a diagnostics text naming a patient) stay out of the status
// answer. The same failure of a plain job shows them.
func TestADeidentifiedJobDoesNotShowTheSourcesWords(t *testing.T) {
	const secret = "Patient/original-7c1"
	sourceFailure := fault.New(fault.Permanent, "the source FHIR server rejected GET /fhir/Observation with 400 Bad Request: no such subject %s", secret)
	for _, deid := range []bool{false, true} {
		t.Run(fmt.Sprintf("deidentified=%v", deid), func(t *testing.T) {
			anons := &fakeAnonymizers{anon: &fakeAnonymizer{}, etag: `"v1"`}
			b := deidSetup(t, DefaultSettings(), anons, nil)
			population(b.source, 2, 4)
			b.source.failures = []error{sourceFailure}
			req := Request{Level: LevelSystem, Types: []string{"Observation"}}
			if deid {
				req.AnonymizationConfig = "cfg"
			}
			st := b.export(t, req, 5)
			if st.Phase != Failed {
				t.Fatalf("phase %v; want failed", st.Phase)
			}
			msg := st.Failure.Error()
			if !fault.Is(st.Failure, fault.Permanent) {
				t.Errorf("failure kind %v; want permanent, as the cause", fault.KindOf(st.Failure))
			}
			if shown := strings.Contains(msg, secret); shown == deid {
				t.Errorf("failure %q: shows the source's words: %v; want %v", msg, shown, !deid)
			}
			if deid && !strings.Contains(msg, "does not show the cause") {
				t.Errorf("failure %q; want it to say why the cause is not shown", msg)
			}
		})
	}
}

// The configuration's warnings (such as Microsoft's misspelt
// processingError key) are in the job's error file, once.
func TestDeidentificationWarningsGoToTheErrorFileOnce(t *testing.T) {
	const warning = `The configuration uses "processingError"; it is read as "processingErrors".`
	anons := &fakeAnonymizers{anon: &fakeAnonymizer{}, etag: `"v1"`, warnings: []string{warning}}
	b := deidSetup(t, Settings{}, anons, nil)
	population(b.source, 2, 1)
	st := b.export(t, Request{Level: LevelSystem, Types: []string{"Patient"}, AnonymizationConfig: "cfg"}, 5)
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	n := 0
	for _, l := range b.errorLines(t, st) {
		if strings.Contains(l, "read as") && strings.Contains(l, `"severity":"warning"`) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("the configuration's warning is in the error files %d times, want once", n)
	}
}

// A configuration edited after kick-off fails the job: it never runs with
// another version than the one validated.
func TestAConfigurationChangedAfterKickOffFailsTheJob(t *testing.T) {
	anons := &fakeAnonymizers{anon: &fakeAnonymizer{}, etag: `"v1"`}
	b := deidSetup(t, Settings{}, anons, nil)
	population(b.source, 2, 1)
	job, err := b.engine.KickOff(context.Background(), Request{Level: LevelSystem, Types: []string{"Patient"}, Container: "bulk-export", AnonymizationConfig: "cfg"})
	if err != nil {
		t.Fatal(err)
	}
	anons.mu.Lock()
	anons.etag = `"v2"`
	anons.mu.Unlock()
	b.drain(t, 5)
	st, err := b.engine.Status(context.Background(), job.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase != Failed || !strings.Contains(st.Failure.Error(), `"cfg"`) || len(st.Output) != 0 {
		t.Fatalf("phase %v, failure %v, %d output files; want failed naming the configuration, no output", st.Phase, st.Failure, len(st.Output))
	}
}

// Deleted lines name the resource by the id it has in a de-identified
// output, so a client can match them; the original ids appear nowhere.
func TestDeletedLinesCarryTheAnonymizedID(t *testing.T) {
	anon := &fakeAnonymizer{}
	anons := &fakeAnonymizers{anon: anon, etag: `"v1"`}
	set := DefaultSettings()
	set.PageSize = 2
	b := deidSetup(t, set, anons, nil)
	output, deleted := deletions(b.source)
	since := t0.Add(30 * time.Second)
	st := b.export(t, Request{Level: LevelSystem, Types: []string{"Observation", "Patient"}, Since: &since, AnonymizationConfig: "cfg"}, 5)
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	wantExactly(t, b.lines(t, st, 0), anonymized(t, anon, output))
	wantDeleted := map[string][]string{}
	for typ, lines := range deleted {
		for _, l := range lines {
			_, after, _ := strings.Cut(l, `"url":"`+typ+"/")
			id, _, _ := strings.Cut(after, `"`)
			wantDeleted[typ] = append(wantDeleted[typ], strings.Replace(l, typ+"/"+id, typ+"/"+anon.AnonymizedID(id), 1))
		}
	}
	got := b.deletedLines(t, st, 0)
	wantExactly(t, got, wantDeleted)
	for _, lines := range got {
		if slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, "/o00") || strings.Contains(l, "/p00") }) {
			t.Fatalf("an original id is in the deleted lines: %q", lines)
		}
	}
}

// A search outcome entry from the source is not copied into a de-identified
// export (its text may name a patient); a line says there was one.
func TestDeidentifiedExportDoesNotCopyTheSourcesOutcomeText(t *testing.T) {
	const phi = "about Patient/p001 Jane Doe"
	outcome := `{"resourceType":"OperationOutcome","issue":[{"severity":"warning","code":"incomplete","diagnostics":"` + phi + `"}]}`
	anons := &fakeAnonymizers{anon: &fakeAnonymizer{}, etag: `"v1"`}
	set := DefaultSettings()
	set.Anonymizers = anons
	b := setup(t, set, nil)
	population(b.source, 2, 2)
	b.engine = New(b.store, b.queue, b.blobs, &noisySource{fakeSource: b.source, typ: "Observation", outcome: outcome}, set, nil)
	st := b.export(t, Request{Level: LevelSystem, Types: []string{"Observation"}, AnonymizationConfig: "cfg"}, 5)
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	errs := b.errorLines(t, st)
	if len(errs) != 1 || strings.Contains(errs[0], "Jane") || strings.Contains(errs[0], "p001") ||
		!strings.Contains(errs[0], "the source reported an issue with the search") {
		t.Errorf("error lines %q; want one line saying the source reported an issue, without its text", errs)
	}
}

// A resource that fails to anonymize and matches two OR-ed _typeFilter
// queries is reported once, as it would be written once.
func TestASkippedResourceOfTwoORedQueriesIsReportedOnce(t *testing.T) {
	const marker = "FAILS-TO-ANONYMIZE"
	anons := &fakeAnonymizers{anon: &fakeAnonymizer{skip: true, failOn: marker}, etag: `"v1"`}
	b := deidSetup(t, Settings{}, anons, nil)
	population(b.source, 3, 6)
	b.source.add(resource("Observation", "bad-one", t0.Add(3*time.Second), `"status":"final","valueString":"`+marker+`"`))
	st := b.export(t, Request{Level: LevelSystem, Types: []string{"Observation"}, AnonymizationConfig: "cfg", TypeFilters: []TypeFilter{
		{Type: "Observation", Query: "status=final"},
		{Type: "Observation", Query: "status=final,preliminary"},
	}}, 5)
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	if got := b.lines(t, st, 0); len(got["Observation"]) != 18 {
		t.Errorf("got %d Observations, want the 18 that anonymize, once each", len(got["Observation"]))
	}
	if errs := b.errorLines(t, st); len(errs) != 1 {
		t.Errorf("error lines %q; want the skipped resource reported once", errs)
	}
}
