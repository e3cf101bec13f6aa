package export_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/rs/zerolog"

	. "github.com/azfhir/bulkexport/handler/internal/export"
)

// drainLogged is drain with a logger in the context, as the queue adapters
// run Process; it returns the JSON lines the engine logged.
func (b *bundle) drainLogged(t *testing.T, ctx context.Context) []map[string]any {
	t.Helper()
	var buf bytes.Buffer
	ctx = zerolog.New(&buf).WithContext(ctx)
	for range 100000 {
		ds, err := b.queue.Receive(ctx, 1, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 0 {
			break
		}
		var msg Message
		if err := json.Unmarshal([]byte(ds[0].Text), &msg); err != nil {
			t.Fatal(err)
		}
		out := b.engine.Process(ctx, msg, Attempt{Number: int(ds[0].DequeueCount), Final: true})
		if out.Action != Settle {
			t.Fatalf("%s: %v (%v)", msg.Item, out.Action, out.Cause)
		}
		if err := b.queue.Delete(ctx, ds[0]); err != nil {
			t.Fatal(err)
		}
	}
	var lines []map[string]any
	sc := bufio.NewScanner(&buf)
	for sc.Scan() {
		var l map[string]any
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("not a JSON log line: %s", sc.Text())
		}
		lines = append(lines, l)
	}
	return lines
}

// The operators' workbook counts completed jobs, resources and bytes from
// the "export completed" line, and time to finish per type from "work item
// done": the job's last item writes the first with the totals the client's
// manifest shows, after every item's own line.
func TestTheLastItemLogsTheJobsCompletionWithItsTotals(t *testing.T) {
	b := setup(t, Settings{}, nil)
	population(b.source, 5, 7)
	ctx := context.Background()
	job, err := b.engine.KickOff(ctx, Request{Level: LevelSystem, Container: "bulk-export"})
	if err != nil {
		t.Fatal(err)
	}
	lines := b.drainLogged(t, ctx)
	st, err := b.engine.Status(ctx, job.ID, "")
	if err != nil || st.Phase != Completed {
		t.Fatalf("status %+v, %v: the export did not complete", st, err)
	}

	var completed []map[string]any
	var doneBytes, doneResources float64
	types := map[string]bool{}
	for i, l := range lines {
		switch l["message"] {
		case "work item done":
			if len(completed) > 0 {
				t.Errorf("line %d: a work item finished after the job was logged as completed", i)
			}
			types[l["type"].(string)] = true
			doneBytes += l["bytes"].(float64)
			doneResources += l["resources"].(float64)
			if d, _ := l["sinceKickOff"].(float64); d < 0 {
				t.Errorf("work item done: sinceKickOff %v", l["sinceKickOff"])
			}
		case "export completed":
			completed = append(completed, l)
		}
	}
	if len(completed) != 1 {
		t.Fatalf("%d \"export completed\" lines, want 1", len(completed))
	}
	c := completed[0]
	var wantBytes int64
	files := 0
	items, _ := b.store.ListItems(ctx, job.ID)
	for _, it := range items {
		for _, f := range it.Files {
			wantBytes += f.Bytes
		}
		files += len(it.Files)
	}
	if c["job"] != job.ID || c["exportLevel"] != string(LevelSystem) ||
		c["resources"] != float64(st.Done) || c["bytes"] != float64(wantBytes) || c["files"] != float64(files) {
		t.Errorf("export completed = %v; want job %s, level system, %d resources, %d bytes, %d files",
			c, job.ID, st.Done, wantBytes, files)
	}
	if wantBytes == 0 || doneBytes != float64(wantBytes) || doneResources != float64(st.Done) {
		t.Errorf("work item done lines add up to %v bytes and %v resources; the files hold %d bytes and %d resources",
			doneBytes, doneResources, wantBytes, st.Done)
	}
	for _, typ := range []string{"Patient", "Observation", "Group"} {
		if !types[typ] {
			t.Errorf("no \"work item done\" line with type %s (got %v)", typ, types)
		}
	}
}

// A job with nothing to export is complete when it is planned: it still
// gets its "export completed" line, or the workbook would count it as
// started and never finished (and the stalled-job alert would fire on it).
func TestAJobWithNothingToExportLogsItsCompletion(t *testing.T) {
	b := setup(t, Settings{}, nil)
	population(b.source, 2, 1)
	ctx := context.Background()
	job, err := b.engine.KickOff(ctx, Request{Level: LevelSystem, Container: "bulk-export", Types: []string{"Condition"}})
	if err != nil {
		t.Fatal(err)
	}
	lines := b.drainLogged(t, ctx)
	if st, err := b.engine.Status(ctx, job.ID, ""); err != nil || st.Phase != Completed || st.Done != 0 {
		t.Fatalf("status %+v, %v: want a completed, empty export", st, err)
	}
	n := 0
	for _, l := range lines {
		if l["message"] == "export completed" {
			n++
			if l["resources"] != float64(0) {
				t.Errorf("export completed of an empty job: %v", l)
			}
		}
	}
	if n != 1 {
		t.Errorf("%d \"export completed\" lines for an empty job, want 1", n)
	}
}
