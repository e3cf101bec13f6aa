package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

const (
	// fetchLimit requests to one issuer URL in any fetchWindow: go-oidc
	// fetches the JWKS again for every token whose kid it has not cached, so
	// without a limit a stream of tokens with made-up kids would become a
	// stream of requests to the issuer.
	fetchLimit  = 10
	fetchWindow = time.Minute
	// maxIssuerBody bounds a discovery document or JWKS (go-oidc reads the
	// whole body).
	maxIssuerBody = 1 << 20
	// keyMaxAge is how long one set of keys is trusted before the JWKS is
	// fetched afresh. go-oidc refetches only for a kid it has not cached, so
	// without this a key the issuer withdrew would go on verifying tokens
	// until some token with an unknown kid happened to come along.
	keyMaxAge = time.Hour
)

// errFetch marks a failure to get a document from the issuer (network, a
// non-200 answer, a body too large): the token cannot be judged now, which is
// a 503, not a 401.
var errFetch = errors.New("cannot fetch from the token issuer")

// throttle is the transport of every request to the issuer. Per URL it allows
// fetchLimit requests in any fetchWindow; beyond that it answers with the
// last good response of that URL, so go-oidc sees the keys it already had
// (a token signed with an unknown key then fails as it should), or with the
// last failure when there was none. Every non-200 answer becomes an error
// wrapping errFetch, because go-oidc drops the cause of a bad status.
type throttle struct {
	base http.RoundTripper
	now  func() time.Time

	// served counts the requests answered, in any way; keySet uses it to
	// see whether a verification asked for keys at all.
	served atomic.Uint64

	mu   sync.Mutex
	urls map[string]*fetchState
}

type fetchState struct {
	times   []time.Time // of the requests within the window
	body    []byte      // of the last 200
	header  http.Header
	lastErr error // of the last request, if it failed
}

func (t *throttle) RoundTrip(req *http.Request) (*http.Response, error) {
	defer t.served.Add(1)
	url := req.URL.String()
	now := t.now()
	t.mu.Lock()
	st := t.urls[url]
	if st == nil {
		st = &fetchState{}
		t.urls[url] = st
	}
	for len(st.times) > 0 && now.Sub(st.times[0]) >= fetchWindow {
		st.times = st.times[1:]
	}
	if len(st.times) >= fetchLimit {
		defer t.mu.Unlock()
		if st.body != nil {
			return cachedResponse(req, st.header, st.body), nil
		}
		if st.lastErr != nil {
			return nil, st.lastErr
		}
		return nil, fmt.Errorf("%w: %s was asked for too often", errFetch, url)
	}
	st.times = append(st.times, now)
	t.mu.Unlock()

	header, body, err := t.get(req)
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		st.lastErr = err
		return nil, err
	}
	st.lastErr, st.body, st.header = nil, body, header
	return cachedResponse(req, header, body), nil
}

// get performs req and reads the whole body of a 200 answer.
func (t *throttle) get(req *http.Request) (http.Header, []byte, error) {
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errFetch, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxIssuerBody))
		return nil, nil, fmt.Errorf("%w: %s answered %s", errFetch, req.URL.Redacted(), resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIssuerBody+1))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: reading %s: %w", errFetch, req.URL.Redacted(), err)
	}
	if len(body) > maxIssuerBody {
		return nil, nil, fmt.Errorf("%w: %s answered more than %d bytes", errFetch, req.URL.Redacted(), maxIssuerBody)
	}
	return resp.Header.Clone(), body, nil
}

func cachedResponse(req *http.Request, header http.Header, body []byte) *http.Response {
	return &http.Response{
		Status: "200 OK", StatusCode: http.StatusOK,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        header.Clone(),
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
	}
}

// keySet is the oidc.KeySet of a Verifier: go-oidc's RemoteKeySet (cache,
// refetch on an unknown kid), replaced by a fresh one every keyMaxAge so
// that withdrawn keys stop verifying. It also records, for the request whose
// context carries a slot, why the signature check failed, because go-oidc
// flattens that cause into text.
type keySet struct {
	url    string
	client context.Context // carries the throttled HTTP client (oidc.ClientContext)
	fetch  *throttle
	now    func() time.Time

	mu     sync.Mutex
	remote *oidc.RemoteKeySet
	born   time.Time
}

type keyErrSlot struct{}

func (k *keySet) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	before := k.fetch.served.Load()
	payload, err := k.current(false).VerifySignature(ctx, jwt)
	if err != nil && ctx.Err() == nil && k.fetch.served.Load() == before {
		// The kid was not cached, yet no request was made: go-oidc handed
		// this call the result (keys or failure) of a fetch that had
		// finished just before it, because it clears its in-flight marker
		// only after waking the waiters. A key published since, or an issuer
		// back since, would be missed, so look once more with a fresh key
		// set, which must make a request (the throttle bounds them).
		payload, err = k.current(true).VerifySignature(ctx, jwt)
	}
	if err != nil {
		if slot, ok := ctx.Value(keyErrSlot{}).(*error); ok {
			*slot = err
		}
	}
	return payload, err
}

// current returns the RemoteKeySet to use, a new one when renew is set or the
// current one is older than keyMaxAge.
func (k *keySet) current(renew bool) *oidc.RemoteKeySet {
	k.mu.Lock()
	defer k.mu.Unlock()
	if now := k.now(); renew || k.remote == nil || now.Sub(k.born) >= keyMaxAge {
		k.remote, k.born = oidc.NewRemoteKeySet(k.client, k.url), now
	}
	return k.remote
}
