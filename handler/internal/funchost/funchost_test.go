package funchost

// Payload fixtures in testdata/ are in the exact shape the Functions host
// sends for a queue trigger (docs/azure-functions-and-storage.md §1.4):
//
//   queue-doc-example.json        the §1.4 example, verbatim (its message has "type"/"part", not "item")
//   queue-workitem.json           our {job, item} message as the host sends it: double-encoded, quoted
//                                 Id/PopReceipt, string DequeueCount, copied properties
//   queue-single-encoded.json     Data encoded once
//   queue-raw-object.json         Data as a JSON object, DequeueCount as a number
//   queue-no-dequeuecount.json    Metadata without DequeueCount
//   queue-plain-text-message.json a message that is not JSON
//   queue-bad-dequeuecount.json   DequeueCount that is not a number
//   queue-other-binding.json      Data under another binding name
//   queue-garbage.json            not JSON at all

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

const maxDequeue = 5

var ourMessage = export.Message{Job: "01JD8Z6QK3M9V0XW2Y4A6B8C0D", Item: "Observation"}

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeInvocationFixtures(t *testing.T) {
	cases := []struct {
		file    string
		msg     export.Message
		count   int
		wantErr string
	}{
		{file: "queue-workitem.json", msg: ourMessage, count: 2},
		{file: "queue-single-encoded.json", msg: ourMessage, count: 1},
		{file: "queue-raw-object.json", msg: ourMessage, count: 3},
		{file: "queue-no-dequeuecount.json", msg: ourMessage, count: 1},
		{file: "queue-doc-example.json", wantErr: "lacks job or item"},
		{file: "queue-plain-text-message.json", wantErr: "is not a work item message"},
		{file: "queue-bad-dequeuecount.json", wantErr: "DequeueCount"},
		{file: "queue-other-binding.json", wantErr: "no Data." + WorkerBinding},
		{file: "queue-garbage.json", wantErr: "not JSON"},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			msg, count, err := DecodeInvocation(bytes.NewReader(fixture(t, c.file)))
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("DecodeInvocation error %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if msg != c.msg || count != c.count {
				t.Errorf("DecodeInvocation = %+v, %d; want %+v, %d", msg, count, c.msg, c.count)
			}
		})
	}
}

// The verbatim §1.4 payload peels to the documented message text and count.
func TestPeelTheDocumentedExample(t *testing.T) {
	var inv invocation
	if err := json.Unmarshal(fixture(t, "queue-doc-example.json"), &inv); err != nil {
		t.Fatal(err)
	}
	if got, want := string(peel(inv.Data[WorkerBinding])), `{"job":"01JD8Z6Q","type":"Observation","part":3}`; got != want {
		t.Errorf("peel(Data.workItem) = %s, want %s", got, want)
	}
	// Metadata values are JSON-serialised strings: peeling both layers gives the value.
	for key, want := range map[string]string{
		"DequeueCount": "2", "Id": "9b1c2f4e-6a1d-4c1e-9d55-0f3a2b7c8e10", "PopReceipt": "AgAAAAMAAAAAAAAAx1q3Zk8A2wE=",
		"job": "01JD8Z6Q", "part": "3",
	} {
		if got := string(peel(inv.Metadata[key])); got != want {
			t.Errorf("peel(Metadata.%s) = %s, want %s", key, got, want)
		}
	}
	for in, want := range map[string]string{
		`"\"{\\\"a\\\":1}\""`: `{"a":1}`, // twice
		`"{\"a\":1}"`:         `{"a":1}`, // once
		`{"a":1}`:             `{"a":1}`, // raw
		` "2" `:               `2`,       // whitespace around
		`"\"\\\"x\\\"\""`:     `"x"`,     // at most two layers
		`"bad`:                `"bad`,    // not a JSON string: left alone
		``:                    ``,
	} {
		if got := string(peel(json.RawMessage(in))); got != want {
			t.Errorf("peel(%s) = %s, want %s", in, got, want)
		}
	}
}

// fakeProcessor records attempts and answers with out (Done when unset).
type fakeProcessor struct {
	mu       sync.Mutex
	out      export.Outcome
	calls    []export.Attempt
	messages []export.Message
}

func (p *fakeProcessor) Process(_ context.Context, msg export.Message, at export.Attempt) export.Outcome {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, at)
	p.messages = append(p.messages, msg)
	return p.out
}

// apiRecorder is the HTTP API stand-in: it records what reached it.
type apiRecorder struct {
	mu   sync.Mutex
	seen []*http.Request
	body []string
}

func (a *apiRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	a.mu.Lock()
	a.seen = append(a.seen, r)
	a.body = append(a.body, string(b))
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/fhir+json")
	w.WriteHeader(http.StatusTeapot)
	io.WriteString(w, `{"from":"api"}`)
}

func invoke(t *testing.T, h http.Handler, body []byte, invocationID string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/"+WorkerFunction, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Azure-Functions-InvocationId", invocationID)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// checkResult asserts what the host needs to complete an invocation: a JSON
// body with Outputs, Logs and ReturnValue, declared as application/json.
func checkResult(t *testing.T, rec *httptest.ResponseRecorder, wantStatus int) {
	t.Helper()
	if rec.Code != wantStatus {
		t.Errorf("status %d, want %d (body %s)", rec.Code, wantStatus, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json: the host rejects a sniffed text/plain", ct)
	}
	var res map[string]json.RawMessage
	if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil {
		t.Fatalf("body %q is not a JSON object: %v", rec.Body, err)
	}
	for _, k := range []string{"Outputs", "Logs", "ReturnValue"} {
		if _, ok := res[k]; !ok {
			t.Errorf("body %s lacks %s", rec.Body, k)
		}
	}
	var outputs map[string]any
	var logs []string
	if json.Unmarshal(res["Outputs"], &outputs) != nil || outputs == nil || json.Unmarshal(res["Logs"], &logs) != nil {
		t.Errorf("body %s: Outputs must be an object and Logs a list of strings", rec.Body)
	}
}

func TestWorkerInvocationSucceedsWithAJSONResult(t *testing.T) {
	api, proc := &apiRecorder{}, &fakeProcessor{}
	stop := make(chan struct{})
	h := New(api, proc, maxDequeue, stop)
	rec := invoke(t, h, fixture(t, "queue-workitem.json"), "inv-1")
	checkResult(t, rec, http.StatusOK)
	if len(proc.calls) != 1 || proc.messages[0] != ourMessage {
		t.Fatalf("Process calls %+v %+v, want one with %+v", proc.calls, proc.messages, ourMessage)
	}
	if at := proc.calls[0]; at.Number != 2 || at.Final || at.InvocationID != "inv-1" || at.Stop != (<-chan struct{})(stop) {
		t.Errorf("Attempt %+v, want Number 2, not Final, InvocationID inv-1 and the process's stop signal", at)
	}
	if len(api.seen) != 0 {
		t.Error("a worker invocation reached the HTTP API")
	}
}

// Each outcome of Process gets the answer that makes the host do what it
// says: 2xx deletes the message, anything else redelivers it (or poisons it
// on the last delivery). The Logs the host keeps name the ids and the
// outcome, never the cause's text.
func TestWorkerInvocationAnswersFollowTheOutcome(t *testing.T) {
	const secret = "GET https://fhir.example.org/Observation?patient=Patient/123 answered 503"
	cause := fault.New(fault.Transient, "%s", secret)
	cases := []struct {
		name   string
		out    export.Outcome
		count  string
		status int
		logs   string
	}{
		{"done", export.Done(), "2", http.StatusOK, "info: work item 01JD8Z6QK3M9V0XW2Y4A6B8C0D/Observation done (attempt 2)"},
		{"failed for good", export.GiveUp(cause), "2", http.StatusOK, "warn: work item 01JD8Z6QK3M9V0XW2Y4A6B8C0D/Observation failed; the failure is recorded on the job (attempt 2)"},
		{"retry", export.RetryLater(cause), "2", http.StatusInternalServerError, "warn: work item 01JD8Z6QK3M9V0XW2Y4A6B8C0D/Observation to be delivered again (attempt 2)"},
		{"interrupted on the last delivery", export.RetryLater(cause), "5", http.StatusInternalServerError, "warn: work item 01JD8Z6QK3M9V0XW2Y4A6B8C0D/Observation interrupted on its last delivery; the host moves the message to the poison queue (attempt 5)"},
		{"poisoned", export.Poisoned(cause), "5", http.StatusInternalServerError, "error: work item 01JD8Z6QK3M9V0XW2Y4A6B8C0D/Observation failed on its last delivery; the message goes to the poison queue (attempt 5)"},
	}
	var base map[string]map[string]any
	if err := json.Unmarshal(fixture(t, "queue-workitem.json"), &base); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base["Metadata"]["DequeueCount"] = c.count
			body, _ := json.Marshal(base)
			rec := invoke(t, New(&apiRecorder{}, &fakeProcessor{out: c.out}, maxDequeue, nil), body, "inv-2")
			checkResult(t, rec, c.status)
			var res struct{ Logs []string }
			if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil {
				t.Fatal(err)
			}
			if len(res.Logs) != 1 || res.Logs[0] != c.logs {
				t.Errorf("Logs %q, want [%q]", res.Logs, c.logs)
			}
			if strings.Contains(rec.Body.String(), "fhir.example.org") {
				t.Errorf("the host's logs would carry the cause's text: %s", rec.Body)
			}
		})
	}
}

// A payload that can never be processed answers 200, so that the host does
// not deliver it again and again; the engine is not called.
func TestUndecodablePayloadsAnswerSuccess(t *testing.T) {
	for _, file := range []string{"queue-doc-example.json", "queue-plain-text-message.json", "queue-bad-dequeuecount.json",
		"queue-other-binding.json", "queue-garbage.json"} {
		t.Run(file, func(t *testing.T) {
			proc := &fakeProcessor{}
			rec := invoke(t, New(&apiRecorder{}, proc, maxDequeue, nil), fixture(t, file), "inv-3")
			checkResult(t, rec, http.StatusOK)
			if len(proc.calls) != 0 {
				t.Errorf("Process was called for an undecodable payload")
			}
			if !strings.Contains(rec.Body.String(), "error: ") {
				t.Errorf("Logs do not say why the payload was dropped: %s", rec.Body)
			}
		})
	}
}

// A POST /ExportWorker that came through the host's front end (it carries
// X-Forwarded-*) is a client's request, not an invocation: the engine never
// sees it, and the API answers it.
func TestForwardedWorkerRequestsAreRefused(t *testing.T) {
	for _, header := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "x-forwarded-port", "Forwarded"} {
		t.Run(header, func(t *testing.T) {
			api, proc := &apiRecorder{}, &fakeProcessor{}
			req := httptest.NewRequest(http.MethodPost, "/"+WorkerFunction, bytes.NewReader(fixture(t, "queue-workitem.json")))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-Azure-Functions-InvocationId", "inv-forged")
			req.Header[header] = []string{"203.0.113.7"}
			rec := httptest.NewRecorder()
			New(api, proc, maxDequeue, nil).ServeHTTP(rec, req)
			if len(proc.calls) != 0 {
				t.Errorf("a forwarded request ran a work item: %+v", proc.messages)
			}
			if len(api.seen) != 1 || rec.Code != http.StatusTeapot {
				t.Errorf("the API did not answer it: %d calls, status %d", len(api.seen), rec.Code)
			}
		})
	}
}

// An undecodable payload's reply names no decoder text (the host keeps
// Logs in its own logs).
func TestUndecodablePayloadReplyHasNoErrorText(t *testing.T) {
	rec := invoke(t, New(&apiRecorder{}, &fakeProcessor{}, maxDequeue, nil), []byte(`{"Data":{"workItem":[1,2]}}`), "inv-4")
	checkResult(t, rec, http.StatusOK)
	for _, leak := range []string{"Go ", "export.Message", "json:", "unmarshal"} {
		if strings.Contains(rec.Body.String(), leak) {
			t.Errorf("reply %s carries %q", rec.Body, leak)
		}
	}
}

// Final is true exactly when DequeueCount >= maxDequeueCount.
func TestFinalAttemptFollowsMaxDequeueCount(t *testing.T) {
	var base map[string]map[string]any
	if err := json.Unmarshal(fixture(t, "queue-workitem.json"), &base); err != nil {
		t.Fatal(err)
	}
	for _, max := range []int{1, 3, 5} {
		for n := 1; n <= 7; n++ {
			base["Metadata"]["DequeueCount"] = fmt.Sprint(n)
			body, _ := json.Marshal(base)
			proc := &fakeProcessor{}
			invoke(t, New(&apiRecorder{}, proc, max, nil), body, "inv")
			if len(proc.calls) != 1 {
				t.Fatalf("max %d count %d: %d Process calls", max, n, len(proc.calls))
			}
			if at := proc.calls[0]; at.Number != n || at.Final != (n >= max) {
				t.Errorf("maxDequeueCount %d, DequeueCount %d: Attempt %+v, want Final=%v", max, n, at, n >= max)
			}
		}
	}
	// Without DequeueCount the delivery counts as the first.
	proc := &fakeProcessor{}
	invoke(t, New(&apiRecorder{}, proc, 1, nil), fixture(t, "queue-no-dequeuecount.json"), "inv")
	if at := proc.calls[0]; at.Number != 1 || !at.Final {
		t.Errorf("no DequeueCount, maxDequeueCount 1: Attempt %+v, want Number 1, Final", at)
	}
}

// Everything but POST /ExportWorker reaches the HTTP API as it came.
func TestOtherRequestsReachTheAPIUnchanged(t *testing.T) {
	cases := []struct{ method, target, body string }{
		{http.MethodGet, "/", ""},
		{http.MethodGet, "/$export?_type=Patient%2CObservation&_outputFormat=application%2Ffhir%20ndjson", ""},
		{http.MethodPost, "/Patient/$export", `{"resourceType":"Parameters"}`},
		{http.MethodDelete, "/jobs/01JD8Z6QK3M9V0XW2Y4A6B8C0D", ""},
		{http.MethodGet, "/" + WorkerFunction, ""},
		{http.MethodPost, "/" + WorkerFunction + "/extra", `{"Data":{}}`},
		{http.MethodPost, "/" + strings.ToLower(WorkerFunction), `{"Data":{}}`},
	}
	for _, c := range cases {
		api, proc := &apiRecorder{}, &fakeProcessor{}
		h := New(api, proc, maxDequeue, nil)
		req := httptest.NewRequest(c.method, c.target, strings.NewReader(c.body))
		req.Header.Set("X-Azure-Functions-InvocationId", "inv-http")
		req.Header.Set("Prefer", "respond-async")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if len(api.seen) != 1 || len(proc.calls) != 0 {
			t.Errorf("%s %s: reached the API %d times, the engine %d times; want the API once", c.method, c.target, len(api.seen), len(proc.calls))
			continue
		}
		got := api.seen[0]
		if got.Method != c.method || got.URL.RequestURI() != c.target || api.body[0] != c.body ||
			got.Header.Get("Prefer") != "respond-async" || got.Header.Get("X-Azure-Functions-InvocationId") != "inv-http" {
			t.Errorf("%s %s reached the API as %s %s body %q headers %v", c.method, c.target, got.Method, got.URL.RequestURI(), api.body[0], got.Header)
		}
		if rec.Code != http.StatusTeapot || rec.Body.String() != `{"from":"api"}` || rec.Header().Get("Content-Type") != "application/fhir+json" {
			t.Errorf("%s %s: the API's answer was changed: %d %q %q", c.method, c.target, rec.Code, rec.Header().Get("Content-Type"), rec.Body)
		}
	}
}

func TestMaxDequeueCountReadsHostJSON(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for content, want := range map[string]int{
		`{"version":"2.0","extensions":{"queues":{"maxDequeueCount":3}}}`: 3,
		`{"version":"2.0"}`: 5,
		`{"version":"2.0","extensions":{"queues":{"maxDequeueCount":0}}}`: 5,
	} {
		got, err := maxDequeueCount(write("host.json", content), nil)
		if err != nil || got != want {
			t.Errorf("MaxDequeueCount(%s) = %d, %v; want %d", content, got, err, want)
		}
	}
	if _, err := maxDequeueCount(write("bad.json", `{"extensions":`), nil); err == nil {
		t.Error("MaxDequeueCount accepted broken JSON")
	}
	if _, err := maxDequeueCount(filepath.Join(dir, "missing.json"), nil); err == nil {
		t.Error("MaxDequeueCount accepted a missing file")
	}
}

// An app setting AzureFunctionsJobHost__extensions__queues__maxDequeueCount
// overrides host.json for the host, so it must for the handler too:
// otherwise the host poisons the message before the handler's final attempt
// and the job never ends.
func TestMaxDequeueCountHonoursTheAppSettingOverride(t *testing.T) {
	hostJSON := filepath.Join(t.TempDir(), "host.json")
	if err := os.WriteFile(hostJSON, []byte(`{"version":"2.0","extensions":{"queues":{"maxDequeueCount":5}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, env := range [][]string{
		{"PATH=/bin", MaxDequeueCountSetting + "=3"},
		{"azurefunctionsjobhost__EXTENSIONS__queues__maxdequeuecount= 3 "},
	} {
		if got, err := maxDequeueCount(hostJSON, env); err != nil || got != 3 {
			t.Errorf("environment %q: %d, %v; want the override 3", env, got, err)
		}
	}
	if got, err := maxDequeueCount(hostJSON, []string{"AzureFunctionsJobHost__extensions__queues__batchSize=8"}); err != nil || got != 5 {
		t.Errorf("another override: %d, %v; want host.json's 5", got, err)
	}
	for _, bad := range []string{"0", "five", ""} {
		if _, err := maxDequeueCount(hostJSON, []string{MaxDequeueCountSetting + "=" + bad}); err == nil {
			t.Errorf("override %q accepted", bad)
		}
	}
}
