package httpapi

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

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

// statusOf maps an error's fault kind to an HTTP status and a FHIR issue type.
// It is the one place that does so; retry reports whether the client should
// retry (503 with Retry-After).
func statusOf(err error) (status int, code string, retry bool) {
	var he *httpError
	if errors.As(err, &he) {
		return he.status, he.code, false
	}
	code = fault.Code(err)
	switch fault.KindOf(err) {
	case fault.Invalid:
		return http.StatusBadRequest, code, false
	case fault.NotFound:
		return http.StatusNotFound, code, false
	case fault.Cancelled:
		// A cancelled job is gone as far as the client is concerned.
		return http.StatusNotFound, "not-found", false
	case fault.Forbidden:
		return http.StatusForbidden, code, false
	case fault.Conflict:
		return http.StatusConflict, code, false
	case fault.Transient, fault.Unavailable:
		return http.StatusServiceUnavailable, "transient", true
	default: // Permanent, Internal
		if code == "transient" {
			code = "exception"
		}
		return http.StatusInternalServerError, code, false
	}
}

// writeError answers err with an OperationOutcome and the status of its kind.
// Every error answer of the API goes through here.
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
	writeOutcome(w, status, fhir.NewOutcome("error", code, err.Error()))
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
