package hostemu

import (
	"archive/zip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"

	"github.com/azfhir/bulkexport/tests/exportcheck"
	"github.com/azfhir/bulkexport/tests/testproc"
)

// The integration tests need EXPORT_INTEGRATION=1, BULKEXPORT_DIST (with
// app.zip and fhir-sample) and AZURE_STORAGE_CONNECTION_STRING (Azurite);
// `make test` sets them. With EXPORT_INTEGRATION=1 a missing piece fails the
// test instead of skipping it.

const dataDir = "../data/synthea-r4-10"

func TestMain(m *testing.M) {
	// The test binary doubles as a fake custom handler inside test packages
	// (see fake_handler_test.go).
	if os.Getenv(fakeHandlerEnv) == "1" {
		runFakeHandler()
		return
	}
	code := m.Run()
	stopSample()
	os.Exit(code)
}

// integration skips t under -short (make check) or unless
// EXPORT_INTEGRATION=1, and fails it when that is set but Azurite is
// unreachable. It returns the storage connection string.
func integration(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: the emulated-host tests need Azurite and dist/")
	}
	if os.Getenv("EXPORT_INTEGRATION") != "1" {
		t.Skip("set EXPORT_INTEGRATION=1 (make test does) to run the emulated-host tests")
	}
	cs := os.Getenv("AZURE_STORAGE_CONNECTION_STRING")
	if cs == "" {
		t.Fatal("EXPORT_INTEGRATION=1 but AZURE_STORAGE_CONNECTION_STRING is not set (Azurite)")
	}
	svc, err := azqueue.NewServiceClientFromConnectionString(cs, nil)
	if err != nil {
		t.Fatalf("AZURE_STORAGE_CONNECTION_STRING: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := svc.GetServiceProperties(ctx, nil); err != nil {
		t.Fatalf("EXPORT_INTEGRATION=1 but Azurite does not answer: %v", err)
	}
	return cs
}

// distFile is a file of BULKEXPORT_DIST; it fails t if it is missing.
func distFile(t *testing.T, name string) string {
	t.Helper()
	dist := os.Getenv("BULKEXPORT_DIST")
	if dist == "" {
		t.Fatal("EXPORT_INTEGRATION=1 but BULKEXPORT_DIST is not set")
	}
	p := filepath.Join(dist, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s is missing (run `make package`, as `make test` does): %v", p, err)
	}
	return p
}

var (
	sampleOnce sync.Once
	sampleCmd  *exec.Cmd
	sampleBase string
	sampleErr  error
)

// fhirSample starts dist/fhir-sample on the bundled data once per test run
// and returns its FHIR base URL.
func fhirSample(t *testing.T) string {
	t.Helper()
	bin := distFile(t, "fhir-sample")
	sampleOnce.Do(func() {
		addr := testproc.FreeAddr()
		sampleCmd = exec.Command(bin, "-data", dataDir, "-addr", addr)
		sampleCmd.Stdout, sampleCmd.Stderr = io.Discard, os.Stderr
		if sampleErr = sampleCmd.Start(); sampleErr != nil {
			return
		}
		sampleBase = "http://" + addr + "/fhir"
		sampleErr = testproc.WaitReady(sampleBase + "/metadata")
	})
	if sampleErr != nil {
		t.Fatalf("fhir-sample: %v", sampleErr)
	}
	return sampleBase
}

func stopSample() {
	if sampleCmd != nil && sampleCmd.Process != nil {
		_ = sampleCmd.Process.Kill()
		_ = sampleCmd.Wait()
	}
}

// logSink collects a host's log lines and prints the tail when the test
// fails (Logf may be called after the test has finished).
type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (s *logSink) Logf(format string, args ...any) {
	line := time.Now().Format("15:04:05.000 ") + fmt.Sprintf(format, args...)
	s.mu.Lock()
	s.lines = append(s.lines, line)
	if len(s.lines) > 5000 {
		s.lines = s.lines[1000:]
	}
	s.mu.Unlock()
}

func (s *logSink) tail(n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	lines := s.lines
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// startHost starts an emulated host and closes it when the test ends.
func startHost(t *testing.T, o Options) *Host {
	t.Helper()
	sink := &logSink{}
	o.Logf = sink.Logf
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h, err := Start(ctx, o)
	if err != nil {
		t.Fatalf("start the emulated host: %v\n%s", err, sink.tail(80))
	}
	t.Cleanup(func() {
		h.Close()
		if t.Failed() {
			t.Logf("emulated host log (tail):\n%s", sink.tail(80))
		}
	})
	return h
}

// exportEnv is the app settings of an isolated handler: its own table, queue
// and container. It returns the settings and the queue name.
func exportEnv(fhirBase string, extra ...string) ([]string, string) {
	suffix := testproc.RandomSuffix()
	queue := "he-" + suffix
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"FHIR_SERVER_URL=" + fhirBase,
		"AUTH_MODE=none",
		"EXPORT_TABLE=he" + suffix,
		"EXPORT_QUEUE=" + queue,
		"EXPORT_CONTAINER=he-" + suffix,
		"EXPORT_RETRY_AFTER=1s",
		"LOG_LEVEL=info",
	}
	return append(env, extra...), queue
}

// fixture returns the sample data's lines by type, compacted.
func fixture(t *testing.T, keep func(typ string) bool) map[string][]string {
	return exportcheck.Fixture(t, dataDir, func(typ string, _ map[string]any) bool { return keep == nil || keep(typ) })
}

// sameResources checks that an export holds exactly want: each resource
// once, byte-equal after compaction, and no other type.
func sameResources(t *testing.T, got map[string][][]byte, want map[string][]string) {
	t.Helper()
	exportcheck.SameResources(t, got, want)
}

// workItem is the {job, item} message the handler enqueues.
type workItem struct {
	Job  string `json:"job"`
	Item string `json:"item"`
}

// invocationsByItem groups a host's invocations by work item id.
func invocationsByItem(h *Host) map[string][]Invocation {
	out := map[string][]Invocation{}
	for _, inv := range h.Invocations() {
		var m workItem
		_ = json.Unmarshal([]byte(inv.Text), &m)
		out[m.Item] = append(out[m.Item], inv)
	}
	return out
}

// writeZip writes a package: files maps zip paths to contents and modes.
func writeZip(t *testing.T, path string, files map[string]zipEntry) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	zw := zip.NewWriter(f)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		e := files[name]
		hdr := &zip.FileHeader{Name: name, Method: zip.Store}
		hdr.SetMode(e.mode)
		w, err := zw.CreateHeader(hdr)
		if err != nil {
			t.Fatal(err)
		}
		if e.path != "" {
			src, err := os.Open(e.path)
			if err != nil {
				t.Fatal(err)
			}
			_, err = io.Copy(w, src)
			src.Close()
			if err != nil {
				t.Fatal(err)
			}
		} else if _, err := w.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

type zipEntry struct {
	data []byte
	path string // copy this file instead of data
	mode os.FileMode
}

// waitServing waits until the handler behind h serves requests: the host
// counts any answer to its probe as ready, and the handler answers 503 until
// its storage is set up, as a cold start would answer a client.
func waitServing(t *testing.T, h *Host) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		resp, err := http.Get(h.URL() + "/metadata")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
	}
	t.Fatal("the handler did not start serving in 30 s")
}
