// Package auth decides who is calling and what they may export: it verifies
// the bearer JWT of a request against an OpenID Connect issuer or a
// Microsoft Entra ID tenant (AUTH_MODE oidc or entra), or lets everyone in as
// one anonymous principal (AUTH_MODE none, for local use only), and it
// authorizes exports by app role or SMART Backend Services system scopes.
//
// Verification is go-oidc's (discovery, JWKS cache, refetch on an unknown
// kid, signature) with this package's policy on top:
//
//   - Only asymmetric algorithms verify (RS*, PS*, ES*): "none" and HMAC
//     tokens are refused before any key is looked at.
//   - "iss" must be the configured issuer (entra: the tenant's v1 or v2
//     issuer), "aud" one of the configured audiences, "exp" present and not
//     past, "nbf" and "iat" not in the future, each with Config.ClockSkew.
//     go-oidc's own expiry check has no skew for exp and five minutes for
//     nbf, so it is off and go-jose's claim validation does it instead.
//   - Discovery is lazy: New does no I/O, the first Authenticate (or
//     Discover, for a warm-up at start-up) fetches the discovery document, and
//     a failure is retried by the next request. A Functions instance then
//     starts even while the issuer is unreachable, and answers 503 until it
//     is reachable.
//   - At most 10 requests to each issuer URL in any minute (beyond that the
//     last good answer is reused), so tokens with made-up kids cannot turn
//     into a flood of JWKS fetches; the JWKS is fetched afresh at least every
//     hour, so a key the issuer withdrew stops verifying.
//
// Errors: a missing or invalid token is fault.Unauthenticated (401; the
// challenge to send is Challenge(err)), a valid token without the right is
// fault.Forbidden (403), an issuer that cannot be reached is
// fault.Unavailable (503). Error texts are written for the client: they
// never contain the token, and library details go to the request's log.
package auth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/rs/zerolog"

	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// Mode is how callers are authenticated (AUTH_MODE).
type Mode string

const (
	// ModeNone lets every caller in as the anonymous principal, with the right
	// to export everything. For local use only.
	ModeNone Mode = "none"
	// ModeOIDC accepts bearer JWTs of the issuer Config.Issuer.
	ModeOIDC Mode = "oidc"
	// ModeEntra accepts bearer JWTs of the Microsoft Entra ID tenant
	// Config.TenantID, v1 or v2.
	ModeEntra Mode = "entra"
)

const (
	// DefaultRole is the app role that may export every type.
	DefaultRole = "BulkData.Export"
	// DefaultClockSkew is the tolerance on exp, nbf and iat.
	DefaultClockSkew = time.Minute
	// DefaultEntraAuthority is Entra ID's public cloud host.
	DefaultEntraAuthority = "https://login.microsoftonline.com"

	maxClockSkew = 5 * time.Minute
	// maxTokenBytes bounds the token we parse (an Entra token with many claims
	// is a few KB).
	maxTokenBytes = 16 << 10
)

// signingAlgs are the algorithms a token may be signed with: asymmetric only.
var signingAlgs = []string{
	oidc.RS256, oidc.RS384, oidc.RS512,
	oidc.PS256, oidc.PS384, oidc.PS512,
	oidc.ES256, oidc.ES384, oidc.ES512,
}

// Config configures a Verifier. Fields a mode does not use must be empty.
type Config struct {
	Mode      Mode
	Issuer    string   // oidc: AUTH_ISSUER, exactly as the tokens' "iss"
	TenantID  string   // entra: AUTH_TENANT_ID, the tenant's GUID
	Audiences []string // oidc and entra: AUTH_AUDIENCE, one of which "aud" must name
	Role      string   // AUTH_ROLE: the app role that may export every type; default DefaultRole
	ClockSkew time.Duration

	// EntraAuthority is the Entra login host (default DefaultEntraAuthority);
	// tests point it at a local issuer. Discovery is at
	// <authority>/<tenant>/v2.0/.well-known/openid-configuration.
	EntraAuthority string
	// HTTPClient fetches discovery and keys (default: a client with a 10 s
	// timeout). It is not changed; the Verifier wraps its transport.
	HTTPClient *http.Client
	// Now is the clock (default time.Now); tests move it.
	Now func() time.Time
}

// ErrNoToken is in the chain of the Unauthenticated error of a request that
// carried no bearer token (RFC 6750 section 3.1: its challenge has no error
// code).
var ErrNoToken = errors.New("no bearer token")

// Verifier authenticates requests. It is safe for concurrent use, and one
// Verifier should serve the whole process so that its key cache is shared.
type Verifier struct {
	mode      Mode
	issuers   []string // accepted "iss" values
	owner     string   // issuer part of Principal.Owner
	discover  string   // issuer URL whose discovery document gives the JWKS
	audiences []string
	role      string
	skew      time.Duration
	now       func() time.Time
	client    *http.Client // its transport is fetch
	fetch     *throttle

	mu       sync.Mutex
	verifier *oidc.IDTokenVerifier // nil until discovery succeeded
}

var tenantGUID = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// New validates cfg and returns a Verifier. It does no I/O: see Discover.
func New(cfg Config) (*Verifier, error) {
	v := &Verifier{mode: cfg.Mode, role: cfg.Role, skew: cfg.ClockSkew, now: cfg.Now}
	if v.role == "" {
		v.role = DefaultRole
	}
	if v.now == nil {
		v.now = time.Now
	}
	if v.skew == 0 {
		v.skew = DefaultClockSkew
	}
	if v.skew < 0 || v.skew > maxClockSkew {
		return nil, fmt.Errorf("auth: clock skew %s is outside 0..%s", v.skew, maxClockSkew)
	}
	for _, a := range cfg.Audiences {
		if a = strings.TrimSpace(a); a != "" {
			v.audiences = append(v.audiences, a)
		}
	}

	switch cfg.Mode {
	case ModeNone:
		if cfg.Issuer != "" || cfg.TenantID != "" || len(v.audiences) > 0 {
			return nil, errors.New("auth: AUTH_MODE=none takes no issuer, tenant or audience")
		}
		return v, nil
	case ModeOIDC:
		if cfg.TenantID != "" {
			return nil, errors.New("auth: AUTH_TENANT_ID is for AUTH_MODE=entra")
		}
		if err := checkIssuerURL(cfg.Issuer); err != nil {
			return nil, fmt.Errorf("auth: AUTH_ISSUER: %w", err)
		}
		v.issuers = []string{cfg.Issuer}
		v.owner, v.discover = cfg.Issuer, cfg.Issuer
	case ModeEntra:
		if cfg.Issuer != "" {
			return nil, errors.New("auth: AUTH_ISSUER is for AUTH_MODE=oidc; entra derives its issuers from AUTH_TENANT_ID")
		}
		if !tenantGUID.MatchString(cfg.TenantID) {
			// Tokens name the tenant by GUID; a domain name or "common" would
			// match no token, or every tenant's.
			return nil, fmt.Errorf("auth: AUTH_TENANT_ID %q is not a tenant GUID", cfg.TenantID)
		}
		tenant := strings.ToLower(cfg.TenantID)
		authority := strings.TrimSuffix(cfg.EntraAuthority, "/")
		if authority == "" {
			authority = DefaultEntraAuthority
		}
		if err := checkIssuerURL(authority); err != nil {
			return nil, fmt.Errorf("auth: Entra authority: %w", err)
		}
		v2 := authority + "/" + tenant + "/v2.0"
		// One app registration decides the token version (its
		// accessTokenAcceptedVersion); both versions are signed with the keys
		// of the v2 discovery document. The owner is the v2 issuer for both,
		// so a client keeps its jobs if the registration changes version.
		v.issuers = []string{v2, "https://sts.windows.net/" + tenant + "/"}
		v.owner, v.discover = v2, v2
	default:
		return nil, fmt.Errorf("auth: AUTH_MODE %q is not one of none, oidc, entra", cfg.Mode)
	}
	if len(v.audiences) == 0 {
		return nil, fmt.Errorf("auth: AUTH_MODE=%s needs AUTH_AUDIENCE", cfg.Mode)
	}

	base := cfg.HTTPClient
	if base == nil {
		base = &http.Client{Timeout: 10 * time.Second}
	}
	rt := base.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	v.fetch = &throttle{base: rt, now: v.now, urls: map[string]*fetchState{}}
	client := *base
	client.Transport = v.fetch
	v.client = &client
	return v, nil
}

// checkIssuerURL requires an absolute https URL; http only on a loopback
// host, where a local test issuer runs (over plain HTTP anyone on the path
// could swap the keys).
func checkIssuerURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("%q is not an absolute URL without query", s)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
			return nil
		}
	}
	return fmt.Errorf("%q must be https (http only on localhost)", s)
}

// Mode reports the Verifier's mode.
func (v *Verifier) Mode() Mode { return v.mode }

// Discover fetches the discovery document now, if that has not yet
// succeeded. Calling it is optional (Authenticate discovers on first use);
// main can call it at start-up to log early that the issuer is unreachable
// or misconfigured.
func (v *Verifier) Discover(ctx context.Context) error {
	if v.mode == ModeNone {
		return nil
	}
	_, err := v.idTokenVerifier(ctx)
	return err
}

// idTokenVerifier returns the go-oidc verifier, discovering the issuer first
// if needed. Concurrent callers wait for one discovery; a failed one is tried
// again by the next caller (the throttle bounds how often).
func (v *Verifier) idTokenVerifier(ctx context.Context) (*oidc.IDTokenVerifier, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.verifier != nil {
		return v.verifier, nil
	}
	p, err := oidc.NewProvider(oidc.ClientContext(ctx, v.client), v.discover)
	if err != nil {
		return nil, fault.Wrap(fault.Unavailable, err, "discovery of the token issuer %s failed", v.discover)
	}
	var meta struct {
		JWKS string `json:"jwks_uri"`
	}
	if err := p.Claims(&meta); err != nil || meta.JWKS == "" {
		return nil, fault.New(fault.Unavailable, "the discovery document of %s names no jwks_uri", v.discover)
	}
	if err := checkIssuerURL(meta.JWKS); err != nil {
		return nil, fault.New(fault.Unavailable, "the jwks_uri of %s: %v", v.discover, err)
	}
	keys := &keySet{url: meta.JWKS, client: oidc.ClientContext(context.Background(), v.client), fetch: v.fetch, now: v.now}
	v.verifier = oidc.NewVerifier(v.discover, keys, &oidc.Config{
		SupportedSigningAlgs: signingAlgs,
		// Checked below with go-jose's claim validation: several issuers
		// (entra), several audiences, and one clock skew for exp, nbf and iat.
		SkipIssuerCheck:   true,
		SkipClientIDCheck: true,
		SkipExpiryCheck:   true,
	})
	return v.verifier, nil
}

// tokenClaims are the claims Authenticate reads. Standard claims are
// go-jose's types, so "aud" may be a string or a list and dates may be
// fractional.
type tokenClaims struct {
	jwt.Claims
	AZP      string       `json:"azp"`
	AppID    string       `json:"appid"`
	ClientID string       `json:"client_id"`
	Roles    stringOrList `json:"roles"`
	SCP      stringOrList `json:"scp"`
	Scope    stringOrList `json:"scope"`
}

// Authenticate verifies the Authorization header of a request and returns who
// sent it. In ModeNone it returns the anonymous principal whatever the header.
func (v *Verifier) Authenticate(ctx context.Context, authorization string) (Principal, error) {
	if v.mode == ModeNone {
		return anonymous(), nil
	}
	raw, err := bearer(authorization)
	if err != nil {
		return Principal{}, err
	}
	idv, err := v.idTokenVerifier(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return Principal{}, fault.Wrap(fault.Transient, ctx.Err(), "checking the bearer token")
		}
		zerolog.Ctx(ctx).Warn().Err(err).Msg("token issuer unavailable")
		return Principal{}, fault.New(fault.Unavailable, "the token issuer cannot be reached to check the token; try again later")
	}

	var keyErr error
	tok, err := idv.Verify(context.WithValue(ctx, keyErrSlot{}, &keyErr), raw)
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return Principal{}, fault.Wrap(fault.Transient, ctx.Err(), "checking the bearer token")
		case errors.Is(keyErr, errFetch):
			zerolog.Ctx(ctx).Warn().Err(keyErr).Msg("token issuer keys unavailable")
			return Principal{}, fault.New(fault.Unavailable, "the token issuer's keys cannot be fetched now; try again later")
		case keyErr != nil:
			return Principal{}, invalid(ctx, err, "its signature does not verify with any key the issuer publishes")
		default:
			return Principal{}, invalid(ctx, err, "it is not a JWT signed with an accepted algorithm (%s)", strings.Join(signingAlgs, ", "))
		}
	}

	var c tokenClaims
	if err := tok.Claims(&c); err != nil {
		return Principal{}, invalid(ctx, err, "its claims cannot be read")
	}
	if !slices.Contains(v.issuers, c.Issuer) {
		return Principal{}, invalid(ctx, nil, "issuer %q is not accepted here", clip(c.Issuer))
	}
	if c.Expiry == nil {
		return Principal{}, invalid(ctx, nil, "it has no expiry (exp)")
	}
	switch err := c.ValidateWithLeeway(jwt.Expected{AnyAudience: v.audiences, Time: v.now()}, v.skew); {
	case err == nil:
	case errors.Is(err, jwt.ErrInvalidAudience):
		return Principal{}, invalid(ctx, err, "its audience %q is not this service", clip(strings.Join(c.Audience, " ")))
	case errors.Is(err, jwt.ErrExpired):
		return Principal{}, invalid(ctx, err, "it expired at %s", c.Expiry.Time().UTC().Format(time.RFC3339))
	case errors.Is(err, jwt.ErrNotValidYet):
		return Principal{}, invalid(ctx, err, "it is not valid before %s", c.NotBefore.Time().UTC().Format(time.RFC3339))
	case errors.Is(err, jwt.ErrIssuedInTheFuture):
		return Principal{}, invalid(ctx, err, "it was issued in the future (iat)")
	default:
		return Principal{}, invalid(ctx, err, "its claims are not valid")
	}

	client := firstNonEmpty(c.AZP, c.AppID, c.ClientID, c.Subject)
	if client == "" {
		return Principal{}, invalid(ctx, nil, "it names no client (azp, appid, client_id or sub)")
	}
	return Principal{
		Issuer:   c.Issuer,
		Subject:  c.Subject,
		ClientID: client,
		Owner:    v.owner + "|" + client,
		Roles:    c.Roles,
		Scopes:   append(slices.Clone(c.SCP), c.Scope...),
		Expiry:   c.Expiry.Time(),
		role:     v.role,
	}, nil
}

// bearer returns the token of an "Authorization: Bearer <token>" header.
func bearer(header string) (string, error) {
	header = strings.TrimSpace(header)
	scheme, token, _ := strings.Cut(header, " ")
	if header == "" || !strings.EqualFold(scheme, "Bearer") {
		return "", &fault.Error{Kind: fault.Unauthenticated, Msg: "this request needs a bearer token in the Authorization header", Err: ErrNoToken}
	}
	token = strings.TrimSpace(token)
	switch {
	case token == "":
		return "", fault.New(fault.Unauthenticated, "invalid bearer token: the Authorization header has no token after Bearer")
	case len(token) > maxTokenBytes:
		return "", fault.New(fault.Unauthenticated, "invalid bearer token: it is longer than %d bytes", maxTokenBytes)
	case strings.Count(token, ".") != 2:
		return "", fault.New(fault.Unauthenticated, "invalid bearer token: it is not a JWT (header.payload.signature)")
	}
	return token, nil
}

// invalid is the Unauthenticated error of a token that was presented but
// rejected. detail (the library's words) goes to the request's log at debug
// level only: such tokens are usually probes.
func invalid(ctx context.Context, detail error, format string, args ...any) error {
	err := fault.New(fault.Unauthenticated, "invalid bearer token: "+format, args...)
	if detail != nil {
		zerolog.Ctx(ctx).Debug().Err(detail).Str("reason", err.Error()).Msg("bearer token rejected")
	}
	return err
}

// Challenge is the WWW-Authenticate header for an Unauthenticated err
// (RFC 6750 section 3): "Bearer" when no token came, and
// `Bearer error="invalid_token"` when one was rejected. It is "" for errors
// of other kinds.
func Challenge(err error) string {
	switch {
	case !fault.Is(err, fault.Unauthenticated):
		return ""
	case errors.Is(err, ErrNoToken):
		return "Bearer"
	default:
		return `Bearer error="invalid_token"`
	}
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

// clip cuts a claim value echoed in an error to about 100 bytes.
func clip(s string) string {
	if len(s) <= 100 {
		return s
	}
	return strings.ToValidUTF8(s[:100], "") + "…"
}
