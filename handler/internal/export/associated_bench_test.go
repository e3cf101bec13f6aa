package export_test

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/azfhir/bulkexport/handler/internal/export"
)

// assocBenchSource is benchSource with Provenance searched by target from an
// index, as a FHIR server's reference index would, so that the benchmark
// measures the engine and not a scan of the fake.
type assocBenchSource struct {
	*benchSource
	provenance [][]byte
	byTarget   map[string][]int // "Observation/<id>" -> indexes into provenance
	searches   atomic.Int64
}

func (s *assocBenchSource) SearchParams(ctx context.Context) (map[string][]string, error) {
	return map[string][]string{"Provenance": {"target"}}, nil
}

func (s *assocBenchSource) Page(ctx context.Context, pageURL string, visit func(Entry) error) (string, error) {
	u, err := url.Parse(pageURL)
	if err != nil {
		return "", err
	}
	if u.Path != "/Provenance" {
		return s.benchSource.Page(ctx, pageURL, visit)
	}
	q := u.Query()
	var hits []int
	for ref := range strings.SplitSeq(q.Get("target"), ",") {
		hits = append(hits, s.byTarget[ref]...)
	}
	slices.Sort(hits)
	hits = slices.Compact(hits)
	count, _ := strconv.Atoi(q.Get("_count"))
	offset, _ := strconv.Atoi(q.Get("_offset"))
	if offset == 0 {
		s.searches.Add(1)
	}
	end := min(offset+count, len(hits))
	for _, i := range hits[offset:end] {
		if err := visit(Entry{Resource: s.provenance[i], Mode: "match", Compact: true}); err != nil {
			return "", err
		}
	}
	if end >= len(hits) {
		return "", nil
	}
	q.Set("_offset", strconv.Itoa(end))
	return "fake:///Provenance?" + q.Encode(), nil
}

// newAssocBenchSource serves benchResources Observations and, as Synthea
// writes them, one Provenance per patient of 100 Observations about all of
// them, plus a later one about every 10th Observation. With interleaved, a
// patient's Observations are spread over the whole export (Observation i is
// patient i mod 200's), as an export in _lastUpdated order spreads a
// patient's records: each patient's Provenance then comes back in every
// batch; otherwise they are consecutive, and it comes back in one.
func newAssocBenchSource(interleaved bool) *assocBenchSource {
	resources, _ := benchData(benchResources, false)
	s := &assocBenchSource{
		benchSource: &benchSource{fakeSource: newFakeSource(t0.Add(48 * time.Hour)), typ: "Observation", resources: resources, compact: true},
		byTarget:    map[string][]int{},
	}
	ref := func(i int) string { return fmt.Sprintf("Observation/5f0c2a44-8e1b-4c7e-9a3d-%012d", i) }
	add := func(id string, recorded time.Time, about []int) {
		var targets []string
		for _, i := range about {
			targets = append(targets, fmt.Sprintf(`{"reference":%q}`, ref(i)))
			s.byTarget[ref(i)] = append(s.byTarget[ref(i)], len(s.provenance))
		}
		s.provenance = append(s.provenance, []byte(resource("Provenance", id, t0, fmt.Sprintf(
			`"recorded":%q,"target":[%s],"agent":[{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/provenance-participant-type","code":"author"}]},"who":{"reference":"Practitioner/1"}}]`,
			recorded.Format(time.RFC3339Nano), strings.Join(targets, ",")))))
	}
	patients := benchResources / 100
	for p := range patients {
		var about []int
		for k := range 100 {
			if interleaved {
				about = append(about, k*patients+p)
			} else {
				about = append(about, p*100+k)
			}
		}
		add(fmt.Sprintf("patient-%05d", p), t0, about)
	}
	for i := 0; i < benchResources; i += 10 {
		add(fmt.Sprintf("later-%05d", i), t0.Add(time.Hour), []int{i})
	}
	return s
}

// BenchmarkAssociatedProvenance measures a whole system export of the
// 20,000 Observations (23.7 MB) of BenchmarkExportItem with
// includeAssociatedData: the Observation item, then the associated item
// reading the 23.7 MB back and searching Provenance for 200 batches (4
// at a time). ",interleaved" spreads each patient's Observations over the
// export, as Synthea's are in an export ordered by _lastUpdated: each of the
// 200 patients' Provenance (100 targets) then comes back in every batch. MB/s is the Observation NDJSON, so the figure compares with
// BenchmarkExportItem/files=64MiB,sourceCompacted: the difference is the
// cost of the associated phase on the engine's side (the source answers from
// an index at once; a real one adds its latency per search).
func BenchmarkAssociatedProvenance(b *testing.B) {
	for _, c := range []struct {
		mode        string
		interleaved bool
	}{{RelevantProvenance, false}, {LatestProvenance, false}, {RelevantProvenance, true}, {LatestProvenance, true}} {
		name := c.mode
		if c.interleaved {
			name += ",interleaved"
		}
		mode := c.mode
		b.Run(name, func(b *testing.B) {
			src := newAssocBenchSource(c.interleaved)
			_, ndjsonBytes := benchData(benchResources, false)
			set := DefaultSettings()
			var written int64
			run := func() {
				_, st := benchRun(b, src, set, Request{Level: LevelSystem, Types: []string{"Observation"}, IncludeAssociated: mode})
				written = 0
				for _, f := range st.Output {
					if f.Type == "Provenance" {
						written += f.Count
					}
				}
			}
			run()
			// Relevant: every Provenance; Latest: the later one for every
			// 10th Observation and the patient one for the rest (interleaved,
			// a patient whose every Observation is a 10th has none).
			want := int64(len(src.provenance))
			if mode == LatestProvenance {
				latest := map[string]bool{}
				for i := range benchResources {
					switch {
					case i%10 == 0:
						latest[fmt.Sprint("later-", i)] = true
					case c.interleaved:
						latest[fmt.Sprint("patient-", i%(benchResources/100))] = true
					default:
						latest[fmt.Sprint("patient-", i/100)] = true
					}
				}
				want = int64(len(latest))
			}
			if written != want {
				b.Fatalf("the export wrote %d Provenance; want %d", written, want)
			}
			src.searches.Store(0)
			b.SetBytes(ndjsonBytes)
			b.ReportAllocs()
			for b.Loop() {
				run()
			}
			b.ReportMetric(float64(src.searches.Load())/float64(b.N), "searches/op")
		})
	}
}
