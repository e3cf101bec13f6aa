package export_test

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	. "github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

var (
	alice = strings.Repeat("a1", 32)
	bob   = strings.Repeat("b2", 32)
)

// Another client's job is answered exactly as an unknown one, and asking
// for it changes nothing for its owner.
func TestAnotherOwnersJobIsNotFoundAndUnharmed(t *testing.T) {
	b := setup(t, Settings{}, nil)
	population(b.source, 2, 2)
	ctx := context.Background()
	job, err := b.engine.KickOff(ctx, Request{Level: LevelSystem, Owner: alice, Container: "bulk-export"})
	if err != nil {
		t.Fatal(err)
	}
	b.drain(t, 5)
	st, err := b.engine.Status(ctx, job.ID, alice)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Output) == 0 {
		t.Fatalf("alice's export has no files: %+v", st)
	}
	id, file := st.Job.ID, st.Output[0].Name

	unknown := "019000000000" + strings.Repeat("c3", 16)
	_, wantErr := b.engine.Status(ctx, unknown, bob)
	if !fault.Is(wantErr, fault.NotFound) {
		t.Fatalf("status of an unknown job: %v, want not found", wantErr)
	}
	same := func(what string, err error) {
		t.Helper()
		if !fault.Is(err, fault.NotFound) {
			t.Fatalf("%s of alice's job by bob: %v, want not found", what, err)
		}
		if got, want := strings.ReplaceAll(err.Error(), id, "ID"), strings.ReplaceAll(wantErr.Error(), unknown, "ID"); got != want {
			t.Errorf("%s of alice's job by bob says %q; an unknown job says %q", what, got, want)
		}
	}
	_, err = b.engine.Status(ctx, id, bob)
	same("status", err)
	_, _, err = b.engine.OpenFile(ctx, id, bob, file)
	same("download", err)
	same("cancel", b.engine.Cancel(ctx, id, bob))
	_, err = b.engine.Status(ctx, id, "")
	same("status without an owner", err)

	got, err := b.engine.Status(ctx, id, alice)
	if err != nil || got.Phase != Completed {
		t.Fatalf("alice's status after bob's tries: %v, %v", got, err)
	}
	rc, _, err := b.engine.OpenFile(ctx, id, alice, file)
	if err != nil {
		t.Fatalf("alice's download after bob's tries: %v", err)
	}
	data, _ := io.ReadAll(rc)
	rc.Close()
	if len(data) == 0 {
		t.Error("alice's file is empty after bob's tries")
	}
}

// A client with MaxActivePerOwner unfinished jobs is refused with
// fault.Limited and a Retry-After; others are not; once a job finishes or
// is cancelled, the client may start another.
func TestActiveJobsPerOwnerAreCapped(t *testing.T) {
	set := DefaultSettings()
	set.MaxActivePerOwner = 2
	b := setup(t, set, nil)
	population(b.source, 1, 1)
	ctx := context.Background()
	kick := func(owner string) (*Job, error) {
		return b.engine.KickOff(ctx, Request{Level: LevelSystem, Owner: owner, Container: "bulk-export"})
	}
	first, err := kick(alice)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kick(alice); err != nil {
		t.Fatal(err)
	}
	_, err = kick(alice)
	if !fault.Is(err, fault.Limited) || fault.RetryAfter(err) < time.Second {
		t.Fatalf("third unfinished job of alice: %v (retry after %s), want limited with a retry-after", err, fault.RetryAfter(err))
	}
	if _, err := kick(bob); err != nil {
		t.Fatalf("bob is limited by alice's jobs: %v", err)
	}

	if err := b.engine.Cancel(ctx, first.ID, alice); err != nil {
		t.Fatal(err)
	}
	if _, err := kick(alice); err != nil {
		t.Fatalf("alice after cancelling a job: %v, want accepted", err)
	}
	if _, err := kick(alice); !fault.Is(err, fault.Limited) {
		t.Fatalf("alice at the cap again: %v, want limited", err)
	}
	b.drain(t, 5) // every job completes
	if _, err := kick(alice); err != nil {
		t.Fatalf("alice after her jobs completed: %v, want accepted", err)
	}
	ids, err := b.store.OwnerJobs(ctx, alice)
	if err != nil || len(ids) != 1 {
		t.Errorf("alice's index holds %q (%v), want just the job in progress", ids, err)
	}
}
