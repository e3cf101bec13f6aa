package funchost

// The Functions configuration (host.json, functions/*/function.json), the
// build scripts, the Bicep app settings and the handler's code must agree;
// the host reports none of these mismatches itself (it silently switches
// modes, poisons messages or serves 404). Every failure names the file that
// disagrees.

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
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/auth"
	"github.com/azfhir/bulkexport/handler/internal/config"
	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/httpapi"
)

const repo = "../../.."

var (
	hostJSONFile  = filepath.Join(repo, "host.json")
	functionsDir  = filepath.Join(repo, "functions")
	makefile      = filepath.Join(repo, "Makefile")
	packageScript = filepath.Join(repo, "scripts/package.sh")
	functionBicep = filepath.Join(repo, "infra/modules/functionapp.bicep")
	mainBicep     = filepath.Join(repo, "infra/main.bicep")
	localSettings = filepath.Join(repo, "local.settings.sample.json")
)

// queueSetting is the app setting that names the work item queue: the
// handler reads it (config) and the worker function's trigger resolves
// %EXPORT_QUEUE% from it, so the two cannot name different queues.
const queueSetting = "EXPORT_QUEUE"

type hostJSON struct {
	Version         string `json:"version"`
	FunctionTimeout string `json:"functionTimeout"`
	CustomHandler   struct {
		Description struct {
			DefaultExecutablePath string `json:"defaultExecutablePath"`
			WorkingDirectory      string `json:"workingDirectory"`
		} `json:"description"`
		EnableForwardingHTTPRequest bool `json:"enableForwardingHttpRequest"`
	} `json:"customHandler"`
	Extensions struct {
		HTTP struct {
			RoutePrefix *string `json:"routePrefix"`
		} `json:"http"`
		Queues struct {
			MessageEncoding string `json:"messageEncoding"`
			MaxDequeueCount *int   `json:"maxDequeueCount"`
		} `json:"queues"`
	} `json:"extensions"`
}

type binding struct {
	Type       string   `json:"type"`
	Direction  string   `json:"direction"`
	Name       string   `json:"name"`
	AuthLevel  string   `json:"authLevel"`
	Methods    []string `json:"methods"`
	Route      string   `json:"route"`
	QueueName  string   `json:"queueName"`
	Connection string   `json:"connection"`
}

type function struct {
	Name     string // folder name
	File     string
	Bindings []binding
}

func readHost(t *testing.T) hostJSON {
	t.Helper()
	b, err := os.ReadFile(hostJSONFile)
	if err != nil {
		t.Fatal(err)
	}
	var h hostJSON
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatalf("%s: %v", hostJSONFile, err)
	}
	return h
}

func readFunctions(t *testing.T) []function {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(functionsDir, "*", "function.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no %s/*/function.json: %v", functionsDir, err)
	}
	var fns []function
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct{ Bindings []binding }
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		fns = append(fns, function{Name: filepath.Base(filepath.Dir(f)), File: f, Bindings: doc.Bindings})
	}
	return fns
}

func readText(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// timeSpan reads host.json's hh:mm:ss.
func timeSpan(s string) (time.Duration, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return 0, fmt.Errorf("%q is not hh:mm:ss", s)
	}
	var d time.Duration
	for i, unit := range []time.Duration{time.Hour, time.Minute, time.Second} {
		n, err := strconv.Atoi(parts[i])
		if err != nil {
			return 0, fmt.Errorf("%q is not hh:mm:ss", s)
		}
		d += time.Duration(n) * unit
	}
	return d, nil
}

func TestHostJSONFitsTheHandler(t *testing.T) {
	h := readHost(t)
	if h.Version != "2.0" {
		t.Errorf("%s: version %q, want \"2.0\"", hostJSONFile, h.Version)
	}
	if got := h.CustomHandler.Description.DefaultExecutablePath; got != "handler" {
		t.Errorf("%s: customHandler.description.defaultExecutablePath %q, want \"handler\" (the binary package.sh builds)", hostJSONFile, got)
	}
	if wd := h.CustomHandler.Description.WorkingDirectory; wd != "" {
		t.Errorf("%s: customHandler.description.workingDirectory %q: the handler reads host.json from its working directory, keep it the app root", hostJSONFile, wd)
	}
	if !h.CustomHandler.EnableForwardingHTTPRequest {
		t.Errorf("%s: customHandler.enableForwardingHttpRequest must be true: httpapi expects the original request", hostJSONFile)
	}
	if enc := h.Extensions.Queues.MessageEncoding; enc != "none" {
		t.Errorf("%s: extensions.queues.messageEncoding %q, want \"none\": the Go queue SDK enqueues plain-text JSON, which base64 mode poisons unread", hostJSONFile, enc)
	}
	if p := h.Extensions.HTTP.RoutePrefix; p == nil || *p != "" {
		t.Errorf("%s: extensions.http.routePrefix must be \"\" (the API lives at the root; the default is \"api\")", hostJSONFile)
	}
	if n := h.Extensions.Queues.MaxDequeueCount; n != nil {
		if got, err := MaxDequeueCount(hostJSONFile); err != nil || got != *n {
			t.Errorf("%s: MaxDequeueCount reads %d (%v), the file says %d", hostJSONFile, got, err, *n)
		}
	}

	timeout, err := timeSpan(h.FunctionTimeout)
	if err != nil {
		t.Fatalf("%s: functionTimeout: %v", hostJSONFile, err)
	}
	cfg, err := config.Load(func(k string) string {
		return map[string]string{"FHIR_SERVER_URL": "https://fhir.example", "AzureWebJobsStorage": "UseDevelopmentStorage=true", "AUTH_MODE": "none"}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	budget := cfg.InvocationBudget
	if timeout > 30*time.Minute {
		t.Errorf("%s: functionTimeout %s is above 00:30:00, the guaranteed Flex Consumption default", hostJSONFile, timeout)
	}
	if timeout < 2*budget {
		t.Errorf("%s: functionTimeout %s leaves too little margin over the default EXPORT_INVOCATION_BUDGET %s (config.go): "+
			"want at least twice the budget for the page in flight, its checkpoint and the continuation", hostJSONFile, timeout, budget)
	}
}

// The executable the host starts is the one the build scripts produce.
func TestBuildScriptsProduceTheExecutable(t *testing.T) {
	want := readHost(t).CustomHandler.Description.DefaultExecutablePath
	pkg := readText(t, packageScript)
	m := regexp.MustCompile(`go build [^\n]*-o "\$stage/([^"]+)" \./handler\b`).FindStringSubmatch(pkg)
	if m == nil || m[1] != want {
		t.Errorf("%s: builds ./handler as %v, want \"$stage/%s\" (host.json defaultExecutablePath)", packageScript, m, want)
	}
	if !strings.Contains(pkg, `chmod 0755 "$stage/`+want+`"`) {
		t.Errorf("%s: does not chmod 0755 \"$stage/%s\"", packageScript, want)
	}
	if !strings.Contains(pkg, "GOOS=linux GOARCH=amd64 CGO_ENABLED=0") {
		t.Errorf("%s: the packaged handler must be a static linux/amd64 binary", packageScript)
	}
	if !strings.Contains(pkg, `cp host.json "$stage/"`) || !strings.Contains(pkg, `cp -R functions/* "$stage/"`) {
		t.Errorf("%s: must put host.json and the function folders at the package root", packageScript)
	}
	mk := readText(t, makefile)
	m = regexp.MustCompile(`go build [^\n]*-o \$\(DIST\)/(\S+) \./handler\n`).FindStringSubmatch(strings.ReplaceAll(mk, "$(GO) build", "go build"))
	if m == nil || m[1] != want {
		t.Errorf("%s: `make build` builds ./handler as %v, want $(DIST)/%s", makefile, m, want)
	}
	for _, fn := range readFunctions(t) {
		if fn.Name == want {
			t.Errorf("%s: a function folder named like the executable %q", fn.File, want)
		}
	}
}

func TestFunctionBindingsFitTheHandler(t *testing.T) {
	var httpFns, queueFns []function
	for _, fn := range readFunctions(t) {
		var trigger string
		for _, b := range fn.Bindings {
			if strings.HasSuffix(b.Type, "Trigger") {
				trigger = b.Type
			}
		}
		switch trigger {
		case "httpTrigger":
			httpFns = append(httpFns, fn)
		case "queueTrigger":
			queueFns = append(queueFns, fn)
		default:
			t.Errorf("%s: trigger %q: the handler serves only httpTrigger and queueTrigger functions", fn.File, trigger)
		}
	}

	if len(httpFns) != 1 || httpFns[0].Name != "ExportHttp" {
		t.Fatalf("%s: want exactly one HTTP function, ExportHttp; found %v", functionsDir, httpFns)
	}
	fn := httpFns[0]
	types := func(fn function) []string {
		var out []string
		for _, b := range fn.Bindings {
			out = append(out, b.Type+"/"+b.Direction)
		}
		return out
	}
	// Exactly httpTrigger in + http out, or the host silently switches to the JSON payload mode.
	if got := types(fn); !slices.Equal(got, []string{"httpTrigger/in", "http/out"}) {
		t.Errorf("%s: bindings %v, want exactly [httpTrigger/in http/out] (anything else turns off forwarding)", fn.File, got)
	}
	trigger := fn.Bindings[0]
	// A catch-all (routing happens in httpapi) that cannot produce the worker's
	// path, so no external request reaches POST /ExportWorker through the host.
	if want := "{*path:regex(^(?!" + WorkerFunction + "$).*)}"; trigger.Route != want {
		t.Errorf("%s: route %q, want %q (a catch-all that excludes the queue function's path)", fn.File, trigger.Route, want)
	}
	methods := slices.Clone(trigger.Methods)
	slices.Sort(methods)
	if !slices.Equal(methods, []string{"delete", "get", "post"}) {
		t.Errorf("%s: methods %v, want get, post and delete (kick-off, status, cancel)", fn.File, trigger.Methods)
	}
	if trigger.AuthLevel != "anonymous" {
		t.Errorf("%s: authLevel %q, want anonymous (a function key is not a Bulk Data client credential)", fn.File, trigger.AuthLevel)
	}

	if len(queueFns) != 1 {
		t.Fatalf("%s: want exactly one queue-triggered function, found %d", functionsDir, len(queueFns))
	}
	fn = queueFns[0]
	if fn.Name != WorkerFunction {
		t.Errorf("%s: folder %q, but funchost serves POST /%s (funchost.WorkerFunction)", fn.File, fn.Name, WorkerFunction)
	}
	if len(fn.Bindings) != 1 {
		t.Errorf("%s: %d bindings, want only the queue trigger (output bindings are not used)", fn.File, len(fn.Bindings))
	}
	q := fn.Bindings[0]
	if q.Direction != "in" || q.Name != WorkerBinding {
		t.Errorf("%s: binding name %q direction %q, but funchost reads Data.%s (funchost.WorkerBinding)", fn.File, q.Name, q.Direction, WorkerBinding)
	}
	if want := "%" + queueSetting + "%"; q.QueueName != want {
		t.Errorf("%s: queueName %q, want %q: the trigger must read the app setting the handler enqueues by", fn.File, q.QueueName, want)
	}
	cfg, err := config.Load(func(k string) string {
		return map[string]string{"FHIR_SERVER_URL": "https://fhir.example", "AzureWebJobsStorage": "UseDevelopmentStorage=true",
			"AUTH_MODE": "none", queueSetting: "items-from-the-setting"}[k]
	})
	if err != nil || cfg.Queue != "items-from-the-setting" {
		t.Errorf("with %s=items-from-the-setting the handler's queue is %q (%v): it must enqueue to the queue the trigger polls", queueSetting, cfg.Queue, err)
	}
	if q.Connection != "AzureWebJobsStorage" {
		t.Errorf("%s: connection %q, want AzureWebJobsStorage (the settings the handler and the Bicep use)", fn.File, q.Connection)
	}
}

// The deployed app settings set EXPORT_QUEUE (without it the host cannot
// index the worker function) to the queue the storage module creates, and
// the trigger's connection prefix has a queue endpoint.
func TestBicepSettingsMatchTheBindings(t *testing.T) {
	app := readText(t, functionBicep)
	m := regexp.MustCompile(`(?m)^\s*` + queueSetting + `:\s*(\w+)\s*$`).FindStringSubmatch(app)
	if m == nil {
		t.Fatalf("%s: no %s app setting: the host cannot resolve %%%s%% in the worker's queueName", functionBicep, queueSetting, queueSetting)
	}
	param := m[1]
	if !regexp.MustCompile(`(?m)^param ` + param + ` string\b`).MatchString(app) {
		t.Errorf("%s: EXPORT_QUEUE is set from %q, which is not a string parameter", functionBicep, param)
	}
	if !strings.Contains(app, "AzureWebJobsStorage__queueServiceUri:") {
		t.Errorf("%s: no AzureWebJobsStorage__queueServiceUri: the queue trigger's connection AzureWebJobsStorage has no queue endpoint", functionBicep)
	}

	main := readText(t, mainBicep)
	if !regexp.MustCompile(`(?s)module functionApp [^\n]*\{.*?\n\s*` + param + `: workQueue\n`).MatchString(main) {
		t.Errorf("%s: the functionApp module does not get %s: workQueue", mainBicep, param)
	}
	if !regexp.MustCompile(`(?s)module storage [^\n]*\{.*?\n\s*workQueue: workQueue\n`).MatchString(main) {
		t.Errorf("%s: the storage module does not get workQueue: the queue %s names would not be created", mainBicep, queueSetting)
	}
}

// Local runs under Core Tools read local.settings.json, copied from the
// sample: it must set EXPORT_QUEUE, or the host cannot index the worker
// function, and the handler must accept the settings as they are.
func TestLocalSettingsSampleNamesTheWorkQueue(t *testing.T) {
	var doc struct {
		Values map[string]string `json:"Values"`
	}
	if err := json.Unmarshal([]byte(readText(t, localSettings)), &doc); err != nil {
		t.Fatalf("%s: %v", localSettings, err)
	}
	q := doc.Values[queueSetting]
	if q == "" {
		t.Fatalf("%s: no %s in Values: the host cannot resolve %%%s%% in functions/%s/function.json", localSettings, queueSetting, queueSetting, WorkerFunction)
	}
	cfg, err := config.Load(func(k string) string { return doc.Values[k] })
	if err != nil {
		t.Fatalf("%s: the handler does not start with these settings: %v", localSettings, err)
	}
	if cfg.Queue != q {
		t.Errorf("%s: %s is %q but the handler reads %q", localSettings, queueSetting, q, cfg.Queue)
	}
}

// routeEngine is just enough of the export engine for httpapi to answer.
type routeEngine struct{}

func (routeEngine) KickOff(_ context.Context, req export.Request) (*export.Job, error) {
	return &export.Job{ID: "0123456789abcdef0123456789ab0000000000000000", Request: req}, nil
}
func (routeEngine) Status(context.Context, string, string) (*export.Status, error) {
	return nil, fault.New(fault.NotFound, "no such job")
}
func (routeEngine) Cancel(context.Context, string, string) error { return nil }
func (routeEngine) RestartStalled(context.Context, string) (int, error) {
	return 0, nil
}
func (routeEngine) OpenFile(context.Context, string, string, string) (io.ReadCloser, int64, error) {
	return nil, 0, fault.New(fault.NotFound, "no such file")
}
func (routeEngine) FileURL(context.Context, *export.Job, string, time.Duration) (string, error) {
	return "", fault.New(fault.NotFound, "no such file")
}

// Every function folder has a route in the handler: the queue function's
// path reaches the engine through funchost, and each method of the HTTP
// function reaches an httpapi route (not the mux's 404).
func TestEveryFunctionHasARouteInTheHandler(t *testing.T) {
	proc := &fakeProcessor{}
	none, err := auth.New(auth.Config{Mode: auth.ModeNone})
	if err != nil {
		t.Fatal(err)
	}
	h := New(httpapi.New(routeEngine{}, httpapi.Options{DefaultContainer: "bulk-export", Auth: none}), proc, maxDequeue, nil)
	serve := func(method, target, body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, target, strings.NewReader(body))
		req.Header.Set("Accept", "application/fhir+json")
		req.Header.Set("Prefer", "respond-async")
		if body != "" {
			req.Header.Set("Content-Type", "application/fhir+json")
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	// A representative request per method of the catch-all HTTP function.
	probes := map[string]struct {
		target, body string
		want         int
	}{
		"get":    {"/metadata", "", http.StatusOK},
		"post":   {"/$export", `{"resourceType":"Parameters"}`, http.StatusAccepted},
		"delete": {"/jobs/0123456789abcdef0123456789ab0000000000000000", "", http.StatusAccepted},
	}
	for _, fn := range readFunctions(t) {
		b := fn.Bindings[0]
		switch b.Type {
		case "queueTrigger":
			before := len(proc.calls)
			payload, _ := json.Marshal(map[string]any{
				"Data":     map[string]any{b.Name: `"{\"job\":\"0123456789abcdef0123456789ab0000000000000000\",\"item\":\"plan\"}"`},
				"Metadata": map[string]any{"DequeueCount": "1"},
			})
			rec := serve(http.MethodPost, "/"+fn.Name, string(payload))
			if rec.Code != http.StatusOK || len(proc.calls) != before+1 {
				t.Errorf("%s: POST /%s answered %d and reached the engine %d times; want the worker invocation served",
					fn.File, fn.Name, rec.Code, len(proc.calls)-before)
			}
		case "httpTrigger":
			for _, m := range b.Methods {
				p, ok := probes[strings.ToLower(m)]
				if !ok {
					t.Errorf("%s: method %q has no route in httpapi", fn.File, m)
					continue
				}
				rec := serve(strings.ToUpper(m), p.target, p.body)
				if rec.Code != p.want {
					t.Errorf("%s: %s %s answered %d, want %d from httpapi: %s", fn.File, strings.ToUpper(m), p.target, rec.Code, p.want, bytes.TrimSpace(rec.Body.Bytes()))
				}
			}
		}
	}
}
