package httpapi

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/auth"
	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/fhir"
)

// httpError is an error whose HTTP status is not implied by its fault kind:
// 405, 413, 415, and the status of a failed job.
type httpError struct {
	status int
	code   string // FHIR issue type
	err    error  // its message is the diagnostics
	allow  string // the Allow header of a 405
}

func (e *httpError) Error() string { return e.err.Error() }
func (e *httpError) Unwrap() error { return e.err }

// invalid is a 400 with the FHIR issue type code.
func invalid(code, format string, args ...any) error {
	return fault.WithCode(fault.New(fault.Invalid, format, args...), code)
}

// notFound is a 404.
func notFound(format string, args ...any) error {
	return fault.New(fault.NotFound, format, args...)
}

func methodNotAllowed(allow, method, path string) error {
	return &httpError{status: http.StatusMethodNotAllowed, code: "not-supported", allow: allow,
		err: fmt.Errorf("method %s is not allowed on %s; allowed: %s", method, path, allow)}
}

// jobFailed is the answer to a status request for a job that ended in
// failure: its cause, with the cause's kind and code.
type jobFailed struct{ cause error }

func (e *jobFailed) Error() string { return "the export failed: " + e.cause.Error() }
func (e *jobFailed) Unwrap() error { return e.cause }

// statusOf maps an error's fault kind to an HTTP status and a FHIR issue type.
// It is the one place that does so; retry reports whether the client should
// retry (503 with Retry-After). The issue type "transient" goes with a retry
// and nothing else: it tells clients to poll again.
func statusOf(err error) (status int, code string, retry bool) {
	var he *httpError
	if errors.As(err, &he) {
		return he.status, he.code, false
	}
	code = fault.Code(err)
	switch fault.KindOf(err) {
	case fault.Invalid:
		status = http.StatusBadRequest
	case fault.NotFound:
		status = http.StatusNotFound
	case fault.Cancelled:
		// A cancelled job is gone as far as the client is concerned.
		status, code = http.StatusNotFound, "not-found"
	case fault.Unauthenticated:
		status, code = http.StatusUnauthorized, "login"
	case fault.Forbidden:
		status = http.StatusForbidden
	case fault.Limited:
		status, code = http.StatusTooManyRequests, "throttled"
	case fault.Conflict:
		status = http.StatusConflict
	case fault.Transient, fault.Unavailable:
		status, code, retry = http.StatusServiceUnavailable, "transient", true
	default: // Permanent, Internal
		status = http.StatusInternalServerError
	}
	var failed *jobFailed
	if errors.As(err, &failed) && status != http.StatusBadRequest {
		// A finished job's failure is the answer to a status request that
		// itself succeeded, so it keeps the cause's issue type but is a 500:
		//   - never 503 "transient": polling again cannot change a failed
		//     job, and clients take "transient" as an invitation to retry;
		//   - never 404: that is the answer for an unknown or cancelled job
		//     (Inferno's cancel test expects it), and a client would report
		//     the job as gone rather than failed;
		//   - never 403: a 403 says the client's own credentials are
		//     refused, sending its operator to check the client's scopes,
		//     while it was the service's identity that storage or the
		//     source refused. The IG allows any 4xx or 5xx with an
		//     OperationOutcome; 500 with issue type "forbidden" and the
		//     diagnostics naming the refusal says what happened.
		// Only a cause that is the client's request (400) keeps its status:
		// resubmitting a corrected request is what the client should do.
		status, retry = http.StatusInternalServerError, false
	}
	if !retry && code == "transient" {
		code = "exception"
	}
	return status, code, retry
}

// writeError answers err with an OperationOutcome and the status of its kind.
// Every error answer of the API goes through here, so it is also the one
// place that keeps SDK text, storage URLs and Go type names out of answers.
func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, code, retry := statusOf(err)
	stateOf(r.Context()).err = err
	var he *httpError
	if errors.As(err, &he) && he.allow != "" {
		w.Header().Set("Allow", he.allow)
	}
	if retry {
		d := max(s.retryAfter, fault.RetryAfter(err))
		w.Header().Set("Retry-After", retrySeconds(d))
	}
	switch status {
	case http.StatusUnauthorized:
		// RFC 6750: a 401 names the scheme, and says invalid_token when one came.
		challenge := auth.Challenge(err)
		if challenge == "" {
			challenge = "Bearer"
		}
		w.Header().Set("WWW-Authenticate", challenge)
	case http.StatusTooManyRequests:
		// Not clamped like a poll interval: a client at its cap waits for
		// one of its jobs to finish, which takes minutes.
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(fault.RetryAfter(err).Seconds())))))
	}
	// The diagnostics are publicMessage's; the whole error goes to the
	// request's log line (reqState.err).
	writeOutcome(w, status, fhir.NewOutcome("error", code, publicMessage(err)))
}

// writeOutcome writes an OperationOutcome as application/fhir+json.
func writeOutcome(w http.ResponseWriter, status int, oo fhir.OperationOutcome) {
	body := oo.JSON()
	h := w.Header()
	h.Set("Content-Type", "application/fhir+json; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// retrySeconds renders d as the integer seconds of a Retry-After header,
// rounded up and clamped to 1..5: clients parse it as an integer, and a long
// wait would make Inferno skip its status test.
func retrySeconds(d time.Duration) string {
	n := int(math.Ceil(d.Seconds()))
	return strconv.Itoa(min(max(n, 1), 5))
}
