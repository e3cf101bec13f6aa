// Package fault gives errors a kind, so that every layer can decide what to do
// with a failure (answer 400, retry later, fail the job) without parsing text.
// The HTTP API maps kinds to status codes in exactly one place (httpapi).
package fault

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Kind says what a failure means to the caller.
type Kind int

const (
	// Internal is a bug or an unexpected state: 500, and the work item is retried.
	Internal Kind = iota
	// Invalid is a bad request from the client: 400 with an OperationOutcome.
	Invalid
	// NotFound is an unknown job, file or source resource: 404.
	NotFound
	// Conflict is a lost compare-and-swap (ETag mismatch) or an entity that already exists.
	Conflict
	// Transient is a failure that may pass: source 5xx/429, storage throttling or outage.
	// Work items are retried; a status request answers 503 with a transient issue.
	Transient
	// Permanent is a failure that retrying cannot fix, such as a search the source rejects.
	// It ends the job as failed with the cause.
	Permanent
	// Forbidden is a destination or source that refuses our identity: 403.
	Forbidden
	// Cancelled means the job was cancelled while the work ran.
	Cancelled
	// Unavailable means a dependency the request needs cannot be reached now: 503.
	Unavailable
	// Unauthenticated is a request without a valid bearer token: 401 with a
	// WWW-Authenticate challenge. A valid token that may not do what it asks
	// for is Forbidden instead.
	Unauthenticated
	// Limited is a request refused because its client already uses its share
	// (EXPORT_MAX_ACTIVE_JOBS_PER_CLIENT): 429 with Retry-After.
	Limited
)

func (k Kind) String() string {
	switch k {
	case Invalid:
		return "invalid"
	case NotFound:
		return "not-found"
	case Conflict:
		return "conflict"
	case Transient:
		return "transient"
	case Permanent:
		return "permanent"
	case Forbidden:
		return "forbidden"
	case Cancelled:
		return "cancelled"
	case Unavailable:
		return "unavailable"
	case Unauthenticated:
		return "unauthenticated"
	case Limited:
		return "limited"
	default:
		return "internal"
	}
}

// ParseKind is the inverse of Kind.String, for a kind stored as text (the
// recorded failure of a work item). The kinds are numbered from Internal
// without gaps, so the walk ends at the first number past the last of them,
// which String names "internal" again.
func ParseKind(s string) (Kind, bool) {
	for k := Internal; k == Internal || k.String() != Internal.String(); k++ {
		if k.String() == s {
			return k, true
		}
	}
	return Internal, false
}

// Error is an error with a kind. Code is an optional FHIR issue type
// (http://hl7.org/fhir/issue-type), such as "not-supported" or "value".
type Error struct {
	Kind       Kind
	Code       string
	Msg        string
	Err        error
	RetryAfter time.Duration // for Transient: how long the origin asked us to wait, if it said
}

func (e *Error) Error() string {
	switch {
	case e.Msg == "":
		if e.Err == nil {
			return e.Kind.String()
		}
		return e.Err.Error()
	case e.Err == nil:
		return e.Msg
	default:
		return e.Msg + ": " + e.Err.Error()
	}
}

func (e *Error) Unwrap() error { return e.Err }

// New returns an error of the given kind with a formatted message.
func New(kind Kind, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// Wrap gives err a kind and some context. A nil err gives nil.
func Wrap(kind Kind, err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...), Err: err}
}

// WithCode sets the FHIR issue code reported for err, when err is an *Error.
func WithCode(err error, code string) error {
	var e *Error
	if errors.As(err, &e) {
		c := *e
		c.Code = code
		return &c
	}
	return err
}

// KindOf reports the kind of the outermost *Error in err's chain, or Internal.
// A context cancellation or deadline counts as Transient: the work was
// interrupted, not wrong.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return Transient
	}
	return Internal
}

// Is reports whether err is of kind k.
func Is(err error, k Kind) bool { return err != nil && KindOf(err) == k }

// Code returns the FHIR issue code for err: the one set on it, or one derived from its kind.
func Code(err error) string {
	var e *Error
	if errors.As(err, &e) && e.Code != "" {
		return e.Code
	}
	switch KindOf(err) {
	case Invalid:
		return "invalid"
	case NotFound:
		return "not-found"
	case Conflict:
		return "conflict"
	case Transient, Unavailable:
		return "transient"
	case Forbidden:
		return "forbidden"
	case Unauthenticated:
		return "login"
	default:
		return "exception"
	}
}

// RetryAfter returns how long the origin of a transient err asked us to wait (0 if it did not say).
func RetryAfter(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}
