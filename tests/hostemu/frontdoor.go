package hostemu

import (
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
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

// routeMatches reports whether path is under the route prefix; the only
// emulated route template, {*path}, matches anything below it.
func (h *Host) routeMatches(p string) bool {
	prefix := h.cfg.RoutePrefix
	if prefix == "" {
		return true
	}
	return strings.EqualFold(p, "/"+prefix) || strings.HasPrefix(strings.ToLower(p), "/"+strings.ToLower(prefix)+"/")
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
