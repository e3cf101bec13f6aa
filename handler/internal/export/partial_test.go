package export_test

import (
	"context"
	"encoding/json"
	"io"
	"testing"
	"time"

	. "github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// step delivers one queued message, as the queue trigger would; false when
// the queue is empty.
func (b *bundle) step(t *testing.T) bool {
	t.Helper()
	ctx := context.Background()
	ds, err := b.queue.Receive(ctx, 1, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) == 0 {
		return false
	}
	var msg Message
	if err := json.Unmarshal([]byte(ds[0].Text), &msg); err != nil {
		t.Fatal(err)
	}
	if out := b.engine.Process(ctx, msg, Attempt{Number: int(ds[0].DequeueCount)}); out.Action != Settle {
		t.Fatalf("%s: %v (%v)", msg.Item, out.Action, out.Cause)
	}
	if err := b.queue.Delete(ctx, ds[0]); err != nil {
		t.Fatal(err)
	}
	return true
}

func (b *bundle) read(t *testing.T, jobID, name string) (string, error) {
	t.Helper()
	rc, _, err := b.engine.OpenFile(context.Background(), jobID, "", name)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return string(data), nil
}

// TestFilesOfARunningJobAreListedOnlyWhenFinal runs an export one
// invocation at a time (each pages once and continues in a new message), and
// after each reads every file Status lists for a partial manifest. A file,
// once listed, must read the same at every later step and in the end, the
// open file of a running item must not be downloadable, and a job that did
// not ask for partial manifests serves nothing before it completes.
func TestFilesOfARunningJobAreListedOnlyWhenFinal(t *testing.T) {
	set := DefaultSettings()
	set.MaxFileBytes, set.BlockBytes, set.PageSize = 1500, 500, 4
	set.InvocationBudget = time.Nanosecond // one page per invocation
	b := setup(t, set, nil)
	population(b.source, 12, 6)
	ctx := context.Background()
	job, err := b.engine.KickOff(ctx, Request{Level: LevelSystem, Container: "bulk-export", AllowPartialManifests: true})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := b.engine.KickOff(ctx, Request{Level: LevelSystem, Container: "bulk-export"})
	if err != nil {
		t.Fatal(err)
	}

	seen := map[string]string{} // file name -> content when first listed
	early, openRefused := 0, 0
	for steps := 0; b.step(t); steps++ {
		if steps > 10000 {
			t.Fatal("the export never ended")
		}
		st, err := b.engine.Status(ctx, job.ID, "")
		if err != nil {
			t.Fatal(err)
		}
		if st.Phase != InProgress {
			continue
		}
		listed := map[string]bool{}
		for _, f := range st.Files {
			listed[f.Name] = true
			data, err := b.read(t, job.ID, f.Name)
			if err != nil {
				t.Fatalf("%s, listed while the job runs, cannot be read: %v", f.Name, err)
			}
			if before, ok := seen[f.Name]; ok && before != data {
				t.Fatalf("%s changed after it was listed", f.Name)
			} else if !ok {
				seen[f.Name] = data
				early++
			}
		}
		items, err := b.store.ListItems(ctx, job.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			if it.State == ItemPending && len(it.Files) > 0 {
				last := it.Files[len(it.Files)-1].Name
				if listed[last] {
					t.Fatalf("%s, the file %s is still writing, is listed", last, it.ID)
				}
				if _, err := b.read(t, job.ID, last); !fault.Is(err, fault.NotFound) {
					t.Fatalf("the open file %s of a running job: %v, want not found", last, err)
				}
				openRefused++
			}
		}
		if ps, err := b.engine.Status(ctx, plain.ID, ""); err == nil && ps.Phase == InProgress && len(ps.Files) > 0 {
			if _, err := b.read(t, plain.ID, ps.Files[0].Name); !fault.Is(err, fault.NotFound) {
				t.Fatalf("a finished file of a running job without allowPartialManifests: %v, want not found", err)
			}
		}
	}
	st, err := b.engine.Status(ctx, job.ID, "")
	if err != nil || st.Phase != Completed {
		t.Fatalf("status %+v, %v", st, err)
	}
	for _, f := range st.Output {
		data, err := b.read(t, job.ID, f.Name)
		if err != nil {
			t.Fatal(err)
		}
		if before, ok := seen[f.Name]; ok && before != data {
			t.Errorf("%s changed after it was listed", f.Name)
		}
	}
	if early == 0 || early >= len(st.Output) || openRefused == 0 {
		t.Errorf("%d of %d files listed early, %d open files checked: the export did not run long enough to test anything", early, len(st.Output), openRefused)
	}
}
