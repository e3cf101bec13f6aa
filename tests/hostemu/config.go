package hostemu

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// HostConfig is what the emulator reads from host.json, with the host's
// defaults filled in where a value is absent.
type HostConfig struct {
	Version string
	// FunctionTimeout bounds every invocation; 0 means unbounded ("-1").
	// Default 30 minutes (the Flex Consumption default).
	FunctionTimeout time.Duration

	ExecutablePath   string   // customHandler.description.defaultExecutablePath
	WorkingDirectory string   // customHandler.description.workingDirectory ("" = app root)
	Arguments        []string // customHandler.description.arguments

	EnableForwardingHTTPRequest bool   // customHandler.enableForwardingHttpRequest
	RoutePrefix                 string // extensions.http.routePrefix (default "api")

	Queues QueueSettings // extensions.queues
}

// QueueSettings are extensions.queues with the Storage Queues extension's
// defaults (docs §1.6).
type QueueSettings struct {
	BatchSize          int           // default 16, at most 32
	NewBatchThreshold  int           // default batchSize/2 × cores
	MaxDequeueCount    int           // default 5
	VisibilityTimeout  time.Duration // default 0: a failed message is visible again at once
	MaxPollingInterval time.Duration // default 1 minute
	MessageEncoding    string        // "base64" (default) or "none"
}

// Function is one function folder next to host.json: its name (the folder
// name, case preserved) and the bindings of its function.json, a queue
// trigger's queueName with its %NAME% app settings resolved.
type Function struct {
	Name     string
	Bindings []Binding
}

// Binding is one entry of function.json's bindings.
type Binding struct {
	Type       string   `json:"type"`
	Direction  string   `json:"direction"`
	Name       string   `json:"name"`
	AuthLevel  string   `json:"authLevel"`
	Methods    []string `json:"methods"`
	Route      string   `json:"route"`
	QueueName  string   `json:"queueName"`
	Connection string   `json:"connection"`
	DataType   string   `json:"dataType"`
}

// isForwardedHTTP reports whether the host forwards requests to this function
// as they are: exactly one httpTrigger in and one http out (docs §1.3, the
// host's IsHttpInAndOutFunction). Anything else gets the JSON payload mode.
func (f Function) isForwardedHTTP() bool {
	if len(f.Bindings) != 2 {
		return false
	}
	var in, out int
	for _, b := range f.Bindings {
		switch {
		case strings.EqualFold(b.Type, "httpTrigger") && strings.EqualFold(b.Direction, "in"):
			in++
		case strings.EqualFold(b.Type, "http") && strings.EqualFold(b.Direction, "out"):
			out++
		}
	}
	return in == 1 && out == 1
}

func (f Function) trigger() (Binding, bool) {
	for _, b := range f.Bindings {
		if strings.HasSuffix(strings.ToLower(b.Type), "trigger") {
			return b, true
		}
	}
	return Binding{}, false
}

// hostSettingPrefix starts an app setting that overrides a host.json value:
// AzureFunctionsJobHost__extensions__queues__maxDequeueCount=3.
const hostSettingPrefix = "AzureFunctionsJobHost__"

// applySettingOverrides applies the AzureFunctionsJobHost__<path> app
// settings in env over host.json, as the host's configuration does (keys are
// case-insensitive; a whole number or true/false replaces the value as such,
// anything else as a string).
func applySettingOverrides(doc []byte, env []string) ([]byte, error) {
	var root map[string]any
	if err := json.Unmarshal(doc, &root); err != nil {
		return nil, err
	}
	changed := false
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if len(k) <= len(hostSettingPrefix) || !strings.EqualFold(k[:len(hostSettingPrefix)], hostSettingPrefix) {
			continue
		}
		path := strings.Split(k[len(hostSettingPrefix):], "__")
		node := root
		for i, key := range path {
			for existing := range node {
				if strings.EqualFold(existing, key) {
					key = existing
					break
				}
			}
			if i == len(path)-1 {
				var val any = v
				if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
					val = n
				} else if b, err := strconv.ParseBool(strings.TrimSpace(v)); err == nil {
					val = b
				}
				node[key] = val
				changed = true
				break
			}
			next, ok := node[key].(map[string]any)
			if !ok {
				next = map[string]any{}
				node[key] = next
			}
			node = next
		}
	}
	if !changed {
		return doc, nil
	}
	return json.Marshal(root)
}

// resolveSettings replaces every %NAME% in s with the app setting NAME from
// env (names case-insensitive, as the host's configuration reads them; the
// last of duplicate settings wins, as in the process environment). A name
// without a value is the host's indexing error "'%NAME%' does not resolve
// to a value".
func resolveSettings(s string, env []string) (string, error) {
	var b strings.Builder
	rest := s
	for {
		start := strings.IndexByte(rest, '%')
		if start < 0 {
			b.WriteString(rest)
			return b.String(), nil
		}
		end := strings.IndexByte(rest[start+1:], '%')
		if end < 0 {
			return "", fmt.Errorf("%q has an unpaired %%", s)
		}
		name := rest[start+1 : start+1+end]
		value, ok := "", false
		for _, kv := range env {
			if k, v, _ := strings.Cut(kv, "="); name != "" && strings.EqualFold(k, name) {
				value, ok = v, v != ""
			}
		}
		if !ok {
			return "", fmt.Errorf("'%%%s%%' does not resolve to a value (app setting %s is not set)", name, name)
		}
		b.WriteString(rest[:start])
		b.WriteString(value)
		rest = rest[start+1+end+1:]
	}
}

// readHostJSON parses host.json the way the emulator needs it, with the
// app settings in env that override its values.
func readHostJSON(path string, env []string) (HostConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return HostConfig{}, err
	}
	if b, err = applySettingOverrides(b, env); err != nil {
		return HostConfig{}, fmt.Errorf("host.json: %w", err)
	}
	var raw struct {
		Version         string `json:"version"`
		FunctionTimeout string `json:"functionTimeout"`
		CustomHandler   *struct {
			Description *struct {
				DefaultExecutablePath string   `json:"defaultExecutablePath"`
				WorkingDirectory      string   `json:"workingDirectory"`
				Arguments             []string `json:"arguments"`
			} `json:"description"`
			EnableForwardingHTTPRequest bool `json:"enableForwardingHttpRequest"`
		} `json:"customHandler"`
		Extensions struct {
			HTTP struct {
				RoutePrefix *string `json:"routePrefix"`
			} `json:"http"`
			Queues struct {
				BatchSize          *int   `json:"batchSize"`
				NewBatchThreshold  *int   `json:"newBatchThreshold"`
				MaxDequeueCount    *int   `json:"maxDequeueCount"`
				VisibilityTimeout  string `json:"visibilityTimeout"`
				MaxPollingInterval string `json:"maxPollingInterval"`
				MessageEncoding    string `json:"messageEncoding"`
			} `json:"queues"`
		} `json:"extensions"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return HostConfig{}, fmt.Errorf("host.json: %w", err)
	}
	if raw.Version != "2.0" {
		return HostConfig{}, fmt.Errorf("host.json: version %q, the host needs \"2.0\"", raw.Version)
	}
	if raw.CustomHandler == nil || raw.CustomHandler.Description == nil {
		return HostConfig{}, fmt.Errorf("host.json: customHandler.description is mandatory")
	}
	c := HostConfig{
		Version:                     raw.Version,
		FunctionTimeout:             30 * time.Minute,
		ExecutablePath:              raw.CustomHandler.Description.DefaultExecutablePath,
		WorkingDirectory:            raw.CustomHandler.Description.WorkingDirectory,
		Arguments:                   raw.CustomHandler.Description.Arguments,
		EnableForwardingHTTPRequest: raw.CustomHandler.EnableForwardingHTTPRequest,
		RoutePrefix:                 "api",
	}
	if raw.FunctionTimeout != "" {
		if strings.TrimSpace(raw.FunctionTimeout) == "-1" {
			c.FunctionTimeout = 0
		} else if c.FunctionTimeout, err = parseTimeSpan(raw.FunctionTimeout); err != nil {
			return HostConfig{}, fmt.Errorf("host.json functionTimeout: %w", err)
		}
	}
	if p := raw.Extensions.HTTP.RoutePrefix; p != nil {
		c.RoutePrefix = strings.Trim(*p, "/")
	}
	q := raw.Extensions.Queues
	c.Queues = QueueSettings{BatchSize: 16, MaxDequeueCount: 5, MaxPollingInterval: time.Minute, MessageEncoding: "base64"}
	if q.BatchSize != nil {
		c.Queues.BatchSize = *q.BatchSize
	}
	if c.Queues.BatchSize < 1 || c.Queues.BatchSize > 32 {
		return HostConfig{}, fmt.Errorf("host.json extensions.queues.batchSize %d is outside 1..32", c.Queues.BatchSize)
	}
	c.Queues.NewBatchThreshold = c.Queues.BatchSize / 2 * runtime.NumCPU()
	if q.NewBatchThreshold != nil {
		c.Queues.NewBatchThreshold = *q.NewBatchThreshold
	}
	if q.MaxDequeueCount != nil {
		c.Queues.MaxDequeueCount = *q.MaxDequeueCount
	}
	if c.Queues.NewBatchThreshold < 0 || c.Queues.MaxDequeueCount < 1 {
		return HostConfig{}, fmt.Errorf("host.json extensions.queues: newBatchThreshold %d or maxDequeueCount %d out of range",
			c.Queues.NewBatchThreshold, c.Queues.MaxDequeueCount)
	}
	if q.VisibilityTimeout != "" {
		if c.Queues.VisibilityTimeout, err = parseTimeSpan(q.VisibilityTimeout); err != nil {
			return HostConfig{}, fmt.Errorf("host.json extensions.queues.visibilityTimeout: %w", err)
		}
	}
	if q.MaxPollingInterval != "" {
		if c.Queues.MaxPollingInterval, err = parseTimeSpan(q.MaxPollingInterval); err != nil {
			return HostConfig{}, fmt.Errorf("host.json extensions.queues.maxPollingInterval: %w", err)
		}
	}
	if q.MessageEncoding != "" {
		c.Queues.MessageEncoding = strings.ToLower(q.MessageEncoding)
	}
	if c.Queues.MessageEncoding != "none" && c.Queues.MessageEncoding != "base64" {
		return HostConfig{}, fmt.Errorf("host.json extensions.queues.messageEncoding %q is neither none nor base64", q.MessageEncoding)
	}
	return c, nil
}

// parseTimeSpan reads a .NET TimeSpan as host.json writes it:
// [d.]hh:mm:ss[.fffffff].
func parseTimeSpan(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	var days int
	if d, rest, ok := strings.Cut(s, "."); ok && strings.Count(d, ":") == 0 && strings.Count(rest, ":") == 2 {
		n, err := strconv.Atoi(d)
		if err != nil {
			return 0, fmt.Errorf("%q is not a TimeSpan", s)
		}
		days, s = n, rest
	}
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return 0, fmt.Errorf("%q is not a TimeSpan (hh:mm:ss)", s)
	}
	h, err1 := strconv.Atoi(parts[0])
	m, err2 := strconv.Atoi(parts[1])
	sec, err3 := strconv.ParseFloat(parts[2], 64)
	if err1 != nil || err2 != nil || err3 != nil || h < 0 || m < 0 || m > 59 || sec < 0 || sec >= 60 {
		return 0, fmt.Errorf("%q is not a TimeSpan (hh:mm:ss)", s)
	}
	return time.Duration(days)*24*time.Hour + time.Duration(h)*time.Hour + time.Duration(m)*time.Minute +
		time.Duration(sec*float64(time.Second)), nil
}

// readFunctions reads every <dir>/*/function.json one level deep: the only
// place the host looks for functions.
func readFunctions(root string) ([]Function, error) {
	paths, err := filepath.Glob(filepath.Join(root, "*", "function.json"))
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	var fns []Function
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		var doc struct {
			Bindings []Binding `json:"bindings"`
		}
		if err := json.Unmarshal(b, &doc); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		fns = append(fns, Function{Name: filepath.Base(filepath.Dir(p)), Bindings: doc.Bindings})
	}
	return fns, nil
}

// mergePatch applies an RFC 7386 JSON merge patch to doc.
func mergePatch(doc, patch []byte) ([]byte, error) {
	var d, p any
	if err := json.Unmarshal(doc, &d); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(patch, &p); err != nil {
		return nil, fmt.Errorf("patch: %w", err)
	}
	return json.MarshalIndent(mergeValue(d, p), "", "  ")
}

func mergeValue(target, patch any) any {
	pm, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	tm, ok := target.(map[string]any)
	if !ok {
		tm = map[string]any{}
	}
	for k, v := range pm {
		if v == nil {
			delete(tm, k)
			continue
		}
		tm[k] = mergeValue(tm[k], v)
	}
	return tm
}
