package httpapi_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/deidconfig"
	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/httpapi"
	"github.com/azfhir/bulkexport/handler/internal/memstore"
)

// TestDeidKickOffThroughTheRealEngine runs kick-offs through the API, the
// engine and the configuration adapter over in-memory storage: a broken
// configuration is a 400 OperationOutcome naming the problem that leaves no
// job, message or export container; a valid one, pinned by an ETag without
// quotes as Azure's portal shows it, starts a job that records that ETag.
func TestDeidKickOffThroughTheRealEngine(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	blobs := memstore.NewBlobs()
	put := func(name, content string) string {
		if err := blobs.EnsureContainer(ctx, "anonymization"); err != nil {
			t.Fatal(err)
		}
		if err := blobs.StageBlock(ctx, "anonymization", name, 0, []byte(content)); err != nil {
			t.Fatal(err)
		}
		etag, err := blobs.CommitBlocks(ctx, "anonymization", name, 1, export.Condition{})
		if err != nil {
			t.Fatal(err)
		}
		return etag
	}
	const good = `{"fhirVersion":"R4","fhirPathRules":[{"path":"Resource.id","method":"cryptoHash"}],"parameters":{"cryptoHashKey":"123"}}`
	etag := put("good.json", good)
	put("bad.json", strings.Replace(good, "cryptoHash", "scramble", 1))

	store, queue := memstore.NewStore(), memstore.NewQueue(nil)
	set := export.DefaultSettings()
	set.Anonymizers = deidconfig.New(blobs, "anonymization")
	engine := export.New(store, queue, blobs, tinySource{}, set, nil)
	b := &bundle{handler: httpapi.New(engine, httpapi.Options{DefaultContainer: defaultContainer, Auth: noAuth})}

	rec := b.call("GET", "/Patient/$export?_anonymizationConfig=bad.json", nil, "")
	code, diag := checkOutcome(t, rec, http.StatusBadRequest)
	if code != "invalid" || !strings.Contains(diag, `"bad.json"`) || !strings.Contains(diag, `unknown method "scramble"`) {
		t.Errorf("a broken configuration answered code %q, %q; want invalid, naming the blob and the method", code, diag)
	}
	if ids, err := store.OwnerJobs(ctx, anonymousOwner); err != nil || len(ids) != 0 {
		t.Errorf("the refused kick-off indexed jobs %q (%v)", ids, err)
	}
	if ds, _ := queue.Receive(ctx, 10, time.Minute); len(ds) != 0 {
		t.Errorf("the refused kick-off enqueued %d messages", len(ds))
	}
	if _, _, err := blobs.ReadSmall(ctx, defaultContainer, "x", "", 1); !fault.Is(err, fault.NotFound) || !strings.Contains(err.Error(), "container") {
		t.Errorf("the refused kick-off created the export container (%v)", err)
	}

	rec = b.call("GET", "/$export?_type=Patient&_anonymizationConfig=good.json&_anonymizationConfigEtag="+strings.Trim(etag, `"`), nil, "")
	if rec.Code != http.StatusAccepted {
		t.Fatalf("a valid configuration answered %d: %s", rec.Code, rec.Body)
	}
	ids, err := store.OwnerJobs(ctx, anonymousOwner)
	if err != nil || len(ids) != 1 {
		t.Fatalf("jobs after the accepted kick-off: %q (%v)", ids, err)
	}
	job, err := store.GetJob(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if job.Request.AnonymizationConfig != "good.json" || job.Request.AnonymizationETag != etag {
		t.Errorf("the job records %q at %q, want good.json at %s", job.Request.AnonymizationConfig, job.Request.AnonymizationETag, etag)
	}
}
