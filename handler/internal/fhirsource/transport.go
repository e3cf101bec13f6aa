package fhirsource

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/rs/zerolog"

	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// handler consumes a 2xx answer. It reports retry=true only for a transient
// failure that happened before anything was handed on to the caller, so that
// sending the request again cannot repeat a side effect.
type handler func(resp *http.Response) (retry bool, err error)

// get sends GET u until handle succeeds, a failure is not transient, or
// MaxAttempts are spent. Waits between attempts follow the Retry-After of the
// answer, or else a capped exponential backoff with full jitter, and end early
// when ctx is done. missing is the kind of a 404 or 410 answer.
func (c *Client) get(ctx context.Context, u *url.URL, missing fault.Kind, handle handler) error {
	op := "GET " + u.EscapedPath()
	waited := false // the last wait was the source's Retry-After
	for attempt := 1; ; attempt++ {
		status, retry, err := c.attempt(ctx, u, op, missing, waited, handle)
		if err == nil {
			return nil
		}
		if !retry || !fault.Is(err, fault.Transient) || attempt >= c.maxAttempts || ctx.Err() != nil {
			return err
		}
		wait := c.backoff(attempt)
		ra := fault.RetryAfter(err)
		if ra > 0 {
			if ra > maxRetryAfter {
				return err // the caller retries later, as the source asked
			}
			wait = ra
		}
		waited = ra > 0
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < wait {
			return err // the wait would outlast the call
		}
		// "requestAttempt", because the worker's logger already carries the
		// work item's delivery "attempt".
		zerolog.Ctx(ctx).Warn().Err(err).Str("op", op).Int("status", status).
			Int("requestAttempt", attempt).Int("maxAttempts", c.maxAttempts).Dur("wait", wait).
			Msg("request to the source FHIR server failed; retrying")
		if werr := c.sleep(ctx, wait); werr != nil {
			return fmt.Errorf("%s: %w (while waiting to retry after: %v)", op, werr, err)
		}
	}
}

// attempt sends one request. status is the answer's HTTP status, 0 if none came.
func (c *Client) attempt(ctx context.Context, u *url.URL, op string, missing fault.Kind, waited bool, handle handler) (status int, retry bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, false, fault.Wrap(fault.Permanent, err, "%s: cannot build the request", op)
	}
	// No Accept-Encoding here: net/http then asks for gzip itself and
	// decodes the body as it streams; setting the header would turn that off
	// and hand us the compressed bytes.
	req.Header.Set("Accept", "application/fhir+json")
	req.Header.Set("User-Agent", c.userAgent)
	if c.token != nil {
		tok, err := c.token.Token(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return 0, false, fmt.Errorf("%s: get an access token: %w", op, context.Cause(ctx))
			}
			if fault.KindOf(err) != fault.Internal {
				return 0, false, fmt.Errorf("%s: get an access token for the source FHIR server: %w", op, err)
			}
			return 0, false, fault.Wrap(fault.Unavailable, err, "%s: cannot get an access token for the source FHIR server", op)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	// One slot of the Client's concurrency limit, held until the body is
	// read; the answer adapts the limit for every caller.
	epoch, err := c.limit.acquire(ctx, waited)
	if err != nil {
		return 0, false, fmt.Errorf("%s: waiting for a free source connection: %w", op, err)
	}
	load, wait := neutral, time.Duration(0)
	defer func() {
		if limit, lowered := c.limit.release(epoch, load, wait); lowered {
			zerolog.Ctx(ctx).Info().Str("op", op).Int("sourceConcurrency", limit).Dur("pause", wait).
				Msg("the source FHIR server is throttling; this instance now sends fewer requests at once")
		}
	}()
	resp, err := c.hc.Do(req)
	if err != nil {
		err = transportError(ctx, op, err)
		return 0, fault.Is(err, fault.Transient), err
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable:
		load, wait = throttled, retryAfter(resp.Header, time.Now())
	case resp.StatusCode >= 200 && resp.StatusCode <= 299:
		load = succeeded
	}
	defer func() {
		// Drain a little so that the connection can be reused.
		_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
		_ = resp.Body.Close()
	}()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		err := statusError(resp, op, missing)
		// One line per error answer, retried or not, under its own field
		// name: the operators' workbook counts the source's 429s and 5xx
		// from it, and an alert watches for 401/403 (the identity lost its
		// FHIR role), which are never retried. Info, not warn: the retry
		// line above and the work item's failure line say what went wrong.
		zerolog.Ctx(ctx).Info().Str("op", op).Int("sourceStatus", resp.StatusCode).
			Msg("the source FHIR server answered with an error status")
		return resp.StatusCode, fault.Is(err, fault.Transient), err
	}
	retry, err = handle(resp)
	return resp.StatusCode, retry, err
}

// backoff is the full-jitter wait before attempt+1: uniform in
// [0, min(maxBackoff, BaseBackoff*2^(attempt-1))).
func (c *Client) backoff(attempt int) time.Duration {
	ceiling := maxBackoff
	if shift := attempt - 1; shift < 30 && c.baseBackoff<<shift < maxBackoff && c.baseBackoff<<shift > 0 {
		ceiling = c.baseBackoff << shift
	}
	return rand.N(ceiling)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// transportError classifies a failure to get an answer at all.
func transportError(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", op, context.Cause(ctx))
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // its message repeats the whole URL; op names the path
	}
	var fe *fault.Error
	if errors.As(err, &fe) { // a refused redirect
		return fmt.Errorf("%s: %w", op, err)
	}
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) {
		return fault.Wrap(fault.Permanent, err, "%s: the source FHIR server's TLS certificate is not trusted", op)
	}
	var ae *net.AddrError
	if errors.As(err, &ae) {
		return fault.Wrap(fault.Permanent, err, "%s: the source FHIR server's address is invalid", op)
	}
	return fault.Wrap(fault.Transient, err, "%s: the source FHIR server cannot be reached", op)
}

// bodyError classifies a failure while reading or decoding a 2xx body: JSON
// that is not valid is permanent; a body cut short or a connection reset is
// transient.
func bodyError(ctx context.Context, err error, op string) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", op, context.Cause(ctx))
	}
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se), errors.As(err, &te):
		return fault.Wrap(fault.Permanent, err, "%s: the source FHIR server sent JSON that cannot be read", op)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fault.Wrap(fault.Transient, io.ErrUnexpectedEOF, "%s: the source FHIR server's answer ended early", op)
	default:
		return fault.Wrap(fault.Transient, err, "%s: reading the source FHIR server's answer failed", op)
	}
}

// statusError classifies a non-2xx answer and carries the diagnostics of the
// source's OperationOutcome. missing is the kind of a 404 or 410: NotFound for
// a read, Permanent for a search or a page (an unknown type or an expired
// page, which retrying cannot fix).
func statusError(resp *http.Response, op string, missing fault.Kind) error {
	return &answerError{status: resp.StatusCode, err: statusFault(resp, op, missing)}
}

// answerError is a non-2xx answer of the source: the fault it is, and its
// HTTP status, kept for callers that decide by status (history: 400, 404,
// 405 and 501 mean "no history here") without reading the message.
type answerError struct {
	status int
	err    error
}

func (e *answerError) Error() string { return e.err.Error() }
func (e *answerError) Unwrap() error { return e.err }

// answerStatus is the HTTP status of the source's answer that err reports,
// or 0 if err is not an error answer.
func answerStatus(err error) int {
	var ae *answerError
	if errors.As(err, &ae) {
		return ae.status
	}
	return 0
}

func statusFault(resp *http.Response, op string, missing fault.Kind) error {
	code := resp.StatusCode
	status := fmt.Sprintf("%d %s", code, http.StatusText(code))
	diag := diagnostics(resp)
	if diag != "" {
		diag = ": " + diag
	}
	switch {
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return &fault.Error{Kind: fault.Forbidden,
			Msg: fmt.Sprintf("the source FHIR server refused our identity: %s answered %s%s", op, status, diag)}
	case code == http.StatusNotFound || code == http.StatusGone:
		return &fault.Error{Kind: missing, Msg: fmt.Sprintf("the source FHIR server answered %s with %s%s", op, status, diag)}
	case code == http.StatusRequestTimeout || code == http.StatusTooEarly || code == http.StatusTooManyRequests ||
		(code >= 500 && code != http.StatusNotImplemented && code != http.StatusHTTPVersionNotSupported):
		return &fault.Error{Kind: fault.Transient, RetryAfter: retryAfter(resp.Header, time.Now()),
			Msg: fmt.Sprintf("the source FHIR server answered %s with %s%s", op, status, diag)}
	default:
		return &fault.Error{Kind: fault.Permanent, Msg: fmt.Sprintf("the source FHIR server rejected %s with %s%s", op, status, diag)}
	}
}

// retryAfter parses a Retry-After header: delay-seconds or an HTTP-date.
func retryAfter(h http.Header, now time.Time) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, 7*24*3600)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return min(t.Sub(now), 7*24*time.Hour)
	}
	return 0
}

const maxDiagnostics = 500

// diagnostics returns the issue texts of an OperationOutcome body (or the
// start of a text/plain body), on one line and at most about 500 characters.
func diagnostics(resp *http.Response) string {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	var text string
	var oo struct {
		ResourceType string `json:"resourceType"`
		Issue        []struct {
			Diagnostics string `json:"diagnostics"`
			Details     struct {
				Text string `json:"text"`
			} `json:"details"`
		} `json:"issue"`
	}
	switch {
	case json.Unmarshal(body, &oo) == nil && oo.ResourceType == "OperationOutcome":
		var parts []string
		for _, is := range oo.Issue {
			for _, s := range []string{is.Details.Text, is.Diagnostics} {
				if s = strings.TrimSpace(s); s != "" && (len(parts) == 0 || parts[len(parts)-1] != s) {
					parts = append(parts, s)
				}
			}
		}
		text = strings.Join(parts, "; ")
	case mt == "text/plain":
		text = string(body)
	}
	text = strings.Join(strings.Fields(text), " ")
	return truncate(text, maxDiagnostics)
}

// truncate cuts s to at most n bytes on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// sameOrigin reports whether u has the scheme, host and port of base.
func sameOrigin(u, base *url.URL) bool { return originOf(u) == originOf(base) }

// originOf returns scheme://host:port in lower case, with the default port
// made explicit.
func originOf(u *url.URL) string {
	scheme := strings.ToLower(u.Scheme)
	port := u.Port()
	if port == "" {
		switch scheme {
		case "http":
			port = "80"
		case "https":
			port = "443"
		}
	}
	return scheme + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}
