package main

import (
	"bufio"
	"encoding/json"
	"maps"
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
	st, err := build(src, out, copies, false)
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
	if _, err := build(src, out, 1, false); err != nil {
		t.Fatal(err)
	}
	if _, err := build(src, out, 2, false); err != nil {
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
	if _, err := build(src, other, 1, false); err == nil {
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

// TestProvenanceTargetsEachPatientAndWhatReferencesIt: with -provenance every
// copy gets, per Patient, one Provenance whose targets are exactly the Patient
// and the resources of its copy that reference it, so an export that returns
// every other type finds every Provenance by target; the other files are
// those of the set without the flag.
func TestProvenanceTargetsEachPatientAndWhatReferencesIt(t *testing.T) {
	dir := t.TempDir()
	const copies = 2
	plain, with := filepath.Join(dir, "plain"), filepath.Join(dir, "with")
	if _, err := build(src, plain, copies, false); err != nil {
		t.Fatal(err)
	}
	st, err := build(src, with, copies, true)
	if err != nil {
		t.Fatal(err)
	}
	srcSet, _ := readSet(t, src)
	if _, ok := srcSet["Provenance"]; ok {
		t.Fatal("premise: the source set has Provenance already")
	}
	got, raw := readSet(t, with)
	withoutProv, _ := readSet(t, plain)
	provLines := raw["Provenance"]
	if want := copies * len(srcSet["Patient"]); len(provLines) != want || want == 0 {
		t.Fatalf("%d Provenance, want one per Patient of every copy: %d", len(provLines), want)
	}
	total := 0
	for typ, rs := range got {
		total += len(rs)
		if typ == "Provenance" {
			continue
		}
		a, _ := os.ReadFile(filepath.Join(plain, typ+".ndjson"))
		b, _ := os.ReadFile(filepath.Join(with, typ+".ndjson"))
		if len(a) == 0 || string(a) != string(b) {
			t.Errorf("%s.ndjson differs from the set built without -provenance", typ)
		}
	}
	if len(got) != len(withoutProv)+1 || st.resources != total {
		t.Errorf("%d types and %d resources reported (%d written); want the %d types without the flag plus Provenance", len(got), st.resources, total, len(withoutProv))
	}

	// What each Patient's Provenance must target: the Patient and every
	// resource whose line references it, found here by a parse of the
	// written files, each once.
	ids := map[string]bool{}
	wantTargets := map[string]map[string]bool{}
	lastUpdated := map[string]string{}
	for _, p := range got["Patient"] {
		wantTargets[p.ID] = map[string]bool{"Patient/" + p.ID: true}
		lastUpdated[p.ID] = p.Meta.LastUpdated
	}
	for typ, lines := range raw {
		for i, l := range lines {
			ids[typ+"/"+got[typ][i].ID] = true
			if typ == "Provenance" {
				continue
			}
			var anyRef func(v any)
			anyRef = func(v any) {
				switch v := v.(type) {
				case map[string]any:
					if r, ok := v["reference"].(string); ok && strings.HasPrefix(r, "Patient/") {
						if w := wantTargets[strings.TrimPrefix(r, "Patient/")]; w != nil {
							w[typ+"/"+got[typ][i].ID] = true
						}
					}
					for _, e := range v {
						anyRef(e)
					}
				case []any:
					for _, e := range v {
						anyRef(e)
					}
				}
			}
			var doc any
			if err := json.Unmarshal([]byte(l), &doc); err != nil {
				t.Fatal(err)
			}
			anyRef(doc)
		}
	}

	seen := map[string]bool{}
	for _, l := range provLines {
		var p struct {
			ID   string `json:"id"`
			Meta struct {
				VersionID   string `json:"versionId"`
				LastUpdated string `json:"lastUpdated"`
			} `json:"meta"`
			Recorded string `json:"recorded"`
			Target   []struct {
				Reference string `json:"reference"`
			} `json:"target"`
			Agent []struct {
				Who struct {
					Reference string `json:"reference"`
				} `json:"who"`
			} `json:"agent"`
		}
		if err := json.Unmarshal([]byte(l), &p); err != nil {
			t.Fatal(err)
		}
		if len(p.Target) == 0 || !strings.HasPrefix(p.Target[0].Reference, "Patient/") {
			t.Fatalf("Provenance/%s does not target a Patient first: %v", p.ID, p.Target)
		}
		patient := strings.TrimPrefix(p.Target[0].Reference, "Patient/")
		want := wantTargets[patient]
		if want == nil || seen[patient] {
			t.Fatalf("Provenance/%s targets Patient/%s, which is not a Patient of the set or has a Provenance already", p.ID, patient)
		}
		seen[patient] = true
		gotTargets := map[string]bool{}
		for _, r := range p.Target {
			if gotTargets[r.Reference] {
				t.Errorf("Provenance/%s targets %s twice", p.ID, r.Reference)
			}
			gotTargets[r.Reference] = true
		}
		if len(want) < 100 || !maps.Equal(gotTargets, want) {
			t.Errorf("Provenance/%s targets %d resources, want the %d that are Patient/%s or reference it", p.ID, len(gotTargets), len(want), patient)
		}
		if p.Recorded != lastUpdated[patient] || p.Meta.LastUpdated != lastUpdated[patient] || p.Meta.VersionID == "" {
			t.Errorf("Provenance/%s: recorded %q, lastUpdated %q, versionId %q; want the Patient's lastUpdated %q and a version",
				p.ID, p.Recorded, p.Meta.LastUpdated, p.Meta.VersionID, lastUpdated[patient])
		}
		copyOf := strings.SplitN(patient, "-", 2)[0]
		if who := p.Agent; len(who) != 1 || !strings.HasPrefix(who[0].Who.Reference, "Practitioner/"+copyOf+"-") || !ids[who[0].Who.Reference] {
			t.Errorf("Provenance/%s: agent %+v, want a Practitioner of its copy %s", p.ID, p.Agent, copyOf)
		}
		if !strings.HasPrefix(p.ID, copyOf+"-") {
			t.Errorf("Provenance/%s about a Patient of copy %s does not have that copy's prefix", p.ID, copyOf)
		}
	}
	if len(seen) != len(wantTargets) {
		t.Errorf("%d Patients have a Provenance, want all %d", len(seen), len(wantTargets))
	}

	// A set that has Provenance already is refused rather than given two.
	if _, err := build(with, filepath.Join(dir, "again"), 1, true); err == nil || !strings.Contains(err.Error(), "Provenance") {
		t.Errorf("-provenance over a set with Provenance: %v, want an error about Provenance", err)
	}
}
