package export_test

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/deid"
	. "github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/memstore"
)

// oneAnonymizer serves one package deid anonymizer under any name and ETag.
type oneAnonymizer struct{ a *deid.Anonymizer }

func (o oneAnonymizer) Check(ctx context.Context, name, etag string) (string, []string, error) {
	return `"bench"`, nil, nil
}

func (o oneAnonymizer) Load(ctx context.Context, name, etag string) (Anonymizer, []string, error) {
	return o.a, nil, nil
}

// hipaaSample builds Microsoft's R4 HIPAA sample configuration with fixed keys.
func hipaaSample(tb testing.TB) *deid.Anonymizer {
	raw, err := os.ReadFile("../deid/testdata/configuration-sample.json")
	if err != nil {
		tb.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		tb.Fatal(err)
	}
	params := doc["parameters"].(map[string]any)
	params["cryptoHashKey"], params["dateShiftKey"], params["encryptKey"] = "123", "123", "704ab12c8e3e46d4bea600ef62a6bec7"
	data, _ := json.Marshal(doc)
	cfg, _, err := deid.ParseConfig(data)
	if err != nil {
		tb.Fatal(err)
	}
	a, err := deid.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

// BenchmarkExportItemDeidentified is BenchmarkExportItem's production case
// (files=64MiB, compact entries from the source) with Microsoft's R4 HIPAA
// sample configuration applied in the write path: the engine's whole work
// per byte of a de-identified export. MB/s counts the source's NDJSON bytes
// (the anonymized output is of another size).
func BenchmarkExportItemDeidentified(b *testing.B) {
	resources, ndjsonBytes := benchData(benchResources, false)
	src := &benchSource{fakeSource: newFakeSource(t0.Add(48 * time.Hour)), typ: "Observation", resources: resources, compact: true}
	set := DefaultSettings()
	set.Anonymizers = oneAnonymizer{hipaaSample(b)}
	run := func() (*Engine, *Status) {
		ctx := context.Background()
		queue := memstore.NewQueue(nil)
		engine := New(memstore.NewStore(), queue, memstore.NewBlobs(), src, set, nil)
		job, err := engine.KickOff(ctx, Request{Level: LevelSystem, Types: []string{src.typ}, Container: "bulk-export", AnonymizationConfig: "hipaa.json"})
		if err != nil {
			b.Fatal(err)
		}
		for {
			ds, err := queue.Receive(ctx, 1, time.Hour)
			if err != nil {
				b.Fatal(err)
			}
			if len(ds) == 0 {
				break
			}
			var msg Message
			if err := json.Unmarshal([]byte(ds[0].Text), &msg); err != nil {
				b.Fatal(err)
			}
			if out := engine.Process(ctx, msg, Attempt{Number: 1, Final: true}); out != Done() {
				b.Fatalf("work item %s: %v: %v", msg.Item, out, out.Cause)
			}
			queue.Delete(ctx, ds[0])
		}
		st, err := engine.Status(ctx, job.ID, "")
		if err != nil || st.Phase != Completed || st.Done != benchResources {
			b.Fatalf("export: %v, phase %v, %d resources, failure %v", err, st.Phase, st.Done, st.Failure)
		}
		return engine, st
	}
	// Premise: the output is anonymized (hashed references, labelled).
	engine, st := run()
	rc, _, err := engine.OpenFile(context.Background(), st.Job.ID, "", st.Output[0].Name)
	if err != nil {
		b.Fatal(err)
	}
	out, _ := io.ReadAll(rc)
	rc.Close()
	if strings.Contains(string(out), "Patient/6c5d9ca9-54d7") || !strings.Contains(string(out), "CRYTOHASH") {
		b.Fatalf("the output is not de-identified: %.300s", out)
	}
	b.SetBytes(ndjsonBytes)
	b.ReportAllocs()
	for b.Loop() {
		run()
	}
}

// BenchmarkAnonymizeBenchObservations is the anonymizer alone on the same
// Observations, to read against BenchmarkExportItemDeidentified: what the
// write path adds to it is the engine's own work.
func BenchmarkAnonymizeBenchObservations(b *testing.B) {
	a := hipaaSample(b)
	resources, ndjsonBytes := benchData(benchResources, false)
	b.SetBytes(ndjsonBytes)
	b.ReportAllocs()
	for b.Loop() {
		for _, r := range resources {
			if _, err := a.Anonymize(r); err != nil {
				b.Fatal(err)
			}
		}
	}
}
