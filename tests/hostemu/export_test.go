package hostemu

// Acceptance tests of the handler's Functions mode: dist/app.zip run by the
// emulated host against Azurite and dist/fhir-sample, driven only through
// the front door as a Bulk Data client would.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"

	"github.com/azfhir/bulkexport/tests/bulkclient"
)

const workerFunction = "ExportWorker"

// exportHost runs dist/app.zip with isolated storage names.
func exportHost(t *testing.T, cs, fhirBase, hostPatch string, settings ...string) *Host {
	t.Helper()
	env, queue := exportEnv(fhirBase, settings...)
	h := startHost(t, Options{AppZip: distFile(t, "app.zip"), Env: env, StorageConnectionString: cs, HostJSONPatch: hostPatch})
	// function.json names the queue as %EXPORT_QUEUE%: the trigger polls the
	// queue the handler enqueues to because both read the same app setting.
	if got := h.QueueName(workerFunction); got != queue {
		t.Fatalf("the %s trigger polls %q, but EXPORT_QUEUE is %q", workerFunction, got, queue)
	}
	waitServing(t, h)
	svc, err := azqueue.NewServiceClientFromConnectionString(cs, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{queue, queue + "-poison"} {
		t.Cleanup(func() { _, _ = svc.DeleteQueue(context.Background(), name, nil) })
	}
	return h
}

func client(h *Host) *bulkclient.Client {
	return &bulkclient.Client{Base: h.URL(), MaxWait: 2 * time.Minute}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestSystemExportThroughTheEmulatedHost(t *testing.T) {
	t.Parallel()
	cs := integration(t)
	h := exportHost(t, cs, fhirSample(t), "")
	res, err := client(h).Export(testContext(t), "/$export")
	if err != nil {
		t.Fatal(err)
	}
	sameResources(t, res.Resources, fixture(t, nil))
	if !strings.HasPrefix(res.StatusURL, h.URL()+"/") {
		t.Errorf("Content-Location %q is not under the front door %s", res.StatusURL, h.URL())
	}
	if len(res.Manifest.Error) != 0 {
		t.Errorf("manifest error files: %v", res.Manifest.Error)
	}
	s := h.Stats()
	if s.Invocations == 0 || s.Failed != 0 || s.Poisoned != 0 || s.Restarts != 0 {
		t.Errorf("emulated host stats %+v: want invocations, none failed, none poisoned, no restarts", s)
	}
	t.Logf("%d invocations for %d work items, %d forwarded requests", s.Invocations, len(invocationsByItem(h)), s.Forwarded)
}

// slowSource is a reverse proxy in front of the sample server that delays
// every search page, so that a 1 s invocation budget ends mid-item for sure.
func slowSource(t *testing.T, fhirBase string, delay time.Duration) string {
	t.Helper()
	target, _ := url.Parse(fhirBase)
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: target.Scheme, Host: target.Host})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("_summary") != "count" && !strings.HasSuffix(r.URL.Path, "/metadata") {
			time.Sleep(delay)
		}
		proxy.ServeHTTP(w, r) // keeps the proxy's Host, so next links point here
	}))
	t.Cleanup(srv.Close)
	return srv.URL + target.Path
}

// An export forced over many invocations by a tiny time budget writes the
// same bytes, file by file and line by line, as one where every work item
// runs in a single invocation.
func TestExportOverManyInvocationsIsByteIdentical(t *testing.T) {
	t.Parallel()
	cs := integration(t)
	base := fhirSample(t)
	single := exportHost(t, cs, base, "", "EXPORT_PAGE_SIZE=20")
	many := exportHost(t, cs, slowSource(t, base, 40*time.Millisecond), "", "EXPORT_PAGE_SIZE=20", "EXPORT_INVOCATION_BUDGET=1s")

	ctx := testContext(t)
	var wg sync.WaitGroup
	results := make([]*bulkclient.Result, 2)
	errs := make([]error, 2)
	for i, h := range []*Host{single, many} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = client(h).Export(ctx, "/$export")
		}()
	}
	wg.Wait()
	for i, name := range []string{"one invocation per item", "1s budget"} {
		if errs[i] != nil {
			t.Fatalf("%s: %v", name, errs[i])
		}
	}
	one, split := results[0], results[1]
	sameResources(t, split.Resources, fixture(t, nil))

	// The same files, in the same order, with the same counts and bytes.
	files := func(m bulkclient.Manifest) []string {
		var out []string
		for _, f := range m.Output {
			out = append(out, fmt.Sprintf("%s:%d", f.Type, *f.Count))
		}
		slices.Sort(out)
		return out
	}
	if a, b := files(one.Manifest), files(split.Manifest); !slices.Equal(a, b) {
		t.Errorf("manifest files differ:\none invocation: %v\n1s budget:      %v", a, b)
	}
	for typ, lines := range one.Resources {
		other := split.Resources[typ]
		if len(lines) != len(other) {
			t.Errorf("%s: %d lines in one invocation, %d over many", typ, len(lines), len(other))
			continue
		}
		for i := range lines {
			if string(lines[i]) != string(other[i]) {
				t.Errorf("%s: line %d differs between the exports", typ, i+1)
				break
			}
		}
	}

	// The reference really ran each item in one invocation; the other did not.
	for item, invs := range invocationsByItem(single) {
		if len(invs) != 1 {
			t.Errorf("reference export: item %s took %d invocations, want 1", item, len(invs))
		}
	}
	items := invocationsByItem(many)
	s := many.Stats()
	if s.Invocations <= len(items) {
		t.Errorf("1s budget: %d invocations for %d work items; the budget must split items over several invocations", s.Invocations, len(items))
	}
	if s.Failed != 0 || s.Poisoned != 0 {
		t.Errorf("1s budget: stats %+v, want no failures", s)
	}
	var split3 []string
	for item, invs := range items {
		if len(invs) > 1 {
			split3 = append(split3, fmt.Sprintf("%s×%d", item, len(invs)))
		}
	}
	slices.Sort(split3)
	t.Logf("1s budget: %d invocations for %d work items; continued: %s", s.Invocations, len(items), strings.Join(split3, " "))
}

// failingSource answers every Observation search page with 500 (the counts
// of the plan still work) and passes everything else to the sample server.
func failingSource(t *testing.T, fhirBase string) string {
	t.Helper()
	target, _ := url.Parse(fhirBase)
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: target.Scheme, Host: target.Host})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == target.Path+"/Observation" && r.URL.Query().Get("_summary") != "count" {
			w.Header().Set("Content-Type", "application/fhir+json")
			w.WriteHeader(http.StatusInternalServerError)
			json.NewEncoder(w).Encode(map[string]any{"resourceType": "OperationOutcome", "issue": []any{map[string]any{
				"severity": "error", "code": "exception", "diagnostics": "Observation search is broken (test)"}}})
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL + target.Path
}

// fastRetries keeps the handler's own retries of a failing source request
// short, so that a delivery fails in well under a second.
var fastRetries = []string{"FHIR_RETRY_ATTEMPTS=2", "FHIR_RETRY_BACKOFF=50ms"}

// A work item that fails on every delivery fails its job, with an
// OperationOutcome naming the cause, within maxDequeueCount deliveries.
func TestAlwaysFailingWorkItemFailsTheJob(t *testing.T) {
	t.Parallel()
	cs := integration(t)
	h := exportHost(t, cs, failingSource(t, fhirSample(t)), `{"extensions":{"queues":{"visibilityTimeout":"00:00:01"}}}`, fastRetries...)
	if n := h.Config().Queues.MaxDequeueCount; n != 5 {
		t.Fatalf("maxDequeueCount %d, want the shipped 5", n)
	}
	checkFailingExport(t, cs, h)
}

// The app setting AzureFunctionsJobHost__extensions__queues__maxDequeueCount
// overrides host.json for the host; the handler must agree, or its final
// attempt never comes, the host poisons the message and the job never ends.
func TestMaxDequeueCountAppSettingReachesTheHandler(t *testing.T) {
	t.Parallel()
	cs := integration(t)
	h := exportHost(t, cs, failingSource(t, fhirSample(t)), `{"extensions":{"queues":{"visibilityTimeout":"00:00:01"}}}`,
		append([]string{"AzureFunctionsJobHost__extensions__queues__maxDequeueCount=2"}, fastRetries...)...)
	if n := h.Config().Queues.MaxDequeueCount; n != 2 {
		t.Fatalf("the emulated host's maxDequeueCount is %d, want the app setting's 2", n)
	}
	checkFailingExport(t, cs, h)
}

// checkFailingExport exports Patient and Observation from a source whose
// Observation searches always fail, and checks the job fails with the cause
// after exactly maxDequeueCount Observation deliveries.
func checkFailingExport(t *testing.T, cs string, h *Host) {
	t.Helper()
	maxDequeue := h.Config().Queues.MaxDequeueCount
	ctx := testContext(t)
	c := client(h)
	statusURL, err := c.KickOff(ctx, "/$export?_type=Patient,Observation")
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = c.Wait(ctx, statusURL)
	var se *bulkclient.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusInternalServerError {
		t.Fatalf("status answered %v, want 500 with an OperationOutcome", err)
	}
	var oo struct {
		ResourceType string
		Issue        []struct{ Severity, Code, Diagnostics string }
	}
	if err := json.Unmarshal(se.Body, &oo); err != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
		t.Fatalf("status body is not an OperationOutcome: %s", se.Body)
	}
	diag := oo.Issue[0].Diagnostics
	if !strings.Contains(diag, "500") || !strings.Contains(diag, "Observation") {
		t.Errorf("diagnostics %q do not name the cause (500 from the Observation search)", diag)
	}
	t.Logf("OperationOutcome diagnostics: %s", diag)

	obs := invocationsByItem(h)["Observation"]
	var took []string
	for _, inv := range obs {
		took = append(took, inv.Duration.Round(time.Millisecond).String())
	}
	t.Logf("Observation deliveries took %s", strings.Join(took, ", "))
	if len(obs) != maxDequeue {
		t.Errorf("%d Observation invocations, want maxDequeueCount = %d", len(obs), maxDequeue)
	}
	for i, inv := range obs {
		if inv.DequeueCount != int64(i+1) || inv.Succeeded {
			t.Errorf("Observation delivery %d: DequeueCount %d succeeded %v (%s); want every delivery to fail",
				i+1, inv.DequeueCount, inv.Succeeded, inv.Err)
		}
	}
	if patient := invocationsByItem(h)["Patient"]; len(patient) != 1 || !patient[0].Succeeded {
		t.Errorf("Patient invocations %+v, want one successful", patient)
	}

	// The last delivery records the failure on the job and still fails, so
	// the host moves the message to the poison queue, where operators look.
	svc, _ := azqueue.NewServiceClientFromConnectionString(cs, nil)
	queue := h.QueueName(workerFunction)
	for name, want := range map[string]int{queue: 0, queue + "-poison": 1} {
		peek, err := svc.NewQueueClient(name).PeekMessages(ctx, &azqueue.PeekMessagesOptions{NumberOfMessages: to.Ptr[int32](32)})
		if err != nil {
			t.Fatalf("peek %s: %v", name, err)
		}
		if len(peek.Messages) != want {
			t.Errorf("%s holds %d messages, want %d", name, len(peek.Messages), want)
		}
		for _, m := range peek.Messages {
			if !strings.Contains(*m.MessageText, `"item":"Observation"`) {
				t.Errorf("%s holds %s, want the Observation work item", name, *m.MessageText)
			}
		}
	}
	if s := h.Stats(); s.Poisoned != 1 {
		t.Errorf("emulated host poisoned %d messages, want the Observation one", s.Poisoned)
	}
}
