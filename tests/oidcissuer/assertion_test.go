package oidcissuer_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/azfhir/bulkexport/tests/oidcissuer"
)

// smartFixture is an issuer with clients that authenticate with assertions:
// "smart" (an ES384 and an RS384 key), "single" (one ES384 key, so an
// assertion may leave out the kid) and "other" (its own ES384 key).
type smartFixture struct {
	iss                  *oidcissuer.Issuer
	ecKey, rsaKey, other crypto.Signer
	single               crypto.Signer
}

func newSmartFixture(t *testing.T) *smartFixture {
	t.Helper()
	f := &smartFixture{ecKey: ecKey(t), rsaKey: rsaKey(t), other: ecKey(t), single: ecKey(t)}
	pub := func(keys ...jose.JSONWebKey) *jose.JSONWebKeySet { return &jose.JSONWebKeySet{Keys: keys} }
	iss, err := oidcissuer.New(oidcissuer.Options{
		Audience: "api://x",
		Clients: map[string]oidcissuer.Client{
			"smart": {
				Keys: pub(
					jose.JSONWebKey{Key: f.ecKey.Public(), KeyID: "ec1", Algorithm: "ES384", Use: "sig"},
					jose.JSONWebKey{Key: f.rsaKey.Public(), KeyID: "rsa1"},
				),
				Scopes: []string{"system/*.read", "system/*.rs", "system/Patient.rs"},
				Claims: oidcissuer.Claims{"roles": []string{"R"}},
			},
			"single": {Keys: pub(jose.JSONWebKey{Key: f.single.Public(), KeyID: "only"}), Scopes: []string{"system/*.rs"}},
			"other":  {Keys: pub(jose.JSONWebKey{Key: f.other.Public(), KeyID: "o1"}), Scopes: []string{"system/*.rs"}},
			"secret": {Secret: "pw"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(iss.Close)
	f.iss = iss
	return f
}

func ecKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func rsaKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// claims are those of a good assertion of client "smart" for f's token
// endpoint, with a fresh jti; extra overrides them, and nil drops one.
func (f *smartFixture) claims(extra map[string]any) map[string]any {
	now := time.Now()
	c := map[string]any{
		"iss": "smart", "sub": "smart", "aud": f.iss.TokenURL(),
		"exp": now.Add(4 * time.Minute).Unix(), "iat": now.Unix(), "jti": randomID(),
	}
	for k, v := range extra {
		if v == nil {
			delete(c, k)
			continue
		}
		c[k] = v
	}
	return c
}

func randomID() string {
	b := make([]byte, 10)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// signJWT signs claims with go-jose; kid "" leaves the kid out.
func signJWT(t *testing.T, key any, alg jose.SignatureAlgorithm, kid string, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// algNone is an unsigned assertion, put together by hand as an attacker would.
func algNone(t *testing.T, kid string, claims map[string]any) string {
	t.Helper()
	h, _ := json.Marshal(map[string]string{"alg": "none", "typ": "JWT", "kid": kid})
	p, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(p) + "."
}

func publicPEM(t *testing.T, k crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func assertionForm(assertion string) url.Values {
	return url.Values{
		"grant_type":            {"client_credentials"},
		"client_assertion_type": {oidcissuer.AssertionType},
		"client_assertion":      {assertion},
	}
}

// postToken posts form to the token endpoint and returns the status and body.
func postToken(t *testing.T, iss *oidcissuer.Issuer, form url.Values, basic [2]string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, iss.TokenURL(), strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if basic[0] != "" {
		req.SetBasicAuth(basic[0], basic[1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("token response is not JSON: %v", err)
	}
	return resp.StatusCode, body
}

func TestClientAssertionGetsToken(t *testing.T) {
	f := newSmartFixture(t)
	for _, tc := range []struct {
		name      string
		assertion func() string
		form      url.Values // added to the assertion form
		client    string
		scope     string // the token's scope
	}{
		{"ES384", func() string { return signJWT(t, f.ecKey, jose.ES384, "ec1", f.claims(nil)) }, nil, "smart",
			"system/*.read system/*.rs system/Patient.rs"},
		{"RS384", func() string { return signJWT(t, f.rsaKey, jose.RS384, "rsa1", f.claims(nil)) }, nil, "smart",
			"system/*.read system/*.rs system/Patient.rs"},
		{"narrowed scope and client_id", func() string { return signJWT(t, f.ecKey, jose.ES384, "ec1", f.claims(nil)) },
			url.Values{"scope": {"system/Patient.rs"}, "client_id": {"smart"}}, "smart", "system/Patient.rs"},
		{"aud list", func() string {
			return signJWT(t, f.ecKey, jose.ES384, "ec1", f.claims(map[string]any{"aud": []string{"https://elsewhere", f.iss.TokenURL()}}))
		}, nil, "smart", "system/*.read system/*.rs system/Patient.rs"},
		{"no kid, only key", func() string {
			return signJWT(t, f.single, jose.ES384, "", f.claims(map[string]any{"iss": "single", "sub": "single"}))
		}, nil, "single", "system/*.rs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			form := assertionForm(tc.assertion())
			for k, v := range tc.form {
				form[k] = v
			}
			status, body := postToken(t, f.iss, form, [2]string{})
			if status != http.StatusOK || body["token_type"] != "Bearer" {
				t.Fatalf("token request: %d %v", status, body)
			}
			claims, err := verify(t, f.iss, body["access_token"].(string))
			if err != nil {
				t.Fatalf("issued token does not verify with the issuer's JWKS: %v", err)
			}
			if claims["iss"] != f.iss.URL || claims["aud"] != "api://x" || claims["azp"] != tc.client ||
				claims["scope"] != tc.scope || body["scope"] != tc.scope {
				t.Errorf("issued claims %v, response %v; want client %s, scope %q", claims, body, tc.client, tc.scope)
			}
		})
	}
}

func TestClientAssertionRefused(t *testing.T) {
	f := newSmartFixture(t)
	now := time.Now()
	good := func(extra map[string]any) string { return signJWT(t, f.ecKey, jose.ES384, "ec1", f.claims(extra)) }
	hmac := publicPEM(t, f.ecKey)
	for _, tc := range []struct {
		name      string
		assertion string
		form      url.Values // added to the assertion form
		status    int
		code      string
	}{
		{"wrong aud", good(map[string]any{"aud": f.iss.URL}), nil, 401, "invalid_client"},
		{"no aud", good(map[string]any{"aud": nil}), nil, 401, "invalid_client"},
		{"expired", good(map[string]any{"exp": now.Add(-time.Minute).Unix()}), nil, 401, "invalid_client"},
		{"far-future exp", good(map[string]any{"exp": now.Add(10 * time.Minute).Unix()}), nil, 401, "invalid_client"},
		{"no exp", good(map[string]any{"exp": nil}), nil, 401, "invalid_client"},
		{"nbf ahead", good(map[string]any{"nbf": now.Add(2 * time.Minute).Unix()}), nil, 401, "invalid_client"},
		{"iat ahead", good(map[string]any{"iat": now.Add(2 * time.Minute).Unix()}), nil, 401, "invalid_client"},
		{"no jti", good(map[string]any{"jti": nil}), nil, 401, "invalid_client"},
		{"unknown kid", signJWT(t, f.ecKey, jose.ES384, "nope", f.claims(nil)), nil, 401, "invalid_client"},
		{"no kid, two keys", signJWT(t, f.ecKey, jose.ES384, "", f.claims(nil)), nil, 401, "invalid_client"},
		{"wrong key", signJWT(t, ecKey(t), jose.ES384, "ec1", f.claims(nil)), nil, 401, "invalid_client"},
		{"other client's key", signJWT(t, f.other, jose.ES384, "o1", f.claims(nil)), nil, 401, "invalid_client"},
		{"key of another alg", signJWT(t, f.rsaKey, jose.RS384, "ec1", f.claims(nil)), nil, 401, "invalid_client"},
		{"alg none", algNone(t, "ec1", f.claims(nil)), nil, 401, "invalid_client"},
		{"HS256 with the public key", signJWT(t, hmac, jose.HS256, "ec1", f.claims(nil)), nil, 401, "invalid_client"},
		{"RS256", signJWT(t, f.rsaKey, jose.RS256, "rsa1", f.claims(nil)), nil, 401, "invalid_client"},
		{"iss != sub", signJWT(t, f.other, jose.ES384, "o1", f.claims(map[string]any{"iss": "other"})), nil, 401, "invalid_client"},
		{"unknown client", good(map[string]any{"iss": "who", "sub": "who"}), nil, 401, "invalid_client"},
		{"secret-only client", good(map[string]any{"iss": "secret", "sub": "secret"}), nil, 401, "invalid_client"},
		{"client_id differs", good(nil), url.Values{"client_id": {"other"}}, 401, "invalid_client"},
		{"not a JWT", "a.b", nil, 401, "invalid_client"},
		{"wrong assertion type", good(nil), url.Values{"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:saml2-bearer"}}, 400, "invalid_request"},
		{"empty assertion", "", nil, 400, "invalid_request"},
		{"assertion and secret", good(nil), url.Values{"client_id": {"smart"}, "client_secret": {"pw"}}, 400, "invalid_request"},
		{"more scope", good(nil), url.Values{"scope": {"system/*.cruds"}}, 400, "invalid_scope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			form := assertionForm(tc.assertion)
			for k, v := range tc.form {
				form[k] = v
			}
			status, body := postToken(t, f.iss, form, [2]string{})
			if status != tc.status || body["error"] != tc.code || len(body) != 1 {
				t.Errorf("%d %v, want %d and only {error: %s}", status, body, tc.status, tc.code)
			}
		})
	}
}

func TestClientAssertionReplay(t *testing.T) {
	f := newSmartFixture(t)
	claims := f.claims(nil)
	first := signJWT(t, f.ecKey, jose.ES384, "ec1", claims)
	if status, body := postToken(t, f.iss, assertionForm(first), [2]string{}); status != http.StatusOK {
		t.Fatalf("first use: %d %v", status, body)
	}
	// The same assertion again, and a new signature over the same jti.
	again := signJWT(t, f.rsaKey, jose.RS384, "rsa1", claims)
	for name, a := range map[string]string{"same assertion": first, "same jti": again} {
		if status, body := postToken(t, f.iss, assertionForm(a), [2]string{}); status != http.StatusUnauthorized || body["error"] != "invalid_client" {
			t.Errorf("%s replayed: %d %v, want 401 invalid_client", name, status, body)
		}
	}
	// A jti is the client's own: another client may use the same value.
	other := f.claims(map[string]any{"iss": "single", "sub": "single", "jti": claims["jti"]})
	if status, body := postToken(t, f.iss, assertionForm(signJWT(t, f.single, jose.ES384, "only", other)), [2]string{}); status != http.StatusOK {
		t.Errorf("another client's assertion with the same jti: %d %v", status, body)
	}
}

func TestAssertionWithBasicAuthIsMalformed(t *testing.T) {
	f := newSmartFixture(t)
	form := assertionForm(signJWT(t, f.ecKey, jose.ES384, "ec1", f.claims(nil)))
	if status, body := postToken(t, f.iss, form, [2]string{"secret", "pw"}); status != http.StatusBadRequest || body["error"] != "invalid_request" {
		t.Errorf("assertion plus Basic: %d %v, want 400 invalid_request", status, body)
	}
	// The secret still works on its own.
	secret := url.Values{"grant_type": {"client_credentials"}}
	if status, body := postToken(t, f.iss, secret, [2]string{"secret", "pw"}); status != http.StatusOK {
		t.Errorf("client secret in Basic: %d %v", status, body)
	}
}

func TestDiscoveryNamesPrivateKeyJWT(t *testing.T) {
	f := newSmartFixture(t)
	var doc struct {
		Methods []string `json:"token_endpoint_auth_methods_supported"`
		Algs    []string `json:"token_endpoint_auth_signing_alg_values_supported"`
	}
	getJSON(t, f.iss.URL+"/.well-known/openid-configuration", &doc)
	if !slices.Contains(doc.Methods, "private_key_jwt") || !slices.Contains(doc.Methods, "client_secret_basic") ||
		!slices.Equal(doc.Algs, []string{"RS384", "ES384"}) {
		t.Errorf("discovery: methods %v, algs %v", doc.Methods, doc.Algs)
	}
}

func TestParseClientJWKS(t *testing.T) {
	ec, rs := ecKey(t), rsaKey(t)
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	doc := func(keys ...any) []byte {
		set := jose.JSONWebKeySet{}
		for n, k := range keys {
			set.Keys = append(set.Keys, jose.JSONWebKey{Key: k, KeyID: string(rune('a' + n))})
		}
		b, err := json.Marshal(set)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	set, err := oidcissuer.ParseClientJWKS(doc(ec.Public(), rs.Public()))
	if err != nil || len(set.Keys) != 2 || !set.Keys[0].IsPublic() {
		t.Fatalf("public JWKS: %v, %v", set, err)
	}
	for name, data := range map[string][]byte{
		"private EC":   doc(ec.Public(), ec),
		"private RSA":  doc(rs),
		"symmetric":    doc([]byte("0123456789abcdef0123456789abcdef")),
		"P-256":        doc(p256.Public()),
		"RSA 1024":     doc(small.Public()),
		"no keys":      []byte(`{"keys":[]}`),
		"a single JWK": mustJSON(t, jose.JSONWebKey{Key: ec.Public(), KeyID: "a"}),
		"not JSON":     []byte("-----BEGIN PUBLIC KEY-----"),
	} {
		if _, err := oidcissuer.ParseClientJWKS(data); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// New applies the same rule to the clients it is given.
	_, err = oidcissuer.New(oidcissuer.Options{Clients: map[string]oidcissuer.Client{
		"c": {Keys: &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: ec, KeyID: "a"}}}},
	}})
	if err == nil {
		t.Error("New accepted a client with a private key")
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
