package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"

	"github.com/azfhir/bulkexport/tests/bulkclient"
	"github.com/azfhir/bulkexport/tests/fhirsample"
	"github.com/azfhir/bulkexport/tests/testproc"
)

// faultySource serves the sample data in-process, with failure injection on,
// so a test can slow it down, fail it and expire its links.
func faultySource(t *testing.T) (*fhirsample.Server, string) {
	t.Helper()
	srv, err := fhirsample.New(dataDir, fhirsample.Options{FailureInjection: true})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return srv, hs.URL + "/fhir"
}

// process is a handler that the test can kill and start again on the same
// storage, port and settings.
type process struct {
	t    *testing.T
	addr string
	env  []string
	cmd  *exec.Cmd
	logs *bytes.Buffer
}

func newProcess(t *testing.T, fhirURL string, extra ...string) *process {
	suffix := testproc.RandomSuffix()
	p := &process{t: t, addr: testproc.FreeAddr(), logs: &bytes.Buffer{}}
	p.env = append(os.Environ(),
		"AzureWebJobsStorage="+os.Getenv("AZURE_STORAGE_CONNECTION_STRING"),
		"FHIR_SERVER_URL="+fhirURL,
		"AUTH_MODE=none",
		"EXPORT_MAX_ACTIVE_JOBS_PER_CLIENT=100",
		"EXPORT_TABLE=fault"+suffix,
		"EXPORT_QUEUE=fault-"+suffix,
		"EXPORT_CONTAINER=fault-"+suffix,
		"EXPORT_RETRY_AFTER=1s",
		"LOG_LEVEL=warn",
	)
	p.env = append(p.env, extra...)
	p.start()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			// Status polls would fill the tail; what explains a failure is
			// everything else.
			t.Logf("handler log (request lines left out):\n%s", tail(withoutRequestLines(p.logs.String()), 80))
		}
	})
	return p
}

func (p *process) setting(name string) string {
	for i := len(p.env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(p.env[i], name+"="); ok {
			return v
		}
	}
	return ""
}

func (p *process) base() string { return "http://" + p.addr }

func (p *process) start() {
	p.t.Helper()
	p.cmd = exec.Command(filepath.Join(os.Getenv("BULKEXPORT_DIST"), "handler"), "serve", "-addr", p.addr)
	p.cmd.Env = p.env
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	if err := testproc.WaitReady(p.base() + "/metadata"); err != nil {
		p.t.Fatalf("%v\n%s", err, tail(p.logs.String(), 40))
	}
}

// kill ends the process with SIGKILL: no shutdown, no deferred writes.
func (p *process) kill() {
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
		p.cmd = nil
	}
}

// TestSIGKILLAtRandomMomentsLosesAndRepeatsNothing kills the handler at
// random moments during an export, restarts it each time, and checks the
// result is exactly the source data. FAULT_KILLS sets the number of kills
// (20 in make test; make fault runs more).
func TestSIGKILLAtRandomMomentsLosesAndRepeatsNothing(t *testing.T) {
	sigkillTest(t)
}

// sigkillTest runs the SIGKILL test with extra handler settings (windows on,
// in windows_test.go).
func sigkillTest(t *testing.T, extra ...string) {
	kills := 20
	if v, err := strconv.Atoi(os.Getenv("FAULT_KILLS")); err == nil && v > 0 {
		kills = v
	}
	src, fhirURL := faultySource(t)
	src.SetSearchDelay(15 * time.Millisecond) // long enough to be killed many times mid-export
	const limit = 120000
	p := newProcess(t, fhirURL, append([]string{
		"EXPORT_PAGE_SIZE=10", "EXPORT_MAX_FILE_BYTES=" + strconv.Itoa(limit), "EXPORT_BLOCK_BYTES=20000",
		"EXPORT_LEASE=3s", "EXPORT_VISIBILITY=4s", "EXPORT_RETRY_DELAY=1s", "EXPORT_STALL_AFTER=30s",
		"EXPORT_WORKERS=4", "EXPORT_MAX_DEQUEUE_COUNT=50"}, extra...)...)
	client := &bulkclient.Client{Base: p.base(), MaxWait: 5 * time.Minute}
	want := fixture(t, nil)
	done, exports := exportsWithKills(t, p, client, "/$export", kills, func(m bulkclient.Manifest, got map[string][][]byte, _ [][]byte) {
		sameResources(t, got, want)
		checkSizes(t, m, limit)
	})
	t.Logf("killed the handler %d times during %d exports", done, exports)
}

// exportsWithKills runs exports of path, export after export, killing the
// handler with SIGKILL at random moments and restarting it, until it has
// been killed kills times (how many kills fit in one export depends on the
// machine's speed). It hands check each export's manifest, resources and
// error lines, and returns the kills and the exports.
func exportsWithKills(t *testing.T, p *process, client *bulkclient.Client, path string, kills int,
	check func(m bulkclient.Manifest, got map[string][][]byte, errs [][]byte)) (done, exports int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	for done < kills {
		statusURL, err := client.KickOff(ctx(t), path)
		if err != nil {
			t.Fatal(err)
		}
		exports++
		for done < kills {
			time.Sleep(time.Duration(100+rng.IntN(900)) * time.Millisecond)
			if finished(t, statusURL) {
				break
			}
			p.kill()
			done++
			p.start()
		}
		check(waitAndDownloadAll(t, client, statusURL))
	}
	return done, exports
}

func finished(t *testing.T, statusURL string) bool {
	resp, err := http.Get(statusURL)
	if err != nil {
		return false
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted {
		t.Fatalf("status answered %d during the export", resp.StatusCode)
	}
	return resp.StatusCode == http.StatusOK
}

func checkSizes(t *testing.T, m bulkclient.Manifest, limit int) {
	t.Helper()
	for _, f := range m.Output {
		resp, err := http.Get(f.URL)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if n > int64(limit) {
			t.Errorf("%s is %d bytes, over the %d limit", f.URL, n, limit)
		}
	}
}

func TestBurstsOf429And500FromTheSourceAreRiddenOut(t *testing.T) {
	src, fhirURL := faultySource(t)
	src.SetSearchDelay(5 * time.Millisecond) // long enough for the bursts to land mid-export
	p := newProcess(t, fhirURL, "EXPORT_PAGE_SIZE=10", "EXPORT_RETRY_DELAY=1s", "FHIR_RETRY_BACKOFF=200ms")
	client := &bulkclient.Client{Base: p.base(), MaxWait: 3 * time.Minute}
	statusURL, err := client.KickOff(ctx(t), "/$export")
	if err != nil {
		t.Fatal(err)
	}
	// Six bursts of four failures, a second apart, alternating 429 (with
	// Retry-After) and 500, while the export runs.
	const bursts = 6
	go func() {
		for n := range bursts {
			status, retry := 429, "1"
			if n%2 == 1 {
				status, retry = 500, ""
			}
			src.FailNext(4, status, retry)
			time.Sleep(time.Second)
		}
	}()
	m, _, err := client.Wait(ctx(t), statusURL)
	if err != nil {
		t.Fatal(err)
	}
	if finishedAt := src.Requests(); finishedAt < 100 {
		t.Errorf("only %d source requests: the bursts did not fall inside the export", finishedAt)
	}
	got, _, err := client.Download(ctx(t), m)
	if err != nil {
		t.Fatal(err)
	}
	sameResources(t, got, fixture(t, nil))
}

func TestNextLinksThatExpireMidExportLoseNothing(t *testing.T) {
	src, fhirURL := faultySource(t)
	p := newProcess(t, fhirURL, "EXPORT_PAGE_SIZE=7", "EXPORT_RETRY_DELAY=1s")
	client := &bulkclient.Client{Base: p.base(), MaxWait: 3 * time.Minute}
	statusURL, err := client.KickOff(ctx(t), "/$export?_type=Observation,Patient,Claim")
	if err != nil {
		t.Fatal(err)
	}
	// Let some pages go by, then expire every next link from then on: only
	// restarts from the recorded _lastUpdated position can finish the export.
	time.Sleep(300 * time.Millisecond)
	src.ExpireLinks(true)
	m, _, err := client.Wait(ctx(t), statusURL)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := client.Download(ctx(t), m)
	if err != nil {
		t.Fatal(err)
	}
	sameResources(t, got, fixture(t, func(typ string, _ map[string]any) bool {
		return typ == "Observation" || typ == "Patient" || typ == "Claim"
	}))
}

func TestCancelDuringABusyExportStopsWorkAndRemovesFiles(t *testing.T) {
	src, fhirURL := faultySource(t)
	src.SetSearchDelay(20 * time.Millisecond)
	p := newProcess(t, fhirURL, "EXPORT_PAGE_SIZE=20", "EXPORT_BLOCK_BYTES=10000", "EXPORT_LEASE=8s")
	client := &bulkclient.Client{Base: p.base()}
	statusURL, err := client.KickOff(ctx(t), "/$export")
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := http.Get(statusURL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if pct, _ := bulkclient.Percent(resp.Header.Get("X-Progress")); pct > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	req, _ := http.NewRequest(http.MethodDelete, statusURL, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE answered %d", resp.StatusCode)
	}
	jobID := statusURL[strings.LastIndex(statusURL, "/")+1:]
	before := src.Requests()
	time.Sleep(3 * time.Second) // within seconds: workers reach a checkpoint and stop
	requestsAfter := src.Requests()
	time.Sleep(2 * time.Second)
	if extra := src.Requests() - requestsAfter; extra > 0 {
		t.Errorf("the source still got %d requests 3 s after the cancel (%d right after it)", extra, requestsAfter-before)
	}
	if names := blobsUnder(t, p.setting("EXPORT_CONTAINER"), jobID+"/"); len(names) != 0 {
		t.Errorf("blobs of the cancelled job remain: %v", names)
	}
	r, _ := http.Get(statusURL)
	checkOutcome(t, "status after cancel", r, http.StatusNotFound)
}

func blobsUnder(t *testing.T, container, prefix string) []string {
	t.Helper()
	c, err := azblob.NewClientFromConnectionString(os.Getenv("AZURE_STORAGE_CONNECTION_STRING"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	pager := c.NewListBlobsFlatPager(container, &azblob.ListBlobsFlatOptions{Prefix: &prefix})
	for pager.More() {
		page, err := pager.NextPage(context.Background())
		if err != nil {
			t.Fatal(fmt.Errorf("list %s/%s: %w", container, prefix, err))
		}
		for _, b := range page.Segment.BlobItems {
			names = append(names, fmt.Sprintf("%s (%d bytes)", *b.Name, *b.Properties.ContentLength))
		}
	}
	return names
}

// ownAzurite starts an Azurite of the test's own, with its data on disk, so
// the test can stop it and start it again.
type ownAzurite struct {
	t   *testing.T
	env []string
}

func startOwnAzurite(t *testing.T) (*ownAzurite, string) {
	t.Helper()
	ports := []string{freePort(), freePort(), freePort()}
	dir := t.TempDir()
	a := &ownAzurite{t: t, env: append(os.Environ(),
		"AZURITE_BLOB_PORT="+ports[0], "AZURITE_QUEUE_PORT="+ports[1], "AZURITE_TABLE_PORT="+ports[2],
		"AZURITE_PIDFILE="+filepath.Join(dir, "azurite.pid"), "AZURITE_LOCATION="+filepath.Join(dir, "data"))}
	cs := a.run("start")
	t.Cleanup(func() { a.run("stop") })
	return a, strings.TrimSpace(cs)
}

func (a *ownAzurite) run(verb string) string {
	a.t.Helper()
	cmd := exec.Command("bash", "../../scripts/azurite/azurite.sh", verb)
	cmd.Env = a.env
	var errs bytes.Buffer
	cmd.Stderr = &errs
	out, err := cmd.Output()
	if err != nil {
		a.t.Fatalf("azurite.sh %s: %v\n%s", verb, err, errs.String())
	}
	return string(out)
}

func freePort() string {
	addr := testproc.FreeAddr()
	return addr[strings.LastIndex(addr, ":")+1:]
}

func TestStorageOutageDuringAnExportIsRiddenOut(t *testing.T) {
	az, cs := startOwnAzurite(t)
	src, fhirURL := faultySource(t)
	src.SetSearchDelay(10 * time.Millisecond)
	p := newProcess(t, fhirURL, "AzureWebJobsStorage="+cs, "EXPORT_PAGE_SIZE=20", "EXPORT_BLOCK_BYTES=20000",
		"EXPORT_LEASE=3s", "EXPORT_VISIBILITY=4s", "EXPORT_RETRY_DELAY=1s", "EXPORT_MAX_DEQUEUE_COUNT=50")
	client := &bulkclient.Client{Base: p.base(), MaxWait: 4 * time.Minute}
	statusURL, err := client.KickOff(ctx(t), "/$export?_type=Observation,Claim,Patient")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if finished(t, statusURL) {
		t.Fatal("the export finished before the outage; slow the source down")
	}
	az.run("stop")
	time.Sleep(2 * time.Second)
	resp, err := http.Get(statusURL)
	if err != nil {
		t.Fatal(err)
	}
	checkOutcome(t, "status while storage is down", resp, http.StatusServiceUnavailable)
	az.run("start")
	m, _, err := client.Wait(ctx(t), statusURL)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := client.Download(ctx(t), m)
	if err != nil {
		t.Fatal(err)
	}
	sameResources(t, got, fixture(t, func(typ string, _ map[string]any) bool {
		return typ == "Observation" || typ == "Claim" || typ == "Patient"
	}))
}

// TestKickOffToADestinationItMayNotWriteIsRefused puts a proxy in front of
// Azurite's blob service that answers every write the way Azure answers an
// identity without a data role (403 AuthorizationPermissionMismatch), and
// checks that kick-off refuses the export at once, naming the problem,
// instead of accepting a job that could never finish.
func TestKickOffToADestinationItMayNotWriteIsRefused(t *testing.T) {
	cs := os.Getenv("AZURE_STORAGE_CONNECTION_STRING")
	var blobEndpoint string
	for _, part := range strings.Split(cs, ";") {
		if v, ok := strings.CutPrefix(part, "BlobEndpoint="); ok {
			blobEndpoint = v
		}
	}
	target, err := url.Parse(blobEndpoint)
	if err != nil || blobEndpoint == "" {
		t.Fatalf("no BlobEndpoint in the connection string: %v", err)
	}
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: target.Scheme, Host: target.Host})
	deny := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Reads, and creating the container (which the role would allow at
		// account level), pass; writing a blob is refused.
		if r.Method == http.MethodPut && r.URL.Query().Get("restype") != "container" {
			w.Header().Set("x-ms-error-code", "AuthorizationPermissionMismatch")
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprint(w, `<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthorizationPermissionMismatch</Code><Message>This request is not authorized to perform this operation using this permission.</Message></Error>`)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(deny.Close)
	denied := strings.Replace(cs, "BlobEndpoint="+blobEndpoint, "BlobEndpoint="+deny.URL+target.Path, 1)

	_, fhirURL := faultySource(t)
	p := newProcess(t, fhirURL, "AzureWebJobsStorage="+denied)
	req, _ := http.NewRequest(http.MethodGet, p.base()+"/$export", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	checkOutcome(t, "kick-off to a read-only destination", resp, http.StatusForbidden)
	if !strings.Contains(string(body), "Storage Blob Data Contributor") {
		t.Errorf("the OperationOutcome does not name the missing role: %s", body)
	}
}

// withoutRequestLines drops the handler's per-request access lines.
func withoutRequestLines(log string) string {
	var kept []string
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, `"message":"request"`) {
			kept = append(kept, line)
		}
	}
	return strings.Join(kept, "\n")
}
