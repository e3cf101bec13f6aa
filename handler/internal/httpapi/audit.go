package httpapi

import (
	"net/http"

	"github.com/rs/zerolog"
)

// audit writes the audit line of a request, next to its access log line:
// one per kick-off, per status answer that hands out the manifest or a page
// of it (each such poll, not only the first: every one gives the files away
// again; a 202 with a body is a partial manifest), per
// download, per cancel, and per refused request (401, 403, 404, 429) on any
// route. It has "audit": true and the fields action, client, job, types,
// outcome, status and bytes; never a header value, a query string or a
// token, so nothing secret can reach it.
func audit(log zerolog.Logger, method string, rt route, st *reqState, status int, bytes int64) {
	action := auditAction(rt.kind, method, status, bytes)
	if action == "" {
		return
	}
	ev := log.Info().Bool("audit", true).Str("action", action).Str("client", st.client)
	if st.job != "" {
		ev = ev.Str("job", st.job)
	}
	if rt.kind == routeKickOff {
		ev = ev.Strs("types", st.types)
	}
	ev.Str("outcome", auditOutcome(status)).Int("status", status).Int64("bytes", bytes).Msg("audit")
}

// auditAction names what a request did for the audit log, or "" for a
// request that is not audited (the CapabilityStatement, a status poll of a
// running job that hands out nothing).
func auditAction(kind routeKind, method string, status int, bytes int64) string {
	refused := status == http.StatusUnauthorized || status == http.StatusForbidden ||
		status == http.StatusNotFound || status == http.StatusTooManyRequests
	switch {
	case kind == routeKickOff:
		return "kickoff"
	case kind == routeJob && method == http.MethodDelete:
		return "cancel"
	case kind == routeJob && status == http.StatusOK:
		return "manifest" // the job is complete: its files are handed out
	case kind == routeJob && status == http.StatusAccepted && bytes > 0:
		return "manifest" // a partial manifest: the files finished so far are handed out
	case kind == routeFile:
		return "download"
	case refused:
		return "refused"
	}
	return ""
}

// auditOutcome sums up a status for the audit line.
func auditOutcome(status int) string {
	switch {
	case status < 300:
		return "ok"
	case status == http.StatusUnauthorized || status == http.StatusForbidden ||
		status == http.StatusNotFound || status == http.StatusTooManyRequests:
		return "refused"
	case status < 500:
		return "invalid"
	}
	return "error"
}
