package export

import (
	"bytes"
	"cmp"
	"compress/flate"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Section is the manifest list a file belongs in.
type Section string

const (
	SectionOutput  Section = "output"
	SectionError   Section = "error"
	SectionDeleted Section = "deleted"
)

// ManifestEntry is one file a client may be given, with where it sits among
// its work item's files, so that manifest pages can say which files they
// have handed out (Position).
type ManifestEntry struct {
	OutputFile
	Section Section
	Item    string // work item id
	List    int    // which of the item's file lists: listFiles or listErrors
	Index   int    // position in that list, from 0
}

// The file lists of a work item, in manifest order. A Position counts files
// per (item, list), so a list's number must never change meaning.
const (
	listFiles  = 0 // WorkItem.Files (the plan's warnings file, output or deleted files)
	listErrors = 1 // WorkItem.ErrorFiles
	numLists   = 2
)

// manifestFiles lists the files a client may download now, in manifest
// order (items by type and id, the plan's warnings first; each item's output
// or deleted files, then its error files), and the ids of all the job's
// items in that order. Both are empty until the plan is done: only then is
// the set of items final, which positions rely on (Position.Encode).
//
// A file is listed only once it is complete for good: every file of a done
// item, and of a pending item every file but the last, which may still grow
// and which the next delivery's repair may cut back to its recorded blocks.
// The files before the last were committed before the row that recorded
// their successor, and nothing writes them again, so a file listed here
// never changes (the IG's rule for partial manifests). Files without lines
// are listed too (a Position counts them); pages leave them out.
func manifestFiles(items []*WorkItem) ([]ManifestEntry, []string) {
	if i := slices.IndexFunc(items, func(it *WorkItem) bool { return it.ID == PlanItemID }); i < 0 || items[i].State != ItemDone {
		return nil, nil
	}
	sorted := slices.Clone(items)
	slices.SortFunc(sorted, func(a, b *WorkItem) int {
		return cmp.Or(strings.Compare(a.Type, b.Type), strings.Compare(a.ID, b.ID))
	})
	var out []ManifestEntry
	ids := make([]string, 0, len(sorted))
	for _, it := range sorted {
		ids = append(ids, it.ID)
		lists := [numLists][]File{listFiles: it.Files, listErrors: it.ErrorFiles}
		for l, files := range lists {
			complete := len(files)
			switch it.State {
			case ItemDone:
			case ItemPending:
				complete = max(complete-1, 0)
			default:
				complete = 0 // a failed item
			}
			for i, f := range files[:complete] {
				e := ManifestEntry{OutputFile: OutputFile{Type: it.Type, Name: f.Name, Count: f.Count},
					Section: SectionOutput, Item: it.ID, List: l, Index: i}
				switch {
				case it.ID == PlanItemID || l == listErrors:
					e.Type, e.Section = "OperationOutcome", SectionError
				case it.Kind == ItemDeleted:
					e.Type, e.Section = "Bundle", SectionDeleted
				}
				out = append(out, e)
			}
		}
	}
	return out, ids
}

// Position says how many files of each list of each work item a client has
// been handed by the manifest pages it followed: item id -> count per list.
type Position map[string][]int

func (p Position) at(item string, list int) int {
	if l := p[item]; list < len(l) {
		return l[list]
	}
	return 0
}

func (p Position) set(item string, list, n int) {
	l := p[item]
	for len(l) <= list {
		l = append(l, 0)
	}
	l[list] = n
	p[item] = l
}

// maxPositionCount bounds a count in a decoded position; no item has this
// many files.
const maxPositionCount = 1 << 30

// Encode is the text form of p for page URLs, given the job's items in
// manifest order (Status.Items): a count per item and list, as unsigned
// varints, deflated and base64url-encoded. The zero position is "". A job
// split into thousands of windows has as many items, and a position naming
// each by id would outgrow the 8 KiB request line of the Functions front
// end; this form needs about a byte per item before compression, and runs of
// equal counts compress well. The same position and items give the same text.
func (p Position) Encode(items []string) string {
	raw := make([]byte, 0, len(items)*numLists)
	zero := true
	for _, id := range items {
		for l := range numLists {
			n := p.at(id, l)
			zero = zero && n == 0
			raw = binary.AppendUvarint(raw, uint64(n))
		}
	}
	if zero {
		return ""
	}
	var b bytes.Buffer
	w, _ := flate.NewWriter(&b, flate.BestCompression) // the level is valid
	_, _ = w.Write(raw)                                // a bytes.Buffer does not fail
	_ = w.Close()
	return base64.RawURLEncoding.EncodeToString(b.Bytes())
}

// DecodePosition reads Encode's form for the same items. Anything else,
// which no page link of ours holds, is an error.
func DecodePosition(s string, items []string) (Position, error) {
	p := Position{}
	if s == "" {
		return p, nil
	}
	packed, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("page position is not base64url: %w", err)
	}
	limit := int64(len(items)*numLists*binary.MaxVarintLen64) + 1
	raw, err := io.ReadAll(io.LimitReader(flate.NewReader(bytes.NewReader(packed)), limit))
	if err != nil {
		return nil, fmt.Errorf("page position is malformed: %w", err)
	}
	r := bytes.NewReader(raw)
	for _, id := range items {
		for l := range numLists {
			n, err := binary.ReadUvarint(r)
			if err != nil || n > maxPositionCount {
				return nil, fmt.Errorf("page position does not fit the job's %d work items", len(items))
			}
			if n > 0 {
				p.set(id, l, int(n))
			}
		}
	}
	if r.Len() > 0 {
		return nil, fmt.Errorf("page position does not fit the job's %d work items", len(items))
	}
	// Only Encode's own text: one page, one URL.
	if p.Encode(items) != s {
		return nil, fmt.Errorf("page position is not in its canonical form")
	}
	return p, nil
}

// Add returns p advanced by the counts of q.
func (p Position) Add(q Position) Position {
	out := p.clone()
	for id, l := range q {
		for i, n := range l {
			out.set(id, i, out.at(id, i)+n)
		}
	}
	return out
}

// Sub returns how far q is past p, item by item and list by list (zero
// where it is not): p.Add(p.Sub(q)) is q when q is at or past p everywhere.
// A page URL carries its end this way, as a few counts on a position of
// zeros, which encodes in a few bytes.
func (p Position) Sub(q Position) Position {
	out := Position{}
	for id, l := range q {
		for i, n := range l {
			if d := n - p.at(id, i); d > 0 {
				out.set(id, i, d)
			}
		}
	}
	return out
}

// clone returns a copy of p that can be changed without changing p.
func (p Position) clone() Position {
	out := make(Position, len(p))
	for id, l := range p {
		out[id] = slices.Clone(l)
	}
	return out
}

// PageAfter returns the files of files that pos has not handed out, at most
// limit of them with lines, in order; the position after them; and whether
// files with lines remain after those.
func PageAfter(files []ManifestEntry, pos Position, limit int) (page []ManifestEntry, next Position, more bool) {
	next = pos.clone()
	for _, f := range files {
		if f.Index < pos.at(f.Item, f.List) {
			continue
		}
		if f.Count > 0 {
			if len(page) == limit {
				return page, next, true
			}
			page = append(page, f)
		}
		next.set(f.Item, f.List, f.Index+1)
	}
	return page, next, false
}

// PageBetween returns the files with lines from position from up to
// position to, in order. ok is false unless to is at or past from and at or
// before the files listed now: only such a page was ever linked to.
func PageBetween(files []ManifestEntry, from, to Position) (page []ManifestEntry, ok bool) {
	listed := Position{}
	for _, f := range files {
		listed.set(f.Item, f.List, f.Index+1)
	}
	for _, p := range []Position{from, to, listed} {
		for id := range p {
			for l := range numLists {
				if n := to.at(id, l); n < from.at(id, l) || n > listed.at(id, l) {
					return nil, false
				}
			}
		}
	}
	for _, f := range files {
		if f.Count > 0 && f.Index >= from.at(f.Item, f.List) && f.Index < to.at(f.Item, f.List) {
			page = append(page, f)
		}
	}
	return page, true
}
