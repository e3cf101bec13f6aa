package config

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// settingsRead returns every setting name Load looks up.
func settingsRead(t *testing.T) []string {
	t.Helper()
	seen := map[string]bool{}
	var names []string
	_, _ = Load(func(k string) string {
		if !seen[k] {
			seen[k] = true
			names = append(names, k)
		}
		return ""
	})
	return names
}

// TestEverySettingIsDocumented keeps the README's configuration table and
// local.settings.sample.json in step with the code.
func TestEverySettingIsDocumented(t *testing.T) {
	readme, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile("../../../local.settings.sample.json")
	if err != nil {
		t.Fatal(err)
	}
	var sample struct{ Values map[string]string }
	if err := json.Unmarshal(raw, &sample); err != nil {
		t.Fatalf("local.settings.sample.json: %v", err)
	}
	// Settings that a local Functions run does not set: the host sets the
	// port; the identity-based storage and token settings are for Azure; the
	// standalone-mode and optional ones have defaults; the block size and the
	// watchdog's delay are left out so that their defaults follow the file
	// size and the lease a user edits (setting both sides can contradict).
	notInSample := map[string]bool{
		"EXPORT_BLOCK_BYTES": true, "EXPORT_STALL_AFTER": true,
		"FUNCTIONS_CUSTOMHANDLER_PORT": true, "AzureWebJobsStorage__blobServiceUri": true,
		"AzureWebJobsStorage__queueServiceUri": true, "AzureWebJobsStorage__tableServiceUri": true,
		"AzureWebJobsStorage__clientId": true, "AzureWebJobsStorage__accountName": true,
		"FHIR_AUTH_SCOPE": true, "FHIR_AUTH_CLIENT_ID": true, "EXPORT_BASE_URL": true, "EXPORT_TYPES": true,
		"EXPORT_WORKERS": true, "EXPORT_MAX_DEQUEUE_COUNT": true, "EXPORT_RETRY_DELAY": true, "EXPORT_VISIBILITY": true,
		"EXPORT_WINDOW_RESOURCES": true, "EXPORT_SOURCE_CONCURRENCY": true,
		// AUTH_MODE=none locally: the settings of the token modes stay out.
		"AUTH_ISSUER": true, "AUTH_TENANT_ID": true, "AUTH_AUDIENCE": true, "AUTH_ROLE": true, "AUTH_TOKEN_ENDPOINT": true,
		// Locally the exports share Azurite with the host; the separate
		// export account is an Azure (Bicep) setting.
		"EXPORT_STORAGE": true, "EXPORT_STORAGE__blobServiceUri": true, "EXPORT_STORAGE__clientId": true,
	}
	names := settingsRead(t)
	if len(names) < 20 {
		t.Fatalf("Load read only %d settings; the recording is broken", len(names))
	}
	for _, name := range names {
		if !strings.Contains(string(readme), "`"+name+"`") {
			t.Errorf("README.md does not document the setting %s", name)
		}
		if _, ok := sample.Values[name]; !ok && !notInSample[name] {
			t.Errorf("local.settings.sample.json lacks the setting %s", name)
		}
	}
}
