package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/tests/oidcissuer"
)

const audience = "api://bulk-export"

// fakeClock is the shared clock of the issuer and the verifier, so tests can
// move past fetch windows and key ages without waiting.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func decodeJSON(resp *http.Response, v any) error {
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// cable is the verifier's network: unplugged, every request to the issuer
// fails as if it were down.
type cable struct{ unplugged atomic.Bool }

func (c *cable) RoundTrip(req *http.Request) (*http.Response, error) {
	if c.unplugged.Load() {
		return nil, errors.New("connection refused")
	}
	return http.DefaultTransport.RoundTrip(req)
}

type fixture struct {
	t     *testing.T
	iss   *oidcissuer.Issuer
	v     *Verifier
	clock *fakeClock
	net   *cable
}

// setup starts an issuer and a verifier for it. cfg's zero fields get: mode
// oidc at the issuer, audience api://bulk-export, the fake clock.
func setup(t *testing.T, opts oidcissuer.Options, cfg Config) *fixture {
	t.Helper()
	f := &fixture{t: t, clock: &fakeClock{t: time.Now()}, net: &cable{}}
	opts.Now = f.clock.Now
	iss, err := oidcissuer.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(iss.Close)
	f.iss = iss
	if cfg.Mode == "" {
		cfg.Mode, cfg.Issuer = ModeOIDC, iss.URL
	}
	if cfg.Mode == ModeEntra && cfg.EntraAuthority == "" {
		cfg.EntraAuthority = iss.ServerURL()
	}
	if cfg.Audiences == nil {
		cfg.Audiences = []string{"other-api", audience}
	}
	cfg.Now = f.clock.Now
	cfg.HTTPClient = &http.Client{Transport: f.net, Timeout: 5 * time.Second}
	f.v, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) mint(claims oidcissuer.Claims) string {
	f.t.Helper()
	return f.must(f.iss.Mint(claims))
}

// must returns the token of a Mint call, or stops the test.
func (f *fixture) must(tok string, err error) string {
	f.t.Helper()
	if err != nil {
		f.t.Fatal(err)
	}
	return tok
}

func (f *fixture) auth(token string) (Principal, error) {
	return f.v.Authenticate(context.Background(), "Bearer "+token)
}

// client is the claims of an app-only token of client "c1" with the export role.
func client(extra oidcissuer.Claims) oidcissuer.Claims {
	c := oidcissuer.Claims{"aud": audience, "sub": "sp-1", "azp": "c1", "roles": []string{DefaultRole}}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

func TestValidTokenGivesItsPrincipal(t *testing.T) {
	f := setup(t, oidcissuer.Options{}, Config{})
	p, err := f.auth(f.mint(client(oidcissuer.Claims{"scope": "system/Patient.rs", "scp": []string{"system/Group.read"}})))
	if err != nil {
		t.Fatalf("valid token refused: %v", err)
	}
	if p.Issuer != f.iss.URL || p.ClientID != "c1" || p.Subject != "sp-1" || p.Anonymous {
		t.Errorf("principal = %+v, want issuer %s, client c1, subject sp-1", p, f.iss.URL)
	}
	if want := f.iss.URL + "|c1"; p.Owner != want {
		t.Errorf("Owner = %q, want %q", p.Owner, want)
	}
	if len(p.OwnerKey()) != 64 || strings.ContainsAny(p.OwnerKey(), "/\\#?|") {
		t.Errorf("OwnerKey %q does not fit a table key", p.OwnerKey())
	}
	if strings.Join(p.Roles, " ") != DefaultRole || strings.Join(p.Scopes, " ") != "system/Group.read system/Patient.rs" {
		t.Errorf("roles %q scopes %q", p.Roles, p.Scopes)
	}
	if p.Expiry.IsZero() {
		t.Error("no expiry")
	}
}

// TestRejectedTokens: every way a token can be wrong is a 401 whose text
// does not repeat the token.
func TestRejectedTokens(t *testing.T) {
	f := setup(t, oidcissuer.Options{}, Config{})
	other, err := oidcissuer.New(oidcissuer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	now := f.clock.Now()
	valid := f.mint(client(nil))
	parts := strings.Split(valid, ".")
	otherPayload := strings.Split(f.mint(client(oidcissuer.Claims{"azp": "admin"})), ".")[1]

	cases := []struct {
		name   string
		header string
		noTok  bool // the challenge carries no error code
		reason string
	}{
		{name: "no header", header: "", noTok: true},
		{name: "other scheme", header: "Basic YTpi", noTok: true},
		{name: "bearer without token", header: "Bearer ", reason: "no token"},
		{name: "not a JWT", header: "Bearer abc.def", reason: "not a JWT"},
		{name: "garbage JWT", header: "Bearer a.b.c", reason: "accepted algorithm"},
		{name: "expired", header: "Bearer " + f.mint(client(oidcissuer.Claims{"exp": now.Add(-2 * time.Minute).Unix()})), reason: "expired"},
		{name: "not yet valid", header: "Bearer " + f.mint(client(oidcissuer.Claims{"nbf": now.Add(2 * time.Minute).Unix()})), reason: "not valid before"},
		{name: "issued in the future", header: "Bearer " + f.mint(client(oidcissuer.Claims{"iat": now.Add(2 * time.Minute).Unix()})), reason: "future"},
		{name: "no exp", header: "Bearer " + f.mint(client(oidcissuer.Claims{"exp": nil})), reason: "no expiry"},
		{name: "wrong audience", header: "Bearer " + f.mint(client(oidcissuer.Claims{"aud": "api://someone-else"})), reason: "audience"},
		{name: "no audience", header: "Bearer " + f.mint(client(oidcissuer.Claims{"aud": nil})), reason: "audience"},
		{name: "wrong issuer, our key", header: "Bearer " + f.mint(client(oidcissuer.Claims{"iss": other.URL})), reason: "issuer"},
		{name: "another issuer's token", header: "Bearer " + f.must(other.Mint(client(nil))), reason: "signature"},
		{name: "no client", header: "Bearer " + f.mint(client(oidcissuer.Claims{"azp": nil, "sub": nil})), reason: "no client"},
		{name: "bad signature", header: "Bearer " + f.must(f.iss.MintWrongKey(client(nil))), reason: "signature"},
		{name: "payload swapped", header: "Bearer " + parts[0] + "." + otherPayload + "." + parts[2], reason: "signature"},
		{name: "alg none", header: "Bearer " + f.must(f.iss.MintAlgNone(client(nil))), reason: "accepted algorithm"},
		{name: "HS256 keyed with the public key", header: "Bearer " + f.must(f.iss.MintHMACWithPublicKey(client(nil))), reason: "accepted algorithm"},
		{name: "key never published", header: "Bearer " + f.must(f.iss.MintUnpublished(client(nil))), reason: "signature"},
		{name: "oversized", header: "Bearer " + strings.Repeat("a", maxTokenBytes) + ".b.c", reason: "longer"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.v.Authenticate(context.Background(), tc.header)
			if !fault.Is(err, fault.Unauthenticated) {
				t.Fatalf("err = %v (kind %v), want unauthenticated", err, fault.KindOf(err))
			}
			if fault.Code(err) != "login" {
				t.Errorf("issue code %q, want login", fault.Code(err))
			}
			want := `Bearer error="invalid_token"`
			if tc.noTok {
				want = "Bearer"
			}
			if got := Challenge(err); got != want {
				t.Errorf("Challenge = %q, want %q", got, want)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("err %q does not say %q", err, tc.reason)
			}
			if tok := strings.TrimPrefix(tc.header, "Bearer "); len(tok) > 20 && strings.Contains(err.Error(), tok[len(tok)-20:]) {
				t.Errorf("err %q repeats the token", err)
			}
		})
	}
	// The cases above prove nothing if the verifier refuses everything.
	if _, err := f.auth(valid); err != nil {
		t.Fatalf("valid token refused: %v", err)
	}
}

// TestClockSkew: exp and nbf a little off are tolerated, by ClockSkew only.
func TestClockSkew(t *testing.T) {
	f := setup(t, oidcissuer.Options{}, Config{ClockSkew: 90 * time.Second})
	now := f.clock.Now()
	for _, tc := range []struct {
		claims oidcissuer.Claims
		ok     bool
	}{
		{oidcissuer.Claims{"exp": now.Add(-80 * time.Second).Unix()}, true},
		{oidcissuer.Claims{"exp": now.Add(-100 * time.Second).Unix()}, false},
		{oidcissuer.Claims{"nbf": now.Add(80 * time.Second).Unix(), "iat": now.Add(80 * time.Second).Unix()}, true},
		{oidcissuer.Claims{"nbf": now.Add(100 * time.Second).Unix()}, false},
	} {
		_, err := f.auth(f.mint(client(tc.claims)))
		if (err == nil) != tc.ok {
			t.Errorf("claims %v: err = %v, want ok=%v", tc.claims, err, tc.ok)
		}
	}
}

func TestClientID(t *testing.T) {
	f := setup(t, oidcissuer.Options{}, Config{})
	for _, tc := range []struct {
		claims oidcissuer.Claims
		want   string
	}{
		{oidcissuer.Claims{"azp": "a", "appid": "b", "client_id": "c", "sub": "d"}, "a"},
		{oidcissuer.Claims{"azp": nil, "appid": "b", "client_id": "c", "sub": "d"}, "b"},
		{oidcissuer.Claims{"azp": nil, "client_id": "c", "sub": "d"}, "c"},
		{oidcissuer.Claims{"azp": nil, "sub": "d"}, "d"},
	} {
		p, err := f.auth(f.mint(client(tc.claims)))
		if err != nil {
			t.Fatal(err)
		}
		if p.ClientID != tc.want || p.Owner != f.iss.URL+"|"+tc.want {
			t.Errorf("claims %v: client %q owner %q, want client %q", tc.claims, p.ClientID, p.Owner, tc.want)
		}
	}
}

// TestKeyRotation: a key the issuer publishes after the verifier has cached
// the JWKS is accepted without a restart, and the old key still works.
func TestKeyRotation(t *testing.T) {
	f := setup(t, oidcissuer.Options{}, Config{})
	old := f.mint(client(nil))
	if _, err := f.auth(old); err != nil {
		t.Fatal(err)
	}
	kid, err := f.iss.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	rotated := f.mint(client(nil))
	if _, err := f.auth(rotated); err != nil {
		t.Fatalf("token of rotated key %s refused: %v", kid, err)
	}
	if _, err := f.auth(old); err != nil {
		t.Fatalf("token of the old key refused after rotation: %v", err)
	}
	if n := f.iss.Requests("keys"); n != 2 {
		t.Errorf("JWKS fetched %d times, want 2 (start, rotation)", n)
	}
	if n := f.iss.Requests("discovery"); n != 1 {
		t.Errorf("discovery fetched %d times, want 1", n)
	}
}

// TestUnknownKeysCannotFloodTheIssuer: tokens signed with made-up keys cost at
// most fetchLimit JWKS fetches a window, stay 401 (not 503), and a real new
// key is found again once the window has passed.
func TestUnknownKeysCannotFloodTheIssuer(t *testing.T) {
	f := setup(t, oidcissuer.Options{}, Config{})
	if _, err := f.auth(f.mint(client(nil))); err != nil {
		t.Fatal(err)
	}
	forged := f.must(f.iss.MintUnpublished(client(nil)))
	attempt := func() {
		t.Helper()
		if _, err := f.auth(forged); !fault.Is(err, fault.Unauthenticated) {
			t.Fatalf("unknown key: err = %v, want unauthenticated", err)
		}
	}
	// Use up the window's fetches. Not every attempt fetches: go-oidc lets
	// a request share the result of a fetch that has just finished.
	for i := 0; f.iss.Requests("keys") < fetchLimit && i < 10*fetchLimit; i++ {
		attempt()
	}
	for range 2 * fetchLimit {
		attempt()
	}
	if n := f.iss.Requests("keys"); n != fetchLimit {
		t.Errorf("JWKS fetched %d times in one window, want the limit %d", n, fetchLimit)
	}
	if _, err := f.auth(f.mint(client(nil))); err != nil {
		t.Fatalf("known key refused while throttled: %v", err)
	}

	if _, err := f.iss.Rotate(); err != nil {
		t.Fatal(err)
	}
	rotated := f.mint(client(nil))
	if _, err := f.auth(rotated); !fault.Is(err, fault.Unauthenticated) {
		t.Fatalf("within the window a new key cannot be fetched, err = %v, keys fetched %d", err, f.iss.Requests("keys"))
	}
	f.clock.Advance(fetchWindow)
	if _, err := f.auth(rotated); err != nil {
		t.Fatalf("after the window the rotated key is still refused: %v", err)
	}
}

// TestWithdrawnKeyStopsVerifying: once the issuer removes a key from its
// JWKS, its tokens are refused after at most keyMaxAge.
func TestWithdrawnKeyStopsVerifying(t *testing.T) {
	f := setup(t, oidcissuer.Options{TokenTTL: 3 * keyMaxAge}, Config{})
	compromised := f.iss.KeyID()
	leaked := f.mint(client(nil))
	if _, err := f.auth(leaked); err != nil {
		t.Fatal(err)
	}
	if _, err := f.iss.Rotate(); err != nil {
		t.Fatal(err)
	}
	f.iss.Revoke(compromised)
	fresh := f.mint(client(nil))

	f.clock.Advance(keyMaxAge)
	if _, err := f.auth(leaked); !fault.Is(err, fault.Unauthenticated) {
		t.Fatalf("token of a withdrawn key: err = %v, want unauthenticated", err)
	}
	if _, err := f.auth(fresh); err != nil {
		t.Fatalf("token of the new key refused: %v", err)
	}
}

// TestIssuerDown: New needs no issuer; while it cannot be reached a token is
// a 503, and the next request after it is back succeeds.
func TestIssuerDown(t *testing.T) {
	f := setup(t, oidcissuer.Options{}, Config{})
	tok := f.mint(client(nil))

	f.net.unplugged.Store(true)
	if err := f.v.Discover(context.Background()); !fault.Is(err, fault.Unavailable) {
		t.Fatalf("Discover with the issuer down: err = %v, want unavailable", err)
	}
	_, err := f.auth(tok)
	if !fault.Is(err, fault.Unavailable) {
		t.Fatalf("discovery down: err = %v, want unavailable", err)
	}
	if strings.Contains(err.Error(), "refused") || strings.Contains(err.Error(), f.iss.URL) {
		t.Errorf("client-facing error %q carries network detail", err)
	}

	f.net.unplugged.Store(false)
	if err := f.v.Discover(context.Background()); err != nil {
		t.Fatalf("Discover: %v", err)
	}
	// Discovered, but the keys cannot be fetched.
	f.net.unplugged.Store(true)
	if _, err := f.auth(tok); !fault.Is(err, fault.Unavailable) {
		t.Fatalf("JWKS down: err = %v, want unavailable", err)
	}
	f.net.unplugged.Store(false)
	if _, err := f.auth(tok); err != nil {
		t.Fatalf("issuer back: %v", err)
	}
}

// TestConcurrentFirstRequests: a burst of requests at a cold start discovers
// once and fetches the keys once.
func TestConcurrentFirstRequests(t *testing.T) {
	f := setup(t, oidcissuer.Options{}, Config{})
	tok := f.mint(client(nil))
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			_, err := f.auth(tok)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if d, k := f.iss.Requests("discovery"), f.iss.Requests("keys"); d != 1 || k != 1 {
		t.Errorf("discovery fetched %d times, keys %d times; want 1 and 1", d, k)
	}
}

func TestECDSAIssuer(t *testing.T) {
	f := setup(t, oidcissuer.Options{Algorithm: jose.ES256}, Config{})
	if _, err := f.auth(f.mint(client(nil))); err != nil {
		t.Fatalf("ES256 token refused: %v", err)
	}
	if _, err := f.auth(f.must(f.iss.MintHMACWithPublicKey(client(nil)))); !fault.Is(err, fault.Unauthenticated) {
		t.Fatalf("HS256 with the EC public key: err = %v", err)
	}
}

func TestTokenEndpointToken(t *testing.T) {
	f := setup(t, oidcissuer.Options{
		Audience: audience,
		Clients: map[string]oidcissuer.Client{
			"backend": {Secret: "s3cret", Scopes: []string{"system/Observation.rs", "system/Patient.rs"}},
		},
	}, Config{})
	resp, err := http.PostForm(f.iss.TokenURL(), map[string][]string{
		"grant_type": {"client_credentials"}, "client_id": {"backend"}, "client_secret": {"s3cret"},
		"scope": {"system/Observation.rs"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
	}
	if err := decodeJSON(resp, &body); err != nil {
		t.Fatal(err)
	}
	p, err := f.auth(body.AccessToken)
	if err != nil {
		t.Fatalf("token from the token endpoint refused: %v", err)
	}
	if all, types := p.AllowedTypes(); all || strings.Join(types, ",") != "Observation" || p.ClientID != "backend" {
		t.Errorf("client %q allowed all=%v %v, want backend with Observation only", p.ClientID, all, types)
	}
}

func TestEntra(t *testing.T) {
	const tenant = "0b7c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3"
	f := setup(t, oidcissuer.Options{Path: "/" + tenant + "/v2.0"}, Config{
		Mode: ModeEntra, TenantID: strings.ToUpper(tenant), Audiences: []string{audience, "11111111-2222-3333-4444-555555555555"},
	})
	v2 := f.iss.URL
	if v2 != f.iss.ServerURL()+"/"+tenant+"/v2.0" {
		t.Fatalf("issuer %s", v2)
	}

	p2, err := f.auth(f.mint(oidcissuer.Claims{
		"ver": "2.0", "aud": "11111111-2222-3333-4444-555555555555", "azp": "client-app", "sub": "sp", "tid": tenant,
		"roles": []string{DefaultRole},
	}))
	if err != nil {
		t.Fatalf("v2 token refused: %v", err)
	}
	p1, err := f.auth(f.mint(oidcissuer.Claims{
		"ver": "1.0", "iss": "https://sts.windows.net/" + tenant + "/", "aud": audience, "appid": "client-app", "sub": "sp",
		"tid": tenant, "roles": []string{DefaultRole},
	}))
	if err != nil {
		t.Fatalf("v1 token refused: %v", err)
	}
	if p1.Issuer == p2.Issuer || p1.Owner != p2.Owner || p1.Owner != v2+"|client-app" {
		t.Errorf("v1 owner %q (iss %q), v2 owner %q (iss %q): want one owner, the v2 issuer's", p1.Owner, p1.Issuer, p2.Owner, p2.Issuer)
	}

	for name, iss := range map[string]string{
		"other tenant v1": "https://sts.windows.net/99999999-2222-3333-4444-555555555555/",
		"other tenant v2": f.iss.ServerURL() + "/99999999-2222-3333-4444-555555555555/v2.0",
		"common":          f.iss.ServerURL() + "/common/v2.0",
	} {
		_, err := f.auth(f.mint(oidcissuer.Claims{"iss": iss, "aud": audience, "azp": "x"}))
		if !fault.Is(err, fault.Unauthenticated) || !strings.Contains(err.Error(), "issuer") {
			t.Errorf("%s: err = %v, want unauthenticated for the issuer", name, err)
		}
	}
}

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"none", Config{Mode: ModeNone}, true},
		{"none with issuer", Config{Mode: ModeNone, Issuer: "https://idp.example"}, false},
		{"oidc", Config{Mode: ModeOIDC, Issuer: "https://idp.example/realms/x", Audiences: []string{"a"}}, true},
		{"oidc loopback http", Config{Mode: ModeOIDC, Issuer: "http://127.0.0.1:8080", Audiences: []string{"a"}}, true},
		{"oidc plain http", Config{Mode: ModeOIDC, Issuer: "http://idp.example", Audiences: []string{"a"}}, false},
		{"oidc no audience", Config{Mode: ModeOIDC, Issuer: "https://idp.example", Audiences: []string{" "}}, false},
		{"oidc no issuer", Config{Mode: ModeOIDC, Audiences: []string{"a"}}, false},
		{"entra", Config{Mode: ModeEntra, TenantID: "0b7c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3", Audiences: []string{"a"}}, true},
		{"entra common", Config{Mode: ModeEntra, TenantID: "common", Audiences: []string{"a"}}, false},
		{"entra domain", Config{Mode: ModeEntra, TenantID: "contoso.onmicrosoft.com", Audiences: []string{"a"}}, false},
		{"entra with issuer", Config{Mode: ModeEntra, TenantID: "0b7c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3", Issuer: "https://x", Audiences: []string{"a"}}, false},
		{"skew too large", Config{Mode: ModeNone, ClockSkew: time.Hour}, false},
		{"no mode", Config{}, false},
	} {
		if _, err := New(tc.cfg); (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestModeNone(t *testing.T) {
	v, err := New(Config{Mode: ModeNone})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"", "Bearer not-a-token"} {
		p, err := v.Authenticate(context.Background(), h)
		if err != nil {
			t.Fatal(err)
		}
		if all, _ := p.AllowedTypes(); !p.Anonymous || !all || p.Owner != anonymousOwner {
			t.Errorf("header %q: principal %+v, want the anonymous principal with every type", h, p)
		}
	}
}
