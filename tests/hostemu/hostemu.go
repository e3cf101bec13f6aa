// Package hostemu is an emulation of the documented Azure Functions host
// contract for custom handlers, NOT the real host. Azure Functions Core Tools
// cannot run here, so the tests prove the handler's Functions mode against
// this stand-in, written from /work/shared/docs/azure-functions-and-storage.md
// (§1 protocol, §2 packaging, §6 testing).
//
// What it emulates, from a deployable app.zip:
//
//   - configuration: host.json, with AzureFunctionsJobHost__<path> app
//     settings (from Env) overriding its values, and every function.json,
//     with %NAME% in a queue trigger's queueName resolved from the app
//     settings (a name without a value fails Start, as the host fails to
//     index the function);
//   - packaging: host.json at the zip root, function folders one level deep,
//     the executable at customHandler.description.defaultExecutablePath with
//     mode 0755 in the zip;
//   - the worker process: started in the app root with
//     FUNCTIONS_CUSTOMHANDLER_PORT and FUNCTIONS_HTTPWORKER_PORT set to a free
//     loopback port and AzureWebJobsStorage; readiness is the first HTTP answer
//     of any status to GET / (probed every 25 ms for up to 30 s); its stdout and
//     stderr lines go to Logf; a process that exits with a non-zero code is
//     restarted (three crashes within 30 minutes shut the emulated host down),
//     one that exits with 0 is not;
//   - HTTP forwarding (§1.3, §1.3a) for a function whose bindings are exactly
//     httpTrigger + http with route "{*path}", or "{*path:regex(...)}" whose
//     .NET regex (case-insensitive) must match the path below the prefix (an
//     empty one never does), else the host answers 404: original method and
//     path (with the routePrefix), the query rebuilt (repeated keys comma-joined, values
//     re-encoded, an unencoded '+' read as a space), the body only when the
//     request has a Content-Length, Content-Encoding dropped, the invocation
//     headers added; the answer is passed back untouched;
//   - queue triggers (§1.4–§1.6) on Azure Storage queues (Azurite): batchSize
//     per poll, up to batchSize+newBatchThreshold invocations in flight, an
//     idle back-off up to maxPollingInterval, messages hidden for 10 minutes
//     and renewed while an invocation runs, the JSON payload built exactly as
//     §1.4 shows, success only for a 2xx application/json body that parses as
//     {Outputs, Logs, ReturnValue}; delete on success, poison at
//     maxDequeueCount, otherwise visible again after visibilityTimeout;
//     messageEncoding base64 decodes first and poisons undecodable text;
//   - functionTimeout per invocation: on expiry the invocation fails and the
//     worker process is killed and restarted, as the host does.
//
// What it does not emulate: the real ASP.NET forwarding code (header
// casing/order, exact percent-encoding choices, whether Host is rewritten:
// the client's Host is kept here; a catch-all value is the decoded path, so
// %2F counts as '/'), authLevel keys, route templates other than a
// catch-all with at most one regex constraint, the JSON payload mode for HTTP functions, output bindings,
// other trigger types, identity-based connections (only connection strings),
// the periodic GET / pings after start-up, dynamic concurrency, scale-out,
// Application Insights, and the host's own storage use (locks, timers).
package hostemu

import (
	"archive/zip"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"

	"github.com/azfhir/bulkexport/handler/devstorage"
)

// HostVersion is the version the emulator announces in
// X-Azure-Functions-HostVersion and User-Agent.
const HostVersion = "4.1037.0.0"

// developmentStorage is UseDevelopmentStorage=true spelled out (the Go SDK
// rejects the short form), the same account the handler expands it to.
const developmentStorage = devstorage.ConnectionString

// Options configure an emulated host.
type Options struct {
	// AppZip is the deployment package (dist/app.zip).
	AppZip string
	// Env is the app settings, passed to the handler as its whole environment
	// (add os.Environ() if the handler needs it). The emulator appends
	// FUNCTIONS_CUSTOMHANDLER_PORT, FUNCTIONS_HTTPWORKER_PORT and
	// AzureWebJobsStorage.
	Env []string
	// StorageConnectionString is AzureWebJobsStorage: the queue triggers poll
	// this account and the handler gets it as AzureWebJobsStorage.
	StorageConnectionString string
	// Logf receives the emulator's own lines and the handler's output. Nil
	// discards them.
	Logf func(format string, args ...any)

	// HostJSONPatch is a test knob, not host behaviour: an RFC 7386 JSON merge
	// patch applied to the unpacked host.json before anything reads it, for
	// example {"extensions":{"queues":{"visibilityTimeout":"00:00:01"}}}. The
	// handler reads the patched file too, as it would read a deployed one.
	HostJSONPatch string
	// StartTimeout is the readiness window (default 30 s, the host's).
	StartTimeout time.Duration
}

// Invocation records one queue-triggered invocation.
type Invocation struct {
	Function     string
	InvocationID string
	MessageID    string
	Text         string // the message text as stored on the queue
	DequeueCount int64
	Status       int    // the handler's HTTP status; 0 if none came
	Succeeded    bool   // what the host concluded
	Err          string // why it failed
	Logs         []string
	Started      time.Time
	Duration     time.Duration
}

// Stats are the emulator's counters.
type Stats struct {
	Invocations int // queue-triggered invocations sent to the handler
	Succeeded   int
	Failed      int
	Poisoned    int // messages moved to <queue>-poison
	Restarts    int // handler process restarts
	Timeouts    int // invocations that hit functionTimeout
	Forwarded   int // HTTP requests forwarded to the handler
}

// Host is a running emulated host.
type Host struct {
	opts      Options
	logf      func(string, ...any)
	dir       string // temp dir holding the unpacked app
	appRoot   string
	cfg       HostConfig
	functions []Function
	httpFn    *Function
	route     catchAll // httpFn's route
	exe       string
	workDir   string

	front    *http.Server
	frontURL string
	client   *http.Client // to the worker, no redirects, no decompression
	queues   *azqueue.ServiceClient

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu          sync.Mutex
	cur         *worker
	dead        error // set when the emulated host has given up on the worker
	crashes     []time.Time
	stats       Stats
	invocations []Invocation
	closed      bool
}

// Start unpacks the app, starts the handler, waits until it answers, and
// starts the front door and the queue listeners.
func Start(ctx context.Context, o Options) (*Host, error) {
	if o.StartTimeout <= 0 {
		o.StartTimeout = 30 * time.Second
	}
	h := &Host{opts: o, logf: o.Logf}
	if h.logf == nil {
		h.logf = func(string, ...any) {}
	}
	dir, err := os.MkdirTemp("", "hostemu-")
	if err != nil {
		return nil, err
	}
	h.dir = dir
	h.appRoot = filepath.Join(dir, "wwwroot")
	ok := false
	defer func() {
		if !ok {
			h.Close()
		}
	}()
	if err := h.load(); err != nil {
		return nil, err
	}
	if o.StorageConnectionString == "" {
		return nil, errors.New("hostemu: StorageConnectionString (AzureWebJobsStorage) is required")
	}
	cs := o.StorageConnectionString
	if strings.EqualFold(strings.ReplaceAll(cs, " ", ""), "UseDevelopmentStorage=true") {
		cs = developmentStorage
	}
	if h.queues, err = azqueue.NewServiceClientFromConnectionString(cs, nil); err != nil {
		return nil, fmt.Errorf("hostemu: AzureWebJobsStorage: %w", err)
	}
	h.client = &http.Client{
		Transport: &http.Transport{
			Proxy:                 nil,
			DisableCompression:    true, // pass bodies and Content-Encoding through as they are
			MaxIdleConnsPerHost:   64,
			ResponseHeaderTimeout: 230 * time.Second, // the front end's limit for HTTP responses
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	h.ctx, h.cancel = context.WithCancel(context.WithoutCancel(ctx))

	// The front door listens before the worker starts, so its URL is known.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h.frontURL = "http://" + ln.Addr().String()
	h.front = &http.Server{Handler: http.HandlerFunc(h.serveFront), ReadHeaderTimeout: 30 * time.Second}
	go h.front.Serve(ln)

	first := make(chan error, 1)
	h.wg.Add(1)
	go h.supervise(first)
	select {
	case err := <-first:
		if err != nil {
			return nil, err
		}
	case <-ctx.Done():
		return nil, ctx.Err()
	}

	for _, fn := range h.functions {
		b, ok := fn.trigger()
		if ok && strings.EqualFold(b.Type, "queueTrigger") {
			h.wg.Add(1)
			go h.listen(fn, b)
		}
	}
	ok = true
	return h, nil
}

// load unpacks the zip and reads host.json and the function folders.
func (h *Host) load() error {
	zr, err := zip.OpenReader(h.opts.AppZip)
	if err != nil {
		return fmt.Errorf("hostemu: open the package: %w", err)
	}
	defer zr.Close()
	entries := map[string]*zip.File{}
	for _, f := range zr.File {
		name := path.Clean(strings.TrimPrefix(f.Name, "./"))
		if name == "." || strings.HasPrefix(name, "../") || path.IsAbs(name) {
			return fmt.Errorf("hostemu: the package has an unsafe entry %q", f.Name)
		}
		entries[name] = f
		if err := unzipEntry(f, filepath.Join(h.appRoot, filepath.FromSlash(name))); err != nil {
			return fmt.Errorf("hostemu: unpack %s: %w", f.Name, err)
		}
	}
	if _, ok := entries["host.json"]; !ok {
		return errors.New("hostemu: the package has no host.json at its root (the host would find no app)")
	}
	hostJSON := filepath.Join(h.appRoot, "host.json")
	if h.opts.HostJSONPatch != "" {
		b, err := os.ReadFile(hostJSON)
		if err != nil {
			return err
		}
		if b, err = mergePatch(b, []byte(h.opts.HostJSONPatch)); err != nil {
			return fmt.Errorf("hostemu: HostJSONPatch: %w", err)
		}
		if err := os.WriteFile(hostJSON, b, 0o644); err != nil {
			return err
		}
	}
	if h.cfg, err = readHostJSON(hostJSON, h.opts.Env); err != nil {
		return fmt.Errorf("hostemu: %w", err)
	}
	if h.functions, err = readFunctions(h.appRoot); err != nil {
		return fmt.Errorf("hostemu: %w", err)
	}
	if len(h.functions) == 0 {
		return errors.New("hostemu: no function folders (<name>/function.json) next to host.json")
	}

	// The executable: relative to the working directory, itself relative to
	// the app root. The host would fall back to PATH for a missing file; a
	// package must carry its binary, so the emulator refuses instead.
	h.workDir = h.appRoot
	if wd := h.cfg.WorkingDirectory; wd != "" {
		if filepath.IsAbs(wd) {
			h.workDir = wd
		} else {
			h.workDir = filepath.Join(h.appRoot, wd)
		}
	}
	if h.cfg.ExecutablePath == "" {
		return errors.New("hostemu: host.json customHandler.description.defaultExecutablePath is empty")
	}
	h.exe = filepath.Join(h.workDir, h.cfg.ExecutablePath)
	rel, err := filepath.Rel(h.appRoot, h.exe)
	if err != nil || strings.HasPrefix(rel, "..") {
		return fmt.Errorf("hostemu: the executable %s is outside the package", h.exe)
	}
	entry, ok := entries[filepath.ToSlash(rel)]
	if !ok {
		return fmt.Errorf("hostemu: the package has no %s (defaultExecutablePath %q): the host would fail to start the process",
			filepath.ToSlash(rel), h.cfg.ExecutablePath)
	}
	if m := entry.Mode(); !m.IsRegular() || m.Perm() != 0o755 {
		return fmt.Errorf("hostemu: %s has mode %v in the package, want -rwxr-xr-x (0755)", entry.Name, m)
	}

	for i, fn := range h.functions {
		b, ok := fn.trigger()
		if !ok {
			return fmt.Errorf("hostemu: function %s has no trigger binding", fn.Name)
		}
		switch {
		case strings.EqualFold(b.Type, "httpTrigger"):
			if !h.cfg.EnableForwardingHTTPRequest || !fn.isForwardedHTTP() {
				return fmt.Errorf("hostemu: function %s would get the JSON payload mode for HTTP (bindings not exactly httpTrigger+http, "+
					"or enableForwardingHttpRequest off): not emulated", fn.Name)
			}
			route, err := parseRoute(b.Route)
			if err != nil {
				return fmt.Errorf("hostemu: function %s has route %q: %w", fn.Name, b.Route, err)
			}
			h.route = route
			if h.httpFn != nil {
				return fmt.Errorf("hostemu: functions %s and %s both catch every route", h.httpFn.Name, fn.Name)
			}
			h.httpFn = &h.functions[i]
		case strings.EqualFold(b.Type, "queueTrigger"):
			if len(fn.Bindings) != 1 {
				return fmt.Errorf("hostemu: function %s has bindings besides its queue trigger: not emulated", fn.Name)
			}
			if b.QueueName == "" || b.Name == "" {
				return fmt.Errorf("hostemu: function %s: queueTrigger needs name and queueName", fn.Name)
			}
			// The host resolves %NAME% in queueName from the app settings
			// when it indexes the function; an unresolved name keeps the
			// function from loading. The real host would run the other
			// functions and report this one in error; a package whose
			// worker never runs is of no use to a test, so Start fails.
			q, err := resolveSettings(b.QueueName, h.opts.Env)
			if err != nil {
				return fmt.Errorf("hostemu: Error indexing method 'Functions.%s': %w", fn.Name, err)
			}
			h.functions[i].Bindings[0].QueueName = q
		default:
			return fmt.Errorf("hostemu: function %s has a %s trigger: not emulated", fn.Name, b.Type)
		}
	}
	return nil
}

func unzipEntry(f *zip.File, dst string) error {
	if f.FileInfo().IsDir() {
		return os.MkdirAll(dst, 0o755)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	rc, err := f.Open()
	if err != nil {
		return err
	}
	defer rc.Close()
	perm := f.Mode().Perm()
	if perm == 0 {
		perm = 0o644
	}
	if perm&0o111 != 0 {
		// An executable must have no write descriptor open anywhere when it
		// is started, or execve fails with ETXTBSY ("text file busy", Go
		// issue 22315). Ours is O_CLOEXEC and closed below, but a child that
		// another goroutine forks while it is open (a parallel test starting
		// its handler) gets a copy that lives until the child calls execve;
		// if that has not happened yet when this file is started, the start
		// fails. syscall.forkExec, which os/exec uses, holds ForkLock for
		// writing across the fork, so holding it for reading from open to
		// close means no fork happens while the descriptor exists and no
		// child can inherit it. Forks wait at most for one file's write.
		syscall.ForkLock.RLock()
		defer syscall.ForkLock.RUnlock()
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, rc); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, perm) // exactly the zip's mode, whatever the umask
}

// URL is the front door: send HTTP requests here as to the Function App.
func (h *Host) URL() string { return h.frontURL }

// AppRoot is the folder the package was unpacked to (the handler's working
// directory unless host.json says otherwise).
func (h *Host) AppRoot() string { return h.appRoot }

// Config is host.json as the emulator read it (after HostJSONPatch).
func (h *Host) Config() HostConfig { return h.cfg }

// Functions are the function folders found next to host.json.
func (h *Host) Functions() []Function { return append([]Function(nil), h.functions...) }

// QueueName is the queue the named queue-triggered function polls.
func (h *Host) QueueName(function string) string {
	for _, fn := range h.functions {
		if fn.Name == function {
			if b, ok := fn.trigger(); ok {
				return b.QueueName
			}
		}
	}
	return ""
}

// Stats returns a snapshot of the counters.
func (h *Host) Stats() Stats {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stats
}

// Invocations returns every queue-triggered invocation so far, in the order
// they finished.
func (h *Host) Invocations() []Invocation {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Invocation(nil), h.invocations...)
}

// Err reports why the emulated host stopped serving, if it did (the worker
// exited with 0, or crashed three times within 30 minutes).
func (h *Host) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.dead
}

// KillWorker kills the handler process, as a crash would (a test hook). The
// emulated host restarts it.
func (h *Host) KillWorker() {
	h.mu.Lock()
	w := h.cur
	h.mu.Unlock()
	if w != nil {
		w.kill()
	}
}

// Close stops the listeners and the front door, stops the handler (SIGTERM,
// then SIGKILL after 10 s) and removes the unpacked app.
func (h *Host) Close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	w := h.cur
	h.mu.Unlock()
	if h.cancel != nil {
		h.cancel()
	}
	if h.front != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = h.front.Shutdown(sctx)
		cancel()
	}
	if w != nil {
		w.stop(10 * time.Second)
	}
	h.wg.Wait()
	if h.client != nil {
		h.client.CloseIdleConnections()
	}
	if h.dir != "" {
		_ = os.RemoveAll(h.dir)
	}
}

func (h *Host) isClosed() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closed
}

// workerURL waits until a worker is ready and returns its base URL.
func (h *Host) workerURL(ctx context.Context) (string, error) {
	for {
		h.mu.Lock()
		w, dead := h.cur, h.dead
		h.mu.Unlock()
		if dead != nil {
			return "", dead
		}
		if w != nil && w.isReady() && !w.hasExited() {
			return w.base, nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-h.ctx.Done():
			return "", errors.New("host is shutting down")
		case <-time.After(25 * time.Millisecond):
		}
	}
}
