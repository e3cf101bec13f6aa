package fhirpath

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

const syntheaDir = "../../../tests/data/synthea-r4-10"

// syntheaLines returns every resource line of the Synthea sample, failing the
// test if there are none (the premise of every test that uses it).
func syntheaLines(t testing.TB) [][]byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(syntheaDir, "*.ndjson"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no Synthea ndjson in %s: %v", syntheaDir, err)
	}
	var lines [][]byte
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		for sc.Scan() {
			if len(bytes.TrimSpace(sc.Bytes())) > 0 {
				lines = append(lines, bytes.Clone(sc.Bytes()))
			}
		}
		fh.Close()
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return lines
}

func TestRoundTripSynthea(t *testing.T) {
	lines := syntheaLines(t)
	for i, line := range lines {
		n, err := ParseResource(line)
		if err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
		var want bytes.Buffer
		if err := json.Compact(&want, line); err != nil {
			t.Fatal(err)
		}
		// Every Synthea element is an R4 element, so the generated table
		// must type all of them.
		walk(n, func(d *Node) {
			if d.Type == "" {
				t.Errorf("line %d: %s.%s has no type", i, d.Parent.Type, d.JSONName)
			}
		})
		got := n.AppendJSON(nil)
		if !bytes.Equal(got, want.Bytes()) {
			j := 0
			for j < len(got) && j < want.Len() && got[j] == want.Bytes()[j] {
				j++
			}
			lo := max(0, j-80)
			t.Fatalf("line %d (%s) differs at byte %d:\n got %s\nwant %s", i, n.Type, j, got[lo:min(len(got), j+80)], want.Bytes()[lo:min(want.Len(), j+80)])
		}
	}
	t.Logf("%d resources round-tripped", len(lines))
}

// A value set as text on a numeric or boolean element keeps its JSON type;
// on a string element a numeric-looking text stays a string.
func TestAppendTextOnNumbers(t *testing.T) {
	n, err := ParseResource([]byte(`{"resourceType":"Observation","valueInteger":5,"status":"final","component":[{"valueBoolean":true},{"valueString":"7"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range n.Children {
		if c.Name == "value" {
			c.Value = "20"
		}
	}
	comps := n.Children[2:]
	comps[0].Children[0].Value = "false"
	comps[1].Children[0].Value = "8"
	want := `{"resourceType":"Observation","valueInteger":20,"status":"final","component":[{"valueBoolean":false},{"valueString":"8"}]}`
	if got := string(n.AppendJSON(nil)); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestParseRejects(t *testing.T) {
	for _, in := range []string{``, `[]`, `{"id":"x"}`, `{"resourceType":"Patient"`, `{"resourceType":"Patient","id":}`, `{"resourceType":"Patient"} x`, `{"resourceType":"Patient","name":[{"given":["a",]}]}`, `{"resourceType":"Patient","id":"a","id":"b"}`, `{"resourceType":"Patient","name":[{"family":"a","given":["b"],"family":"c"}]}`} {
		if _, err := ParseResource([]byte(in)); err == nil {
			t.Errorf("ParseResource(%q) accepted invalid input", in)
		}
	}
}

// FuzzParseResource: any input either fails to parse or gives a tree whose
// JSON parses again to the same JSON (no panic, no lost or invented data on
// the second pass).
func FuzzParseResource(f *testing.F) {
	for i, line := range syntheaLines(f) {
		if i%200 == 0 {
			f.Add(line)
		}
	}
	f.Add([]byte(`{"resourceType":"Patient","_birthDate":{"id":"b"},"birthDate":"1970","name":[{"_given":[null,{"id":"g"}],"given":["a","b"]}],"x":[[1],{"y":null}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := ParseResource(data)
		if err != nil {
			return
		}
		first := n.AppendJSON(nil)
		m, err := ParseResource(first)
		if err != nil {
			t.Fatalf("our own output does not parse: %v\n%s", err, first)
		}
		if second := m.AppendJSON(nil); !bytes.Equal(first, second) {
			t.Fatalf("not stable:\n%s\n%s", first, second)
		}
	})
}
