package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path"
	"regexp"
	"strings"
	"testing"
)

// windowsOn splits every type of the sample data with more than 150
// resources (Observation has 1,369, with up to 62 sharing one lastUpdated).
const windowsOn = "EXPORT_WINDOW_RESOURCES=150"

var windowFileName = regexp.MustCompile(`^([A-Za-z]+)(?:-w([0-9]{4}))?-([0-9]+)\.ndjson$`)

func TestWindowsExportExactlyTheSourceDataInManifestOrder(t *testing.T) {
	svc := startService(t, windowsOn, "EXPORT_PAGE_SIZE=50")
	res, err := svc.client.Export(ctx(t), "/$export")
	if err != nil {
		t.Fatal(err)
	}
	sameResources(t, res.Resources, fixture(t, nil))

	// The complete manifest, as a client polling once more reads it.
	resp, err := http.Get(res.StatusURL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m struct {
		Output []struct {
			Type string `json:"type"`
			URL  string `json:"url"`
		} `json:"output"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&m) != nil {
		t.Fatalf("status after completion: %s", resp.Status)
	}
	windows := map[string]map[string]bool{}
	prev := ""
	for _, f := range m.Output {
		name := path.Base(f.URL)
		p := windowFileName.FindStringSubmatch(name)
		if p == nil || p[1] != f.Type {
			t.Fatalf("output %s of type %s is not named <Type>[-wNNNN]-<n>.ndjson", name, f.Type)
		}
		key := fmt.Sprintf("%s/%s/%08s", p[1], p[2], p[3])
		if key <= prev {
			t.Errorf("the manifest lists %s after a file that sorts later: want type, window, then roll-over order", name)
		}
		prev = key
		if windows[f.Type] == nil {
			windows[f.Type] = map[string]bool{}
		}
		windows[f.Type][p[2]] = true
	}
	if len(windows["Observation"]) < 1369/150 || windows["Observation"][""] {
		t.Errorf("Observation files came from windows %v; 1,369 resources at 150 a window need at least 9", windows["Observation"])
	}
	if n := len(windows["Patient"]); n != 1 || !windows["Patient"][""] {
		t.Errorf("Patient (10 resources) files came from windows %v; a small type is not split", windows["Patient"])
	}
	if !strings.Contains(svc.logs.String(), "type split into _lastUpdated windows") {
		t.Error("the handler did not log the split")
	}
}

// The SIGKILL test with windows on: every window is checkpointed, fenced and
// repaired like any work item, so killing the handler at random moments
// still loses and repeats nothing.
func TestSIGKILLWithWindowsLosesAndRepeatsNothing(t *testing.T) {
	sigkillTest(t, windowsOn)
}
