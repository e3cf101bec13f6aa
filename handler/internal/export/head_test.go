package export

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// TestReadHeadAgreesWithAFullDecode checks the fast scan against
// encoding/json on every resource of the sample data and on shapes the scan
// must hand to the fallback.
func TestReadHeadAgreesWithAFullDecode(t *testing.T) {
	files, _ := filepath.Glob("../../../tests/data/synthea-r4-10/*.ndjson")
	if len(files) == 0 {
		t.Fatal("no sample data")
	}
	var lines [][]byte
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(nil, 1<<24)
		for sc.Scan() {
			var b bytes.Buffer
			if err := json.Compact(&b, sc.Bytes()); err != nil {
				t.Fatal(err)
			}
			lines = append(lines, b.Bytes())
		}
		fh.Close()
	}
	lines = append(lines,
		[]byte(`{"id":"x1","meta":{"versionId":"2","lastUpdated":"2024-01-02T03:04:05.678+01:00"},"resourceType":"Patient"}`),
		[]byte(`{"text":{"div":"<div>\"quoted\" {braces} [x]</div>"},"resourceType":"Observation","id":"o","meta":{"lastUpdated":"2024-01-02T03:04:05Z"}}`),
		[]byte(`{"resourceType":"Patient","id":"no-meta","active":true,"multipleBirthInteger":2}`),
		[]byte(`{"resourceType":"Pat\u0069ent","id":"escaped","meta":{"lastUpdated":"2024-01-02T03:04:05Z"}}`),
		[]byte(`{"resourceType":"Patient","meta":{"tag":[{"code":"a"}]},"id":"tagged"}`),
		[]byte(`{"resourceType":"Patient","id":"bad-time","meta":{"lastUpdated":"yesterday"}}`),
		[]byte(`not json`),
	)
	for _, l := range lines {
		fast, slow := readHead(l), decodeHead(l)
		if fast.ResourceType != slow.ResourceType || fast.ID != slow.ID || !fast.LastUpdated.Equal(slow.LastUpdated) {
			t.Errorf("readHead %+v, full decode %+v, for %.120s", fast, slow, l)
		}
	}
}
