package config

import (
	"encoding/json"
	"os"
	"path/filepath"
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
	hostJSON := hostJSONSettings(t)
	for name := range written {
		// AzureFunctionsJobHost__a__b overrides host.json's a.b: it must
		// name a setting host.json has, or the override is silently ignored.
		if path, ok := strings.CutPrefix(name, "AzureFunctionsJobHost__"); ok {
			if !hostJSON[strings.ReplaceAll(path, "__", ".")] {
				t.Errorf("functionapp.bicep writes %s, but host.json has no %s", name, strings.ReplaceAll(path, "__", "."))
			}
			continue
		}
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
		// The app's identity is user-assigned: without its client id
		// every Azure SDK credential would look for a system-assigned one
		// that does not exist.
		"AzureWebJobsStorage__clientId", "EXPORT_STORAGE__clientId", "FHIR_AUTH_CLIENT_ID",
		// The load on the source is a deployment parameter.
		"AzureFunctionsJobHost__extensions__queues__batchSize", "AzureFunctionsJobHost__extensions__queues__newBatchThreshold",
		"EXPORT_SOURCE_CONCURRENCY",
	} {
		if !written[name] {
			t.Errorf("functionapp.bicep does not write %s", name)
		}
	}
}

// hostJSONSettings returns the dotted paths of host.json's leaf settings
// (extensions.queues.batchSize, ...).
func hostJSONSettings(t *testing.T) map[string]bool {
	t.Helper()
	raw, err := os.ReadFile("../../../host.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("host.json: %v", err)
	}
	paths := map[string]bool{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		if m, ok := v.(map[string]any); ok {
			for k, c := range m {
				walk(strings.TrimPrefix(prefix+"."+k, "."), c)
			}
			return
		}
		paths[prefix] = true
	}
	walk("", doc)
	if !paths["extensions.queues.batchSize"] {
		t.Fatal("host.json has no extensions.queues.batchSize; the walk is broken")
	}
	return paths
}

// builtInRoles are the Azure built-in role definition ids the templates may
// assign, checked against Microsoft's built-in roles reference
// (learn.microsoft.com/azure/role-based-access-control/built-in-roles;
// MicrosoftDocs/azure-docs articles/role-based-access-control/built-in-roles.md).
// A typo in a role GUID deploys without complaint and grants the wrong role, or
// fails only at deployment time; this list is the second pair of eyes.
var builtInRoles = map[string]string{
	"b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
	"ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
	"2a2b9908-6ea1-4ae2-8e65-a410df84e7d1": "Storage Blob Data Reader",
	"974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
	"0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
	"3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
	"4c8d0bbc-75d3-4935-991f-5f3c56d81508": "FHIR Data Reader",
}

// TestBicepRoleIDsAreTheBuiltInRolesTheyName checks every GUID in the
// templates against the list, and, where the template names the role next to
// its id (a `name:` line or the variable's name), that the name matches.
func TestBicepRoleIDsAreTheBuiltInRolesTheyName(t *testing.T) {
	files, err := filepath.Glob("../../../infra/*.bicep")
	if err != nil {
		t.Fatal(err)
	}
	modules, _ := filepath.Glob("../../../infra/modules/*.bicep")
	files = append(files, modules...)
	guid := regexp.MustCompile(`'([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})'`)
	squash := func(s string) string { return strings.ToLower(strings.NewReplacer(" ", "", "_", "").Replace(s)) }
	found := 0
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(raw), "\n")
		for i, line := range lines {
			m := guid.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			found++
			name, ok := builtInRoles[strings.ToLower(m[1])]
			if !ok {
				t.Errorf("%s:%d: %s is not one of the checked built-in roles", filepath.Base(f), i+1, m[1])
				continue
			}
			// The role's name in the line before (`name: '...'`) or in the
			// variable's name on this line (fhirDataReaderRoleId).
			context := line
			if i > 0 {
				context = lines[i-1] + " " + line
			}
			if !strings.Contains(squash(context), squash(name)) {
				t.Errorf("%s:%d: %s is %s, but the template names it otherwise: %q", filepath.Base(f), i+1, m[1], name, strings.TrimSpace(context))
			}
		}
	}
	if found < len(builtInRoles) {
		t.Errorf("found %d role ids in infra/, fewer than the %d checked roles: the search is broken or a role went unused", found, len(builtInRoles))
	}
}

// TestInfraReadmeCompilesBeforeItDeploys: the templates were never compiled
// here, so the operator's first step must be the compiler and a what-if,
// before any command that changes Azure.
func TestInfraReadmeCompilesBeforeItDeploys(t *testing.T) {
	raw, err := os.ReadFile("../../../infra/README.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	build := strings.Index(doc, "az bicep build")
	whatIf := strings.Index(doc, "az deployment group what-if")
	create := strings.Index(doc, "az deployment group create")
	if build < 0 || whatIf < 0 {
		t.Fatalf("infra/README.md lacks `az bicep build` (%d) or `az deployment group what-if` (%d)", build, whatIf)
	}
	if create >= 0 && (create < build || create < whatIf) {
		t.Errorf("infra/README.md shows `az deployment group create` before the compile and what-if steps")
	}
}
