package config

import (
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/handler/devstorage"
	"github.com/azfhir/bulkexport/handler/internal/azstore"
	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fhirsource"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadDefaultsAndDevelopmentStorage(t *testing.T) {
	c, err := Load(env(map[string]string{
		"AzureWebJobsStorage": "UseDevelopmentStorage=true",
		"FHIR_SERVER_URL":     "http://127.0.0.1:8080/fhir/",
		"AUTH_MODE":           "none",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Storage.ConnectionString != devstorage.ConnectionString {
		t.Errorf("UseDevelopmentStorage=true was not expanded: %q", c.Storage.ConnectionString)
	}
	if c.FHIRServerURL != "http://127.0.0.1:8080/fhir" {
		t.Errorf("trailing slash kept: %q", c.FHIRServerURL)
	}
	def := export.DefaultSettings()
	if c.MaxFileBytes != def.MaxFileBytes || c.BlockBytes != def.BlockBytes || c.Lease != def.Lease || c.StallAfter != def.StallAfter ||
		c.InvocationBudget != def.InvocationBudget || c.Table != azstore.DefaultTable || c.Queue != azstore.DefaultQueue ||
		c.Container != "bulk-export" || c.FHIRAttempts != fhirsource.DefaultMaxAttempts || c.FHIRBackoff != fhirsource.DefaultBaseBackoff {
		t.Errorf("defaults differ from those of the packages that use them: %+v", c)
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
		"AUTH_MODE":                        "entra",
		"AUTH_TENANT_ID":                   "72f988bf-86f1-41af-91ab-2d7cd011db47",
		"AUTH_AUDIENCE":                    "api://bulkexport, 0d5d5c3a-0000-4000-8000-000000000001",
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

// TestDefaultsFollowTheSettingsTheyDependOn: changing one documented setting
// never stops the service; only two values the user set can contradict.
func TestDefaultsFollowTheSettingsTheyDependOn(t *testing.T) {
	const mib = 1 << 20
	def := export.DefaultSettings()
	for _, tc := range []struct {
		name    string
		set     map[string]string
		check   func(c Config) bool
		wantErr string // a setting the error must name; "" for none
	}{
		{name: "a smaller file makes the block follow", set: map[string]string{"EXPORT_MAX_FILE_BYTES": "1048576"},
			check: func(c Config) bool { return c.MaxFileBytes == mib && c.BlockBytes == mib }},
		{name: "a larger file keeps the block", set: map[string]string{"EXPORT_MAX_FILE_BYTES": "104857600"},
			check: func(c Config) bool { return c.BlockBytes == def.BlockBytes }},
		{name: "a larger block makes the file follow", set: map[string]string{"EXPORT_BLOCK_BYTES": "83886080"},
			check: func(c Config) bool { return c.BlockBytes == 80*mib && c.MaxFileBytes == 80*mib }},
		{name: "a block larger than a file, both set", set: map[string]string{"EXPORT_MAX_FILE_BYTES": "1048576", "EXPORT_BLOCK_BYTES": "2097152"},
			wantErr: "EXPORT_BLOCK_BYTES (2097152) must not exceed EXPORT_MAX_FILE_BYTES (1048576)"},
		{name: "a long lease makes the watchdog wait longer", set: map[string]string{"EXPORT_LEASE": "20m"},
			check: func(c Config) bool { return c.Lease == 20*time.Minute && c.StallAfter == 40*time.Minute }},
		{name: "a short lease keeps the watchdog's default", set: map[string]string{"EXPORT_LEASE": "5s"},
			check: func(c Config) bool { return c.StallAfter == def.StallAfter }},
		{name: "a quick watchdog makes the lease follow", set: map[string]string{"EXPORT_STALL_AFTER": "30s"},
			check: func(c Config) bool { return c.StallAfter == 30*time.Second && c.Lease == 15*time.Second }},
		{name: "a watchdog quicker than the lease, both set", set: map[string]string{"EXPORT_STALL_AFTER": "30s", "EXPORT_LEASE": "1m"},
			wantErr: "EXPORT_STALL_AFTER (30s) must be longer than EXPORT_LEASE (1m0s)"},
		{name: "an invalid file size is reported alone", set: map[string]string{"EXPORT_MAX_FILE_BYTES": "lots", "EXPORT_BLOCK_BYTES": "2097152"},
			wantErr: "EXPORT_MAX_FILE_BYTES must be"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := map[string]string{"AzureWebJobsStorage": "UseDevelopmentStorage=true", "FHIR_SERVER_URL": "http://127.0.0.1:8080/fhir", "AUTH_MODE": "none"}
			for k, v := range tc.set {
				m[k] = v
			}
			c, err := Load(env(m))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one with %q", err, tc.wantErr)
				}
				if strings.Count(err.Error(), "\n") != 1 {
					t.Errorf("want exactly one problem reported, got:\n%v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("the service would not start: %v", err)
			}
			if !tc.check(c) {
				t.Errorf("file %d, block %d, lease %s, stall after %s", c.MaxFileBytes, c.BlockBytes, c.Lease, c.StallAfter)
			}
		})
	}
}

// AUTH_MODE has no default: a deployment that forgot it does not start, and
// each mode gets exactly the settings it needs.
func TestAuthModeIsRequiredAndChecked(t *testing.T) {
	base := map[string]string{"AzureWebJobsStorage": "UseDevelopmentStorage=true", "FHIR_SERVER_URL": "http://127.0.0.1:8080/fhir"}
	for _, tc := range []struct {
		name    string
		set     map[string]string
		wantErr string // "" for a valid configuration
	}{
		{name: "missing", wantErr: "AUTH_MODE is required"},
		{name: "unknown mode", set: map[string]string{"AUTH_MODE": "easyauth"}, wantErr: `AUTH_MODE must be none, oidc or entra, got "easyauth"`},
		{name: "none", set: map[string]string{"AUTH_MODE": "none"}},
		{name: "none with an issuer", set: map[string]string{"AUTH_MODE": "none", "AUTH_ISSUER": "https://idp.example"}, wantErr: "AUTH_MODE=none takes no issuer"},
		{name: "oidc", set: map[string]string{"AUTH_MODE": "oidc", "AUTH_ISSUER": "https://idp.example", "AUTH_AUDIENCE": "bulk"}},
		{name: "oidc without audience", set: map[string]string{"AUTH_MODE": "oidc", "AUTH_ISSUER": "https://idp.example"}, wantErr: "needs AUTH_AUDIENCE"},
		{name: "oidc over plain http", set: map[string]string{"AUTH_MODE": "oidc", "AUTH_ISSUER": "http://idp.example", "AUTH_AUDIENCE": "bulk"}, wantErr: "must be https"},
		{name: "entra with a domain", set: map[string]string{"AUTH_MODE": "entra", "AUTH_TENANT_ID": "contoso.com", "AUTH_AUDIENCE": "bulk"}, wantErr: "not a tenant GUID"},
		{name: "bad token endpoint", set: map[string]string{"AUTH_MODE": "none", "AUTH_TOKEN_ENDPOINT": "/token"}, wantErr: "AUTH_TOKEN_ENDPOINT must be an absolute"},
		{name: "cap of zero", set: map[string]string{"AUTH_MODE": "none", "EXPORT_MAX_ACTIVE_JOBS_PER_CLIENT": "0"}, wantErr: "EXPORT_MAX_ACTIVE_JOBS_PER_CLIENT must be"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := maps.Clone(base)
			maps.Copy(m, tc.set)
			c, err := Load(env(m))
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one with %q", err, tc.wantErr)
			case err == nil && c.MaxJobsPerClient != export.DefaultSettings().MaxActivePerOwner:
				t.Errorf("EXPORT_MAX_ACTIVE_JOBS_PER_CLIENT default %d, want the engine's %d", c.MaxJobsPerClient, export.DefaultSettings().MaxActivePerOwner)
			}
		})
	}
}

// TestAnonymizationContainer: configurations are found where Azure keeps
// them unless the operator names another container, and a name storage
// would refuse (or the host's own containers) stops the service at start-up.
func TestAnonymizationContainer(t *testing.T) {
	base := map[string]string{"AzureWebJobsStorage": "UseDevelopmentStorage=true", "FHIR_SERVER_URL": "http://127.0.0.1:8080/fhir", "AUTH_MODE": "none"}
	c, err := Load(env(base))
	if err != nil {
		t.Fatal(err)
	}
	if c.AnonymizationContainer != "anonymization" {
		t.Errorf("default anonymization container %q, want Azure's \"anonymization\"", c.AnonymizationContainer)
	}
	set := maps.Clone(base)
	set["EXPORT_ANONYMIZATION_CONTAINER"] = "deid-configs"
	if c, err = Load(env(set)); err != nil || c.AnonymizationContainer != "deid-configs" {
		t.Errorf("EXPORT_ANONYMIZATION_CONTAINER=deid-configs gave %q, %v", c.AnonymizationContainer, err)
	}
	for _, bad := range []string{"De_Id", "azure-webjobs-secrets"} {
		set["EXPORT_ANONYMIZATION_CONTAINER"] = bad
		_, err := Load(env(set))
		if err == nil || !strings.Contains(err.Error(), "EXPORT_ANONYMIZATION_CONTAINER") || !strings.Contains(err.Error(), bad) {
			t.Errorf("EXPORT_ANONYMIZATION_CONTAINER=%s: %v; want an error naming the setting and the value", bad, err)
		}
	}
}
