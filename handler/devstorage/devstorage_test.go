package devstorage

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestExpand(t *testing.T) {
	for in, want := range map[string]string{
		"UseDevelopmentStorage=true":                  ConnectionString,
		" usedevelopmentstorage = TRUE ;":             ConnectionString,
		"AccountName=a;AccountKey=k;EndpointSuffix=x": "AccountName=a;AccountKey=k;EndpointSuffix=x",
		"UseDevelopmentStorage=false":                 "UseDevelopmentStorage=false",
	} {
		if got := Expand(in); got != want {
			t.Errorf("Expand(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestAzuriteScriptAgrees keeps the account that scripts/azurite/azurite.sh
// prints for the default ports equal to ConnectionString, so a local run
// against the script's Azurite and UseDevelopmentStorage=true reach the same
// account.
func TestAzuriteScriptAgrees(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash to run scripts/azurite/azurite.sh")
	}
	cmd := exec.Command(bash, "../../scripts/azurite/azurite.sh", "connection-string")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AZURITE_") { // the default ports, whatever the caller runs on
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("azurite.sh connection-string: %v", err)
	}
	if got := strings.TrimSpace(string(out)); got != ConnectionString {
		t.Errorf("azurite.sh prints\n  %s\nbut devstorage.ConnectionString is\n  %s", got, ConnectionString)
	}
}
