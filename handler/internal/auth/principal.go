package auth

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// Principal is the authenticated caller of a request.
type Principal struct {
	Anonymous bool   // AUTH_MODE=none
	Issuer    string // the token's "iss"
	Subject   string // the token's "sub"
	// ClientID is the calling application: "azp" (Entra v2, most OAuth
	// servers), else "appid" (Entra v1), else "client_id" (RFC 9068), else "sub".
	ClientID string
	// Owner names who owns the jobs this caller starts: the issuer (for
	// entra, the tenant's v2 issuer whatever the token's version), "|", and
	// ClientID. It may contain '/' and is unbounded: use OwnerKey in storage
	// keys.
	Owner  string
	Roles  []string  // app roles ("roles")
	Scopes []string  // "scp" and "scope", split at spaces
	Expiry time.Time // of the token; zero for the anonymous principal

	role string // the app role that grants every type (Config.Role)
}

// anonymousOwner is the Owner of every caller in AUTH_MODE=none.
const anonymousOwner = "none|anonymous"

func anonymous() Principal {
	return Principal{Anonymous: true, ClientID: "anonymous", Owner: anonymousOwner}
}

// OwnerKey is a fixed-length digest of Owner (64 hex digits) that fits an
// Azure Table key and property and compares equal exactly when Owner does.
func (p Principal) OwnerKey() string {
	sum := sha256.Sum256([]byte(p.Owner))
	return hex.EncodeToString(sum[:])
}

// AllowedTypes reports what p may export: every type (all), or the resource
// types its SMART system scopes cover. A type is covered by
// system/<Type or *>.read or .* (SMART v1), or a v2 permission set that
// includes both r and s (system/<Type>.rs, .cruds). A v2 scope with a query
// (system/Observation.rs?category=laboratory) covers only part of a type, and
// this service cannot apply the restriction to an export, so it covers
// nothing. The app role Config.Role, and the anonymous principal, get all.
func (p Principal) AllowedTypes() (all bool, types []string) {
	if p.Anonymous || (p.role != "" && slices.Contains(p.Roles, p.role)) {
		return true, nil
	}
	for _, s := range p.Scopes {
		typ, ok := readScope(s)
		switch {
		case !ok:
		case typ == "*":
			return true, nil
		case !slices.Contains(types, typ):
			types = append(types, typ)
		}
	}
	slices.Sort(types)
	return false, types
}

// CanExport says whether p may export the requested resource types (the
// validated _type). It is nil when every requested type is allowed; with no
// types requested, when p may export anything at all; the caller must then
// limit the export to AllowedTypes. Otherwise the error is fault.Forbidden
// and names the types outside p's rights.
func (p Principal) CanExport(types []string) error {
	all, allowed := p.AllowedTypes()
	if all {
		return nil
	}
	if len(allowed) == 0 {
		return fault.New(fault.Forbidden, "the access token has neither the app role %s nor a SMART system scope "+
			"(system/*.rs, system/<Type>.rs, or the v1 .read forms)", p.role)
	}
	var outside []string
	for _, t := range types {
		if !slices.Contains(allowed, t) && !slices.Contains(outside, t) {
			outside = append(outside, t)
		}
	}
	if len(outside) == 0 {
		return nil
	}
	named := outside
	if len(named) > 5 {
		named = append(slices.Clone(named[:5]), fmt.Sprintf("and %d more", len(outside)-5))
	}
	return fault.New(fault.Forbidden, "the access token's scopes do not allow exporting %s "+
		"(it needs system/<Type>.rs or system/<Type>.read, or the app role %s)", strings.Join(named, ", "), p.role)
}

var (
	systemScope  = regexp.MustCompile(`^system/(\*|[A-Z][A-Za-z]{0,63})\.([a-z*]+)$`)
	v2Permission = regexp.MustCompile(`^c?r?u?d?s?$`)
)

// readScope reports the resource type (or "*") a scope lets a client read
// and search at system level.
func readScope(scope string) (typ string, ok bool) {
	m := systemScope.FindStringSubmatch(scope)
	if m == nil {
		return "", false
	}
	switch perm := m[2]; {
	case perm == "read" || perm == "*": // v1
		return m[1], true
	case v2Permission.MatchString(perm) && strings.Contains(perm, "r") && strings.Contains(perm, "s"):
		return m[1], true
	}
	return "", false
}

// stringOrList decodes a claim that is a space-separated string ("scp",
// "scope") or a list of strings ("roles", and "scp" from some servers).
type stringOrList []string

func (s *stringOrList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = strings.Fields(one)
		return nil
	}
	var list []string
	if err := json.Unmarshal(b, &list); err != nil {
		return fmt.Errorf("want a string or a list of strings: %w", err)
	}
	*s = list
	return nil
}
