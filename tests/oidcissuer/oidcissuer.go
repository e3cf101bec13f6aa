// Package oidcissuer is an OpenID Connect issuer that runs in the test process:
// discovery, a JWKS with rotating keys and a client-credentials token endpoint
// over httptest, plus helpers that mint valid tokens and forge the bad ones an
// attacker would try (alg none, HMAC keyed with the public key, a key the JWKS
// never published). Tests use it to prove the service's token checks against
// a real issuer over HTTP rather than against stubs.
//
// The token endpoint authenticates a client by its secret (client_secret_post
// or client_secret_basic) or, as SMART Backend Services clients such as the
// SMART bulk-data-client do, by a client assertion JWT signed with one of the
// client's registered keys (private_key_jwt, RFC 7523, RS384 or ES384).
//
// Layout, under the issuer URL (the server's URL plus Options.Path):
//
//	/.well-known/openid-configuration   discovery
//	/keys                               the JWKS (every published key)
//	/token                              client_credentials grant (form post)
package oidcissuer

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
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Claims are a token's claims. In Mint, a claim set to nil is left out of
// the token, so a test can drop a default such as "exp".
type Claims map[string]any

// Client is a client the token endpoint knows.
type Client struct {
	// Secret authenticates the client in the form or in HTTP Basic; empty:
	// the client cannot use a secret.
	Secret string
	// Keys are the client's public keys: with them it may authenticate with a
	// signed client assertion instead of a secret (see AssertionAlgorithms).
	// nil: it cannot. New refuses private and symmetric keys (ParseClientJWKS).
	Keys *jose.JSONWebKeySet
	// Scopes the client may get. A token request without a scope parameter
	// gets all of them (in "scope", space separated); one with a scope
	// parameter gets exactly those asked for, and asking for more is refused.
	Scopes []string
	// Claims added to every token of the client, such as "roles" or "aud".
	Claims Claims
}

// Options configure an Issuer. The zero value is an RS256 issuer at the
// server's root with no token endpoint clients.
type Options struct {
	// Path is appended to the server URL to form the issuer identifier, for
	// example "/<tenant>/v2.0" to look like Microsoft Entra ID's v2 endpoint.
	Path string
	// Algorithm signs tokens and decides the key type: RS*/PS* (RSA 2048) or
	// ES256/ES384/ES512. Default RS256.
	Algorithm jose.SignatureAlgorithm
	// Audience is the default "aud" of minted and issued tokens.
	Audience string
	// TokenTTL is the lifetime of minted and issued tokens (default 1 h).
	TokenTTL time.Duration
	// Clients are the clients of the token endpoint, by client id.
	Clients map[string]Client
	// Now is the issuer's clock (default time.Now).
	Now func() time.Time
	// Addr is the loopback address to listen on, such as "127.0.0.1:8081";
	// empty: a free port. cmd/dev-issuer uses a fixed one so that a local
	// run can name the issuer in its settings before it starts.
	Addr string
	// Logf, when set, gets the reason the token endpoint refused a client,
	// which the response never says (it only says invalid_client).
	Logf func(format string, args ...any)
}

type signingKey struct {
	id   string
	priv crypto.Signer
}

// Issuer is a running test issuer. Its methods are safe for concurrent use.
type Issuer struct {
	// URL is the issuer identifier: the "iss" of its tokens.
	URL string

	srv  *httptest.Server
	opts Options

	mu        sync.Mutex
	published []signingKey // in the JWKS, oldest first
	current   signingKey   // signs Mint and /token tokens
	requests  map[string]int
	seen      map[string]time.Time // client id + jti of accepted assertions -> their exp
}

// New starts an issuer with one signing key. Close it when done.
func New(opts Options) (*Issuer, error) {
	if opts.Algorithm == "" {
		opts.Algorithm = jose.RS256
	}
	if opts.TokenTTL == 0 {
		opts.TokenTTL = time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	for id, c := range opts.Clients {
		if c.Keys != nil {
			if err := checkClientKeys(c.Keys); err != nil {
				return nil, fmt.Errorf("oidcissuer: client %s: %w", id, err)
			}
		}
	}
	opts.Path = strings.TrimSuffix(opts.Path, "/")
	if opts.Path != "" && !strings.HasPrefix(opts.Path, "/") {
		return nil, fmt.Errorf("oidcissuer: Path %q must start with /", opts.Path)
	}
	k, err := newKey(opts.Algorithm)
	if err != nil {
		return nil, err
	}
	iss := &Issuer{opts: opts, published: []signingKey{k}, current: k, requests: map[string]int{}, seen: map[string]time.Time{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+opts.Path+"/.well-known/openid-configuration", iss.discovery)
	mux.HandleFunc("GET "+opts.Path+"/keys", iss.jwks)
	mux.HandleFunc("POST "+opts.Path+"/token", iss.token)
	iss.srv = httptest.NewUnstartedServer(mux)
	if opts.Addr != "" {
		ln, err := net.Listen("tcp", opts.Addr)
		if err != nil {
			return nil, fmt.Errorf("oidcissuer: listen on %s: %w", opts.Addr, err)
		}
		iss.srv.Listener.Close()
		iss.srv.Listener = ln
	}
	iss.srv.Start()
	iss.URL = iss.srv.URL + opts.Path
	return iss, nil
}

// Close stops the server.
func (i *Issuer) Close() { i.srv.Close() }

// ServerURL is the server's root URL (the issuer URL without Options.Path),
// for example to configure it as an Entra authority host.
func (i *Issuer) ServerURL() string { return i.srv.URL }

// TokenURL is the token endpoint.
func (i *Issuer) TokenURL() string { return i.URL + "/token" }

// KeysURL is the JWKS endpoint.
func (i *Issuer) KeysURL() string { return i.URL + "/keys" }

// Requests reports how often an endpoint ("discovery", "keys" or "token")
// was called, so that tests can see how often a verifier fetched keys.
func (i *Issuer) Requests(endpoint string) int {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.requests[endpoint]
}

// KeyID is the kid of the current signing key.
func (i *Issuer) KeyID() string {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.current.id
}

// Rotate publishes a new key and signs with it from now on; the old keys stay
// published until Revoke. It returns the new kid.
func (i *Issuer) Rotate() (string, error) {
	k, err := newKey(i.opts.Algorithm)
	if err != nil {
		return "", err
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	i.published = append(i.published, k)
	i.current = k
	return k.id, nil
}

// Revoke removes the key kid from the JWKS. Tokens it signed, and Mint while
// it is the current key, no longer verify against the published keys.
func (i *Issuer) Revoke(kid string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.published = slices.DeleteFunc(i.published, func(k signingKey) bool { return k.id == kid })
}

// Mint signs claims with the current key. Defaults fill what claims do not
// set: iss (the issuer URL), aud (Options.Audience, when set), iat and nbf
// (now), exp (now + TokenTTL). A claim set to nil is left out.
func (i *Issuer) Mint(claims Claims) (string, error) {
	i.mu.Lock()
	k := i.current
	i.mu.Unlock()
	return sign(k.priv, k.id, i.opts.Algorithm, i.complete(claims))
}

// MintUnpublished signs claims, completed as by Mint, with a fresh key whose
// kid the JWKS never listed.
func (i *Issuer) MintUnpublished(claims Claims) (string, error) {
	k, err := newKey(i.opts.Algorithm)
	if err != nil {
		return "", err
	}
	return sign(k.priv, k.id, i.opts.Algorithm, i.complete(claims))
}

// MintWrongKey signs claims with a fresh key but names the current key's kid
// in the header: a signature that does not verify with the key it claims.
func (i *Issuer) MintWrongKey(claims Claims) (string, error) {
	k, err := newKey(i.opts.Algorithm)
	if err != nil {
		return "", err
	}
	return sign(k.priv, i.KeyID(), i.opts.Algorithm, i.complete(claims))
}

// MintAlgNone returns an unsigned token with header {"alg":"none"} and the
// current kid. No library signs with "none", so this one is put together by
// hand: it is the forgery under test, not a token.
func (i *Issuer) MintAlgNone(claims Claims) (string, error) {
	header, err := json.Marshal(map[string]string{"alg": "none", "typ": "JWT", "kid": i.KeyID()})
	if err != nil {
		return "", err
	}
	payload, err := json.Marshal(i.complete(claims))
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	return enc.EncodeToString(header) + "." + enc.EncodeToString(payload) + ".", nil
}

// MintHMACWithPublicKey signs claims with HS256 keyed with the current public
// key in PEM form (the classic algorithm-confusion attack: a verifier that
// lets the token pick the algorithm would check the MAC with the "key" it
// holds for that kid).
func (i *Issuer) MintHMACWithPublicKey(claims Claims) (string, error) {
	i.mu.Lock()
	k := i.current
	i.mu.Unlock()
	der, err := x509.MarshalPKIXPublicKey(k.priv.Public())
	if err != nil {
		return "", err
	}
	secret := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	return sign(secret, k.id, jose.HS256, i.complete(claims))
}

// complete copies claims and fills the defaults Mint documents.
func (i *Issuer) complete(claims Claims) Claims {
	now := i.opts.Now()
	out := Claims{
		"iss": i.URL,
		"iat": now.Unix(),
		"nbf": now.Unix(),
		"exp": now.Add(i.opts.TokenTTL).Unix(),
	}
	if i.opts.Audience != "" {
		out["aud"] = i.opts.Audience
	}
	for name, v := range claims {
		if v == nil {
			delete(out, name)
			continue
		}
		out[name] = v
	}
	return out
}

func (i *Issuer) count(endpoint string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.requests[endpoint]++
}

func (i *Issuer) discovery(w http.ResponseWriter, _ *http.Request) {
	i.count("discovery")
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                                i.URL,
		"jwks_uri":                              i.KeysURL(),
		"token_endpoint":                        i.TokenURL(),
		"authorization_endpoint":                i.URL + "/authorize",
		"response_types_supported":              []string{"code"},
		"subject_types_supported":               []string{"public"},
		"grant_types_supported":                 []string{"client_credentials"},
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "client_secret_basic", "private_key_jwt"},
		"token_endpoint_auth_signing_alg_values_supported": algNames(AssertionAlgorithms),
		"id_token_signing_alg_values_supported":            []string{string(i.opts.Algorithm)},
	})
}

func (i *Issuer) jwks(w http.ResponseWriter, _ *http.Request) {
	i.count("keys")
	i.mu.Lock()
	set := jose.JSONWebKeySet{}
	for _, k := range i.published {
		set.Keys = append(set.Keys, jose.JSONWebKey{
			Key: k.priv.Public(), KeyID: k.id, Algorithm: string(i.opts.Algorithm), Use: "sig",
		})
	}
	i.mu.Unlock()
	writeJSON(w, http.StatusOK, set)
}

// token answers the client credentials grant (RFC 6749 section 4.4). The
// client authenticates with its secret, in the form or in HTTP Basic, or with
// a client assertion (RFC 7523 section 2.2, as SMART Backend Services use).
func (i *Issuer) token(w http.ResponseWriter, r *http.Request) {
	i.count("token")
	if err := r.ParseForm(); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request")
		return
	}
	if r.PostForm.Get("grant_type") != "client_credentials" {
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type")
		return
	}
	form := r.PostForm
	_, _, basic := r.BasicAuth()
	var (
		id  string
		err error
	)
	if form.Has("client_assertion") || form.Has("client_assertion_type") {
		// RFC 6749 section 2.3: a client uses one authentication method.
		if form.Get("client_assertion_type") != AssertionType || form.Get("client_assertion") == "" ||
			form.Has("client_secret") || basic {
			oauthError(w, http.StatusBadRequest, "invalid_request")
			return
		}
		id, err = i.assertedClient(form.Get("client_assertion"), form.Get("client_id"))
	} else {
		id, err = i.secretClient(r)
	}
	if err != nil {
		if i.opts.Logf != nil {
			i.opts.Logf("oidcissuer: token request refused (invalid_client): %v", err)
		}
		oauthError(w, http.StatusUnauthorized, "invalid_client")
		return
	}
	c := i.opts.Clients[id]
	scopes := c.Scopes
	if asked := strings.Fields(r.PostForm.Get("scope")); len(asked) > 0 {
		for _, s := range asked {
			if !slices.Contains(c.Scopes, s) {
				oauthError(w, http.StatusBadRequest, "invalid_scope")
				return
			}
		}
		scopes = asked
	}
	claims := Claims{"sub": id, "azp": id, "client_id": id}
	if len(scopes) > 0 {
		claims["scope"] = strings.Join(scopes, " ")
	}
	for name, v := range c.Claims {
		claims[name] = v
	}
	tok, err := i.Mint(claims)
	if err != nil {
		oauthError(w, http.StatusInternalServerError, "server_error")
		return
	}
	resp := map[string]any{
		"access_token": tok,
		"token_type":   "Bearer",
		"expires_in":   int(i.opts.TokenTTL.Seconds()),
	}
	if len(scopes) > 0 {
		resp["scope"] = strings.Join(scopes, " ")
	}
	writeJSON(w, http.StatusOK, resp)
}

// secretClient returns the id of the client whose secret the request holds.
func (i *Issuer) secretClient(r *http.Request) (string, error) {
	id, secret, basic := r.BasicAuth()
	if !basic {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	c, ok := i.opts.Clients[id]
	if !ok || secret == "" || secret != c.Secret {
		return "", fmt.Errorf("unknown client %q or wrong secret", id)
	}
	return id, nil
}

func oauthError(w http.ResponseWriter, status int, code string) {
	writeJSON(w, status, map[string]string{"error": code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// newKey makes a key of the type alg needs, with a random kid.
func newKey(alg jose.SignatureAlgorithm) (signingKey, error) {
	var (
		priv crypto.Signer
		err  error
	)
	switch alg {
	case jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512:
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case jose.ES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case jose.ES384:
		priv, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case jose.ES512:
		priv, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	default:
		return signingKey{}, fmt.Errorf("oidcissuer: unsupported algorithm %s", alg)
	}
	if err != nil {
		return signingKey{}, err
	}
	id := make([]byte, 12)
	_, _ = rand.Read(id)
	return signingKey{id: base64.RawURLEncoding.EncodeToString(id), priv: priv}, nil
}

// sign serializes claims as a compact JWS with go-jose; key is a private key,
// or the secret of an HMAC algorithm.
func sign(key any, kid string, alg jose.SignatureAlgorithm, claims Claims) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		return "", fmt.Errorf("oidcissuer: %w", err)
	}
	return jwt.Signed(signer).Claims(map[string]any(claims)).Serialize()
}
