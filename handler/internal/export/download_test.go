package export_test

import (
	"context"
	"net/url"
	"testing"
	"time"

	. "github.com/azfhir/bulkexport/handler/internal/export"
)

// TestFileURLNamesTheJobsBlob checks that a download URL is asked for the
// file's own blob, in the job's container, with the lifetime given; the
// in-memory Blobs echoes both in its fake URL.
func TestFileURLNamesTheJobsBlob(t *testing.T) {
	b := setup(t, Settings{}, nil)
	population(b.source, 2, 1)
	st := b.export(t, Request{Level: LevelSystem, Types: []string{"Patient"}, Container: "research-exports"}, 5)
	if st.Phase != Completed || len(st.Output) == 0 {
		t.Fatalf("export did not complete with files: %+v", st)
	}
	name := st.Output[0].Name
	got, err := b.engine.FileURL(context.Background(), st.Job, name, 90*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(got)
	if err != nil {
		t.Fatal(err)
	}
	if u.Host != "research-exports" || u.Path != "/"+st.Job.ID+"/"+name || u.Query().Get("ttl") != "1m30s" {
		t.Errorf("FileURL = %s, want the blob %s/%s/%s for 1m30s", got, "research-exports", st.Job.ID, name)
	}
	if _, err := b.engine.FileURL(context.Background(), st.Job, name, 0); err == nil {
		t.Error("FileURL with no lifetime succeeded")
	}
}
