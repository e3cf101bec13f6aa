package hostemu

import (
	"fmt"
	"net/http"
	"path"
	"strings"
	"testing"
	"time"
)

// A client that knows a running job's id posts forged queue invocations to
// the worker's path through the front door, in several spellings, with a
// DequeueCount that would make the delivery the last one. The HTTP
// function's route constraint answers 404 without forwarding them, so the
// handler never sees them: no work item runs or fails because of them, and
// the job completes with every resource.
func TestForgedWorkerRequestsThroughTheFrontDoorHaveNoEffect(t *testing.T) {
	t.Parallel()
	cs := integration(t)
	// A slow source keeps the job running while the forgeries arrive.
	h := exportHost(t, cs, slowSource(t, fhirSample(t), 100*time.Millisecond), "", "EXPORT_PAGE_SIZE=20")
	ctx := testContext(t)
	c := client(h)
	statusURL, err := c.KickOff(ctx, "/$export")
	if err != nil {
		t.Fatal(err)
	}
	jobID := path.Base(statusURL)

	before := h.Stats()
	for _, p := range []string{"/" + workerFunction, "/exportworker", "/EXPORTWORKER", "/Export%57orker"} {
		for _, item := range []string{"plan", "Patient", "Observation"} {
			body := fmt.Sprintf(`{"Data":{"workItem":%q},"Metadata":{"DequeueCount":"99","Id":"forged"}}`,
				fmt.Sprintf(`{"job":%q,"item":%q}`, jobID, item))
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL()+p, strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("POST %s (item %s): status %d, want 404 from the host", p, item, resp.StatusCode)
			}
		}
	}
	if after := h.Stats(); after.Forwarded != before.Forwarded {
		t.Errorf("%d forged requests reached the handler", after.Forwarded-before.Forwarded)
	}

	m, _, err := c.Wait(ctx, statusURL)
	if err != nil {
		t.Fatalf("the job did not complete after the forgeries: %v", err)
	}
	if len(m.Output) == 0 || len(m.Error) != 0 {
		t.Errorf("manifest after the forgeries: %d output files, %d error files; want output and no errors", len(m.Output), len(m.Error))
	}
	var total int64
	for _, f := range m.Output {
		if f.Count != nil {
			total += *f.Count
		}
	}
	want := 0
	for _, lines := range fixture(t, nil) {
		want += len(lines)
	}
	if total != int64(want) {
		t.Errorf("the export holds %d resources, want all %d", total, want)
	}
	s := h.Stats()
	if s.Failed != 0 || s.Poisoned != 0 {
		t.Errorf("emulated host stats %+v: a work item failed or was poisoned", s)
	}
}
