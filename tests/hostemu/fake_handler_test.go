package hostemu

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The emulator's own tests run this test binary as the custom handler of a
// small package (fakeApp): with HOSTEMU_FAKE_HANDLER=1, TestMain serves the
// custom handler protocol instead of running tests. Its queue function is
// told what to do by the message: {"mode": "..."}.
const fakeHandlerEnv = "HOSTEMU_FAKE_HANDLER"

const fakeQueueFunction = "FakeWorker"

func runFakeHandler() {
	port := os.Getenv("FUNCTIONS_CUSTOMHANDLER_PORT")
	if port == "" || os.Getenv("FUNCTIONS_HTTPWORKER_PORT") != port || os.Getenv("AzureWebJobsStorage") == "" {
		os.Stdout.WriteString("fake handler: the host did not set FUNCTIONS_CUSTOMHANDLER_PORT, FUNCTIONS_HTTPWORKER_PORT and AzureWebJobsStorage\n")
		os.Exit(2)
	}
	if _, err := os.Stat("host.json"); err != nil {
		os.Stdout.WriteString("fake handler: not started in the app root\n")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		os.Stdout.WriteString("fake handler: " + err.Error() + "\n")
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNotFound) })
	mux.HandleFunc("POST /"+fakeQueueFunction, fakeInvoke)
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", "/elsewhere")
		w.Header().Set("X-Fake", "kept")
		w.WriteHeader(http.StatusFound)
		io.WriteString(w, "moved")
	})
	mux.HandleFunc("/", fakeEcho)
	srv := &http.Server{Handler: mux}
	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, os.Interrupt)
		<-ch
		os.Exit(0)
	}()
	os.Stdout.WriteString("fake handler: listening on " + port + "\n")
	_ = srv.Serve(ln)
}

// echoed is what the fake HTTP function saw.
type echoed struct {
	Method        string
	Path          string
	RawQuery      string
	Host          string
	Header        http.Header
	Body          string
	ContentLength int64
}

func fakeEcho(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Fake", "kept")
	w.WriteHeader(http.StatusTeapot)
	json.NewEncoder(w).Encode(echoed{
		Method: r.Method, Path: r.URL.EscapedPath(), RawQuery: r.URL.RawQuery, Host: r.Host,
		Header: r.Header, Body: string(body), ContentLength: r.ContentLength,
	})
}

// fakeInvoke answers a queue invocation as its message's mode says. Logs
// carry the raw payload and headers back to the test.
func fakeInvoke(w http.ResponseWriter, r *http.Request) {
	payload, _ := io.ReadAll(r.Body)
	var inv struct {
		Data     map[string]json.RawMessage
		Metadata map[string]json.RawMessage
	}
	_ = json.Unmarshal(payload, &inv)
	var msg struct {
		Mode string `json:"mode"`
	}
	_ = json.Unmarshal(peelTwice(inv.Data["item"]), &msg)
	count, _ := strconv.Atoi(strings.Trim(string(peelTwice(inv.Metadata["DequeueCount"])), `"`))
	logs := []string{string(payload), r.Header.Get("Content-Type"), r.Header.Get("X-Azure-Functions-InvocationId"), r.Header.Get("User-Agent")}
	ok := func() {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"Outputs": map[string]any{}, "Logs": logs, "ReturnValue": nil})
	}
	switch msg.Mode {
	case "fail":
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		json.NewEncoder(w).Encode(map[string]any{"Outputs": map[string]any{}, "Logs": logs, "ReturnValue": nil})
	case "plain": // 2xx without a JSON body: Go sniffs text/plain
		io.WriteString(w, "done")
	case "empty": // 2xx, application/json, no body
		w.Header().Set("Content-Type", "application/json")
	case "failthenok":
		if count < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		ok()
	case "crash":
		if count == 1 {
			os.Stdout.WriteString("fake handler: crashing on purpose\n")
			os.Exit(3)
		}
		ok()
	case "crashalways":
		os.Exit(3)
	case "hang":
		if count == 1 {
			<-r.Context().Done()
			time.Sleep(time.Hour) // the host must kill us
		}
		ok()
	default:
		ok()
	}
}

func peelTwice(raw json.RawMessage) []byte {
	b := []byte(raw)
	for range 2 {
		var s string
		if len(b) == 0 || b[0] != '"' || json.Unmarshal(b, &s) != nil {
			break
		}
		b = []byte(s)
	}
	return b
}

// fakeHTTPFunction catches every path but the queue function's, as
// functions/ExportHttp does.
const fakeHTTPFunction = `{"bindings":[
 {"type":"httpTrigger","direction":"in","name":"req","authLevel":"anonymous","methods":["get","post","delete"],
  "route":"{*path:regex(^(?!` + fakeQueueFunction + `$).*)}"},
 {"type":"http","direction":"out","name":"res"}]}`

// fakeQueueSetting is the app setting that names the fake queue function's
// queue, as EXPORT_QUEUE names the real one's.
const fakeQueueSetting = "FAKE_QUEUE"

const fakeQueueFunctionJSON = `{"bindings":[
 {"type":"queueTrigger","direction":"in","name":"item","queueName":"%` + fakeQueueSetting + `%","connection":"AzureWebJobsStorage"}]}`

const fakeHostJSON = `{
  "version": "2.0",
  "functionTimeout": "00:05:00",
  "customHandler": {"description": {"defaultExecutablePath": "handler", "workingDirectory": "", "arguments": []},
                    "enableForwardingHttpRequest": true},
  "extensions": {"http": {"routePrefix": ""},
                 "queues": {"messageEncoding": "none", "batchSize": 4, "newBatchThreshold": 2, "maxDequeueCount": 3,
                            "visibilityTimeout": "00:00:00", "maxPollingInterval": "00:00:01"}}
}`

// fakeApp writes a package whose handler is this test binary.
func fakeApp(t *testing.T, handlerMode os.FileMode, withHandler bool) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]zipEntry{
		"host.json":                          {data: []byte(fakeHostJSON), mode: 0o644},
		"FakeHttp/function.json":             {data: []byte(fakeHTTPFunction), mode: 0o644},
		fakeQueueFunction + "/function.json": {data: []byte(fakeQueueFunctionJSON), mode: 0o644},
		"handler":                            {path: exe, mode: handlerMode},
	}
	if !withHandler {
		delete(files, "handler")
	}
	zipPath := filepath.Join(t.TempDir(), "app.zip")
	writeZip(t, zipPath, files)
	return zipPath
}
