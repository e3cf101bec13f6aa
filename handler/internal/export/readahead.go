package export

import (
	"context"
	"errors"
)

// Reading ahead: while an item writes one page, the next is already being
// fetched, so the source's latency overlaps the work of writing instead of
// adding to it. Once a page has come in whole, its next link is known: the
// fetch of that next page starts at once, in the background, and the page
// in hand is then written. At most one page is read ahead, and a page is read
// into memory only up to BlockBytes (at least minAheadBytes): the page being
// written and the one being read cost about two blocks more per running item
// than streaming. A larger page stops reading ahead for the rest of the
// invocation, and the item streams its pages as before.
//
// Nothing about the checkpoint changes: a page read ahead is written, and the
// cursor moves past it, only in the same order and at the same page
// boundaries as a page streamed, so a checkpoint records exactly the pages
// whose entries went into the committed blocks. A read ahead that fails is
// the page's failure, as if it had been streamed and had failed before its
// first entry: nothing of it was written, the source client has retried it
// already, and the item fails, retries later or restarts after a lost next
// link as it always did. Handing
// on (budget spent, shutdown) waits for the page read ahead and writes it
// first, so no page is fetched twice.

// minAheadBytes is the least a page read ahead may hold, whatever the block
// size, so that small blocks (tests, tuning) do not turn reading ahead off.
const minAheadBytes = 1 << 20

// errPageTooLarge stops a read ahead whose page would exceed its memory bound.
var errPageTooLarge = errors.New("the page is larger than a block; not read ahead")

// aheadPage is a page read ahead: its entries, their bytes in one buffer,
// and its next link.
type aheadPage struct {
	url     string
	buf     []byte
	entries []aheadEntry
	next    string
	err     error
}

type aheadEntry struct {
	start, end int
	mode       string
	compact    bool
}

// readAhead is the fetch in flight for one item run.
type readAhead struct {
	url    string
	done   chan aheadPage
	cancel context.CancelFunc
}

// startReadAhead fetches pageURL in the background, unless reading ahead is
// off or not allowed now (the item is about to hand on).
func (r *itemRun) startReadAhead(ctx context.Context, pageURL string) {
	if pageURL == "" || r.noAhead || r.mayReadAhead == nil || !r.mayReadAhead() || r.ahead != nil {
		return
	}
	limit := max(r.e.set.BlockBytes, minAheadBytes)
	actx, cancel := context.WithCancel(ctx)
	ra := &readAhead{url: pageURL, done: make(chan aheadPage, 1), cancel: cancel}
	r.ahead = ra
	// Two buffers take turns: the one of the page written last is free
	// again by the time the page after the next is read.
	buf, entries := r.spareBuf[:0], r.spareEntries[:0]
	r.spareBuf, r.spareEntries = nil, nil
	if size := min(r.aheadSize+r.aheadSize/8, limit); cap(buf) < size {
		buf = make([]byte, 0, size)
	}
	go func() {
		p := aheadPage{url: pageURL, buf: buf, entries: entries}
		p.next, p.err = r.e.source.Page(actx, pageURL, func(en Entry) error {
			if len(p.buf)+len(en.Resource) > limit {
				return errPageTooLarge
			}
			start := len(p.buf)
			p.buf = append(p.buf, en.Resource...)
			p.entries = append(p.entries, aheadEntry{start: start, end: len(p.buf), mode: en.Mode, compact: en.Compact})
			return nil
		})
		ra.done <- p
	}()
}

// takeReadAhead returns the page read ahead for pageURL, waiting for it; ok
// is false if none was started for it, or it was too large to hold.
func (r *itemRun) takeReadAhead(pageURL string) (aheadPage, bool) {
	ra := r.ahead
	if ra == nil {
		return aheadPage{}, false
	}
	r.ahead = nil
	p := <-ra.done
	ra.cancel()
	if errors.Is(p.err, errPageTooLarge) {
		r.noAhead = true
		return aheadPage{}, false
	}
	return p, ra.url == pageURL
}

// stopReadAhead abandons a read ahead in flight and waits for it, so that no
// request of this item outlives its invocation.
func (r *itemRun) stopReadAhead() {
	if ra := r.ahead; ra != nil {
		r.ahead = nil
		ra.cancel()
		<-ra.done
	}
}

// readingAhead reports whether run is reading a page ahead, which the
// invocation writes before it hands on.
func readingAhead(run pager) bool {
	r, ok := run.(*itemRun)
	return ok && r.ahead != nil
}

// fetchPage calls visit for each entry of the page at pageURL and returns
// its next link: from the page read ahead for it if there is one (starting
// the read ahead of the page after it before visiting), else by streaming.
func (r *itemRun) fetchPage(ctx context.Context, pageURL string, visit func(Entry) error) (string, error) {
	p, ok := r.takeReadAhead(pageURL)
	if !ok {
		next, err := r.e.source.Page(ctx, pageURL, visit)
		if err == nil {
			r.startReadAhead(ctx, next)
		}
		return next, err
	}
	if p.err != nil {
		// As a streamed page that failed before its first entry: nothing
		// of it was written, and the source client already retried.
		return "", p.err
	}
	r.aheadSize = len(p.buf)
	r.startReadAhead(ctx, p.next)
	defer func() { r.spareBuf, r.spareEntries = p.buf, p.entries }() // visit keeps no entry bytes
	for _, en := range p.entries {
		if err := visit(Entry{Resource: p.buf[en.start:en.end:en.end], Mode: en.mode, Compact: en.compact}); err != nil {
			return "", err
		}
	}
	return p.next, nil
}
