package oidcissuer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// AssertionType is the client_assertion_type of a JWT client assertion
// (RFC 7523 section 2.2).
const AssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// AssertionAlgorithms are the algorithms a client assertion may be signed
// with: the two SMART Backend Services require of servers and allow clients
// (https://hl7.org/fhir/smart-app-launch/backend-services.html). Nothing
// else, so that a client key cannot be used with an algorithm its owner never
// chose (HS256 keyed with the public key, or none).
var AssertionAlgorithms = []jose.SignatureAlgorithm{jose.RS384, jose.ES384}

const (
	// maxAssertionLifetime bounds how far ahead an assertion's exp may be:
	// SMART asks clients for at most five minutes, and a short bound keeps
	// the replay memory small.
	maxAssertionLifetime = 5 * time.Minute
	// clockSkew is allowed beyond maxAssertionLifetime, and for nbf and
	// iat, because clients round their clock (the bulk-data-client sets
	// exp = round(now) + 300 s, up to half a second past the bound).
	clockSkew = 10 * time.Second
)

// assertedClient verifies a client assertion and returns the id of the
// client that signed it. formID is the request's client_id (optional; when
// present it must name the same client). The error says why, for the log; the
// client only learns invalid_client.
func (i *Issuer) assertedClient(assertion, formID string) (string, error) {
	parsed, err := jwt.ParseSigned(assertion, AssertionAlgorithms)
	if err != nil {
		return "", fmt.Errorf("assertion: %w", err)
	}
	// The issuer picks the client, and so the keys to verify with; the
	// claims are checked again once the signature holds.
	var unverified jwt.Claims
	if err := parsed.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return "", fmt.Errorf("assertion claims: %w", err)
	}
	id := unverified.Issuer
	c, ok := i.opts.Clients[id]
	if !ok || id == "" || c.Keys == nil {
		return "", fmt.Errorf("assertion from unknown client %q or a client without keys", id)
	}
	if formID != "" && formID != id {
		return "", fmt.Errorf("client_id %q is not the assertion's issuer %q", formID, id)
	}
	header := parsed.Headers[0]
	key, err := clientKey(c.Keys, header.KeyID)
	if err != nil {
		return "", fmt.Errorf("client %s: %w", id, err)
	}
	if key.Algorithm != "" && key.Algorithm != header.Algorithm {
		return "", fmt.Errorf("client %s: key %q is for %s, the assertion says %s", id, key.KeyID, key.Algorithm, header.Algorithm)
	}
	var claims jwt.Claims
	if err := parsed.Claims(key.Key, &claims); err != nil {
		return "", fmt.Errorf("client %s: signature: %w", id, err)
	}
	if claims.Issuer != id || claims.Subject != id {
		return "", fmt.Errorf("client %s: iss %q and sub %q must both be the client id", id, claims.Issuer, claims.Subject)
	}
	if !claims.Audience.Contains(i.TokenURL()) {
		return "", fmt.Errorf("client %s: aud %v does not name the token endpoint %s", id, claims.Audience, i.TokenURL())
	}
	now := i.opts.Now()
	// A missing exp would also read as the zero time, expired; saying so
	// here gives the log the real reason.
	if claims.Expiry == nil {
		return "", fmt.Errorf("client %s: no exp", id)
	}
	exp := claims.Expiry.Time()
	if !now.Before(exp) {
		return "", fmt.Errorf("client %s: expired at %s", id, exp.UTC().Format(time.RFC3339))
	}
	if exp.After(now.Add(maxAssertionLifetime + clockSkew)) {
		return "", fmt.Errorf("client %s: exp %s is more than %s ahead", id, exp.UTC().Format(time.RFC3339), maxAssertionLifetime)
	}
	// nbf and iat are optional; when present they must not be in the future.
	for name, t := range map[string]*jwt.NumericDate{"nbf": claims.NotBefore, "iat": claims.IssuedAt} {
		if t != nil && t.Time().After(now.Add(clockSkew)) {
			return "", fmt.Errorf("client %s: %s %s is in the future", id, name, t.Time().UTC().Format(time.RFC3339))
		}
	}
	if claims.ID == "" {
		return "", fmt.Errorf("client %s: no jti", id)
	}
	if !i.firstUse(id, claims.ID, exp, now) {
		return "", fmt.Errorf("client %s: jti %q replayed", id, claims.ID)
	}
	return id, nil
}

// firstUse records the client's jti until exp and reports whether it was new.
// Entries past their exp are dropped: such an assertion is refused as expired
// before its jti is looked at.
func (i *Issuer) firstUse(client, jti string, exp, now time.Time) bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	for k, until := range i.seen {
		if !now.Before(until) {
			delete(i.seen, k)
		}
	}
	k := client + "\x00" + jti
	if _, ok := i.seen[k]; ok {
		return false
	}
	i.seen[k] = exp
	return true
}

// clientKey is the client's key named kid; with no kid, the client's only key.
func clientKey(set *jose.JSONWebKeySet, kid string) (jose.JSONWebKey, error) {
	if kid == "" {
		if len(set.Keys) != 1 {
			return jose.JSONWebKey{}, fmt.Errorf("assertion names no kid and the client has %d keys", len(set.Keys))
		}
		return set.Keys[0], nil
	}
	found := set.Key(kid)
	if len(found) != 1 {
		return jose.JSONWebKey{}, fmt.Errorf("%d keys with kid %q", len(found), kid)
	}
	return found[0], nil
}

// ParseClientJWKS reads a client's public keys from a JWKS document. It
// refuses private and symmetric keys rather than keep their public half: a
// private key where public keys belong means the wrong file was given, and a
// key file that works either way invites copying private keys around. Every
// key must fit an algorithm of AssertionAlgorithms (RSA of 2048 bits or
// more, or EC P-384).
func ParseClientJWKS(data []byte) (*jose.JSONWebKeySet, error) {
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("client JWKS: %w", err)
	}
	if err := checkClientKeys(&set); err != nil {
		return nil, err
	}
	return &set, nil
}

func checkClientKeys(set *jose.JSONWebKeySet) error {
	if len(set.Keys) == 0 {
		return errors.New(`client JWKS: no keys (want {"keys":[...]})`)
	}
	for n, k := range set.Keys {
		if !k.Valid() {
			return fmt.Errorf("client JWKS: key %d (kid %q) is not a valid key", n, k.KeyID)
		}
		if !k.IsPublic() {
			return fmt.Errorf("client JWKS: key %d (kid %q) is a private or symmetric key; give the public keys only", n, k.KeyID)
		}
		switch pub := k.Key.(type) {
		case *rsa.PublicKey:
			if pub.N.BitLen() < 2048 {
				return fmt.Errorf("client JWKS: key %d (kid %q): RSA key of %d bits, want 2048 or more", n, k.KeyID, pub.N.BitLen())
			}
		case *ecdsa.PublicKey:
			if pub.Curve != elliptic.P384() {
				return fmt.Errorf("client JWKS: key %d (kid %q): EC curve %s, want P-384 (ES384)", n, k.KeyID, pub.Curve.Params().Name)
			}
		default:
			return fmt.Errorf("client JWKS: key %d (kid %q): %T cannot sign RS384 or ES384", n, k.KeyID, k.Key)
		}
	}
	return nil
}

func algNames(algs []jose.SignatureAlgorithm) []string {
	out := make([]string, len(algs))
	for n, a := range algs {
		out[n] = string(a)
	}
	return out
}
