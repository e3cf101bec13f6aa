package export_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"testing"
	"time"

	. "github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/memstore"
)

// benchResources is the size of the benchmark data set: 23.7 MB of NDJSON,
// Observations of 1,187 bytes each.
const benchResources = 20000

// benchSource serves one type from prepared pages, so that a benchmark
// measures the engine and not the fake: Page only slices a list. The rest of
// the Source port (clock, types, read, search URLs) is the fakeSource's.
type benchSource struct {
	*fakeSource
	typ       string
	resources [][]byte // as the source sends them
	compact   bool     // hand them on as Entry.Compact, as fhirsource does
}

func (s *benchSource) Count(ctx context.Context, typ, query string) (int64, error) {
	if typ != s.typ {
		return 0, nil
	}
	return int64(len(s.resources)), nil
}

func (s *benchSource) Page(ctx context.Context, pageURL string, visit func(Entry) error) (string, error) {
	u, err := url.Parse(pageURL)
	if err != nil {
		return "", err
	}
	q := u.Query()
	count, err := strconv.Atoi(q.Get("_count"))
	if err != nil || count < 1 {
		return "", fmt.Errorf("bench source: page %q without _count", pageURL)
	}
	offset, _ := strconv.Atoi(q.Get("_offset"))
	end := min(offset+count, len(s.resources))
	for _, r := range s.resources[offset:end] {
		if err := visit(Entry{Resource: r, Mode: "match", Compact: s.compact}); err != nil {
			return "", err
		}
	}
	if end >= len(s.resources) {
		return "", nil
	}
	return fmt.Sprintf("fake:///%s?_count=%d&_offset=%d", s.typ, count, end), nil
}

// benchObservation is a Synthea-like blood pressure Observation of 1,186 bytes.
func benchObservation(i int) string {
	return resource("Observation", fmt.Sprintf("5f0c2a44-8e1b-4c7e-9a3d-%012d", i), t0.Add(time.Duration(i)*time.Second), fmt.Sprintf(
		`"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs","display":"vital-signs"}]}],`+
			`"code":{"coding":[{"system":"http://loinc.org","code":"85354-9","display":"Blood pressure panel with all children optional"}],"text":"Blood pressure panel with all children optional"},`+
			`"subject":{"reference":"Patient/6c5d9ca9-54d7-42f5-bfae-%012d"},"encounter":{"reference":"Encounter/7518242e-0b07-41d2-8c40-%012d"},`+
			`"effectiveDateTime":"2011-02-02T16:30:49-05:00","issued":"2011-02-02T16:30:49.825-05:00","component":[`+
			`{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4","display":"Diastolic Blood Pressure"}],"text":"Diastolic Blood Pressure"},"valueQuantity":{"value":%d,"unit":"mm[Hg]","system":"http://unitsofmeasure.org","code":"mm[Hg]"}},`+
			`{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6","display":"Systolic Blood Pressure"}],"text":"Systolic Blood Pressure"},"valueQuantity":{"value":%d,"unit":"mm[Hg]","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}]`,
		i%100, i/7, 60+i%40, 100+i%60))
}

// benchData returns n Observations as the source would send them (compact or
// indented) and the NDJSON bytes they make once exported.
func benchData(n int, indented bool) (resources [][]byte, ndjsonBytes int64) {
	for i := range n {
		r := []byte(benchObservation(i))
		ndjsonBytes += int64(len(r)) + 1
		if indented {
			var b bytes.Buffer
			if err := json.Indent(&b, r, "", "  "); err != nil {
				panic(err)
			}
			r = b.Bytes()
		}
		resources = append(resources, r)
	}
	return resources, ndjsonBytes
}

// benchExport runs one system export of the source's type through a fresh
// in-memory store, queue and blob service, delivering messages as a queue
// trigger would, and returns the engine, its blobs and the final status.
func benchExport(tb testing.TB, src *benchSource, set Settings) (*Engine, *Status) {
	return benchRun(tb, src, set, Request{Level: LevelSystem, Types: []string{src.typ}})
}

// benchRun runs the export req asks for against src, as benchExport does.
func benchRun(tb testing.TB, src Source, set Settings, req Request) (*Engine, *Status) {
	ctx := context.Background()
	queue := memstore.NewQueue(nil)
	engine := New(memstore.NewStore(), queue, memstore.NewBlobs(), src, set, nil)
	req.Container = "bulk-export"
	job, err := engine.KickOff(ctx, req)
	if err != nil {
		tb.Fatal(err)
	}
	for {
		ds, err := queue.Receive(ctx, 1, time.Hour)
		if err != nil {
			tb.Fatal(err)
		}
		if len(ds) == 0 {
			break
		}
		var msg Message
		if err := json.Unmarshal([]byte(ds[0].Text), &msg); err != nil {
			tb.Fatal(err)
		}
		if out := engine.Process(ctx, msg, Attempt{Number: int(ds[0].DequeueCount), Final: true}); out != Done() {
			tb.Fatalf("work item %s: %v: %v", msg.Item, out, out.Cause)
		}
		if err := queue.Delete(ctx, ds[0]); err != nil {
			tb.Fatal(err)
		}
	}
	st, err := engine.Status(ctx, job.ID, "")
	if err != nil {
		tb.Fatal(err)
	}
	if st.Phase != Completed {
		tb.Fatalf("export ended in phase %v: %v", st.Phase, st.Failure)
	}
	return engine, st
}

// checkBenchOutput reads every file of st and checks that together they hold
// n lines and wantBytes bytes, and that no file passes maxBytes.
func checkBenchOutput(tb testing.TB, engine *Engine, st *Status, n int, wantBytes, maxBytes int64) {
	var lines, total int64
	for _, f := range st.Output {
		rc, size, err := engine.OpenFile(context.Background(), st.Job.ID, "", f.Name)
		if err != nil {
			tb.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			tb.Fatal(err)
		}
		if size > maxBytes {
			tb.Fatalf("%s is %d bytes, over the %d limit", f.Name, size, maxBytes)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			lines++
		}
		total += int64(len(data))
	}
	if lines != int64(n) || total != wantBytes {
		tb.Fatalf("export wrote %d lines and %d bytes in %d files, want %d lines and %d bytes", lines, total, len(st.Output), n, wantBytes)
	}
}

// BenchmarkExportItem measures the engine's own work per exported byte: a
// system export of 20,000 Observations of ~1.2 KB, 23.7 MB of NDJSON
// (kick-off, plan, then the work item's page visits, compaction, block
// staging and commits) over memstore and a source that only slices prepared
// pages. MB/s is NDJSON written. "files=64MiB" is the production setting (one
// file); "files=256KiB" rolls over every 220 resources (91 files);
// "indented" has the source send pretty-printed JSON (1.75 KB a resource),
// which the engine must compact. "sourceCompacted" hands the entries on as
// fhirsource does since its one-pass scanner (Entry.Compact): the engine's
// work without json.Compact.
func BenchmarkExportItem(b *testing.B) {
	cases := []struct {
		name     string
		maxBytes int64
		indented bool
		compact  bool
	}{
		{"files=64MiB", 64 << 20, false, false},
		{"files=256KiB", 256 << 10, false, false},
		{"files=64MiB,indented", 64 << 20, true, false},
		{"files=64MiB,sourceCompacted", 64 << 20, false, true},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			resources, ndjsonBytes := benchData(benchResources, c.indented)
			src := &benchSource{fakeSource: newFakeSource(t0.Add(48 * time.Hour)), typ: "Observation", resources: resources, compact: c.compact}
			set := DefaultSettings()
			set.MaxFileBytes = c.maxBytes
			engine, st := benchExport(b, src, set)
			checkBenchOutput(b, engine, st, benchResources, ndjsonBytes, c.maxBytes)

			b.SetBytes(ndjsonBytes)
			b.ReportAllocs()
			files := 0
			for b.Loop() {
				_, st := benchExport(b, src, set)
				files = len(st.Output)
			}
			b.ReportMetric(float64(files), "files/op")
		})
	}
}

// BenchmarkLineWork measures, over the same NDJSON as BenchmarkExportItem,
// the per-resource operations the engine's hot path is made of, so that their
// MB/s read directly against the whole export's: "compact" is json.Compact
// into a reused buffer (what the work item does per line); "fullDecode" is
// the json.Unmarshal of resourceType, id and meta.lastUpdated plus the
// time.Parse that readHead did per entry before it scanned the first keys
// (it is still its fallback); "scan" splits the NDJSON into lines with a bufio.Scanner, the
// floor of any per-line work.
func BenchmarkLineWork(b *testing.B) {
	resources, ndjsonBytes := benchData(benchResources, false)
	ndjson := bytes.Join(resources, []byte("\n"))
	ndjson = append(ndjson, '\n')

	b.Run("compact", func(b *testing.B) {
		var buf bytes.Buffer
		b.SetBytes(ndjsonBytes)
		b.ReportAllocs()
		for b.Loop() {
			for _, r := range resources {
				buf.Reset()
				if err := json.Compact(&buf, r); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("fullDecode", func(b *testing.B) {
		b.SetBytes(ndjsonBytes)
		b.ReportAllocs()
		for b.Loop() {
			for _, r := range resources {
				var v struct {
					ResourceType string `json:"resourceType"`
					ID           string `json:"id"`
					Meta         struct {
						LastUpdated string `json:"lastUpdated"`
					} `json:"meta"`
				}
				if err := json.Unmarshal(r, &v); err != nil || v.ResourceType != "Observation" {
					b.Fatalf("%v %q", err, v.ResourceType)
				}
				if _, err := time.Parse(time.RFC3339Nano, v.Meta.LastUpdated); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("scan", func(b *testing.B) {
		b.SetBytes(ndjsonBytes)
		b.ReportAllocs()
		for b.Loop() {
			sc := bufio.NewScanner(bytes.NewReader(ndjson))
			n := 0
			for sc.Scan() {
				n++
			}
			if n != benchResources {
				b.Fatalf("%d lines", n)
			}
		}
	})
}
