// Package e2e runs the built binaries (dist/handler serve and
// dist/fhir-sample) against Azurite and drives the service only through its
// public HTTP API, as a Bulk Data client would. It needs EXPORT_INTEGRATION=1,
// BULKEXPORT_DIST and AZURE_STORAGE_CONNECTION_STRING (make test sets them).
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/tests/bulkclient"
	"github.com/azfhir/bulkexport/tests/exportcheck"
	"github.com/azfhir/bulkexport/tests/testproc"
)

const dataDir = "../data/synthea-r4-10"

// service is one running handler with its own table, queue and container.
type service struct {
	base   string
	client *bulkclient.Client
	env    []string
	logs   *logBuffer // everything the handler printed
}

var fhirBase string

func TestMain(m *testing.M) {
	if os.Getenv("EXPORT_INTEGRATION") != "1" {
		fmt.Println("e2e: skipped (set EXPORT_INTEGRATION=1, as `make test` does)")
		os.Exit(0)
	}
	dist := os.Getenv("BULKEXPORT_DIST")
	if dist == "" || os.Getenv("AZURE_STORAGE_CONNECTION_STRING") == "" {
		fmt.Println("e2e: BULKEXPORT_DIST and AZURE_STORAGE_CONNECTION_STRING are required with EXPORT_INTEGRATION=1")
		os.Exit(1)
	}
	addr := testproc.FreeAddr()
	sample := exec.Command(filepath.Join(dist, "fhir-sample"), "-data", dataDir, "-addr", addr)
	sample.Stdout, sample.Stderr = os.Stdout, os.Stderr
	if err := sample.Start(); err != nil {
		fmt.Println("e2e: start fhir-sample:", err)
		os.Exit(1)
	}
	fhirBase = "http://" + addr + "/fhir"
	if err := testproc.WaitReady(fhirBase + "/metadata"); err != nil {
		fmt.Println("e2e:", err)
		sample.Process.Kill()
		os.Exit(1)
	}
	code := m.Run()
	sample.Process.Kill()
	sample.Wait()
	os.Exit(code)
}

// startService runs `handler serve` with isolated storage names and extra
// settings, and stops it when the test ends.
func startService(t *testing.T, extra ...string) *service {
	t.Helper()
	suffix := testproc.RandomSuffix()
	addr := testproc.FreeAddr()
	env := append(os.Environ(),
		"AzureWebJobsStorage="+os.Getenv("AZURE_STORAGE_CONNECTION_STRING"),
		"FHIR_SERVER_URL="+fhirBase,
		// Tests of authentication pass AUTH_MODE=oidc and its settings in
		// extra; the rest run as the anonymous client, whose cap is raised so
		// that tests starting many jobs on one service are not refused.
		"AUTH_MODE=none",
		"EXPORT_MAX_ACTIVE_JOBS_PER_CLIENT=100",
		"EXPORT_TABLE=e2e"+suffix,
		"EXPORT_QUEUE=e2e-"+suffix,
		"EXPORT_CONTAINER=e2e-"+suffix,
		"EXPORT_RETRY_AFTER=1s",
		"EXPORT_RETRY_DELAY=1s",
		"LOG_LEVEL=info",
	)
	env = append(env, extra...)
	cmd := exec.Command(filepath.Join(os.Getenv("BULKEXPORT_DIST"), "handler"), "serve", "-addr", addr)
	cmd.Env = env
	logs := &logBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("handler log:\n%s", tail(logs.String(), 60))
		}
	})
	base := "http://" + addr
	if err := testproc.WaitReady(base + "/metadata"); err != nil {
		t.Fatalf("%v\n%s", err, logs.String())
	}
	return &service{base: base, env: env, logs: logs, client: &bulkclient.Client{Base: base, MaxWait: 3 * time.Minute}}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// fixture returns the sample data's lines by type, compacted, filtered by keep.
func fixture(t *testing.T, keep func(typ string, r map[string]any) bool) map[string][]string {
	return exportcheck.Fixture(t, dataDir, keep)
}

// sameResources checks that an export holds exactly want: each resource
// once, byte-equal after compaction, and no other type.
func sameResources(t *testing.T, got map[string][][]byte, want map[string][]string) {
	t.Helper()
	exportcheck.SameResources(t, got, want)
}

func lastUpdated(r map[string]any) time.Time {
	meta, _ := r["meta"].(map[string]any)
	s, _ := meta["lastUpdated"].(string)
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return ts
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	return c
}

// waitAndDownloadAll waits for the export at statusURL to complete and
// downloads every file of its manifest (Download checks each file's count and
// the type of every line).
func waitAndDownloadAll(t *testing.T, client *bulkclient.Client, statusURL string) (bulkclient.Manifest, map[string][][]byte, [][]byte) {
	t.Helper()
	m, _, err := client.Wait(ctx(t), statusURL)
	if err != nil {
		t.Fatal(err)
	}
	got, errs, err := client.Download(ctx(t), m)
	if err != nil {
		t.Fatal(err)
	}
	return m, got, errs
}
