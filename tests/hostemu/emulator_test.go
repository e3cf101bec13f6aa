package hostemu

// Tests of the emulator itself: its payloads against the documented ones,
// and its forwarding, settlement and process rules against a fake handler
// (this test binary, see fake_handler_test.go).

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"

	"github.com/azfhir/bulkexport/tests/testproc"
)

func TestRebuildQueryMergesAndReencodes(t *testing.T) {
	cases := []struct {
		raw, want string
		decoded   map[string]string
	}{
		{"", "", nil},
		{"a=1&a=2", "a=1%2C2", map[string]string{"a": "1,2"}},
		{"_type=Patient&_TYPE=Observation", "_type=Patient%2CObservation", map[string]string{"_type": "Patient,Observation"}},
		{"_outputFormat=application/fhir+ndjson", "_outputFormat=application%2Ffhir%20ndjson",
			map[string]string{"_outputFormat": "application/fhir ndjson"}},
		{"_since=2024-07-01T02:00:00.000%2B02:00", "_since=2024-07-01T02%3A00%3A00.000%2B02%3A00",
			map[string]string{"_since": "2024-07-01T02:00:00.000+02:00"}},
		{"flag&x=%zz", "flag=&x=%25zz", map[string]string{"flag": "", "x": "%zz"}},
	}
	for _, c := range cases {
		got := RebuildQuery(c.raw)
		if got != c.want {
			t.Errorf("RebuildQuery(%q) = %q, want %q", c.raw, got, c.want)
		}
		v, err := url.ParseQuery(got)
		if err != nil {
			t.Errorf("RebuildQuery(%q) = %q does not parse: %v", c.raw, got, err)
		}
		for k, want := range c.decoded {
			if len(v[k]) != 1 || v[k][0] != want {
				t.Errorf("RebuildQuery(%q): %s = %q, want one value %q", c.raw, k, v[k], want)
			}
		}
	}
}

func TestRouteConstraintIsTheHosts(t *testing.T) {
	r, err := parseRoute("{*path:regex(^(?!ExportWorker$).*)}")
	if err != nil {
		t.Fatal(err)
	}
	for value, want := range map[string]bool{
		"ExportWorker": false, "exportworker": false, "EXPORTWORKER": false, "": false,
		"ExportWorker/": true, "ExportWorkers": true, "jobs/ExportWorker": true, "$export": true, "Patient/$export": true,
	} {
		if got := r.accepts(value); got != want {
			t.Errorf("route value %q accepted = %v, want %v", value, got, want)
		}
	}
	// .NET regex syntax, with braces doubled in the template; not anchored.
	r, err = parseRoute(`{*rest:regex(\d{{3}})}`)
	if err != nil {
		t.Fatal(err)
	}
	if !r.accepts("a123b") || r.accepts("a12b") {
		t.Errorf(`regex(\d{{3}}) does not match as \d{3} anywhere in the value`)
	}
	if r, err := parseRoute("{*path}"); err != nil || !r.accepts("") || !r.accepts("anything/at/all") {
		t.Errorf("{*path}: %v; want every value accepted", err)
	}
	for _, bad := range []string{"api/{*path}", "{path}", "{*path:int}", "{*path:regex(a):minlength(2)}", "{*:regex(a)}", "{*path:regex([)}"} {
		if _, err := parseRoute(bad); err == nil {
			t.Errorf("parseRoute(%q) succeeded; it is not an emulated route", bad)
		}
	}
}

func TestParseTimeSpan(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"00:00:30": 30 * time.Second, "00:30:00": 30 * time.Minute, "1.02:00:00": 26 * time.Hour, "00:00:00.5": 500 * time.Millisecond,
	} {
		if got, err := parseTimeSpan(in); err != nil || got != want {
			t.Errorf("parseTimeSpan(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "30s", "00:61:00", "x:00:00"} {
		if _, err := parseTimeSpan(bad); err == nil {
			t.Errorf("parseTimeSpan(%q) succeeded", bad)
		}
	}
}

func TestBindingExpressionsResolveFromAppSettings(t *testing.T) {
	env := []string{"EXPORT_QUEUE=first", "Region=eu", "export_queue=work-items", "EMPTY="}
	for in, want := range map[string]string{
		"%EXPORT_QUEUE%":         "work-items", // case-insensitive, the last setting wins
		"jobs-%region%-%Region%": "jobs-eu-eu",
		"plain-name":             "plain-name",
	} {
		if got, err := resolveSettings(in, env); err != nil || got != want {
			t.Errorf("resolveSettings(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"%MISSING%":  "'%MISSING%' does not resolve to a value",
		"%EMPTY%":    "'%EMPTY%' does not resolve to a value",
		"half-%open": "unpaired",
	} {
		if _, err := resolveSettings(in, env); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("resolveSettings(%q) error %v, want one containing %q", in, err, want)
		}
	}
}

func TestAppSettingsOverrideHostJSON(t *testing.T) {
	doc := []byte(`{"version":"2.0","extensions":{"queues":{"maxDequeueCount":5,"visibilityTimeout":"00:00:30"}}}`)
	got, err := applySettingOverrides(doc, []string{
		"PATH=/bin",
		"AzureFunctionsJobHost__extensions__queues__maxDequeueCount=2",
		"azurefunctionsjobhost__Extensions__Queues__visibilityTimeout=00:00:01",
		"AzureFunctionsJobHost__functionTimeout=00:10:00",
	})
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	json.Unmarshal(got, &v)
	q := v["extensions"].(map[string]any)["queues"].(map[string]any)
	if q["maxDequeueCount"] != 2.0 || q["visibilityTimeout"] != "00:00:01" || v["functionTimeout"] != "00:10:00" {
		t.Errorf("overridden host.json: %s", got)
	}
}

// The emulator's payload for the documented example message is the §1.4
// example itself (the same fixture the handler's unit tests decode), except
// for the per-invocation sys.UtcNow and sys.RandGuid.
func TestQueuePayloadIsTheDocumentedExample(t *testing.T) {
	want, err := os.ReadFile("../../handler/internal/funchost/testdata/queue-doc-example.json")
	if err != nil {
		t.Fatal(err)
	}
	at := func(s string) *time.Time { ts, _ := time.Parse(time.RFC3339, s); return &ts }
	got, err := BuildQueuePayload("ExportWorker", "workItem", `{"job":"01JD8Z6Q","type":"Observation","part":3}`,
		&azqueue.DequeuedMessage{
			DequeueCount: to.Ptr[int64](2), MessageID: to.Ptr("9b1c2f4e-6a1d-4c1e-9d55-0f3a2b7c8e10"),
			PopReceipt:    to.Ptr("AgAAAAMAAAAAAAAAx1q3Zk8A2wE="),
			InsertionTime: at("2026-11-27T10:15:02Z"), ExpirationTime: at("2026-12-04T10:15:02Z"),
			TimeNextVisible: at("2026-11-27T10:25:40Z"),
		}, time.Date(2026, 11, 27, 10, 15, 40, 123456700, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	var g, w map[string]map[string]any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatal(err)
	}
	gsys, wsys := g["Metadata"]["sys"].(map[string]any), w["Metadata"]["sys"].(map[string]any)
	if gsys["MethodName"] != wsys["MethodName"] || gsys["UtcNow"] != wsys["UtcNow"] {
		t.Errorf("sys = %v, want MethodName and UtcNow of %v", gsys, wsys)
	}
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(gsys["RandGuid"].(string)) {
		t.Errorf("sys.RandGuid %v is not a GUID", gsys["RandGuid"])
	}
	delete(g["Metadata"], "sys")
	delete(w["Metadata"], "sys")
	if !reflect.DeepEqual(g, w) {
		gj, _ := json.MarshalIndent(g, "", "  ")
		wj, _ := json.MarshalIndent(w, "", "  ")
		t.Errorf("payload differs from the documented example\ngot:  %s\nwant: %s", gj, wj)
	}
}

func TestStartRejectsABrokenPackage(t *testing.T) {
	opts := func(zip string) Options {
		return Options{AppZip: zip, StorageConnectionString: "UseDevelopmentStorage=true",
			Env: []string{fakeHandlerEnv + "=1", fakeQueueSetting + "=fake-items"}}
	}
	ctx := context.Background()
	noSetting := opts(fakeApp(t, 0o755, true))
	noSetting.Env = []string{fakeHandlerEnv + "=1"}
	if _, err := Start(ctx, noSetting); err == nil || !strings.Contains(err.Error(), "Functions."+fakeQueueFunction) ||
		!strings.Contains(err.Error(), "'%"+fakeQueueSetting+"%' does not resolve to a value") {
		t.Errorf("queueName %%%s%% without the app setting: Start error %v, want the host's indexing error naming the function and the setting",
			fakeQueueSetting, err)
	}
	if _, err := Start(ctx, opts(fakeApp(t, 0o644, true))); err == nil || !strings.Contains(err.Error(), "0755") {
		t.Errorf("a handler without its exec bit: Start error %v, want one about mode 0755", err)
	}
	if _, err := Start(ctx, opts(fakeApp(t, 0o755, false))); err == nil || !strings.Contains(err.Error(), "has no handler") {
		t.Errorf("a package without its handler: Start error %v, want one naming the missing handler", err)
	}
	nested := t.TempDir() + "/nested.zip"
	writeZip(t, nested, map[string]zipEntry{"app/host.json": {data: []byte(fakeHostJSON), mode: 0o644}})
	if _, err := Start(ctx, opts(nested)); err == nil || !strings.Contains(err.Error(), "no host.json at its root") {
		t.Errorf("host.json in a subfolder: Start error %v, want one about host.json at the root", err)
	}
}

// startFake starts the fake handler's package on a fresh queue.
func startFake(t *testing.T, cs, hostPatch string) (*Host, *azqueue.QueueClient) {
	t.Helper()
	queue := "fake-" + testproc.RandomSuffix()
	h := startHost(t, Options{
		AppZip: fakeApp(t, 0o755, true), Env: []string{fakeHandlerEnv + "=1", fakeQueueSetting + "=" + queue},
		StorageConnectionString: cs, HostJSONPatch: hostPatch,
	})
	if got := h.QueueName(fakeQueueFunction); got != queue {
		t.Fatalf("the queue trigger polls %q, want %q from %%%s%%", got, queue, fakeQueueSetting)
	}
	svc, err := azqueue.NewServiceClientFromConnectionString(cs, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{queue, queue + "-poison"} {
		t.Cleanup(func() { _, _ = svc.DeleteQueue(context.Background(), name, nil) })
	}
	q := svc.NewQueueClient(queue)
	if _, err := q.Create(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	return h, q
}

func enqueue(t *testing.T, q *azqueue.QueueClient, text string) string {
	t.Helper()
	resp, err := q.EnqueueMessage(context.Background(), text, nil)
	if err != nil {
		t.Fatal(err)
	}
	return *resp.Messages[0].MessageID
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func byMessage(h *Host) map[string][]Invocation {
	out := map[string][]Invocation{}
	for _, inv := range h.Invocations() {
		out[inv.MessageID] = append(out[inv.MessageID], inv)
	}
	return out
}

func TestFrontDoorForwardsLikeTheHost(t *testing.T) {
	t.Parallel()
	cs := integration(t)
	h, _ := startFake(t, cs, "")
	front, _ := url.Parse(h.URL())
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	do := func(req *http.Request) (*http.Response, echoed) {
		t.Helper()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e echoed
		if resp.StatusCode == http.StatusTeapot {
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				t.Fatal(err)
			}
		}
		return resp, e
	}

	req, _ := http.NewRequest(http.MethodGet, h.URL()+
		"/Patient/$export?_type=Patient&_type=Observation&_outputFormat=application/fhir+ndjson&_since=2024-01-01T00:00:00%2B02:00", nil)
	req.Header.Set("X-Client", "yes")
	req.Header.Set("Content-Encoding", "gzip")
	req.Header.Set("User-Agent", "bulk-client/1")
	resp, e := do(req)
	if resp.StatusCode != http.StatusTeapot || resp.Header.Get("X-Fake") != "kept" {
		t.Fatalf("status %d, X-Fake %q: the handler's answer must come back untouched", resp.StatusCode, resp.Header.Get("X-Fake"))
	}
	q, _ := url.ParseQuery(e.RawQuery)
	if e.Method != "GET" || e.Path != "/Patient/$export" {
		t.Errorf("forwarded %s %s, want GET /Patient/$export", e.Method, e.Path)
	}
	if got := q["_type"]; len(got) != 1 || got[0] != "Patient,Observation" {
		t.Errorf("_type arrived as %q, want one comma-joined value", got)
	}
	if got := q.Get("_outputFormat"); got != "application/fhir ndjson" {
		t.Errorf("_outputFormat arrived as %q, want the unencoded + read as a space", got)
	}
	if got := q.Get("_since"); got != "2024-01-01T00:00:00+02:00" {
		t.Errorf("_since arrived as %q", got)
	}
	if strings.Contains(e.RawQuery, ":") {
		t.Errorf("raw query %q keeps a ':' the host re-encodes", e.RawQuery)
	}
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	if !uuid.MatchString(e.Header.Get("X-Azure-Functions-InvocationId")) || e.Header.Get("X-Azure-Functions-HostVersion") == "" ||
		!strings.HasPrefix(e.Header.Get("User-Agent"), "Azure-Functions-Host/") {
		t.Errorf("invocation headers missing: %v", e.Header)
	}
	if e.Header.Get("X-Client") != "yes" || e.Header.Get("Content-Encoding") != "" || e.Host != front.Host {
		t.Errorf("headers: X-Client %q Content-Encoding %q Host %q; want the client's header, no Content-Encoding, the front door's Host",
			e.Header.Get("X-Client"), e.Header.Get("Content-Encoding"), e.Host)
	}

	req, _ = http.NewRequest(http.MethodPost, h.URL()+"/$export", strings.NewReader(`{"resourceType":"Parameters"}`))
	_, e = do(req)
	if e.Body != `{"resourceType":"Parameters"}` || e.ContentLength != int64(len(e.Body)) {
		t.Errorf("a body with Content-Length arrived as %q (length %d)", e.Body, e.ContentLength)
	}
	pr, pw := io.Pipe()
	go func() { io.WriteString(pw, `{"resourceType":"Parameters"}`); pw.Close() }()
	req, _ = http.NewRequest(http.MethodPost, h.URL()+"/$export", pr) // no length: sent chunked
	_, e = do(req)
	if e.Body != "" {
		t.Errorf("a chunked body was forwarded (%q); the host drops it", e.Body)
	}

	req, _ = http.NewRequest(http.MethodPut, h.URL()+"/jobs/x", strings.NewReader("x"))
	if resp, _ := do(req); resp.StatusCode != http.StatusNotFound {
		t.Errorf("PUT (not in methods) answered %d, want 404 from the host", resp.StatusCode)
	}
	req, _ = http.NewRequest(http.MethodGet, h.URL()+"/redirect", nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/elsewhere" || string(body) != "moved" {
		t.Errorf("a 3xx came back as %d Location %q body %q; the host passes it through without following", resp.StatusCode, resp.Header.Get("Location"), body)
	}

	// The route's constraint keeps the queue function's path, in any case,
	// and the empty path from the handler; a longer path still matches.
	for _, p := range []string{"/" + fakeQueueFunction, "/" + strings.ToLower(fakeQueueFunction), "/"} {
		req, _ = http.NewRequest(http.MethodPost, h.URL()+p, strings.NewReader(`{}`))
		if resp, _ := do(req); resp.StatusCode != http.StatusNotFound {
			t.Errorf("POST %s answered %d, want 404 from the host (the route excludes it)", p, resp.StatusCode)
		}
	}
	req, _ = http.NewRequest(http.MethodGet, h.URL()+"/"+fakeQueueFunction+"s", nil)
	if resp, e := do(req); resp.StatusCode != http.StatusTeapot || e.Path != "/"+fakeQueueFunction+"s" {
		t.Errorf("GET /%ss answered %d (path %q), want it forwarded", fakeQueueFunction, resp.StatusCode, e.Path)
	}
	if got := h.Stats().Forwarded; got != 5 {
		t.Errorf("Forwarded = %d, want 5 (the PUT and the excluded paths stop at the host)", got)
	}
}

func TestQueueTriggerPayloadAndSettlement(t *testing.T) {
	t.Parallel()
	cs := integration(t)
	h, q := startFake(t, cs, "") // maxDequeueCount 3, visibilityTimeout 0
	okText := `{"mode":"ok","job":"01JD8Z6Q","part":3,"list":[1,2],"obj":{"a":1},"Id":"spoofed","note":"a<b&c"}`
	ids := map[string]string{}
	for _, mode := range []string{"fail", "plain", "empty", "failthenok"} {
		ids[mode] = enqueue(t, q, `{"mode":"`+mode+`"}`)
	}
	ids["ok"] = enqueue(t, q, okText)

	settled := func() bool {
		s := h.Stats()
		return s.Poisoned == 3 && s.Succeeded == 2
	}
	waitUntil(t, 60*time.Second, "three poisoned and two successful messages", settled)
	// Nothing more can be delivered once the work queue holds no message,
	// visible or not (a success is counted before its message is deleted).
	waitUntil(t, 30*time.Second, "the work queue to be empty", func() bool {
		p, err := q.GetProperties(context.Background(), nil)
		return err == nil && p.ApproximateMessagesCount != nil && *p.ApproximateMessagesCount == 0
	})
	inv := byMessage(h)
	for mode, want := range map[string]int{"ok": 1, "fail": 3, "plain": 3, "empty": 3, "failthenok": 3} {
		got := inv[ids[mode]]
		if len(got) != want {
			t.Errorf("%s: %d invocations, want %d", mode, len(got), want)
			continue
		}
		for i, x := range got {
			if x.DequeueCount != int64(i+1) {
				t.Errorf("%s: invocation %d had DequeueCount %d", mode, i+1, x.DequeueCount)
			}
			wantOK := mode == "ok" || (mode == "failthenok" && i == 2)
			if x.Succeeded != wantOK {
				t.Errorf("%s: invocation %d succeeded=%v (%s), want %v", mode, i+1, x.Succeeded, x.Err, wantOK)
			}
		}
	}
	if e := inv[ids["plain"]][0].Err; !strings.Contains(e, "text/plain") {
		t.Errorf("a 2xx text/plain answer failed with %q, want the Content-Type named", e)
	}
	if e := inv[ids["empty"]][0].Err; !strings.Contains(e, "empty") {
		t.Errorf("a 2xx empty answer failed with %q", e)
	}

	// The poison queue holds the three texts.
	pq := h.queues.NewQueueClient(h.QueueName(fakeQueueFunction) + "-poison")
	peek, err := pq.PeekMessages(context.Background(), &azqueue.PeekMessagesOptions{NumberOfMessages: to.Ptr[int32](32)})
	if err != nil {
		t.Fatal(err)
	}
	var poisoned []string
	for _, m := range peek.Messages {
		poisoned = append(poisoned, *m.MessageText)
	}
	if len(poisoned) != 3 || !strings.Contains(strings.Join(poisoned, " "), `"mode":"fail"`) {
		t.Errorf("poison queue holds %q, want the fail, plain and empty messages", poisoned)
	}

	// The payload the handler received, exactly as docs §1.4 describes it.
	ok := inv[ids["ok"]][0]
	if len(ok.Logs) != 4 {
		t.Fatalf("the fake handler's Logs = %q", ok.Logs)
	}
	if ok.Logs[1] != "application/json" || ok.Logs[2] != ok.InvocationID || !strings.HasPrefix(ok.Logs[3], "Azure-Functions-Host/") {
		t.Errorf("invocation headers: Content-Type %q, InvocationId %q (want %q), User-Agent %q", ok.Logs[1], ok.Logs[2], ok.InvocationID, ok.Logs[3])
	}
	var p struct {
		Data     map[string]json.RawMessage
		Metadata map[string]json.RawMessage
	}
	if err := json.Unmarshal([]byte(ok.Logs[0]), &p); err != nil {
		t.Fatal(err)
	}
	encode := func(v string) string { // as the host's serializer: no HTML escaping
		var b strings.Builder
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		enc.Encode(v)
		return strings.TrimSuffix(b.String(), "\n")
	}
	twice := encode(encode(okText))
	if string(p.Data["item"]) != twice {
		t.Errorf("Data.item = %s, want the text encoded twice: %s", p.Data["item"], twice)
	}
	str := func(k string) string {
		var s string
		if err := json.Unmarshal(p.Metadata[k], &s); err != nil {
			t.Errorf("Metadata.%s = %s is not a string", k, p.Metadata[k])
		}
		return s
	}
	if got := str("DequeueCount"); got != "1" {
		t.Errorf("Metadata.DequeueCount = %q, want \"1\"", got)
	}
	if got := str("PopReceipt"); len(got) < 3 || got[0] != '"' || got[len(got)-1] != '"' {
		t.Errorf("Metadata.PopReceipt = %q, want a quoted string", got)
	}
	if got := str("job"); got != `"01JD8Z6Q"` {
		t.Errorf("Metadata.job = %q, want the property serialised: \"\\\"01JD8Z6Q\\\"\"", got)
	}
	if got := str("part"); got != `"3"` {
		t.Errorf("Metadata.part = %q, want %q", got, `"3"`)
	}
	if got := str("Id"); got != `"spoofed"` {
		t.Errorf("Metadata.Id = %q: a message property named Id overwrites the key (docs §1.4)", got)
	}
	for _, k := range []string{"InsertionTime", "ExpirationTime", "NextVisibleTime"} {
		if _, err := time.Parse(time.RFC3339, str(k)); err != nil {
			t.Errorf("Metadata.%s: %v", k, err)
		}
	}
	if _, ok := p.Metadata["list"]; ok {
		t.Error("Metadata.list: array properties are not copied")
	}
	if string(p.Metadata["obj"]) != `{"a":1}` {
		t.Errorf("Metadata.obj = %s, want the object as it is", p.Metadata["obj"])
	}
	var sys map[string]string
	if err := json.Unmarshal(p.Metadata["sys"], &sys); err != nil || sys["MethodName"] != fakeQueueFunction || sys["UtcNow"] == "" || sys["RandGuid"] == "" {
		t.Errorf("Metadata.sys = %s (%v)", p.Metadata["sys"], err)
	}
}

// In base64 mode (the host's default) plain JSON text is never delivered: it
// goes straight to the poison queue (docs §1.6, the base64 trap).
func TestBase64EncodingPoisonsPlainJSON(t *testing.T) {
	t.Parallel()
	cs := integration(t)
	h, q := startFake(t, cs, `{"extensions":{"queues":{"messageEncoding":"base64"}}}`)
	plain := enqueue(t, q, `{"mode":"ok"}`)
	encoded := enqueue(t, q, base64.StdEncoding.EncodeToString([]byte(`{"mode":"ok","via":"base64"}`)))
	waitUntil(t, 30*time.Second, "one poisoned and one successful message", func() bool {
		s := h.Stats()
		return s.Poisoned == 1 && s.Succeeded == 1
	})
	inv := byMessage(h)
	if len(inv[plain]) != 0 {
		t.Errorf("the plain JSON message was delivered %d times; the host poisons it unread", len(inv[plain]))
	}
	if got := inv[encoded]; len(got) != 1 || got[0].Text != `{"mode":"ok","via":"base64"}` {
		t.Errorf("the base64 message was delivered as %+v, want once, decoded", got)
	}
}

func TestWorkerIsRestartedAfterACrashAndATimeout(t *testing.T) {
	t.Parallel()
	cs := integration(t)
	h, q := startFake(t, cs, `{"functionTimeout":"00:00:02"}`)

	crash := enqueue(t, q, `{"mode":"crash"}`)
	waitUntil(t, 30*time.Second, "the crashed message to succeed", func() bool { return h.Stats().Succeeded == 1 })
	hang := enqueue(t, q, `{"mode":"hang"}`)
	waitUntil(t, 30*time.Second, "the hung message to succeed", func() bool { return h.Stats().Succeeded == 2 })

	inv := byMessage(h)
	for name, id := range map[string]string{"crash": crash, "hang": hang} {
		got := inv[id]
		if len(got) != 2 || got[0].Succeeded || !got[1].Succeeded || got[1].DequeueCount != 2 {
			t.Errorf("%s: invocations %+v, want a failed first delivery and a successful second", name, got)
		}
	}
	if e := inv[hang][0].Err; !strings.Contains(e, "functionTimeout") {
		t.Errorf("the hung invocation failed with %q, want functionTimeout", e)
	}
	s := h.Stats()
	if s.Restarts != 2 || s.Timeouts != 1 || h.Err() != nil {
		t.Errorf("stats %+v, Err %v: want 2 restarts (crash, timeout kill), 1 timeout, host still up", s, h.Err())
	}
}

func TestHostShutsDownAfterThreeCrashes(t *testing.T) {
	t.Parallel()
	cs := integration(t)
	h, q := startFake(t, cs, "")
	msg := enqueue(t, q, `{"mode":"crashalways"}`)
	waitUntil(t, 30*time.Second, "the host to give up", func() bool { return h.Err() != nil })
	if !strings.Contains(h.Err().Error(), "3 times") {
		t.Errorf("Err = %v", h.Err())
	}
	if got := byMessage(h)[msg]; len(got) != 3 {
		t.Errorf("%d invocations of the crashing message, want 3 (one per crash)", len(got))
	}
	resp, err := http.Get(h.URL() + "/anything")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("the front door of a shut-down host answered %d, want 503", resp.StatusCode)
	}
}
