package hostemu

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/dlclark/regexp2"
)

// hopHeaders are connection-level headers a proxy never forwards.
var hopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// serveFront forwards a client request to the HTTP function the way the host
// does with enableForwardingHttpRequest (docs §1.3, §1.3a).
func (h *Host) serveFront(w http.ResponseWriter, r *http.Request) {
	fn := h.httpFn
	if fn == nil || !h.routeMatches(r.URL.Path) {
		http.Error(w, "hostemu: no function matches this route", http.StatusNotFound)
		return
	}
	trigger, _ := fn.trigger()
	if !methodAllowed(trigger.Methods, r.Method) {
		// The route template does not match another method: the host answers 404.
		http.Error(w, "hostemu: the function does not take "+r.Method, http.StatusNotFound)
		return
	}
	base, err := h.workerURL(r.Context())
	if err != nil {
		http.Error(w, "hostemu: the worker is not available: "+err.Error(), http.StatusServiceUnavailable)
		return
	}

	target := base + r.URL.EscapedPath()
	if q := RebuildQuery(r.URL.RawQuery); q != "" {
		target += "?" + q
	}
	// Only a body with a known length is forwarded: a chunked body is dropped.
	var body io.Reader
	length := int64(0)
	if r.ContentLength > 0 {
		body, length = r.Body, r.ContentLength
	}
	out, err := http.NewRequestWithContext(r.Context(), r.Method, target, body)
	if err != nil {
		http.Error(w, "hostemu: "+err.Error(), http.StatusBadGateway)
		return
	}
	out.ContentLength = length
	for k, vs := range r.Header {
		out.Header[k] = append([]string(nil), vs...)
	}
	for _, k := range hopHeaders {
		out.Header.Del(k)
	}
	out.Header.Del("Content-Encoding") // content headers like this are not forwarded
	out.Header.Del("Content-Length")
	out.Host = r.Host // (unverified) the client's Host is kept; deployments set EXPORT_BASE_URL anyway
	out.Header.Set("X-Azure-Functions-InvocationId", NewUUID())
	out.Header.Set("X-Azure-Functions-HostVersion", HostVersion)
	out.Header.Set("User-Agent", "Azure-Functions-Host/"+HostVersion)

	resp, err := h.client.Do(out)
	if err != nil {
		http.Error(w, "hostemu: the worker did not answer: "+err.Error(), http.StatusInternalServerError)
		return
	}
	defer resp.Body.Close()
	h.mu.Lock()
	h.stats.Forwarded++
	h.mu.Unlock()
	for k, vs := range resp.Header {
		w.Header()[k] = append([]string(nil), vs...)
	}
	for _, k := range hopHeaders {
		w.Header().Del(k)
	}
	w.WriteHeader(resp.StatusCode)
	buf := make([]byte, 32<<10)
	flusher, _ := w.(http.Flusher)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
		if rerr != nil {
			return
		}
	}
}

// routeMatches reports whether the HTTP function's route matches path: it
// must be under the route prefix, and what follows (the catch-all value)
// must pass the route's constraint, if it has one.
func (h *Host) routeMatches(p string) bool {
	value := strings.TrimPrefix(p, "/")
	if prefix := h.cfg.RoutePrefix; prefix != "" {
		switch {
		case strings.EqualFold(p, "/"+prefix):
			value = ""
		case strings.HasPrefix(strings.ToLower(p), "/"+strings.ToLower(prefix)+"/"):
			value = p[len(prefix)+2:]
		default:
			return false
		}
	}
	return h.route.accepts(value)
}

// catchAll is the one emulated route template: a catch-all parameter,
// {*path}, optionally with one regex constraint, {*path:regex(pattern)}
// (docs §1.3, route constraints).
type catchAll struct {
	// constraint is the regex as ASP.NET Core's RegexRouteConstraint
	// compiles it (.NET syntax, case-insensitive, explicit capture); nil
	// accepts every value.
	constraint *regexp2.Regexp
}

// parseRoute reads a route template; anything but a catch-all with at most
// a regex constraint is not emulated. In the constraint, {{ and }} stand for
// { and }, as everywhere in a route template.
func parseRoute(template string) (catchAll, error) {
	if !strings.HasPrefix(template, "{*") || !strings.HasSuffix(template, "}") {
		return catchAll{}, errors.New(`only a catch-all route, "{*path}" or "{*path:regex(...)}", is emulated`)
	}
	inner := template[2 : len(template)-1]
	name, constraint, hasConstraint := strings.Cut(inner, ":")
	if name == "" || strings.ContainsAny(name, "{}*?=") {
		return catchAll{}, fmt.Errorf("%q is not a parameter name", name)
	}
	if !hasConstraint {
		return catchAll{}, nil
	}
	if !strings.HasPrefix(constraint, "regex(") || !strings.HasSuffix(constraint, ")") {
		return catchAll{}, fmt.Errorf("constraint %q: only one regex(...) constraint is emulated", constraint)
	}
	pattern := constraint[len("regex(") : len(constraint)-1]
	pattern = strings.NewReplacer("{{", "{", "}}", "}").Replace(pattern)
	re, err := regexp2.Compile(pattern, regexp2.IgnoreCase|regexp2.ExplicitCapture)
	if err != nil {
		return catchAll{}, fmt.Errorf("constraint %q: %w", constraint, err)
	}
	re.MatchTimeout = 10 * time.Second // RegexRouteConstraint's
	return catchAll{constraint: re}, nil
}

// accepts reports whether the catch-all value passes the constraint: the
// regex must match somewhere in it (it is not anchored for you), and an
// empty value, which the route leaves unset, passes no constraint.
func (c catchAll) accepts(value string) bool {
	if c.constraint == nil {
		return true
	}
	if value == "" {
		return false
	}
	ok, err := c.constraint.MatchString(value)
	return err == nil && ok
}

func methodAllowed(methods []string, m string) bool {
	if len(methods) == 0 {
		return true
	}
	for _, x := range methods {
		if strings.EqualFold(x, m) {
			return true
		}
	}
	return false
}

// RebuildQuery rebuilds a raw query string as the host's forwarding does
// (docs §1.3a): it is parsed as a form ('+' is a space), repeated keys
// (case-insensitively, first spelling kept) are merged into one
// comma-joined value in order of appearance, and keys and values are
// percent-encoded again, everything but unreserved characters escaped.
func RebuildQuery(raw string) string {
	if raw == "" {
		return ""
	}
	type pair struct {
		key    string
		values []string
	}
	var pairs []*pair
	index := map[string]*pair{}
	for _, part := range strings.Split(raw, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		key, err := url.QueryUnescape(k)
		if err != nil {
			key = k
		}
		val, err := url.QueryUnescape(v)
		if err != nil {
			val = v
		}
		if p, ok := index[strings.ToLower(key)]; ok {
			p.values = append(p.values, val)
			continue
		}
		p := &pair{key: key, values: []string{val}}
		index[strings.ToLower(key)] = p
		pairs = append(pairs, p)
	}
	var b strings.Builder
	for i, p := range pairs {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(encodeComponent(p.key))
		b.WriteByte('=')
		b.WriteString(encodeComponent(strings.Join(p.values, ",")))
	}
	return b.String()
}

// encodeComponent percent-encodes everything but RFC 3986 unreserved
// characters, as .NET's UrlEncoder does for query components.
func encodeComponent(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// NewUUID returns a random (version 4) UUID, as the host uses for
// invocation ids.
func NewUUID() string {
	var u [16]byte
	_, _ = rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}
