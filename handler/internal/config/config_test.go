package config

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadDefaultsAndDevelopmentStorage(t *testing.T) {
	c, err := Load(env(map[string]string{
		"AzureWebJobsStorage": "UseDevelopmentStorage=true",
		"FHIR_SERVER_URL":     "http://127.0.0.1:8080/fhir/",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Storage.ConnectionString != DevelopmentStorage {
		t.Errorf("UseDevelopmentStorage=true was not expanded: %q", c.Storage.ConnectionString)
	}
	if c.FHIRServerURL != "http://127.0.0.1:8080/fhir" {
		t.Errorf("trailing slash kept: %q", c.FHIRServerURL)
	}
	if c.MaxFileBytes != 64<<20 || c.Queue != QueueName || c.Container != "bulk-export" || c.InvocationBudget != 8*time.Minute {
		t.Errorf("unexpected defaults: %+v", c)
	}
	for k, v := range c.Fields() {
		if strings.Contains(fmt.Sprint(v), "Eby8vdM02x") {
			t.Errorf("Fields()[%q] leaks the account key", k)
		}
	}
}

func TestLoadIdentityBasedStorage(t *testing.T) {
	c, err := Load(env(map[string]string{
		"AzureWebJobsStorage__accountName": "acct",
		"FHIR_SERVER_URL":                  "https://fhir.example.org",
		"FHIR_AUTH":                        "azure",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Storage.BlobURL != "https://acct.blob.core.windows.net" || c.Storage.TableURL != "https://acct.table.core.windows.net" {
		t.Errorf("service URLs not derived from the account name: %+v", c.Storage)
	}
}

func TestLoadNamesEveryBadSetting(t *testing.T) {
	_, err := Load(env(map[string]string{
		"AzureWebJobsStorage":   "UseDevelopmentStorage=true",
		"FHIR_SERVER_URL":       "not a url",
		"EXPORT_MAX_FILE_BYTES": "lots",
		"EXPORT_CONTAINER":      "Bad_Name",
		"EXPORT_QUEUE":          "q",
		"EXPORT_TYPES":          "Observation,Nonsense",
		"FHIR_AUTH":             "basic",
		"EXPORT_RETRY_AFTER":    "1h",
	}))
	if err == nil {
		t.Fatal("bad configuration was accepted")
	}
	for _, name := range []string{"FHIR_SERVER_URL", "EXPORT_MAX_FILE_BYTES", "EXPORT_CONTAINER", "EXPORT_QUEUE", "Nonsense", "FHIR_AUTH", "EXPORT_RETRY_AFTER"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error does not name %s:\n%v", name, err)
		}
	}
}

func TestLoadRequiresStorageAndSource(t *testing.T) {
	_, err := Load(env(nil))
	if err == nil || !strings.Contains(err.Error(), "AzureWebJobsStorage") || !strings.Contains(err.Error(), "FHIR_SERVER_URL") {
		t.Fatalf("missing required settings not reported: %v", err)
	}
}

func TestValidContainerName(t *testing.T) {
	for name, want := range map[string]bool{
		"bulk-export": true, "abc": true, "ab": false, "a--b": false, "-abc": false, "abc-": false,
		"ABC": false, strings.Repeat("a", 63): true, strings.Repeat("a", 64): false, "a_b": false,
	} {
		if got := ValidContainerName(name); got != want {
			t.Errorf("ValidContainerName(%q) = %v, want %v", name, got, want)
		}
	}
}
