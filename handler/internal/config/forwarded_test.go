package config

import (
	"strings"
	"testing"
)

// EXPORT_TRUST_FORWARDED is off unless set: a bare handler serve must not
// let X-Forwarded-Host choose the URLs it hands out.
func TestTrustForwarded(t *testing.T) {
	for _, tc := range []struct {
		value   string
		want    bool
		wantErr string
	}{
		{value: "", want: false},
		{value: "true", want: true},
		{value: "false", want: false},
		{value: "yes", wantErr: `EXPORT_TRUST_FORWARDED must be true or false, got "yes"`},
	} {
		t.Run(tc.value, func(t *testing.T) {
			c, err := Load(env(map[string]string{
				"AzureWebJobsStorage": "UseDevelopmentStorage=true", "FHIR_SERVER_URL": "http://127.0.0.1:8080/fhir",
				"AUTH_MODE": "none", "EXPORT_TRUST_FORWARDED": tc.value,
			}))
			switch {
			case tc.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("Load error = %v, want %q", err, tc.wantErr)
				}
			case err != nil:
				t.Fatal(err)
			case c.TrustForwarded != tc.want:
				t.Errorf("TrustForwarded = %v, want %v", c.TrustForwarded, tc.want)
			}
		})
	}
}
