package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/tests/bulkclient"
)

// monitoringDir holds the workbook and alert queries infra/modules/operations.bicep deploys.
const monitoringDir = "../../infra/monitoring"

// loggedFields is what a run's log lines carry: every field name, and the
// string values (and true booleans) each field took.
type loggedFields struct {
	names  map[string]bool
	values map[string]map[string]bool
}

func collectFields(t *testing.T, logs string) loggedFields {
	t.Helper()
	lf := loggedFields{names: map[string]bool{}, values: map[string]map[string]bool{}}
	lines := 0
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) != nil {
			continue // not a JSON line (the Functions host would not parse it either)
		}
		lines++
		for k, v := range line {
			lf.names[k] = true
			var s string
			switch v := v.(type) {
			case string:
				s = v
			case bool:
				if !v {
					continue
				}
				s = "true"
			default:
				continue
			}
			if lf.values[k] == nil {
				lf.values[k] = map[string]bool{}
			}
			lf.values[k][s] = true
		}
	}
	if lines < 20 {
		t.Fatalf("only %d JSON log lines in the run's output; the handler's logging or this parser is broken:\n%s", lines, tail(logs, 20))
	}
	return lf
}

// query is one KQL text the operators run, named by its file (and panel).
type query struct{ name, text string }

// monitoringQueries reads every query in infra/monitoring/: each .kql file,
// and each query panel of each workbook .json.
func monitoringQueries(t *testing.T) []query {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(monitoringDir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	var qs []query
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		switch filepath.Ext(f) {
		case ".kql":
			qs = append(qs, query{filepath.Base(f), string(raw)})
		case ".json":
			var wb struct {
				Items []struct {
					Name    string `json:"name"`
					Content struct {
						Query string `json:"query"`
					} `json:"content"`
				} `json:"items"`
			}
			if err := json.Unmarshal(raw, &wb); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			for _, it := range wb.Items {
				if it.Content.Query != "" {
					qs = append(qs, query{filepath.Base(f) + "#" + it.Name, it.Content.Query})
				}
			}
		default:
			t.Fatalf("%s: infra/monitoring/ holds only .kql queries and workbook .json; this test cannot read it", f)
		}
	}
	if len(qs) < 12 {
		t.Fatalf("found %d queries in %s; expected the workbook's panels and the alert rules", len(qs), monitoringDir)
	}
	return qs
}

// A reference the query makes to the handler's log: a field it reads, or a
// value it compares a field with.
type reference struct {
	field, op, value string // op "" = the field is read
}

var (
	kqlComment = regexp.MustCompile(`(?m)//.*$`)
	// log.field and log["field"], on `extend log = parse_json(message)`.
	fieldRef = regexp.MustCompile(`\blog(?:\.([A-Za-z_][A-Za-z0-9_]*)|\["([^"]+)"\])`)
	// name = tostring(log.field): the alias then stands for the field.
	aliasDef = regexp.MustCompile(`\b([A-Za-z_][A-Za-z0-9_]*)\s*=\s*tostring\(log\.([A-Za-z_][A-Za-z0-9_]*)\)`)
	// tostring(log.f) OP "x" | alias OP "x" | OP in ("x", "y"), for the
	// operators that need the value to have been logged.
	stringCmp = regexp.MustCompile(`(?:tostring\(log\.([A-Za-z_][A-Za-z0-9_]*)\)|\b([A-Za-z_][A-Za-z0-9_]*))\s*(==|in|endswith|startswith|has|contains)\s*(\((?:\s*"(?:[^"\\]|\\.)*"\s*,?)+\)|"(?:[^"\\]|\\.)*")`)
	boolTrue  = regexp.MustCompile(`tobool\(log\.([A-Za-z_][A-Za-z0-9_]*)\)\s*==\s*true`)
	quoted    = regexp.MustCompile(`"((?:[^"\\]|\\.)*)"`)
)

// references lists what a query reads from the handler's log lines.
func references(text string) []reference {
	text = kqlComment.ReplaceAllString(text, "")
	var refs []reference
	for _, m := range fieldRef.FindAllStringSubmatch(text, -1) {
		refs = append(refs, reference{field: m[1] + m[2]})
	}
	alias := map[string]string{}
	for _, m := range aliasDef.FindAllStringSubmatch(text, -1) {
		alias[m[1]] = m[2]
	}
	for _, m := range stringCmp.FindAllStringSubmatch(text, -1) {
		field := m[1]
		if field == "" {
			if field = alias[m[2]]; field == "" {
				continue // a column of the table or a computed value, not a log field
			}
		}
		for _, v := range quoted.FindAllStringSubmatch(m[4], -1) {
			refs = append(refs, reference{field: field, op: m[3], value: strings.ReplaceAll(v[1], `\"`, `"`)})
		}
	}
	for _, m := range boolTrue.FindAllStringSubmatch(text, -1) {
		refs = append(refs, reference{field: m[1], op: "==", value: "true"})
	}
	return refs
}

// satisfied reports whether the run logged what ref needs.
func (lf loggedFields) satisfied(ref reference) bool {
	if ref.op == "" {
		return lf.names[ref.field]
	}
	for v := range lf.values[ref.field] {
		ok := false
		switch ref.op {
		case "==", "in":
			ok = v == ref.value
		case "endswith":
			ok = strings.HasSuffix(strings.ToLower(v), strings.ToLower(ref.value))
		case "startswith":
			ok = strings.HasPrefix(strings.ToLower(v), strings.ToLower(ref.value))
		case "has", "contains":
			ok = strings.Contains(strings.ToLower(v), strings.ToLower(ref.value))
		}
		if ok {
			return true
		}
	}
	return false
}

// TestMonitoringQueriesReadOnlyWhatTheHandlerLogs runs the exports whose log
// lines the workbook and the alert rules read (a completed job with a
// throttled source, continuations and a download; a job the source refuses
// with 403; a job whose work item reaches the poison queue; a cancelled
// job), then checks every field each query in infra/monitoring/ reads, and
// every value it compares one with, against those lines. A query that names
// a field the handler does not write shows nothing and never alerts in
// Azure, silently: here it fails, naming the field.
func TestMonitoringQueriesReadOnlyWhatTheHandlerLogs(t *testing.T) {
	src, fhirURL := faultySource(t)
	p := newProcess(t, fhirURL,
		"LOG_LEVEL=info",
		"EXPORT_PAGE_SIZE=10",
		"EXPORT_INVOCATION_BUDGET=1s", // long items hand on in continuation messages
		"EXPORT_RETRY_DELAY=1s",
		"EXPORT_MAX_DEQUEUE_COUNT=1", // a retryable failure that outlasts the source retries is final at once
		"FHIR_RETRY_ATTEMPTS=3",
		"FHIR_RETRY_BACKOFF=50ms",
	)
	client := &bulkclient.Client{Base: p.base(), MaxWait: 3 * time.Minute}

	// 1. Completed, through a throttled source, with continuations; then downloaded.
	src.SetSearchDelay(15 * time.Millisecond)
	if err := src.FailNext(2, http.StatusTooManyRequests, "1"); err != nil {
		t.Fatal(err)
	}
	res, err := client.Export(ctx(t), "/$export?_type=Patient,Observation")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Manifest.Output) == 0 {
		t.Fatal("the completed export has no files; nothing was downloaded")
	}
	src.SetSearchDelay(0)

	// 2. Refused by the source (the identity lost its role): the job fails.
	if err := src.FailNext(1000, http.StatusForbidden, ""); err != nil {
		t.Fatal(err)
	}
	wantFailed(t, client, "/$export?_type=Patient")

	// 3. The source keeps failing with 500: the only delivery is the last,
	// so the job fails and its message goes to the poison queue.
	if err := src.FailNext(1000, http.StatusInternalServerError, ""); err != nil {
		t.Fatal(err)
	}
	wantFailed(t, client, "/$export?_type=Condition")
	if err := src.FailNext(0, http.StatusInternalServerError, ""); err != nil {
		t.Fatal(err)
	}

	// 4. Cancelled by its client.
	statusURL, err := client.KickOff(ctx(t), "/$export?_type=Encounter")
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(ctx(t), http.MethodDelete, statusURL, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE %s: %d, want 202", statusURL, resp.StatusCode)
	}

	// 5. A refused request (an unknown job: 404), an audit line with outcome "refused".
	resp, err = http.Get(p.base() + "/jobs/0000000000000000000000000000000000000000000000")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("status of an unknown job: %d, want 404", resp.StatusCode)
	}

	p.kill() // all lines written; the buffer is no longer being filled
	logged := collectFields(t, p.logs.String())

	var report []string
	for _, q := range monitoringQueries(t) {
		refs := references(q.text)
		var fields []string
		for _, ref := range refs {
			if !logged.satisfied(ref) {
				if ref.op == "" {
					t.Errorf("%s reads log.%s, which no log line of the run carries", q.name, ref.field)
				} else {
					t.Errorf("%s compares log.%s %s %q, but the run logged no such %s (logged: %s)",
						q.name, ref.field, ref.op, ref.value, ref.field, strings.Join(sortedKeys(logged.values[ref.field]), " | "))
				}
				continue
			}
			if ref.op == "" {
				fields = append(fields, ref.field)
			} else {
				fields = append(fields, ref.field+" "+ref.op+" "+ref.value)
			}
		}
		report = append(report, q.name+": "+strings.Join(uniq(fields), "; "))
	}
	t.Logf("what each query reads, all found in the run's log lines:\n%s", strings.Join(report, "\n"))
}

// wantFailed kicks off path and waits for the status to answer with the
// job's failure.
func wantFailed(t *testing.T, c *bulkclient.Client, path string) {
	t.Helper()
	statusURL, err := c.KickOff(ctx(t), path)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = c.Wait(ctx(t), statusURL)
	var se *bulkclient.StatusError
	if !errors.As(err, &se) || se.Code < 400 {
		t.Fatalf("export %s: want a failed job, got %v", path, err)
	}
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func uniq(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// TestQueryReferencesAreFound keeps the parser above honest: a reference it
// missed would pass the check above without being checked.
func TestQueryReferencesAreFound(t *testing.T) {
	q := `traces
| extend log = parse_json(message)   // log.commented is not read
| extend msg = tostring(log.message), kind = tostring(log["kind"])
| where msg in ("a", "b") or tostring(log.action) == "download" or msg endswith "in a new message"
| where tobool(log.poisoned) == true and toint(log.sourceStatus) in (401, 403) and name == "x"`
	got := map[reference]bool{}
	for _, r := range references(q) {
		got[r] = true
	}
	for _, want := range []reference{
		{field: "message"}, {field: "kind"}, {field: "action"}, {field: "poisoned"}, {field: "sourceStatus"},
		{"message", "in", "a"}, {"message", "in", "b"}, {"action", "==", "download"},
		{"message", "endswith", "in a new message"}, {"poisoned", "==", "true"},
	} {
		if !got[want] {
			t.Errorf("missed %+v in the test query; found %v", want, got)
		}
	}
	for r := range got {
		if r.field == "commented" || r.value == "x" {
			t.Errorf("took %+v from a comment or a table column", r)
		}
	}
}
