package config

import (
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/handler/devstorage"
	"github.com/azfhir/bulkexport/handler/internal/httpapi"
)

// base is a minimal valid local environment; with adds settings to it.
func with(kv ...string) func(string) string {
	m := map[string]string{
		"AzureWebJobsStorage": "UseDevelopmentStorage=true",
		"FHIR_SERVER_URL":     "http://127.0.0.1:8080/fhir",
		"AUTH_MODE":           "none",
	}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return env(maps.Clone(m))
}

func TestContainersListAndDefaultFollowEachOther(t *testing.T) {
	tests := []struct {
		name          string
		env           []string
		wantDefault   string
		wantAllowed   []string
		wantErrorText string
	}{
		{name: "neither: the default alone", wantDefault: "bulk-export", wantAllowed: []string{"bulk-export"}},
		{name: "only EXPORT_CONTAINER", env: []string{"EXPORT_CONTAINER", "mine"}, wantDefault: "mine", wantAllowed: []string{"mine"}},
		{name: "only EXPORT_CONTAINERS: the first is the default", env: []string{"EXPORT_CONTAINERS", "research, audit"},
			wantDefault: "research", wantAllowed: []string{"research", "audit"}},
		{name: "both, agreeing", env: []string{"EXPORT_CONTAINER", "audit", "EXPORT_CONTAINERS", "research,audit"},
			wantDefault: "audit", wantAllowed: []string{"research", "audit"}},
		{name: "both, contradicting", env: []string{"EXPORT_CONTAINER", "other", "EXPORT_CONTAINERS", "research,audit"},
			wantErrorText: "EXPORT_CONTAINER (other) must be one of EXPORT_CONTAINERS"},
		{name: "an invalid name in the list", env: []string{"EXPORT_CONTAINERS", "research,Bad_Name"},
			wantErrorText: `EXPORT_CONTAINERS "Bad_Name" is not a valid container name`},
		{name: "the host's secrets container", env: []string{"EXPORT_CONTAINERS", "research,azure-webjobs-secrets"},
			wantErrorText: `"azure-webjobs-secrets" is a container of the Functions host`},
		{name: "the host's container as the default", env: []string{"EXPORT_CONTAINER", "azure-webjobs-hosts"},
			wantErrorText: `"azure-webjobs-hosts" is a container of the Functions host`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load(with(tc.env...))
			if tc.wantErrorText != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErrorText) {
					t.Fatalf("Load = %v, want an error saying %q", err, tc.wantErrorText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Container != tc.wantDefault || fmt.Sprint(c.Containers) != fmt.Sprint(tc.wantAllowed) {
				t.Errorf("default %q allowed %v, want %q %v", c.Container, c.Containers, tc.wantDefault, tc.wantAllowed)
			}
		})
	}
}

func TestDownloadsAndExportStorage(t *testing.T) {
	const keyless = "BlobEndpoint=https://exp.blob.core.windows.net;SharedAccessSignature=sv=2025-11-05&sig=abc"
	tests := []struct {
		name          string
		env           []string
		check         func(t *testing.T, c Config)
		wantErrorText string
	}{
		{name: "defaults: proxy, one hour, the host account", check: func(t *testing.T, c Config) {
			if c.Downloads != httpapi.DownloadsProxy || c.SASTTL != httpapi.DefaultSASTTL || c.ExportStorage.Set() {
				t.Errorf("downloads %q ttl %s export storage %+v", c.Downloads, c.SASTTL, c.ExportStorage)
			}
		}},
		{name: "sas on Azurite with a short TTL", env: []string{"EXPORT_DOWNLOADS", "SAS", "EXPORT_SAS_TTL", "2s"}, check: func(t *testing.T, c Config) {
			if c.Downloads != httpapi.DownloadsSAS || c.SASTTL != 2*time.Second {
				t.Errorf("downloads %q ttl %s", c.Downloads, c.SASTTL)
			}
		}},
		{name: "a separate account by connection string", env: []string{"EXPORT_STORAGE", "UseDevelopmentStorage=true"},
			check: func(t *testing.T, c Config) {
				if c.ExportStorage.ConnectionString != devstorage.ConnectionString || !c.ExportStorage.Set() {
					t.Errorf("EXPORT_STORAGE not read and expanded: %+v", c.ExportStorage)
				}
				if got := fmt.Sprint(c.Fields()["exportStorage"]); strings.Contains(got, "Eby8vdM02x") || !strings.Contains(got, "10000") {
					t.Errorf("start-up log names the export account as %q: want its endpoint and no key", got)
				}
			}},
		{name: "a separate account by identity", env: []string{"EXPORT_STORAGE__blobServiceUri", "https://exp.blob.core.windows.net/",
			"EXPORT_STORAGE__clientId", "0000-1111", "EXPORT_DOWNLOADS", "sas"}, check: func(t *testing.T, c Config) {
			if c.ExportStorage.BlobURL != "https://exp.blob.core.windows.net" || c.ExportStorage.ClientID != "0000-1111" {
				t.Errorf("export storage %+v", c.ExportStorage)
			}
		}},
		{name: "unknown download mode", env: []string{"EXPORT_DOWNLOADS", "direct"}, wantErrorText: `EXPORT_DOWNLOADS must be "proxy" or "sas"`},
		{name: "TTL out of range", env: []string{"EXPORT_SAS_TTL", "48h"}, wantErrorText: "EXPORT_SAS_TTL must be a duration"},
		{name: "sas with a keyless export connection string", env: []string{"EXPORT_DOWNLOADS", "sas", "EXPORT_STORAGE", keyless},
			wantErrorText: "EXPORT_STORAGE connection string has no AccountKey"},
		{name: "proxy with a keyless export connection string", env: []string{"EXPORT_STORAGE", keyless}, check: func(t *testing.T, c Config) {}},
		{name: "both kinds of export storage", env: []string{"EXPORT_STORAGE", "UseDevelopmentStorage=true",
			"EXPORT_STORAGE__blobServiceUri", "https://exp.blob.core.windows.net"}, wantErrorText: "EXPORT_STORAGE give either"},
		{name: "not a URL", env: []string{"EXPORT_STORAGE__blobServiceUri", "exp.blob.core.windows.net"},
			wantErrorText: "EXPORT_STORAGE__blobServiceUri must be an absolute"},
		{name: "client id alone", env: []string{"EXPORT_STORAGE__clientId", "0000"}, wantErrorText: "EXPORT_STORAGE__clientId is only used"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load(with(tc.env...))
			if tc.wantErrorText != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErrorText) {
					t.Fatalf("Load = %v, want an error saying %q", err, tc.wantErrorText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}
