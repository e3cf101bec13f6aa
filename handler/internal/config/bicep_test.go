package config

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// bicepSettings returns the app setting names infra/modules/functionapp.bicep
// writes: the keys of the objects its appsettings resource unions together.
func bicepSettings(t *testing.T) map[string]bool {
	t.Helper()
	raw, err := os.ReadFile("../../../infra/modules/functionapp.bicep")
	if err != nil {
		t.Fatal(err)
	}
	src := string(raw)
	union := regexp.MustCompile(`(?m)^\s*properties: union\(([^)]*)\)`).FindStringSubmatch(src)
	if union == nil {
		t.Fatal("functionapp.bicep: no appsettings `properties: union(...)` found; the test no longer matches the template")
	}
	key := regexp.MustCompile(`^\s*([A-Za-z][A-Za-z0-9_]*):\s`)
	names := map[string]bool{}
	for part := range strings.SplitSeq(union[1], ",") {
		v := strings.TrimSpace(part)
		if v == "additionalAppSettings" {
			continue // the operator's own
		}
		// var <v> = { ... } or var <v> = cond ? {} : { ... }: read keys up to
		// the closing brace at column 0.
		start := regexp.MustCompile(`(?m)^var ` + regexp.QuoteMeta(v) + ` = .*\{\s*$`).FindStringIndex(src)
		if start == nil {
			t.Fatalf("functionapp.bicep: the settings object %s is not declared as `var %s = ... {`", v, v)
		}
		for _, line := range strings.Split(src[start[1]:], "\n") {
			if strings.HasPrefix(line, "}") {
				break
			}
			if m := key.FindStringSubmatch(line); m != nil {
				names[m[1]] = true
			}
		}
	}
	if len(names) < 10 {
		t.Fatalf("read only %d settings from functionapp.bicep; the parsing is broken", len(names))
	}
	return names
}

// TestBicepWritesOnlySettingsTheHandlerReads: a misspelt or stale setting in
// the Bicep is silently ignored in Azure, and a required one that is missing
// stops the handler at start-up. Settings that are the Functions host's own
// are named here.
func TestBicepWritesOnlySettingsTheHandlerReads(t *testing.T) {
	written := bicepSettings(t)
	read := map[string]bool{}
	for _, n := range settingsRead(t) {
		read[n] = true
	}
	hostOwn := map[string]bool{
		"AzureWebJobsStorage__credential":           true, // the host's identity-based connection
		"APPLICATIONINSIGHTS_CONNECTION_STRING":     true, // the host's telemetry
		"APPLICATIONINSIGHTS_AUTHENTICATION_STRING": true,
	}
	for name := range written {
		if !read[name] && !hostOwn[name] {
			t.Errorf("functionapp.bicep writes %s, which the handler does not read (config.Load)", name)
		}
	}
	// Required in Azure: without these the handler does not start, or
	// exports into the host account.
	for _, name := range []string{
		"AUTH_MODE", "AUTH_TENANT_ID", "AUTH_AUDIENCE", "FHIR_SERVER_URL", "EXPORT_QUEUE", "EXPORT_TABLE",
		"AzureWebJobsStorage__blobServiceUri", "AzureWebJobsStorage__queueServiceUri", "AzureWebJobsStorage__tableServiceUri",
		"EXPORT_STORAGE__blobServiceUri", "EXPORT_CONTAINERS", "EXPORT_BASE_URL",
	} {
		if !written[name] {
			t.Errorf("functionapp.bicep does not write %s", name)
		}
	}
}
