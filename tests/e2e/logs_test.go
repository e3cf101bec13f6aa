package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/tests/bulkclient"
	"github.com/azfhir/bulkexport/tests/oidcissuer"
	"github.com/azfhir/bulkexport/tests/testproc"
)

// logBuffer collects a handler's output; the process writes while a test
// reads.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// scopedBearer sends a bearer token to the service only, never to the
// storage a SAS download URL points at.
type scopedBearer struct{ token, base string }

func (b scopedBearer) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasPrefix(r.URL.String(), b.base+"/") {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+b.token)
	}
	return http.DefaultTransport.RoundTrip(r)
}

// An export with a token and SAS downloads, plus refused requests, leaves
// in the handler's log an audit line for each, and no token, SAS
// signature, connection string, account key or Authorization value.
func TestLogsCarryAuditLinesAndNoSecrets(t *testing.T) {
	iss := startIssuer(t)
	exportCS, _ := exportAccount(t)
	container := "e2e-logs-" + testproc.RandomSuffix()
	t.Cleanup(func() { deleteAzuriteContainer(container) })
	svc := startOIDCService(t, iss, "EXPORT_STORAGE="+exportCS, "EXPORT_DOWNLOADS=sas", "EXPORT_SAS_TTL=10m",
		"EXPORT_CONTAINER="+container, "EXPORT_CONTAINERS="+container)

	token := exporter(t, iss, "client-logs")
	c := &bulkclient.Client{Base: svc.base, HTTP: &http.Client{Transport: scopedBearer{token, svc.base}}}
	res, err := c.Export(ctx(t), "/$export?_type=Patient")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Manifest.Output) == 0 || !strings.Contains(res.Manifest.Output[0].URL, "sig=") {
		t.Fatalf("the manifest has no SAS download URLs: %+v", res.Manifest.Output)
	}
	jobID := res.StatusURL[strings.LastIndex(res.StatusURL, "/")+1:]

	// Refused requests, each with a credential the log must not keep.
	forged, err := iss.MintWrongKey(oidcissuer.Claims{"sub": "mallory", "azp": "mallory", "roles": []string{"BulkData.Export"}})
	if err != nil {
		t.Fatal(err)
	}
	other := exporter(t, iss, "client-other")
	garbage := "not-a-jwt-" + testproc.RandomSuffix()
	wantOutcome(t, "forged token", send(t, http.MethodGet, svc.base+"/$export", forged), http.StatusUnauthorized)
	wantOutcome(t, "garbage token", send(t, http.MethodGet, res.StatusURL, garbage), http.StatusUnauthorized)
	wantOutcome(t, "another client's status", send(t, http.MethodGet, res.StatusURL, other), http.StatusNotFound)
	// The proxy route of a file, by its owner: answered either way, logged.
	send(t, http.MethodGet, svc.base+"/jobs/"+jobID+"/files/Patient-1.ndjson", token)
	if a := send(t, http.MethodDelete, res.StatusURL, token); a.status != http.StatusAccepted {
		t.Errorf("cancel: %d %s", a.status, a.body)
	}

	// The handler logs a request before answering it, but its output
	// reaches the buffer through a pipe: wait for the last request's line.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if strings.Contains(svc.logs.String(), `"action":"cancel"`) {
			break
		}
	}
	logs := svc.logs.String()
	lines := strings.Split(strings.TrimSpace(logs), "\n")
	if len(lines) < 10 {
		t.Fatalf("the handler logged only %d lines", len(lines))
	}

	accountKey := ""
	for part := range strings.SplitSeq(os.Getenv("AZURE_STORAGE_CONNECTION_STRING"), ";") {
		if k, v, ok := strings.Cut(part, "="); ok && k == "AccountKey" {
			accountKey = v
		}
	}
	if accountKey == "" {
		t.Fatal("the Azurite connection string has no AccountKey to look for")
	}
	secrets := map[string]string{
		"the exporter's token": token, "the forged token": forged, "the other client's token": other,
		"the garbage token": garbage, "a SAS signature": "sig=", "a connection string": "AccountKey",
		"the account key": accountKey, "an Authorization value": "Bearer ey",
		// A token's signature alone is as good as the token.
		"the exporter's token signature": token[strings.LastIndex(token, ".")+1:],
		"the forged token signature":     forged[strings.LastIndex(forged, ".")+1:],
	}
	for i, line := range lines {
		for what, s := range secrets {
			if strings.Contains(line, s) {
				t.Errorf("log line %d carries %s: %.300s", i+1, what, line)
			}
		}
	}

	// One audit line per kick-off, manifest, download, cancel and refusal.
	actions := map[string][]map[string]any{}
	for _, line := range lines {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil || m["audit"] != true {
			continue
		}
		a, _ := m["action"].(string)
		actions[a] = append(actions[a], m)
	}
	check := func(action, client, outcome string) {
		t.Helper()
		for _, m := range actions[action] {
			if m["client"] == client && m["outcome"] == outcome {
				return
			}
		}
		t.Errorf("no audit line %s by %q with outcome %s; audit lines: %v", action, client, outcome, actions)
	}
	check("kickoff", "client-logs", "ok")
	check("manifest", "client-logs", "ok")
	check("download", "client-logs", "ok") // the proxy route, still open to the owner
	check("cancel", "client-logs", "ok")
	check("refused", "", "refused")             // the 401s: no client is known
	check("refused", "client-other", "refused") // another client's status: 404
	for _, m := range actions["kickoff"] {
		if m["outcome"] != "ok" {
			continue // the forged token's, refused before its parameters were read
		}
		if m["job"] != jobID || !strings.Contains(strings.Join(toStrings(m["types"]), ","), "Patient") {
			t.Errorf("kick-off audit line %v lacks the job or the types", m)
		}
	}
}

func toStrings(v any) []string {
	var out []string
	list, _ := v.([]any)
	for _, x := range list {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}
