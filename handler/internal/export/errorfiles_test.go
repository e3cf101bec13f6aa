package export_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"

	. "github.com/azfhir/bulkexport/handler/internal/export"
)

// noisySource sends, in the searches of one type, a search outcome entry at
// the end of the first page and one malformed entry at the start of chosen
// pages, as a source with partial results or broken records would.
type noisySource struct {
	*fakeSource
	typ     string
	outcome string         // the outcome entry of the first page
	bad     map[int]string // page offset -> the raw entry sent first on that page
}

func (s *noisySource) Page(ctx context.Context, u string, visit func(Entry) error) (string, error) {
	pu, err := url.Parse(u)
	if err != nil || strings.TrimPrefix(pu.Path, "/") != s.typ {
		return s.fakeSource.Page(ctx, u, visit)
	}
	off, _ := strconv.Atoi(pu.Query().Get("_offset"))
	if raw, ok := s.bad[off]; ok {
		if err := visit(Entry{Resource: []byte(raw), Mode: "match"}); err != nil {
			return "", err
		}
	}
	next, err := s.fakeSource.Page(ctx, u, visit)
	if err == nil && off == 0 {
		err = visit(Entry{Resource: []byte(s.outcome), Mode: "outcome"})
	}
	return next, err
}

// errorLines downloads the error files the status lists and returns their lines.
func (b *bundle) errorLines(t *testing.T, st *Status) []string {
	t.Helper()
	var out []string
	for _, f := range st.Errors {
		if f.Type != "OperationOutcome" {
			t.Errorf("error file %s has type %q, want OperationOutcome", f.Name, f.Type)
		}
		rc, _, err := b.engine.OpenFile(context.Background(), st.Job.ID, "", f.Name)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(rc)
		rc.Close()
		var n int64
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			n++
			out = append(out, sc.Text())
		}
		if n != f.Count {
			t.Errorf("%s: manifest count %d, file has %d lines", f.Name, f.Count, n)
		}
	}
	return out
}

func TestOutcomeEntriesAndMalformedResourcesGoToErrorFilesOnceUnderFailures(t *testing.T) {
	set := DefaultSettings()
	set.MaxFileBytes, set.BlockBytes, set.PageSize = 1500, 500, 3
	const phi = "SECRET-PHI"
	outcome := `{"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "incomplete", "diagnostics": "search results were truncated"}]}`
	bad := map[int]string{
		0:  `{"resourceType":"Patient","id":"x","name":[{"text":"` + phi + `"}]}`,
		3:  `{"resourceType":"Observation","valueString":"` + phi + `"}`,
		6:  `"` + phi + `"`,
		9:  `{"id":"o1","valueString":"` + phi + `"}`,
		12: `{"resourceType":"Observation","id":"o2","valueString":"` + phi,
	}
	// Each malformed entry is the first of its page (page = offset/3 + 1).
	wantErrors := []string{compact(outcome)}
	for off, why := range map[int]string{
		0:  "the resource is of type Patient, not Observation",
		3:  "the resource has no id",
		6:  "the resource is not a JSON object",
		9:  "the resource has no resourceType",
		12: "the resource is not valid JSON",
	} {
		wantErrors = append(wantErrors, fmt.Sprintf(`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"Observation search, page %d, entry 1: %s; the entry was left out of the export"}]}`, off/3+1, why))
	}
	slices.Sort(wantErrors)

	run := func(t *testing.T, fb *failingBlobs) (*bundle, *Status, map[string][]string, int) {
		b := setup(t, set, func(inner Blobs) Blobs { fb.Blobs = inner; return fb })
		want := population(b.source, 3, 8)
		delete(want, "Group")
		b.engine = New(b.store, b.queue, b.blobs, &noisySource{fakeSource: b.source, typ: "Observation", outcome: outcome, bad: bad}, set, nil)
		job, err := b.engine.KickOff(context.Background(), Request{Level: LevelSystem, Types: []string{"Observation", "Patient"}, Container: "bulk-export"})
		if err != nil {
			t.Fatal(err)
		}
		deliveries := b.drain(t, 5)
		st, err := b.engine.Status(context.Background(), job.ID, "")
		if err != nil {
			t.Fatal(err)
		}
		return b, st, want, deliveries
	}
	check := func(t *testing.T, b *bundle, st *Status, want map[string][]string) {
		t.Helper()
		if st.Phase != Completed {
			t.Fatalf("phase %v, failure %v; want the job to complete despite the bad entries", st.Phase, st.Failure)
		}
		wantExactly(t, b.lines(t, st, set.MaxFileBytes), want)
		got := b.errorLines(t, st)
		slices.Sort(got)
		if strings.Join(got, "\n") != strings.Join(wantErrors, "\n") {
			t.Errorf("error lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantErrors, "\n"))
		}
		for _, l := range got {
			if strings.Contains(l, phi) {
				t.Errorf("an error line copies the content of the resource: %s", l)
			}
		}
	}

	clean := &failingBlobs{}
	b, st, want, cleanDeliveries := run(t, clean)
	check(t, b, st, want)
	if len(st.Errors) == 0 || !strings.HasPrefix(st.Errors[0].Name, "Observation-errors-") {
		t.Fatalf("errors %+v; want the Observation error file listed", st.Errors)
	}
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
