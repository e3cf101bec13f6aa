package config

import (
	"strings"
	"testing"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fhirsource"
)

func TestWindowAndSourceConcurrencySettings(t *testing.T) {
	base := map[string]string{"AzureWebJobsStorage": "UseDevelopmentStorage=true", "FHIR_SERVER_URL": "http://127.0.0.1:8080/fhir", "AUTH_MODE": "none"}
	with := func(k, v string) map[string]string {
		m := map[string]string{k: v}
		for bk, bv := range base {
			m[bk] = bv
		}
		return m
	}
	c, err := Load(env(base))
	if err != nil {
		t.Fatal(err)
	}
	if c.WindowResources != export.DefaultWindowResources || c.SourceConcurrency != fhirsource.DefaultConcurrency {
		t.Errorf("defaults: windows of %d, source concurrency %d; want the engine's %d and the client's %d",
			c.WindowResources, c.SourceConcurrency, export.DefaultWindowResources, fhirsource.DefaultConcurrency)
	}
	if c, err := Load(env(with("EXPORT_WINDOW_RESOURCES", "0"))); err != nil || c.WindowResources != 0 {
		t.Errorf("EXPORT_WINDOW_RESOURCES=0 (windows off): %d, %v", c.WindowResources, err)
	}
	if c, err := Load(env(with("EXPORT_SOURCE_CONCURRENCY", "3"))); err != nil || c.SourceConcurrency != 3 {
		t.Errorf("EXPORT_SOURCE_CONCURRENCY=3: %d, %v", c.SourceConcurrency, err)
	}
	for k, v := range map[string]string{"EXPORT_WINDOW_RESOURCES": "-1", "EXPORT_SOURCE_CONCURRENCY": "0"} {
		if _, err := Load(env(with(k, v))); err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("%s=%s: %v, want an error naming it", k, v, err)
		}
	}
}
