package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/tests/bulkclient"
	"github.com/azfhir/bulkexport/tests/oidcissuer"
)

const audience = "api://bulkexport-e2e"

// startIssuer runs an in-process OIDC issuer (RSA keys, discovery and JWKS
// over httptest) for one test.
func startIssuer(t *testing.T) *oidcissuer.Issuer {
	t.Helper()
	iss, err := oidcissuer.New(oidcissuer.Options{Audience: audience})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(iss.Close)
	return iss
}

// startOIDCService runs the handler with AUTH_MODE=oidc against iss.
func startOIDCService(t *testing.T, iss *oidcissuer.Issuer, extra ...string) *service {
	t.Helper()
	return startService(t, append([]string{"AUTH_MODE=oidc", "AUTH_ISSUER=" + iss.URL, "AUTH_AUDIENCE=" + audience}, extra...)...)
}

// mint returns a token of iss for client with claims added.
func mint(t *testing.T, iss *oidcissuer.Issuer, client string, claims oidcissuer.Claims) string {
	t.Helper()
	c := oidcissuer.Claims{"sub": client, "azp": client}
	for k, v := range claims {
		c[k] = v
	}
	tok, err := iss.Mint(c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// exporter is a token with the app role.
func exporter(t *testing.T, iss *oidcissuer.Issuer, client string) string {
	return mint(t, iss, client, oidcissuer.Claims{"roles": []string{"BulkData.Export"}})
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

// send makes one request with token as its bearer token ("" for none).
func send(t *testing.T, method, target, token string) answer {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx(t), method, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/fhir+json")
	req.Header.Set("Prefer", "respond-async")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: body}
}

// wantOutcome fails unless a is an OperationOutcome answer with status.
func wantOutcome(t *testing.T, what string, a answer, status int) {
	t.Helper()
	var oo struct {
		ResourceType string `json:"resourceType"`
		Issue        []struct {
			Diagnostics string `json:"diagnostics"`
		} `json:"issue"`
	}
	if a.status != status {
		t.Errorf("%s: status %d, want %d (%s)", what, a.status, status, a.body)
		return
	}
	if err := json.Unmarshal(a.body, &oo); err != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
		t.Errorf("%s: body %q is not an OperationOutcome", what, a.body)
	}
}

// bearerTransport sends a fixed bearer token with every request.
type bearerTransport struct{ token string }

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return http.DefaultTransport.RoundTrip(r)
}

func clientWith(svc *service, token string) *bulkclient.Client {
	return &bulkclient.Client{Base: svc.base, HTTP: &http.Client{Transport: bearerTransport{token}}, MaxWait: 3 * time.Minute}
}

// cancelJob cancels a job a test started and does not need.
func cancelJob(t *testing.T, a answer, token string) {
	t.Helper()
	if loc := a.header.Get("Content-Location"); loc != "" {
		send(t, http.MethodDelete, loc, token)
	}
}

// Every token check of the issue's acceptance list, against one service:
// 202 for a valid token, 401 with a challenge and an OperationOutcome for
// each bad one, 403 without the right, and a key rotated after start-up
// accepted without a restart.
func TestTokensAreChecked(t *testing.T) {
	iss := startIssuer(t)
	svc := startOIDCService(t, iss)
	kick := svc.base + "/$export?_type=Patient"
	now := time.Now()

	valid := send(t, http.MethodGet, kick, exporter(t, iss, "client-a"))
	if valid.status != http.StatusAccepted {
		t.Fatalf("valid token: %d %s, want 202", valid.status, valid.body)
	}
	cancelJob(t, valid, exporter(t, iss, "client-a"))

	role := oidcissuer.Claims{"sub": "client-a", "azp": "client-a", "roles": []string{"BulkData.Export"}}
	with := func(k string, v any) oidcissuer.Claims {
		c := oidcissuer.Claims{}
		for n, x := range role {
			c[n] = x
		}
		c[k] = v
		return c
	}
	forge := func(f func(oidcissuer.Claims) (string, error), c oidcissuer.Claims) string {
		tok, err := f(c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	expired := with("exp", now.Add(-10*time.Minute).Unix())
	expired["iat"], expired["nbf"] = now.Add(-time.Hour).Unix(), now.Add(-time.Hour).Unix()
	for _, tc := range []struct {
		name, token string
	}{
		{"no token", ""},
		{"expired", forge(iss.Mint, expired)},
		{"not yet valid", forge(iss.Mint, with("nbf", now.Add(10*time.Minute).Unix()))},
		{"wrong audience", forge(iss.Mint, with("aud", "api://another-service"))},
		{"wrong issuer", forge(iss.Mint, with("iss", "https://issuer.example"))},
		{"bad signature", forge(iss.MintWrongKey, role)},
		{"alg none", forge(iss.MintAlgNone, role)},
		{"HS256 keyed with the public key", forge(iss.MintHMACWithPublicKey, role)},
		{"a key the JWKS never published", forge(iss.MintUnpublished, role)},
	} {
		a := send(t, http.MethodGet, kick, tc.token)
		wantOutcome(t, tc.name, a, http.StatusUnauthorized)
		if ch := a.header.Get("WWW-Authenticate"); !strings.HasPrefix(ch, "Bearer") {
			t.Errorf("%s: WWW-Authenticate %q, want a Bearer challenge", tc.name, ch)
		}
		if tc.token != "" && strings.Contains(string(a.body), tc.token) {
			t.Errorf("%s: the answer repeats the token", tc.name)
		}
		// The client is told what is wrong with its credentials, not that
		// the server failed.
		if body := string(a.body); !strings.Contains(body, "token") || strings.Contains(body, "internal error") {
			t.Errorf("%s: diagnostics %s, want the token problem named", tc.name, body)
		}
	}

	// A valid token without the app role or a SMART scope: 403.
	noRight := mint(t, iss, "client-b", nil)
	wantOutcome(t, "no role or scope", send(t, http.MethodGet, kick, noRight), http.StatusForbidden)
	// A scope for Patient only: Observation is outside it.
	patientOnly := mint(t, iss, "client-c", oidcissuer.Claims{"scope": "system/Patient.rs"})
	wantOutcome(t, "a type outside the scopes", send(t, http.MethodGet, svc.base+"/$export?_type=Patient,Observation", patientOnly), http.StatusForbidden)

	// The public endpoints need no token.
	for _, p := range []string{"/metadata", "/.well-known/smart-configuration"} {
		if a := send(t, http.MethodGet, svc.base+p, ""); a.status != http.StatusOK {
			t.Errorf("GET %s without a token: %d, want 200", p, a.status)
		}
	}

	// A key rotated after start-up verifies: the service fetches the JWKS
	// again for the unknown kid.
	before := iss.KeyID()
	if _, err := iss.Rotate(); err != nil {
		t.Fatal(err)
	}
	rotated := exporter(t, iss, "client-a")
	if iss.KeyID() == before {
		t.Fatal("Rotate kept the key")
	}
	a := send(t, http.MethodGet, kick, rotated)
	if a.status != http.StatusAccepted {
		t.Fatalf("token signed with a key rotated after start-up: %d %s, want 202", a.status, a.body)
	}
	cancelJob(t, a, rotated)
}

// A token with type scopes and no _type exports just its types, and its
// manifest says the files need the token.
func TestScopedTokenExportsItsTypes(t *testing.T) {
	iss := startIssuer(t)
	svc := startOIDCService(t, iss)
	tok := mint(t, iss, "scoped", oidcissuer.Claims{"scope": "system/Patient.read system/Condition.rs"})
	res, err := clientWith(svc, tok).Export(ctx(t), "/$export")
	if err != nil {
		t.Fatal(err)
	}
	sameResources(t, res.Resources, fixture(t, func(typ string, _ map[string]any) bool { return typ == "Patient" || typ == "Condition" }))
	if !res.Manifest.RequiresAccessToken {
		t.Error("manifest requiresAccessToken false, but downloads go through the API, which wants the token")
	}
}

// Another client's job: status, cancel and downloads answer 404, as for an
// unknown job, and the job is unharmed for its owner.
func TestJobsBelongToTheirClient(t *testing.T) {
	iss := startIssuer(t)
	svc := startOIDCService(t, iss)
	alice, bob := exporter(t, iss, "alice"), exporter(t, iss, "bob")
	owner := clientWith(svc, alice)
	statusURL, err := owner.KickOff(ctx(t), "/$export?_type=Patient")
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := owner.Wait(ctx(t), statusURL)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Output) == 0 {
		t.Fatalf("manifest has no files: %+v", m)
	}
	fileURL := m.Output[0].URL

	unknown := svc.base + "/jobs/" + strings.Repeat("0", 12) + strings.Repeat("ab", 16)
	wantOutcome(t, "status of an unknown job", send(t, http.MethodGet, unknown, bob), http.StatusNotFound)
	wantOutcome(t, "another client's status", send(t, http.MethodGet, statusURL, bob), http.StatusNotFound)
	wantOutcome(t, "another client's download", send(t, http.MethodGet, fileURL, bob), http.StatusNotFound)
	wantOutcome(t, "another client's cancel", send(t, http.MethodDelete, statusURL, bob), http.StatusNotFound)
	wantOutcome(t, "status without a token", send(t, http.MethodGet, statusURL, ""), http.StatusUnauthorized)
	wantOutcome(t, "download without a token", send(t, http.MethodGet, fileURL, ""), http.StatusUnauthorized)

	if a := send(t, http.MethodGet, statusURL, alice); a.status != http.StatusOK {
		t.Fatalf("owner's status after the others' tries: %d %s, want 200", a.status, a.body)
	}
	got, _, err := owner.Download(ctx(t), m)
	if err != nil {
		t.Fatalf("owner's download after the others' tries: %v", err)
	}
	sameResources(t, got, fixture(t, func(typ string, _ map[string]any) bool { return typ == "Patient" }))
}

// The per-client cap: beyond EXPORT_MAX_ACTIVE_JOBS_PER_CLIENT unfinished
// jobs a kick-off answers 429 with Retry-After; another client is not held
// back. The source's searches are held, so that the jobs stay unfinished.
func TestActiveJobsPerClientAreCapped(t *testing.T) {
	iss := startIssuer(t)
	source, release := holdSearches(t)
	svc := startOIDCService(t, iss, "EXPORT_MAX_ACTIVE_JOBS_PER_CLIENT=2", "FHIR_SERVER_URL="+source)
	t.Cleanup(release) // before the service stops, so that it stops at once
	alice, bob := exporter(t, iss, "alice"), exporter(t, iss, "bob")
	kick := svc.base + "/$export?_type=Patient"
	for i := range 2 {
		if a := send(t, http.MethodGet, kick, alice); a.status != http.StatusAccepted {
			t.Fatalf("kick-off %d: %d %s, want 202", i+1, a.status, a.body)
		}
	}
	a := send(t, http.MethodGet, kick, alice)
	wantOutcome(t, "a kick-off beyond the cap", a, http.StatusTooManyRequests)
	if n, err := strconv.Atoi(a.header.Get("Retry-After")); err != nil || n < 1 {
		t.Errorf("429 Retry-After %q, want whole seconds", a.header.Get("Retry-After"))
	}
	if b := send(t, http.MethodGet, kick, bob); b.status != http.StatusAccepted {
		t.Errorf("another client at the same time: %d %s, want 202", b.status, b.body)
	}
}

// holdSearches serves the sample FHIR server through a proxy that holds
// every search until release is called (reads and /metadata pass), and
// returns its base URL.
func holdSearches(t *testing.T) (base string, release func()) {
	t.Helper()
	target, err := url.Parse(fhirBase)
	if err != nil {
		t.Fatal(err)
	}
	target.Path = ""
	proxy := httputil.NewSingleHostReverseProxy(target)
	held := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.RawQuery != "" {
			select {
			case <-held:
			case <-r.Context().Done():
				return
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	var once sync.Once
	return srv.URL + "/fhir", func() { once.Do(func() { close(held) }) }
}
