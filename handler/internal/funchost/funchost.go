// Package funchost speaks the Azure Functions custom handler protocol: it
// serves the queue-triggered worker function's invocations (a JSON payload
// with the message in Data and its delivery details in Metadata) and hands
// every other request, forwarded by the host as it came, to the HTTP API.
package funchost

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/rs/zerolog"

	"github.com/azfhir/bulkexport/handler/internal/export"
)

// WorkerFunction is the name of the queue-triggered function: the folder
// functions/ExportWorker, and so the path the host posts invocations to.
const WorkerFunction = "ExportWorker"

// WorkerBinding is the name of the queue trigger binding in its function.json.
const WorkerBinding = "workItem"

// Processor runs one work item message (export.Engine.Process).
type Processor interface {
	Process(ctx context.Context, msg export.Message, at export.Attempt) export.Outcome
}

// Handler routes the host's requests.
type Handler struct {
	api             http.Handler
	engine          Processor
	maxDequeueCount int
	stop            <-chan struct{}
}

// New returns the custom handler's root handler. maxDequeueCount must be the
// host's extensions.queues.maxDequeueCount (see MaxDequeueCount). stop is
// closed when the process is shutting down: running work items then hand
// on at their next page boundary (export.Attempt.Stop); nil never stops.
func New(api http.Handler, engine Processor, maxDequeueCount int, stop <-chan struct{}) *Handler {
	return &Handler{api: api, engine: engine, maxDequeueCount: maxDequeueCount, stop: stop}
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost && r.URL.Path == "/"+WorkerFunction {
		if name, ok := forwardedHeader(r.Header); ok {
			// The host posts invocations itself; a request that went
			// through its front end (which adds X-Forwarded-*) is a
			// client's, whatever its path. The HTTP route's constraint
			// should never let one get here; if one does, it is not
			// obeyed: the API answers it as the unknown path it is (404).
			zerolog.Ctx(r.Context()).Warn().Str("header", name).Str("path", r.URL.EscapedPath()).
				Msg("refused a forwarded request on the worker path")
			h.api.ServeHTTP(w, r)
			return
		}
		h.invoke(w, r)
		return
	}
	h.api.ServeHTTP(w, r)
}

// forwardedHeader returns the name of the first X-Forwarded-* header (or
// Forwarded) in h: what a proxy adds to a client's request and the host
// never sets on its own invocations.
func forwardedHeader(h http.Header) (string, bool) {
	for k := range h {
		if strings.HasPrefix(http.CanonicalHeaderKey(k), "X-Forwarded-") || http.CanonicalHeaderKey(k) == "Forwarded" {
			return k, true
		}
	}
	return "", false
}

// invocation is the host's payload for a queue trigger.
type invocation struct {
	Data     map[string]json.RawMessage `json:"Data"`
	Metadata map[string]json.RawMessage `json:"Metadata"`
}

// invokeResponse is what the host expects back; a 2xx without a JSON body
// never completes the invocation.
type invokeResponse struct {
	Outputs     map[string]any `json:"Outputs"`
	Logs        []string       `json:"Logs"`
	ReturnValue any            `json:"ReturnValue"`
}

func (h *Handler) invoke(w http.ResponseWriter, r *http.Request) {
	invocationID := r.Header.Get("X-Azure-Functions-InvocationId")
	log := zerolog.Ctx(r.Context()).With().Str("invocationId", invocationID).Str("function", WorkerFunction).Logger()
	ctx := log.WithContext(r.Context())

	msg, dequeueCount, err := DecodeInvocation(r.Body)
	if err != nil {
		// A payload we cannot read will not get better: answer success so the
		// host does not retry it, and say so loudly.
		log.Error().Err(err).Msg("dropping an invocation whose payload cannot be decoded")
		// The reply's Logs reach the host's logs: no decoder text.
		reply(w, http.StatusOK, []string{"error: the invocation payload cannot be decoded as a work item message; dropped (the handler's log has why)"})
		return
	}
	final := dequeueCount >= h.maxDequeueCount
	out := h.engine.Process(ctx, msg, export.Attempt{
		Number: dequeueCount, Final: final, InvocationID: invocationID, Stop: h.stop,
	})
	status, level, what := outcomeReply(out, final)
	log.WithLevel(level).Err(out.Cause).Str("job", msg.Job).Str("workItem", msg.Item).Int("attempt", dequeueCount).
		Str("outcome", what).Bool("poisoned", status >= http.StatusInternalServerError && final).
		Msg("worker invocation finished") // poisoned: the host moves a message that fails its last delivery
	// The host keeps these lines in its own logs: ids and the outcome only,
	// never an error's text, which can carry source URLs and diagnostics.
	reply(w, status, []string{fmt.Sprintf("%s: work item %s/%s %s (attempt %d)", level, msg.Job, msg.Item, what, dequeueCount)})
}

// outcomeReply turns an outcome into the invocation's answer. The host
// deletes the message on a 2xx; on anything else it makes the message
// visible again after visibilityTimeout, or moves it to <queue>-poison when
// the delivery was the last (DequeueCount >= maxDequeueCount).
func outcomeReply(out export.Outcome, final bool) (status int, level zerolog.Level, what string) {
	switch out.Action {
	case export.Settle:
		if out.Cause != nil {
			return http.StatusOK, zerolog.WarnLevel, out.String()
		}
		return http.StatusOK, zerolog.InfoLevel, out.String()
	case export.Retry:
		if final {
			// Cut short (the process is stopping) on its last delivery: the
			// host poisons the message, and the status watchdog restarts the
			// item once it has been idle for EXPORT_STALL_AFTER.
			return http.StatusInternalServerError, zerolog.WarnLevel, "interrupted on its last delivery; the host moves the message to the poison queue"
		}
		return http.StatusInternalServerError, zerolog.WarnLevel, out.String()
	default: // export.Poison
		return http.StatusInternalServerError, zerolog.ErrorLevel, out.String()
	}
}

func reply(w http.ResponseWriter, status int, logs []string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(invokeResponse{Outputs: map[string]any{}, Logs: logs})
}

// DecodeInvocation reads a queue trigger payload: the work item message from
// Data[workItem] and the dequeue count from Metadata. The host JSON-encodes
// string values once more, so values are unquoted up to twice.
func DecodeInvocation(body io.Reader) (export.Message, int, error) {
	var inv invocation
	if err := json.NewDecoder(io.LimitReader(body, 1<<20)).Decode(&inv); err != nil {
		return export.Message{}, 0, fmt.Errorf("payload is not JSON: %w", err)
	}
	raw, ok := inv.Data[WorkerBinding]
	if !ok {
		return export.Message{}, 0, fmt.Errorf("payload has no Data.%s", WorkerBinding)
	}
	var msg export.Message
	if err := json.Unmarshal(peel(raw), &msg); err != nil {
		return export.Message{}, 0, fmt.Errorf("payload Data.%s is not a work item message: %w", WorkerBinding, err)
	}
	if msg.Job == "" || msg.Item == "" {
		return export.Message{}, 0, fmt.Errorf("payload Data.%s lacks job or item", WorkerBinding)
	}
	count := 1
	if v, ok := inv.Metadata["DequeueCount"]; ok {
		n, err := strconv.Atoi(string(bytes.Trim(peel(v), `"`)))
		if err != nil || n < 1 {
			return export.Message{}, 0, fmt.Errorf("Metadata.DequeueCount %s is not a positive number", v)
		}
		count = n
	}
	return msg, count, nil
}

// peel removes up to two layers of JSON string encoding.
func peel(raw json.RawMessage) []byte {
	b := bytes.TrimSpace(raw)
	for range 2 {
		var s string
		if len(b) == 0 || b[0] != '"' || json.Unmarshal(b, &s) != nil {
			break
		}
		b = []byte(s)
	}
	return b
}

// MaxDequeueCountSetting is the app setting that overrides host.json's
// extensions.queues.maxDequeueCount: the host reads every
// AzureFunctionsJobHost__<path> setting over the matching host.json value.
const MaxDequeueCountSetting = "AzureFunctionsJobHost__extensions__queues__maxDequeueCount"

// MaxDequeueCount reads extensions.queues.maxDequeueCount as the host does:
// the MaxDequeueCountSetting app setting when it is set, else host.json, else
// 5 (the host's default). The handler must know which delivery is the last
// one exactly as the host does.
func MaxDequeueCount(hostJSONPath string) (int, error) {
	return maxDequeueCount(hostJSONPath, os.Environ())
}

func maxDequeueCount(hostJSONPath string, environ []string) (int, error) {
	// App setting names are case-insensitive to the host.
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		if !strings.EqualFold(k, MaxDequeueCountSetting) {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 {
			return 0, fmt.Errorf("%s %q is not a positive number", k, v)
		}
		return n, nil
	}
	b, err := os.ReadFile(hostJSONPath)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", hostJSONPath, err)
	}
	var host struct {
		Extensions struct {
			Queues struct {
				MaxDequeueCount *int `json:"maxDequeueCount"`
			} `json:"queues"`
		} `json:"extensions"`
	}
	if err := json.Unmarshal(b, &host); err != nil {
		return 0, fmt.Errorf("parse %s: %w", hostJSONPath, err)
	}
	if n := host.Extensions.Queues.MaxDequeueCount; n != nil && *n > 0 {
		return *n, nil
	}
	return 5, nil
}
