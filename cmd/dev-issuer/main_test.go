package main

import (
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/azfhir/bulkexport/tests/oidcissuer"
)

// TestNewClientKeySignsIn: the pair -new-client-key writes is what a SMART
// client and -client-jwks need: the private JWK (owner-only) signs an
// assertion that the issuer, given the public JWKS, turns into a token.
func TestNewClientKeySignsIn(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "key")
	if err := writeClientKey(dir); err != nil {
		t.Fatal(err)
	}
	privPath := filepath.Join(dir, "private.jwk.json")
	info, err := os.Stat(privPath)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("private key file mode %v, want 0600", info.Mode().Perm())
	}
	data, err := os.ReadFile(privPath)
	if err != nil {
		t.Fatal(err)
	}
	var priv jose.JSONWebKey
	if err := json.Unmarshal(data, &priv); err != nil {
		t.Fatal(err)
	}
	// The SMART bulk-data-client signs with the JWK's own alg and kid.
	if priv.IsPublic() || priv.Algorithm != "ES384" || priv.KeyID == "" {
		t.Fatalf("private JWK: public %v, alg %q, kid %q", priv.IsPublic(), priv.Algorithm, priv.KeyID)
	}
	pubData, err := os.ReadFile(filepath.Join(dir, "public.jwks.json"))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := oidcissuer.ParseClientJWKS(pubData)
	if err != nil {
		t.Fatalf("public.jwks.json: %v", err)
	}
	if _, err := oidcissuer.ParseClientJWKS([]byte(`{"keys":[` + string(data) + `]}`)); err == nil {
		t.Error("the private JWK is accepted as a client JWKS")
	}

	iss, err := oidcissuer.New(oidcissuer.Options{Clients: map[string]oidcissuer.Client{
		"local-client": {Keys: keys, Scopes: []string{"system/*.rs"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer iss.Close()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES384, Key: priv},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	assertion, err := jwt.Signed(signer).Claims(jwt.Claims{
		Issuer: "local-client", Subject: "local-client", Audience: jwt.Audience{iss.TokenURL()},
		Expiry: jwt.NewNumericDate(time.Now().Add(time.Minute)), ID: "first",
	}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	form := url.Values{
		"grant_type":            {"client_credentials"},
		"client_assertion_type": {oidcissuer.AssertionType},
		"client_assertion":      {assertion},
	}
	resp, err := http.Post(iss.TokenURL(), "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode != http.StatusOK || body["access_token"] == nil || body["scope"] != "system/*.rs" {
		t.Errorf("token request with the new key: %d %v", resp.StatusCode, body)
	}
}
