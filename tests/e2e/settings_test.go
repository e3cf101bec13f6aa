package e2e

import (
	"io"
	"net/http"
	"testing"
)

// TestOnlyAMaxFileSizeStartsAndRollsFilesAtIt changes one documented setting,
// EXPORT_MAX_FILE_BYTES, to 1 MiB: the handler starts (the block size
// follows it) and writes files of at most 1 MiB, each but the last of a type
// filled close to the limit.
func TestOnlyAMaxFileSizeStartsAndRollsFilesAtIt(t *testing.T) {
	const limit = 1 << 20
	want := fixture(t, func(typ string, _ map[string]any) bool { return typ == "ExplanationOfBenefit" })
	size, longest := 0, 0
	for _, line := range want["ExplanationOfBenefit"] {
		size += len(line) + 1
		longest = max(longest, len(line)+1)
	}
	if size <= limit {
		t.Fatalf("the sample's ExplanationOfBenefits are %d bytes, not enough to roll over at %d", size, limit)
	}

	svc := startService(t, "EXPORT_MAX_FILE_BYTES=1048576") // startService fails if the handler does not start
	res, err := svc.client.Export(ctx(t), "/$export?_type=ExplanationOfBenefit")
	if err != nil {
		t.Fatal(err)
	}
	sameResources(t, res.Resources, want)
	var sizes []int
	for _, f := range res.Manifest.Output {
		resp, err := http.Get(f.URL)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(body))
	}
	if len(sizes) < 2 {
		t.Fatalf("%d file(s) of sizes %v for %d bytes: no roll-over at %d", len(sizes), sizes, size, limit)
	}
	for i, n := range sizes {
		if n > limit {
			t.Errorf("file %d is %d bytes, over the %d limit", i+1, n, limit)
		}
		if i < len(sizes)-1 && n <= limit-longest {
			t.Errorf("file %d is %d bytes: rolled before the limit (%d) required it", i+1, n, limit)
		}
	}
	t.Logf("file sizes %v", sizes)
}
