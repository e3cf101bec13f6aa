package e2e

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/tests/bulkclient"
)

// TestProgressIsAPercentageBelow100UntilTheManifest polls a running system
// export as the SMART bulk-data-client reads it: every 202 carries an
// X-Progress whose leading integer is a percentage from 0 to 99 that never
// goes back, and that says what it counts (the source's exact total).
func TestProgressIsAPercentageBelow100UntilTheManifest(t *testing.T) {
	src, fhirURL := faultySource(t)
	src.SetSearchDelay(10 * time.Millisecond) // slow enough to be seen running
	p := newProcess(t, fhirURL, "EXPORT_PAGE_SIZE=20", "EXPORT_WORKERS=1", "EXPORT_BLOCK_BYTES=20000")
	client := &bulkclient.Client{Base: p.base(), MaxWait: 3 * time.Minute}
	statusURL, err := client.KickOff(ctx(t), "/$export")
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, lines := range fixture(t, nil) {
		total += len(lines)
	}
	counts := fmt.Sprintf("of %s resources)", groupThousands(total))

	var seen []int
	var headers []string
	for deadline := time.Now().Add(3 * time.Minute); ; {
		if time.Now().After(deadline) {
			t.Fatalf("no manifest after 3 minutes; X-Progress so far %q", headers)
		}
		resp, err := http.Get(statusURL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			break
		}
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("status answered %d while running", resp.StatusCode)
		}
		h := resp.Header.Get("X-Progress")
		pct, ok := bulkclient.Percent(h)
		if !ok || pct < 0 || pct > 99 {
			t.Fatalf("X-Progress %q while running: the SMART client reads %d%% (a number: %v)", h, pct, ok)
		}
		if n := len(seen); n > 0 && pct < seen[n-1] {
			t.Errorf("progress went back from %d%% to %d%% (%q)", seen[n-1], pct, h)
		}
		if pct > 0 && !strings.HasSuffix(h, counts) {
			t.Errorf("X-Progress %q does not count against the source's %d resources", h, total)
		}
		seen = append(seen, pct)
		headers = append(headers, h)
		time.Sleep(100 * time.Millisecond)
	}
	// The premise: the export was seen running, and its progress moving.
	distinct := map[int]bool{}
	for _, p := range seen {
		distinct[p] = true
	}
	if len(distinct) < 3 {
		t.Fatalf("saw only %v while running (%d polls): the export was too quick to watch", seen, len(seen))
	}
	if _, _, err := client.Wait(ctx(t), statusURL); err != nil {
		t.Fatalf("after the manifest: %v", err)
	}
	t.Logf("%d polls, %d distinct percentages, last %q", len(seen), len(distinct), headers[len(headers)-1])
}

// TestEstimatedProgressOfAPatientExport: where the source's counts are only
// upper bounds (a Patient export), the percentage is an estimate, still
// below 100 and never going back while the export runs.
func TestEstimatedProgressOfAPatientExport(t *testing.T) {
	src, fhirURL := faultySource(t)
	src.SetSearchDelay(10 * time.Millisecond)
	p := newProcess(t, fhirURL, "EXPORT_PAGE_SIZE=20", "EXPORT_WORKERS=1", "EXPORT_MEMBER_BATCH=4")
	var seen []int
	estimated := 0
	client := &bulkclient.Client{Base: p.base(), MaxWait: 3 * time.Minute,
		Progress: func(pct int, h string) { // Wait itself refuses anything but 0 to 99
			if n := len(seen); n > 0 && pct < seen[n-1] {
				t.Errorf("progress went back from %d%% to %d%% (%q)", seen[n-1], pct, h)
			}
			seen = append(seen, pct)
			if strings.Contains(h, "estimated;") {
				estimated++
			}
		}}
	res, err := client.Export(ctx(t), "/Patient/$export")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Resources) == 0 {
		t.Fatal("the export returned nothing")
	}
	if estimated == 0 {
		t.Fatalf("no X-Progress said it was an estimate while the items ran (percentages seen: %v)", seen)
	}
	t.Logf("percentages seen: %v", seen)
}

// groupThousands writes n as the service does in X-Progress: 38,483.
func groupThousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
