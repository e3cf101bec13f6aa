package export_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// checkingAnonymizers answers Check with a fixed result and records what it
// was asked; Load is the write side's business and is not used here.
type checkingAnonymizers struct {
	mu       sync.Mutex
	etag     string
	warnings []string
	err      error
	asked    [][2]string // (name, etag) of each Check
}

func (c *checkingAnonymizers) Check(ctx context.Context, name, etag string) (string, []string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.asked = append(c.asked, [2]string{name, etag})
	if c.err != nil {
		return "", nil, c.err
	}
	return c.etag, c.warnings, nil
}

func (c *checkingAnonymizers) Load(ctx context.Context, name, etag string) (Anonymizer, []string, error) {
	return nil, nil, fault.New(fault.Internal, "Load is not expected at kick-off")
}

// touchedBlobs records every write to the destination.
type touchedBlobs struct {
	Blobs
	mu     sync.Mutex
	writes []string
}

func (b *touchedBlobs) touch(what string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.writes = append(b.writes, what)
}

func (b *touchedBlobs) EnsureContainer(ctx context.Context, c string) error {
	b.touch("EnsureContainer " + c)
	return b.Blobs.EnsureContainer(ctx, c)
}

func (b *touchedBlobs) StageBlock(ctx context.Context, c, name string, n int, d []byte) error {
	b.touch("StageBlock " + c + "/" + name)
	return b.Blobs.StageBlock(ctx, c, name, n, d)
}

// nothingCreated fails the test if the kick-off left a trace: a blob write,
// a job in the owner's index or a queue message.
func nothingCreated(t *testing.T, b *bundle, blobs *touchedBlobs, owner string) {
	t.Helper()
	if len(blobs.writes) != 0 {
		t.Errorf("the refused kick-off wrote to the destination: %q", blobs.writes)
	}
	if ids, err := b.store.OwnerJobs(context.Background(), owner); err != nil || len(ids) != 0 {
		t.Errorf("the refused kick-off indexed jobs %q (%v)", ids, err)
	}
	if ds, err := b.queue.Receive(context.Background(), 10, time.Minute); err != nil || len(ds) != 0 {
		t.Errorf("the refused kick-off enqueued %d messages (%v)", len(ds), err)
	}
}

func deidKickOffSetup(t *testing.T, anons Anonymizers) (*bundle, *touchedBlobs) {
	t.Helper()
	set := DefaultSettings()
	set.Anonymizers = anons
	var touched *touchedBlobs
	b := setup(t, set, func(inner Blobs) Blobs {
		touched = &touchedBlobs{Blobs: inner}
		return touched
	})
	return b, touched
}

// TestKickOffRefusesABadAnonymizationConfigurationBeforeAnySideEffect: at
// every level, the configuration's problem is the client's 400, and the
// kick-off leaves no job, no container and no message behind.
func TestKickOffRefusesABadAnonymizationConfigurationBeforeAnySideEffect(t *testing.T) {
	for _, level := range []Level{LevelSystem, LevelPatient, LevelGroup} {
		t.Run(string(level), func(t *testing.T) {
			anons := &checkingAnonymizers{err: fault.New(fault.Invalid, `anonymization configuration "deid.json": fhirPathRules[2]: unknown method "scramble"`)}
			b, blobs := deidKickOffSetup(t, anons)
			req := Request{Level: level, Container: "bulk-export", Owner: "client-1", AnonymizationConfig: "deid.json", AnonymizationETag: `"0x1"`}
			if level == LevelGroup {
				req.GroupID = "g1"
			}
			job, err := b.engine.KickOff(context.Background(), req)
			if !fault.Is(err, fault.Invalid) || !strings.Contains(err.Error(), "scramble") {
				t.Fatalf("KickOff = %v, %v; want fault.Invalid naming the problem", job, err)
			}
			if want := [][2]string{{"deid.json", `"0x1"`}}; !slices.Equal(anons.asked, want) {
				t.Errorf("Check was asked %q, want %q", anons.asked, want)
			}
			nothingCreated(t, b, blobs, "client-1")
		})
	}
}

// TestKickOffRecordsTheETagItValidated: a kick-off without an ETag pins the
// version it read, so no work item can use another, and the configuration's
// warnings reach the job's error files with the others.
func TestKickOffRecordsTheETagItValidated(t *testing.T) {
	anons := &checkingAnonymizers{etag: `"0x8DC2"`, warnings: []string{`the key "processingError" is read as "processingErrors"`}}
	b, _ := deidKickOffSetup(t, anons)
	job, err := b.engine.KickOff(context.Background(), Request{Level: LevelSystem, Container: "bulk-export", Owner: "client-1",
		AnonymizationConfig: "configs/hipaa.json", Warnings: []string{"parameter foo is not supported and was ignored"}})
	if err != nil {
		t.Fatalf("KickOff: %v", err)
	}
	stored, err := b.store.GetJob(context.Background(), job.ID)
	if err != nil {
		t.Fatal(err)
	}
	r := stored.Request
	if r.AnonymizationConfig != "configs/hipaa.json" || r.AnonymizationETag != `"0x8DC2"` {
		t.Errorf("the job records configuration %q at ETag %q, want configs/hipaa.json at \"0x8DC2\"", r.AnonymizationConfig, r.AnonymizationETag)
	}
	want := []string{"parameter foo is not supported and was ignored", `the key "processingError" is read as "processingErrors"`}
	if !slices.Equal(r.Warnings, want) {
		t.Errorf("the job's warnings are %q, want %q", r.Warnings, want)
	}
	if want := [][2]string{{"configs/hipaa.json", ""}}; !slices.Equal(anons.asked, want) {
		t.Errorf("Check was asked %q, want %q", anons.asked, want)
	}
}

// TestKickOffWithoutDeidentification: a plain kick-off never reads a
// configuration; one asking for de-identification where it is not
// configured, or pinning an ETag of no configuration, is refused unchanged.
func TestKickOffWithoutDeidentification(t *testing.T) {
	anons := &checkingAnonymizers{etag: `"0x1"`}
	b, _ := deidKickOffSetup(t, anons)
	job, err := b.engine.KickOff(context.Background(), Request{Level: LevelSystem, Container: "bulk-export", Owner: "client-1"})
	if err != nil {
		t.Fatalf("plain KickOff: %v", err)
	}
	if len(anons.asked) != 0 || job.Request.AnonymizationETag != "" {
		t.Errorf("a plain kick-off checked %q and recorded ETag %q", anons.asked, job.Request.AnonymizationETag)
	}

	_, err = b.engine.KickOff(context.Background(), Request{Level: LevelSystem, Container: "bulk-export", Owner: "client-2", AnonymizationETag: `"0x1"`})
	if !fault.Is(err, fault.Invalid) || !strings.Contains(err.Error(), "_anonymizationConfigEtag") {
		t.Errorf("an ETag without a configuration: %v; want fault.Invalid naming _anonymizationConfigEtag", err)
	}

	off, blobs := deidKickOffSetup(t, nil)
	_, err = off.engine.KickOff(context.Background(), Request{Level: LevelPatient, Container: "bulk-export", Owner: "client-1", AnonymizationConfig: "deid.json"})
	if !fault.Is(err, fault.Invalid) || !strings.Contains(err.Error(), "de-identified export is not configured") {
		t.Errorf("de-identification where it is off: %v; want fault.Invalid saying it is not configured", err)
	}
	nothingCreated(t, off, blobs, "client-1")
}
