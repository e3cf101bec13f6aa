package main

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const src = "../../../data/synthea-r4-10"

type parsed struct {
	ResourceType string `json:"resourceType"`
	ID           string `json:"id"`
	Meta         struct {
		LastUpdated string `json:"lastUpdated"`
	} `json:"meta"`
	Member []struct {
		Entity struct {
			Reference string `json:"reference"`
		} `json:"entity"`
	} `json:"member"`
}

// readSet reads a data set folder: the parsed resources and the raw lines by type.
func readSet(t *testing.T, dir string) (map[string][]parsed, map[string][]string) {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.ndjson"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no NDJSON in %s: %v", dir, err)
	}
	res, raw := map[string][]parsed{}, map[string][]string{}
	for _, p := range paths {
		typ := strings.TrimSuffix(filepath.Base(p), ".ndjson")
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<24)
		for sc.Scan() {
			var r parsed
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			res[typ] = append(res[typ], r)
			raw[typ] = append(raw[typ], sc.Text())
		}
		f.Close()
	}
	return res, raw
}

func TestCopiesAreClosedWorldsWithTheSourcesInstants(t *testing.T) {
	out := filepath.Join(t.TempDir(), "data")
	const copies = 3
	st, err := build(src, out, copies)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := readSet(t, src)
	got, raw := readSet(t, out)

	total := 0
	ids := map[string]bool{}
	for typ, ws := range want {
		gs := got[typ]
		if len(gs) != copies*len(ws) {
			t.Fatalf("%s: %d resources, want %d", typ, len(gs), copies*len(ws))
		}
		total += len(gs)
		var wantTimes, gotTimes []string
		for range copies {
			for _, w := range ws {
				wantTimes = append(wantTimes, w.Meta.LastUpdated)
			}
		}
		for _, g := range gs {
			gotTimes = append(gotTimes, g.Meta.LastUpdated)
			if ids[typ+"/"+g.ID] {
				t.Fatalf("duplicate %s/%s", typ, g.ID)
			}
			ids[typ+"/"+g.ID] = true
		}
		slices.Sort(wantTimes)
		slices.Sort(gotTimes)
		if !slices.Equal(wantTimes, gotTimes) {
			t.Errorf("%s: meta.lastUpdated values changed", typ)
		}
	}
	if st.resources != total || len(got) != len(want) {
		t.Errorf("reported %d resources, wrote %d in %d types (source has %d types)", st.resources, total, len(got), len(want))
	}

	// Every reference resolves, and within the copy of the resource that makes it.
	ref := regexp.MustCompile(`"reference":"([A-Za-z]+)/([^"]+)"`)
	refs := 0
	for typ, lines := range raw {
		for i, l := range lines {
			copyOf := strings.SplitN(got[typ][i].ID, "-", 2)[0]
			for _, m := range ref.FindAllStringSubmatch(l, -1) {
				refs++
				if !ids[m[1]+"/"+m[2]] {
					t.Fatalf("%s/%s references %s/%s, which is not in the set", typ, got[typ][i].ID, m[1], m[2])
				}
				if !strings.HasPrefix(m[2], copyOf+"-") {
					t.Fatalf("%s/%s (copy %s) references %s/%s of another copy", typ, got[typ][i].ID, copyOf, m[1], m[2])
				}
			}
		}
	}
	if refs == 0 {
		t.Fatal("no references checked")
	}
	if len(got["Group"]) != copies {
		t.Fatalf("%d Groups, want %d", len(got["Group"]), copies)
	}
	for _, g := range got["Group"] {
		if len(g.Member) != len(want["Group"][0].Member) {
			t.Errorf("Group/%s has %d members, want %d", g.ID, len(g.Member), len(want["Group"][0].Member))
		}
	}
}

func TestOutIsReplacedOnlyIfMakeDatasetWroteIt(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "data")
	if _, err := build(src, out, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := build(src, out, 2); err != nil {
		t.Fatalf("replacing its own data set: %v", err)
	}
	other := filepath.Join(dir, "other")
	if err := os.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(other, "keep.txt")
	if err := os.WriteFile(keep, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := build(src, other, 1); err == nil {
		t.Fatal("replaced a folder make-dataset did not write")
	}
	if _, err := os.Stat(keep); err != nil {
		t.Fatalf("the foreign folder lost its file: %v", err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".make-dataset-*"))
	if len(left) > 0 {
		t.Errorf("temporary folders left behind: %v", left)
	}
}
