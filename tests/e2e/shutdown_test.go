package e2e

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/tests/bulkclient"
)

// terminate sends SIGTERM and waits for the process to exit, killing it if
// it is still running well past grace. It returns how long the exit took
// and the log written up to then.
func (p *process) terminate(grace time.Duration) (time.Duration, string, error) {
	p.t.Helper()
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- p.cmd.Wait() }()
	var err error
	select {
	case err = <-exited:
	case <-time.After(grace + 30*time.Second):
		p.cmd.Process.Kill()
		<-exited
		p.t.Fatalf("the handler was still running %s after SIGTERM; killed it", grace+30*time.Second)
	}
	elapsed := time.Since(start)
	p.cmd = nil
	return elapsed, p.logs.String(), err
}

// TestSIGTERMDuringAnExportHandsOnAndARestartFinishesIt stops `handler
// serve` with SIGTERM while its workers page the source. It must exit
// within EXPORT_SHUTDOWN_GRACE, having checkpointed its work items and
// released their leases; a new process on the same storage must then finish
// the export exactly. Leases, running visibility and the retry delay are far
// longer than the test waits, so the restart can only finish in time if the
// stopped process handed its items on instead of leaving them held.
func TestSIGTERMDuringAnExportHandsOnAndARestartFinishesIt(t *testing.T) {
	src, fhirURL := faultySource(t)
	src.SetSearchDelay(20 * time.Millisecond) // slow enough that SIGTERM lands mid-export
	const grace = 15 * time.Second
	p := newProcess(t, fhirURL, "EXPORT_PAGE_SIZE=10", "EXPORT_BLOCK_BYTES=20000", "EXPORT_WORKERS=4",
		"EXPORT_LEASE=10m", "EXPORT_STALL_AFTER=20m", "EXPORT_VISIBILITY=10m", "EXPORT_RETRY_DELAY=10m",
		"EXPORT_SHUTDOWN_GRACE="+grace.String(), "LOG_LEVEL=info")
	client := &bulkclient.Client{Base: p.base(), MaxWait: 3 * time.Minute}
	statusURL, err := client.KickOff(ctx(t), "/$export")
	if err != nil {
		t.Fatal(err)
	}
	// Wait until work items are paging (the plan's own searches are few).
	for deadline := time.Now().Add(time.Minute); src.Requests() < 40; {
		if time.Now().After(deadline) {
			t.Fatalf("only %d source requests after a minute; the export did not start", src.Requests())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if finished(t, statusURL) {
		t.Fatal("the export finished before SIGTERM; slow the source down")
	}

	elapsed, logs, err := p.terminate(grace)
	if err != nil {
		t.Errorf("the handler exited with %v after SIGTERM, want status 0", err)
	}
	if elapsed > grace {
		t.Errorf("the handler took %s to exit after SIGTERM, more than its %s grace", elapsed.Round(time.Millisecond), grace)
	}
	if strings.Contains(logs, "grace is over") {
		t.Errorf("work was still running when the grace ended:\n%s", tail(logs, 40))
	}
	handedOn := strings.Count(logs, "shutting down; checkpointed, released and continuing in a new message")
	if handedOn == 0 {
		t.Fatalf("no work item handed on at SIGTERM:\n%s", tail(logs, 40))
	}
	t.Logf("SIGTERM: exited after %s; %d work items handed on", elapsed.Round(time.Millisecond), handedOn)

	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log of the handler that got SIGTERM (request lines left out):\n%s", tail(withoutRequestLines(logs), 60))
		}
	})
	p.start()
	m, _, err := client.Wait(ctx(t), statusURL)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := client.Download(ctx(t), m)
	if err != nil {
		t.Fatal(err)
	}
	sameResources(t, got, fixture(t, nil))
}
