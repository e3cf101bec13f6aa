package httpapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/azfhir/bulkexport/handler/internal/auth"
	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/httpapi"
)

// fakeAuth accepts "Bearer <client>" for the clients it knows, with their
// scopes, and refuses everything else as auth.Verifier does.
type fakeAuth struct {
	mu      sync.Mutex
	calls   int
	clients map[string][]string // client id -> scopes
}

func (a *fakeAuth) Authenticate(ctx context.Context, header string) (auth.Principal, error) {
	a.mu.Lock()
	a.calls++
	a.mu.Unlock()
	if header == "" {
		return auth.Principal{}, &fault.Error{Kind: fault.Unauthenticated, Msg: "this request needs a bearer token in the Authorization header", Err: auth.ErrNoToken}
	}
	client := strings.TrimPrefix(header, "Bearer ")
	scopes, ok := a.clients[client]
	if !ok {
		return auth.Principal{}, fault.New(fault.Unauthenticated, "invalid bearer token: unknown")
	}
	return auth.Principal{ClientID: client, Owner: "https://idp.example|" + client, Scopes: scopes}, nil
}

func (a *fakeAuth) Mode() auth.Mode { return auth.ModeOIDC }

func (a *fakeAuth) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls
}

func withAuth(a httpapi.Authenticator) func(*httpapi.Options) {
	return func(o *httpapi.Options) { o.Auth = a; o.TokenEndpoint = "https://idp.example/token" }
}

func ownerKey(client string) string {
	return auth.Principal{Owner: "https://idp.example|" + client}.OwnerKey()
}

const someJob = "01900000000000000000000000010000000000000000"

// Every route but the probe, /metadata and the SMART configuration wants a
// token: without one (or with a bad one) it answers 401 with a Bearer
// challenge and an OperationOutcome, and the engine is never asked.
func TestEveryPrivateRouteNeedsAToken(t *testing.T) {
	t.Parallel()
	a := &fakeAuth{clients: map[string][]string{"alice": {"system/*.rs"}}}
	b := setup(t, withAuth(a))
	for _, r := range []struct{ method, target string }{
		{"GET", "/$export"}, {"POST", "/Patient/$export"}, {"GET", "/Group/g1/$export"},
		{"GET", "/jobs/" + someJob}, {"DELETE", "/jobs/" + someJob}, {"GET", "/jobs/" + someJob + "/files/Patient-1.ndjson"},
	} {
		for _, token := range []string{"", "Bearer mallory"} {
			rec := b.call(r.method, r.target, hdr("Authorization", token), "")
			code, _ := checkOutcome(t, rec, http.StatusUnauthorized)
			want := "Bearer"
			if token != "" {
				want = `Bearer error="invalid_token"`
			}
			if ch := rec.Header().Get("WWW-Authenticate"); ch != want || code != "login" {
				t.Errorf("%s %s with %q: WWW-Authenticate %q code %q, want %q and login", r.method, r.target, token, ch, code, want)
			}
		}
	}
	if len(b.engine.requests) != 0 || len(b.engine.owners) != 0 || len(b.engine.cancelled) != 0 {
		t.Errorf("the engine was asked for unauthenticated requests: %d kick-offs, %d lookups", len(b.engine.requests), len(b.engine.owners))
	}

	before := a.count()
	for _, p := range []string{"/", "/metadata", "/.well-known/smart-configuration"} {
		if rec := b.call("GET", p, nil, ""); rec.Code != http.StatusOK {
			t.Errorf("GET %s without a token: %d, want 200", p, rec.Code)
		}
	}
	if a.count() != before {
		t.Errorf("the public routes asked for authentication %d times", a.count()-before)
	}
}

// The caller's owner key reaches every job lookup, so that the engine can
// hide other clients' jobs.
func TestJobLookupsCarryTheCallersOwner(t *testing.T) {
	t.Parallel()
	b := setup(t, withAuth(&fakeAuth{clients: map[string][]string{"alice": {"system/*.rs"}}}))
	rec := b.call("GET", "/$export", hdr("Authorization", "Bearer alice"), "")
	if rec.Code != http.StatusAccepted {
		t.Fatalf("kick-off: %d %s", rec.Code, rec.Body)
	}
	if got := b.engine.lastRequest(t).Owner; got != ownerKey("alice") {
		t.Errorf("job owner %q, want alice's key", got)
	}
	b.call("GET", "/jobs/"+someJob, hdr("Authorization", "Bearer alice"), "")
	b.call("DELETE", "/jobs/"+someJob, hdr("Authorization", "Bearer alice"), "")
	b.call("GET", "/jobs/"+someJob+"/files/Patient-1.ndjson", hdr("Authorization", "Bearer alice"), "")
	if len(b.engine.owners) != 3 || slices.ContainsFunc(b.engine.owners, func(o string) bool { return o != ownerKey("alice") }) {
		t.Errorf("owners passed to the engine %q, want alice's key three times", b.engine.owners)
	}
}

// A token with type scopes: a type outside them is 403 before the engine is
// asked; without _type it exports its types that the level has.
func TestScopesLimitTheTypes(t *testing.T) {
	t.Parallel()
	a := &fakeAuth{clients: map[string][]string{
		"labs":   {"system/Observation.rs", "system/Organization.read"},
		"nobody": {"openid", "system/Observation.rs?category=laboratory"},
	}}
	for _, tc := range []struct {
		name, client, target string
		status               int
		types                []string
	}{
		{"type outside the scopes", "labs", "/$export?_type=Observation,Patient", 403, nil},
		{"filter outside the scopes", "labs", "/$export?_typeFilter=Patient%3Fgender%3Dfemale", 403, nil},
		{"types inside", "labs", "/$export?_type=Observation", 202, []string{"Observation"}},
		{"no _type, system level", "labs", "/$export", 202, []string{"Observation", "Organization"}},
		{"no _type, Patient level", "labs", "/Patient/$export", 202, []string{"Observation"}},
		{"no export scope at all", "nobody", "/$export", 403, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, withAuth(a))
			rec := b.call("GET", tc.target, hdr("Authorization", "Bearer "+tc.client), "")
			if tc.status == 403 {
				checkOutcome(t, rec, http.StatusForbidden)
				if len(b.engine.requests) != 0 {
					t.Error("the engine got a forbidden kick-off")
				}
				return
			}
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
			}
			if got := b.engine.lastRequest(t).Types; !slices.Equal(got, tc.types) {
				t.Errorf("types %q, want %q", got, tc.types)
			}
		})
	}
}

// A client at its cap gets 429 with a Retry-After in whole seconds that is
// not clamped like a poll interval.
func TestLimitedIsTooManyRequests(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.engine.kickErr = &fault.Error{Kind: fault.Limited, RetryAfter: 60e9, Msg: "this client already has 5 unfinished exports"}
	rec := b.call("GET", "/$export", nil, "")
	code, diag := checkOutcome(t, rec, http.StatusTooManyRequests)
	if code != "throttled" || !strings.Contains(diag, "5 unfinished") || rec.Header().Get("Retry-After") != "60" {
		t.Errorf("code %q diagnostics %q Retry-After %q", code, diag, rec.Header().Get("Retry-After"))
	}
}

// The SMART configuration is published without a token and names the
// token endpoint; /metadata states the mode.
func TestDiscoveryDocuments(t *testing.T) {
	t.Parallel()
	b := setup(t, withAuth(&fakeAuth{}))
	rec := b.call("GET", "/.well-known/smart-configuration", nil, "")
	var sc struct {
		TokenEndpoint string   `json:"token_endpoint"`
		Grants        []string `json:"grant_types_supported"`
		Capabilities  []string `json:"capabilities"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &sc); err != nil || rec.Code != 200 {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	if sc.TokenEndpoint != "https://idp.example/token" || !slices.Contains(sc.Grants, "client_credentials") ||
		!slices.Contains(sc.Capabilities, "client-confidential-asymmetric") {
		t.Errorf("smart-configuration %s", rec.Body)
	}
	for _, tc := range []struct {
		b    *bundle
		want string
	}{
		{b, `"code":"SMART-on-FHIR"`},
		// The token endpoint is in /metadata too, for clients that read it
		// from there (the SMART bulk-data-client takes whichever answers first).
		{b, `{"url":"http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris","extension":[{"url":"token","valueUri":"https://idp.example/token"}]}`},
		{setup(t), "AUTH_MODE=none"},
	} {
		if rec := tc.b.call("GET", "/metadata", nil, ""); !strings.Contains(rec.Body.String(), tc.want) {
			t.Errorf("CapabilityStatement lacks %s: %s", tc.want, rec.Body)
		}
	}
}
