package export_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/azfhir/bulkexport/handler/internal/export"
)

// pageGate tells when the source is asked for its nth Observation page.
type pageGate struct {
	*fakeSource
	mu    sync.Mutex
	pages int
	n     int
	asked chan struct{}
}

func (s *pageGate) Page(ctx context.Context, u string, visit func(Entry) error) (string, error) {
	if strings.HasPrefix(u, "fake:///Observation?") {
		s.mu.Lock()
		s.pages++
		if s.pages == s.n {
			close(s.asked)
		}
		s.mu.Unlock()
	}
	return s.fakeSource.Page(ctx, u, visit)
}

// stageGate holds the staging of any block that holds resource id until the
// gate opens. The wait is bounded only so that a broken read ahead fails the
// test instead of hanging it; nothing here measures speed.
type stageGate struct {
	Blobs
	id   []byte
	open <-chan struct{}
	held bool
}

var errNeverAsked = errors.New("the next page was not asked for while this one was written")

func (g *stageGate) StageBlock(ctx context.Context, c, b string, n int, d []byte) error {
	if bytes.Contains(d, g.id) {
		g.held = true
		select {
		case <-g.open:
		case <-time.After(20 * time.Second):
			return errNeverAsked
		}
	}
	return g.Blobs.StageBlock(ctx, c, b, n, d)
}

// While an item writes page 2, the source has already been asked for page 3.
func TestTheNextPageIsFetchedWhileOneIsWritten(t *testing.T) {
	set := DefaultSettings()
	set.PageSize, set.BlockBytes, set.MaxFileBytes = 3, 100, 1<<20 // every line is staged as it is written
	b := setup(t, set, nil)
	want := map[string][]string{"Observation": population(b.source, 2, 6)["Observation"]} // 12: 4 pages
	src := &pageGate{fakeSource: b.source, n: 3, asked: make(chan struct{})}
	// The first resource of page 2 (o000-03) is staged only once page 3 was asked for.
	gate := &stageGate{Blobs: b.blobs, id: []byte(`"id":"o000-03"`), open: src.asked}
	b.blobs = gate
	b.engine = New(b.store, b.queue, gate, src, set, nil)
	st := b.export(t, Request{Level: LevelSystem, Types: []string{"Observation"}}, 1)
	if !gate.held {
		t.Fatal("the gated resource was never staged; the test proves nothing")
	}
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	wantExactly(t, b.lines(t, st, 0), want)
	if src.pages != 4 {
		t.Errorf("%d Observation pages fetched, want each of the 4 once", src.pages)
	}
}

// A page larger than a block is not held in memory: reading ahead stops
// and the pages are streamed, still each written once.
func TestPagesLargerThanABlockAreStreamed(t *testing.T) {
	set := DefaultSettings()
	set.PageSize, set.BlockBytes, set.MaxFileBytes = 4, 300<<10, 64<<20
	b := setup(t, set, nil)
	want := map[string][]string{}
	for i := range 20 { // 5 pages of 4 resources of 300 kB: 1.2 MB a page, over the 1 MiB a page read ahead may hold
		r := resource("Observation", fmt.Sprintf("big%02d", i), t0.Add(time.Duration(i)*time.Second), `"valueString":"`+strings.Repeat("z", 300<<10)+`"`)
		b.source.add(r)
		want["Observation"] = append(want["Observation"], r)
	}
	src := &pageGate{fakeSource: b.source, n: -1}
	b.engine = New(b.store, b.queue, b.blobs, src, set, nil)
	st := b.export(t, Request{Level: LevelSystem, Types: []string{"Observation"}}, 1)
	if st.Phase != Completed {
		t.Fatalf("phase %v, failure %v", st.Phase, st.Failure)
	}
	wantExactly(t, b.lines(t, st, 0), want)
	if src.pages != 6 {
		t.Errorf("%d Observation page requests, want the 5 pages and the one read ahead that was given up", src.pages)
	}
}
