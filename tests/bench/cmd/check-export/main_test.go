package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestCheck(t *testing.T) {
	data := writeFiles(t, map[string]string{
		"Patient.ndjson":     `{"resourceType":"Patient","id":"p1"}` + "\n" + `{"resourceType":"Patient", "id":"p2"}` + "\n",
		"Observation.ndjson": `{"resourceType":"Observation","id":"o1"}` + "\n",
	})
	for _, tc := range []struct {
		name    string
		export  map[string]string
		wantErr string
	}{
		{name: "exact, in another order and compacted", export: map[string]string{
			"Patient.ndjson":     `{"resourceType":"Patient","id":"p2"}` + "\n" + `{"resourceType":"Patient","id":"p1"}` + "\n",
			"Observation.ndjson": `{"resourceType":"Observation","id":"o1"}` + "\n",
		}},
		{name: "a resource missing", wantErr: "Patient: exported 1 resources, the data set has 2", export: map[string]string{
			"Patient.ndjson":     `{"resourceType":"Patient","id":"p1"}` + "\n",
			"Observation.ndjson": `{"resourceType":"Observation","id":"o1"}` + "\n",
		}},
		{name: "one twice, another not", wantErr: "Patient: the exported resources differ", export: map[string]string{
			"Patient.ndjson":     `{"resourceType":"Patient","id":"p1"}` + "\n" + `{"resourceType":"Patient","id":"p1"}` + "\n",
			"Observation.ndjson": `{"resourceType":"Observation","id":"o1"}` + "\n",
		}},
		{name: "bytes changed", wantErr: "Observation: the exported resources differ", export: map[string]string{
			"Patient.ndjson":     `{"resourceType":"Patient","id":"p1"}` + "\n" + `{"resourceType":"Patient","id":"p2"}` + "\n",
			"Observation.ndjson": `{"resourceType":"Observation","id":"o1","status":"final"}` + "\n",
		}},
		{name: "another type", wantErr: "Encounter: the export has 1 resources of a type", export: map[string]string{
			"Patient.ndjson":     `{"resourceType":"Patient","id":"p1"}` + "\n" + `{"resourceType":"Patient","id":"p2"}` + "\n",
			"Observation.ndjson": `{"resourceType":"Observation","id":"o1"}` + "\n",
			"Encounter.ndjson":   `{"resourceType":"Encounter","id":"e1"}` + "\n",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			summary, err := check(data, writeFiles(t, tc.export))
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("check: %v", err)
			case tc.wantErr == "" && !strings.HasPrefix(summary, "exact: 3 resources of 2 types"):
				t.Errorf("summary %q", summary)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}
