// Package exportcheck compares what an export delivered with the source data
// it came from, for the end-to-end and emulated-host tests: every resource
// exactly once, byte-equal after compaction, and no other type.
package exportcheck

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// Fixture returns the compacted lines of the NDJSON files in dir (one file
// per type, <Type>.ndjson) by type, keeping those keep accepts (all if nil).
func Fixture(t testing.TB, dir string, keep func(typ string, resource map[string]any) bool) map[string][]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.ndjson"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixture files in %s: %v", dir, err)
	}
	out := map[string][]string{}
	for _, f := range files {
		typ := strings.TrimSuffix(filepath.Base(f), ".ndjson")
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(nil, 1<<24)
		for sc.Scan() {
			var r map[string]any
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if keep != nil && !keep(typ, r) {
				continue
			}
			var b bytes.Buffer
			if err := json.Compact(&b, sc.Bytes()); err != nil {
				t.Fatal(err)
			}
			out[typ] = append(out[typ], b.String())
		}
		fh.Close()
	}
	return out
}

// SameResources checks that an export (lines by type) holds exactly want.
func SameResources(t testing.TB, got map[string][][]byte, want map[string][]string) {
	t.Helper()
	for typ, w := range want {
		if len(w) == 0 {
			continue
		}
		var g []string
		for _, l := range got[typ] {
			g = append(g, string(l))
		}
		w = append([]string(nil), w...)
		sort.Strings(g)
		sort.Strings(w)
		if len(g) != len(w) {
			t.Errorf("%s: exported %d resources, want %d", typ, len(g), len(w))
			continue
		}
		for i := range g {
			if g[i] != w[i] {
				t.Errorf("%s: exported resources differ from the source (first difference at sorted index %d)", typ, i)
				break
			}
		}
	}
	for typ, g := range got {
		if len(want[typ]) == 0 {
			t.Errorf("unexpected type %s in the export (%d resources)", typ, len(g))
		}
	}
}
