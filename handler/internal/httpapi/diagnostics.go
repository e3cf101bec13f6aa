package httpapi

import (
	"errors"
	"regexp"
	"unicode/utf8"

	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// maxEcho is about how many bytes of a client's value an error message
// repeats: enough to recognise it, not enough to turn an answer (or the log
// line that records it) into a copy of a 600 KB parameter.
const maxEcho = 200

// maxDiagnostics caps a whole diagnostics text.
const maxDiagnostics = 1000

// clip cuts s to about maxEcho bytes, at a character boundary, and marks the
// cut. Every client value an error message repeats goes through it.
func clip(s string) string {
	return cut(s, maxEcho)
}

func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// urlPattern finds absolute URLs (storage endpoints, SAS URLs, source links)
// in a message that did not come from the client.
var urlPattern = regexp.MustCompile(`(?i)\b[a-z][a-z0-9+.\-]*://[^\s"'<>]+`)

// Fixed client-facing messages for failures on the service's side. The
// error's own text, which may hold SDK messages, storage URLs or Go type
// names, goes to the request's log line instead.
const (
	msgInternal    = "the server could not complete the request because of an internal error; its log has the details"
	msgUnavailable = "a service this request depends on is unavailable or busy; retry later"
	msgConflict    = "the request conflicted with a concurrent change; retry it"
	msgRefused     = "the source FHIR server or the export storage refused the service's identity; the service's log has the details"
)

// publicMessage is the diagnostics of an error answer: what the client may
// read. It is the message of the outermost fault.Error only (the layer that
// knows what the request was), never the text of the errors it wraps, and a
// fixed text for kinds that only ever describe the service's own trouble.
// Messages that did not come from this package lose their URLs.
func publicMessage(err error) string {
	var he *httpError
	if errors.As(err, &he) {
		return cut(he.Error(), maxDiagnostics)
	}
	var failed *jobFailed
	if errors.As(err, &failed) {
		// The recorded cause of a job that failed on the source's answers
		// (rejected search, deleted Group, a source that kept failing) is
		// what the client needs to change its request or try later; a
		// refusal of the service's identity or a fault of the service is
		// the operator's business.
		msg := msgInternal
		switch fault.KindOf(failed.cause) {
		case fault.Forbidden:
			msg = msgRefused
		case fault.Invalid, fault.NotFound, fault.Permanent, fault.Transient, fault.Unavailable:
			msg = ownMessage(failed.cause, msgInternal)
		}
		return cut("the export failed: "+msg, maxDiagnostics)
	}
	switch fault.KindOf(err) {
	case fault.Internal:
		return msgInternal
	case fault.Transient, fault.Unavailable:
		return msgUnavailable
	case fault.Conflict:
		return msgConflict
	}
	return cut(ownMessage(err, msgInternal), maxDiagnostics)
}

// ownMessage is the Msg of err's outermost fault.Error, without URLs unless
// it is the client's request that is invalid (then the URLs are its own), or
// fallback when there is none.
func ownMessage(err error, fallback string) string {
	var fe *fault.Error
	if !errors.As(err, &fe) || fe.Msg == "" {
		return fallback
	}
	if fe.Kind == fault.Invalid {
		return fe.Msg
	}
	return urlPattern.ReplaceAllString(fe.Msg, "(URL removed)")
}
