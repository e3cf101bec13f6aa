package fhirpath

import (
	"encoding/json"
	"os"
	"testing"
)

// BenchmarkParseAppend reads and writes back every Synthea resource: the
// fixed cost the anonymizer pays per resource before any rule runs.
func BenchmarkParseAppend(b *testing.B) {
	lines := syntheaLines(b)
	var size int64
	for _, l := range lines {
		size += int64(len(l))
	}
	b.SetBytes(size)
	b.ReportAllocs()
	var buf []byte
	for b.Loop() {
		for _, l := range lines {
			n, err := ParseResource(l)
			if err != nil {
				b.Fatal(err)
			}
			buf = n.AppendJSON(buf[:0])
		}
	}
}

// BenchmarkParse is ParseResource alone.
func BenchmarkParse(b *testing.B) {
	lines := syntheaLines(b)
	var size int64
	for _, l := range lines {
		size += int64(len(l))
	}
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		for _, l := range lines {
			if _, err := ParseResource(l); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkSelectNodesByType evaluates a nodesByType rule on every parsed
// Synthea resource; bytes are the resources' JSON size.
func BenchmarkSelectNodesByType(b *testing.B) {
	lines := syntheaLines(b)
	var trees []*Node
	var size int64
	for _, l := range lines {
		n, err := ParseResource(l)
		if err != nil {
			b.Fatal(err)
		}
		trees = append(trees, n)
		size += int64(len(l))
	}
	e, err := Compile("nodesByType('Reference').reference")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	b.ReportAllocs()
	found := 0
	for b.Loop() {
		found = 0
		for _, n := range trees {
			got, err := e.Select(n)
			if err != nil {
				b.Fatal(err)
			}
			found += len(got)
		}
	}
	if found == 0 {
		b.Fatal("no references found")
	}
}

// BenchmarkSampleConfigurationSelect evaluates every path of Microsoft's R4
// sample configuration on every parsed Synthea resource (without the
// anonymizer's per-type rule filtering, so an upper bound on selection cost).
func BenchmarkSampleConfigurationSelect(b *testing.B) {
	data, err := os.ReadFile("../deid/testdata/configuration-sample.json")
	if err != nil {
		b.Fatal(err)
	}
	var cfg struct {
		FHIRPathRules []struct{ Path string } `json:"fhirPathRules"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		b.Fatal(err)
	}
	var exprs []*Expression
	for _, r := range cfg.FHIRPathRules {
		exprs = append(exprs, MustCompile(r.Path))
	}
	var trees []*Node
	var size int64
	for _, l := range syntheaLines(b) {
		n, err := ParseResource(l)
		if err != nil {
			b.Fatal(err)
		}
		trees = append(trees, n)
		size += int64(len(l))
	}
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		for _, n := range trees {
			for _, e := range exprs {
				if _, err := e.Select(n); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
}
