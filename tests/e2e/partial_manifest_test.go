package e2e

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/tests/bulkclient"
)

// TestPartialManifestsHandOutFinishedFilesWhileTheExportRuns asks for
// allowPartialManifests on an export whose types roll over into many small
// files while a slowed source keeps it running, and downloads every page's
// files as the page arrives. It checks that some files came in a 202 page
// before the export completed; that every file downloaded then is
// byte-identical to the same file downloaded after completion; that the
// union of the pages is the complete manifest, each file once; and that the
// data is the sample data.
func TestPartialManifestsHandOutFinishedFilesWhileTheExportRuns(t *testing.T) {
	src, fhirURL := faultySource(t)
	if err := src.SetSearchDelay(60 * time.Millisecond); err != nil { // a running export for the polls to see
		t.Fatal(err)
	}
	const limit = 150000
	p := newProcess(t, fhirURL, "EXPORT_PAGE_SIZE=10", "EXPORT_MAX_FILE_BYTES="+strconv.Itoa(limit), "EXPORT_BLOCK_BYTES=20000")
	client := &bulkclient.Client{Base: p.base(), MaxWait: 5 * time.Minute}
	const types = "Claim,ExplanationOfBenefit,Patient"

	statusURL, err := client.KickOff(ctx(t), "/$export?_type="+types+"&allowPartialManifests=true")
	if err != nil {
		t.Fatal(err)
	}
	early := map[string][][]byte{} // file name -> lines, downloaded from a 202 page
	var pages []bulkclient.Page
	union, _, err := client.Follow(ctx(t), statusURL, func(ctx context.Context, pg bulkclient.Page) error {
		pages = append(pages, pg)
		if next := pg.Manifest.Next(); next != "" && !strings.HasPrefix(next, statusURL+"?") {
			t.Errorf("next link %q is not a page of the polling URL %s", next, statusURL)
		}
		if pg.Status != http.StatusAccepted {
			return nil
		}
		for _, f := range slices.Concat(pg.Manifest.Output, pg.Manifest.Error) {
			lines, err := client.Lines(ctx, f)
			if err != nil {
				return err
			}
			early[fileName(t, f.URL)] = lines
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(early) == 0 {
		t.Fatalf("no file came in a partial manifest (%d pages, all after completion): the premise of the test failed", len(pages))
	}

	// The complete manifest, from the polling URL again, now that the job is
	// done: its pages list the same files as those followed while it ran.
	final, _, err := client.Wait(ctx(t), statusURL)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fileSet(t, union), fileSet(t, final); !slices.Equal(got, want) {
		t.Errorf("the pages followed while the export ran list\n%q\nthe complete manifest\n%q", got, want)
	}
	got := map[string][][]byte{}
	for _, f := range final.Output {
		lines, err := client.Lines(ctx(t), f)
		if err != nil {
			t.Fatal(err)
		}
		got[f.Type] = append(got[f.Type], lines...)
		if before, ok := early[fileName(t, f.URL)]; ok && !slices.EqualFunc(before, lines, func(a, b []byte) bool { return string(a) == string(b) }) {
			t.Errorf("%s changed after a partial manifest listed it: %d lines then, %d now", fileName(t, f.URL), len(before), len(lines))
		}
	}
	sameResources(t, got, fixture(t, func(typ string, _ map[string]any) bool { return slices.Contains(strings.Split(types, ","), typ) }))
	if len(final.Output) < 10 {
		t.Errorf("%d output files: the types did not roll over as the test needs", len(final.Output))
	}
	t.Logf("%d pages; %d of %d files downloaded while the export ran", len(pages), len(early), len(final.Output)+len(final.Error))
}

// fileName is the file name in a file URL (the proxy route's last segment).
func fileName(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u.Path[strings.LastIndex(u.Path, "/")+1:]
}

// fileSet lists a manifest's files as "section type name count", sorted.
func fileSet(t *testing.T, m bulkclient.Manifest) []string {
	var out []string
	for section, files := range map[string][]bulkclient.ManifestFile{"output": m.Output, "deleted": m.Deleted, "error": m.Error} {
		for _, f := range files {
			n := int64(-1)
			if f.Count != nil {
				n = *f.Count
			}
			out = append(out, section+" "+f.Type+" "+fileName(t, f.URL)+" "+strconv.FormatInt(n, 10))
		}
	}
	slices.Sort(out)
	return out
}
