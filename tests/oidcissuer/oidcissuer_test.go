package oidcissuer_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/azfhir/bulkexport/tests/oidcissuer"
)

func getJSON(t *testing.T, u string, v any) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", u, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

// keys fetches the issuer's JWKS as a relying party would.
func keys(t *testing.T, iss *oidcissuer.Issuer) jose.JSONWebKeySet {
	t.Helper()
	var doc struct {
		Issuer string `json:"issuer"`
		JWKS   string `json:"jwks_uri"`
		Token  string `json:"token_endpoint"`
	}
	getJSON(t, iss.URL+"/.well-known/openid-configuration", &doc)
	if doc.Issuer != iss.URL || doc.Token != iss.TokenURL() {
		t.Fatalf("discovery %+v does not describe %s", doc, iss.URL)
	}
	var set jose.JSONWebKeySet
	getJSON(t, doc.JWKS, &set)
	return set
}

// verify checks tok with the published keys and returns its claims.
func verify(t *testing.T, iss *oidcissuer.Issuer, tok string) (map[string]any, error) {
	t.Helper()
	parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return nil, err
	}
	set := keys(t, iss)
	found := set.Key(parsed.Headers[0].KeyID)
	if len(found) == 0 {
		return nil, errors.New("kid not in the JWKS")
	}
	var claims map[string]any
	return claims, parsed.Claims(found[0].Key, &claims)
}

func TestMintRotateRevoke(t *testing.T) {
	iss, err := oidcissuer.New(oidcissuer.Options{Path: "/tenant/v2.0", Audience: "api://x"})
	if err != nil {
		t.Fatal(err)
	}
	defer iss.Close()
	if !strings.HasSuffix(iss.URL, "/tenant/v2.0") || !strings.HasPrefix(iss.URL, iss.ServerURL()) {
		t.Fatalf("URL %s, server %s", iss.URL, iss.ServerURL())
	}
	first := iss.KeyID()
	tok, err := iss.Mint(oidcissuer.Claims{"sub": "s", "nbf": nil})
	if err != nil {
		t.Fatal(err)
	}
	claims, err := verify(t, iss, tok)
	if err != nil {
		t.Fatalf("minted token does not verify with the JWKS: %v", err)
	}
	if claims["iss"] != iss.URL || claims["aud"] != "api://x" || claims["sub"] != "s" || claims["exp"] == nil {
		t.Errorf("claims %v lack the defaults", claims)
	}
	if _, ok := claims["nbf"]; ok {
		t.Errorf("nbf set to nil is still in %v", claims)
	}

	second, err := iss.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if got := len(keys(t, iss).Keys); got != 2 || iss.KeyID() != second {
		t.Fatalf("after Rotate: %d keys, current %s; want 2 keys, current %s", got, iss.KeyID(), second)
	}
	iss.Revoke(first)
	if set := keys(t, iss); len(set.Keys) != 1 || set.Keys[0].KeyID != second {
		t.Fatalf("after Revoke the JWKS is %v", set.Keys)
	}
	if _, err := verify(t, iss, tok); err == nil {
		t.Error("a token of the revoked key still verifies")
	}
	if n := iss.Requests("keys"); n != 4 {
		t.Errorf("Requests(keys) = %d, want 4", n)
	}
}

func TestForgeries(t *testing.T) {
	iss, err := oidcissuer.New(oidcissuer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer iss.Close()
	header := func(tok string) map[string]any {
		t.Helper()
		seg, _, _ := strings.Cut(tok, ".")
		var h map[string]any
		b, err := base64.RawURLEncoding.DecodeString(seg)
		if err == nil {
			err = json.Unmarshal(b, &h)
		}
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	none, err := iss.MintAlgNone(oidcissuer.Claims{"sub": "s"})
	if err != nil {
		t.Fatal(err)
	}
	if h := header(none); h["alg"] != "none" || !strings.HasSuffix(none, ".") {
		t.Errorf("alg none token %q", none)
	}
	hs, err := iss.MintHMACWithPublicKey(oidcissuer.Claims{"sub": "s"})
	if err != nil {
		t.Fatal(err)
	}
	if h := header(hs); h["alg"] != "HS256" || h["kid"] != iss.KeyID() {
		t.Errorf("HMAC token header %v", h)
	}
	for name, mint := range map[string]func(oidcissuer.Claims) (string, error){
		"unpublished": iss.MintUnpublished, "wrong key": iss.MintWrongKey,
	} {
		tok, err := mint(oidcissuer.Claims{"sub": "s"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := verify(t, iss, tok); err == nil {
			t.Errorf("%s token verifies with the JWKS", name)
		}
	}
}

func TestTokenEndpoint(t *testing.T) {
	iss, err := oidcissuer.New(oidcissuer.Options{
		Audience: "api://x",
		Clients: map[string]oidcissuer.Client{
			"app": {Secret: "pw", Scopes: []string{"system/*.rs", "system/Patient.rs"}, Claims: oidcissuer.Claims{"roles": []string{"R"}}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer iss.Close()
	post := func(form url.Values, basic bool) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, iss.TokenURL(), strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if basic {
			req.SetBasicAuth(form.Get("client_id"), form.Get("client_secret"))
			form.Del("client_secret")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body
	}
	cc := func(id, secret, scope string) url.Values {
		v := url.Values{"grant_type": {"client_credentials"}, "client_id": {id}, "client_secret": {secret}}
		if scope != "" {
			v.Set("scope", scope)
		}
		return v
	}

	status, body := post(cc("app", "pw", ""), false)
	if status != http.StatusOK || body["token_type"] != "Bearer" {
		t.Fatalf("token request: %d %v", status, body)
	}
	claims, err := verify(t, iss, body["access_token"].(string))
	if err != nil {
		t.Fatalf("issued token does not verify: %v", err)
	}
	if claims["azp"] != "app" || claims["scope"] != "system/*.rs system/Patient.rs" || claims["aud"] != "api://x" ||
		!slices.Equal(anyStrings(claims["roles"]), []string{"R"}) {
		t.Errorf("issued claims %v", claims)
	}

	status, body = post(cc("app", "pw", "system/Patient.rs"), true)
	if status != http.StatusOK || body["scope"] != "system/Patient.rs" {
		t.Errorf("narrowed scope with basic auth: %d %v", status, body)
	}
	for name, tc := range map[string]struct {
		form   url.Values
		status int
		code   string
	}{
		"wrong secret": {cc("app", "nope", ""), http.StatusUnauthorized, "invalid_client"},
		"unknown":      {cc("who", "pw", ""), http.StatusUnauthorized, "invalid_client"},
		"more scope":   {cc("app", "pw", "system/*.cruds"), http.StatusBadRequest, "invalid_scope"},
		"grant type":   {url.Values{"grant_type": {"password"}}, http.StatusBadRequest, "unsupported_grant_type"},
		"empty secret": {cc("app", "", ""), http.StatusUnauthorized, "invalid_client"},
	} {
		if status, body := post(tc.form, false); status != tc.status || body["error"] != tc.code {
			t.Errorf("%s: %d %v, want %d %s", name, status, body, tc.status, tc.code)
		}
	}
}

func anyStrings(v any) []string {
	list, _ := v.([]any)
	var out []string
	for _, x := range list {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}
