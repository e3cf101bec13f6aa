// Command check-export checks that an export holds exactly a data set: every
// resource of every <Type>.ndjson file in -data once, byte-equal after
// compaction, in the export folder's <Type>.ndjson of the same type, and
// nothing else. It is tests/exportcheck's rule for `make bench`, where the
// data sets are too large to hold as strings: each line is kept as a SHA-256
// digest, and the two sides are compared as multisets.
//
//	check-export -data .run/bench-data -export .run/bench-export
//
// It prints one summary line and exits 1 on the first type that differs.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

func main() {
	data := flag.String("data", "", "folder of the data set's <Type>.ndjson files")
	export := flag.String("export", "", "folder of the exported <Type>.ndjson files (bulk-client -out)")
	flag.Parse()
	if *data == "" || *export == "" {
		fmt.Fprintln(os.Stderr, "check-export: -data and -export are required")
		os.Exit(2)
	}
	summary, err := check(*data, *export)
	if err != nil {
		fmt.Fprintln(os.Stderr, "check-export:", err)
		os.Exit(1)
	}
	fmt.Println(summary)
}

// check compares the two folders and returns a summary of an exact match.
func check(dataDir, exportDir string) (string, error) {
	want, err := digests(dataDir)
	if err != nil {
		return "", err
	}
	got, err := digests(exportDir)
	if err != nil {
		return "", err
	}
	types := make([]string, 0, len(want))
	for typ := range want {
		types = append(types, typ)
	}
	sort.Strings(types)
	total := 0
	for _, typ := range types {
		w, g := want[typ], got[typ]
		if g.lines != w.lines {
			return "", fmt.Errorf("%s: exported %d resources, the data set has %d", typ, g.lines, w.lines)
		}
		for d, n := range w.count {
			if g.count[d] != n {
				return "", fmt.Errorf("%s: the exported resources differ from the data set (a resource appears %d times, want %d)", typ, g.count[d], n)
			}
		}
		total += w.lines
	}
	for typ, g := range got {
		if _, ok := want[typ]; !ok {
			return "", fmt.Errorf("%s: the export has %d resources of a type the data set does not hold", typ, g.lines)
		}
	}
	return fmt.Sprintf("exact: %d resources of %d types, each once and byte-equal after compaction", total, len(types)), nil
}

type lineSet struct {
	lines int
	count map[[sha256.Size]byte]int
}

// digests reads every <Type>.ndjson file in dir into a multiset of the
// digests of its compacted lines.
func digests(dir string) (map[string]lineSet, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.ndjson"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no *.ndjson files in %s", dir)
	}
	out := map[string]lineSet{}
	var compact bytes.Buffer
	for _, path := range files {
		typ := strings.TrimSuffix(filepath.Base(path), ".ndjson")
		set := lineSet{count: map[[sha256.Size]byte]int{}}
		err := func() error {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			sc := bufio.NewScanner(f)
			sc.Buffer(nil, 64<<20)
			for sc.Scan() {
				line := bytes.TrimSpace(sc.Bytes())
				if len(line) == 0 {
					continue
				}
				compact.Reset()
				if err := json.Compact(&compact, line); err != nil {
					return fmt.Errorf("line %d is not JSON: %w", set.lines+1, err)
				}
				set.count[sha256.Sum256(compact.Bytes())]++
				set.lines++
			}
			return sc.Err()
		}()
		if err != nil {
			return nil, errors.Join(fmt.Errorf("read %s", path), err)
		}
		out[typ] = set
	}
	return out, nil
}
