package config

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestEveryMonitoringQueryIsDeployed: the workbook and alert queries are kept
// in infra/monitoring/ so that tests/e2e/monitoring_fields_test.go can check
// them against real log lines; that check is worth something only if the
// files it reads are the ones the Bicep deploys. So: every file there is
// loaded by a loadTextContent in infra/, every load names a file that exists,
// and every __PLACEHOLDER__ a file carries is replaced where it is loaded
// (an unreplaced one would reach Azure as KQL that does not parse).
func TestEveryMonitoringQueryIsDeployed(t *testing.T) {
	files, err := filepath.Glob("../../../infra/monitoring/*")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 6 {
		t.Fatalf("found %d files in infra/monitoring/, expected the workbook and at least five alert queries", len(files))
	}
	templates, _ := filepath.Glob("../../../infra/modules/*.bicep")
	top, _ := filepath.Glob("../../../infra/*.bicep")
	var bicep strings.Builder
	for _, f := range append(top, templates...) {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		bicep.Write(raw)
	}
	src := bicep.String()

	// loadTextContent('../monitoring/<file>'), possibly inside replace(...).
	load := regexp.MustCompile(`loadTextContent\('\.\./monitoring/([^']+)'\)`)
	loaded := map[string]bool{}
	for _, m := range load.FindAllStringSubmatch(src, -1) {
		loaded[m[1]] = true
		if _, err := os.Stat("../../../infra/monitoring/" + m[1]); err != nil {
			t.Errorf("the Bicep loads monitoring/%s, which does not exist", m[1])
		}
	}
	placeholder := regexp.MustCompile(`__[A-Z_]+__`)
	for _, f := range files {
		name := filepath.Base(f)
		if !loaded[name] {
			t.Errorf("infra/monitoring/%s is not loaded by any Bicep file", name)
			continue
		}
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, ph := range placeholder.FindAllString(string(raw), -1) {
			// replace(loadTextContent('../monitoring/<name>'), '<ph>', ...)
			want := "replace(loadTextContent('../monitoring/" + name + "'), '" + ph + "'"
			if !strings.Contains(src, want) {
				t.Errorf("infra/monitoring/%s carries %s, but no Bicep file loads it with %s...)", name, ph, want)
			}
		}
		if strings.HasSuffix(name, ".json") {
			var wb struct {
				Version string `json:"version"`
				Items   []struct {
					Type    int `json:"type"`
					Content struct {
						Version string `json:"version"`
						Query   string `json:"query"`
					} `json:"content"`
				} `json:"items"`
			}
			if err := json.Unmarshal(raw, &wb); err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			queries := 0
			for _, it := range wb.Items {
				if it.Type == 3 && it.Content.Version == "KqlItem/1.0" && strings.TrimSpace(it.Content.Query) != "" {
					queries++
				}
			}
			if wb.Version != "Notebook/1.0" || queries < 8 {
				t.Errorf("%s: version %q with %d query panels; expected a Notebook/1.0 workbook with every panel of issue 11", name, wb.Version, queries)
			}
		}
	}
}
