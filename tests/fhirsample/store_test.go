package fhirsample

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const validPatient = `{"resourceType":"Patient","id":"p1","meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00.000Z"},"gender":"female"}`

// writeDataDir creates a data folder with the given files and returns its path.
func writeDataDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestNewRejectsBadData(t *testing.T) {
	tests := []struct {
		name        string
		files       map[string]string
		wantMention string
	}{
		{"no files", map[string]string{"notes.txt": "x"}, "no *.ndjson"},
		{"not JSON", map[string]string{"Patient.ndjson": "{not json}\n"}, "Patient.ndjson:1"},
		{"not an object", map[string]string{"Patient.ndjson": "[1,2]\n"}, "Patient.ndjson:1"},
		{"wrong type", map[string]string{"Observation.ndjson": validPatient + "\n"}, `"Patient"`},
		{"duplicate id", map[string]string{"Patient.ndjson": validPatient + "\n\n" + validPatient + "\n"}, "Patient.ndjson:3: duplicate"},
		{"invalid id", map[string]string{"Patient.ndjson": strings.Replace(validPatient, `"p1"`, `"p/1"`, 1)}, "invalid id"},
		{"no lastUpdated", map[string]string{"Patient.ndjson": `{"resourceType":"Patient","id":"p1"}`}, "lastUpdated"},
		{"bad lastUpdated", map[string]string{"Patient.ndjson": strings.Replace(validPatient, "2024-01-01T00:00:00.000Z", "2024-01-01", 1)}, "lastUpdated"},
		{"file name not a type", map[string]string{"patients.ndjson": validPatient}, "not a resource type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(writeDataDir(t, tt.files), Options{})
			if err == nil || !strings.Contains(err.Error(), tt.wantMention) {
				t.Errorf("error %v, want one mentioning %q", err, tt.wantMention)
			}
		})
	}
}

func TestNewAcceptsLastLineWithoutNewlineAndCRLF(t *testing.T) {
	second := strings.Replace(validPatient, `"p1"`, `"p2"`, 1)
	dir := writeDataDir(t, map[string]string{"Patient.ndjson": validPatient + "\r\n" + second})
	srv, err := New(dir, Options{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if got := srv.Counts()["Patient"]; got != 2 {
		t.Errorf("loaded %d patients, want 2", got)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name string
		opts Options
	}{
		{"relative base path", Options{BasePath: "fhir"}},
		{"negative default count", Options{DefaultCount: -1}},
		{"negative max count", Options{MaxCount: -5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(testDataDir, tt.opts); err == nil {
				t.Error("accepted")
			}
		})
	}
}
