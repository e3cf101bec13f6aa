package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"

	"github.com/azfhir/bulkexport/tests/testproc"
)

// badConfigBase is a valid configuration with every key set; the cases
// below break one thing in it each.
const badConfigBase = `{
  "fhirVersion": "R4",
  "processingErrors": "raise",
  "fhirPathRules": [
    {"path": "Resource.id", "method": "cryptoHash"},
    {"path": "nodesByType('HumanName')", "method": "redact"},
    {"path": "nodesByType('date')", "method": "dateShift"},
    {"path": "nodesByType('Identifier').value", "method": "encrypt"}
  ],
  "parameters": {"cryptoHashKey": "123", "dateShiftKey": "dummy", "encryptKey": "704ab12c8e3e46d4bea600ef62a6bec7"}
}`

// uploadConfig puts content as blob name in container, creating the
// container if it is missing, and returns the blob's ETag.
func uploadConfig(t *testing.T, container, name string, content []byte) string {
	t.Helper()
	c, err := azblob.NewClientFromConnectionString(os.Getenv("AZURE_STORAGE_CONNECTION_STRING"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateContainer(ctx(t), container, nil); err != nil && !bloberror.HasCode(err, bloberror.ContainerAlreadyExists) {
		t.Fatal(err)
	}
	resp, err := c.UploadBuffer(ctx(t), container, name, content, nil)
	if err != nil {
		t.Fatal(err)
	}
	return string(*resp.ETag)
}

// kickOffDiagnostics sends a kick-off and returns its status and, for an
// OperationOutcome answer, the diagnostics of its issues.
func kickOffDiagnostics(t *testing.T, svc *service, method, path, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx(t), method, svc.base+path, strings.NewReader(body))
	req.Header.Set("Accept", "application/fhir+json")
	req.Header.Set("Prefer", "respond-async")
	if body != "" {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusAccepted {
		return resp.StatusCode, ""
	}
	var oo struct {
		ResourceType string
		Issue        []struct{ Severity, Code, Diagnostics string }
	}
	if err := json.Unmarshal(raw, &oo); err != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
		t.Errorf("%s %s: status %d with a body that is not an OperationOutcome: %s", method, path, resp.StatusCode, raw)
		return resp.StatusCode, ""
	}
	var diags []string
	for _, i := range oo.Issue {
		diags = append(diags, i.Diagnostics)
	}
	return resp.StatusCode, strings.Join(diags, " | ")
}

// TestDeidBadConfigurationIsRefusedAtKickOff uploads broken configurations
// to the anonymization container of the export account, kicks off with each
// at system, Patient and Group level (GET and POST), and requires a 400 whose
// OperationOutcome names the problem, with nothing created: no job row and
// no export container. A valid configuration is then accepted, which proves
// the checks see a job when there is one.
func TestDeidBadConfigurationIsRefusedAtKickOff(t *testing.T) {
	sfx := testproc.RandomSuffix()
	const anon = "anonymization" // the default, where Azure keeps configurations
	svc := startService(t)       // no EXPORT_ANONYMIZATION_CONTAINER: the default applies
	noContainer := startService(t, "EXPORT_ANONYMIZATION_CONTAINER=anon-missing-"+sfx)
	dest := serviceSetting(svc.env, "EXPORT_CONTAINER")
	t.Cleanup(func() { deleteAzuriteContainer(dest) })

	var g struct{ ID string }
	if err := json.Unmarshal([]byte(fixture(t, nil)["Group"][0]), &g); err != nil || g.ID == "" {
		t.Fatalf("the sample data has no Group: %v", err)
	}
	upload := func(name, content string) (string, string) {
		blob := "e2e-" + sfx + "/" + name
		return blob, uploadConfig(t, anon, blob, []byte(content))
	}
	goodName, goodETag := upload("good.json", badConfigBase)
	hipaa, err := os.ReadFile("../../handler/internal/deid/testdata/configuration-sample.json")
	if err != nil {
		t.Fatal(err)
	}

	type badCase struct {
		name, blob, etag string
		svc              *service
		want             []string // what the diagnostics must say
	}
	var cases []badCase
	broken := func(name, content string, want ...string) {
		blob, _ := upload(name+".json", content)
		cases = append(cases, badCase{name: name, blob: blob, want: want})
	}
	cases = append(cases,
		badCase{name: "missing container", blob: goodName, svc: noContainer, want: []string{`container "anon-missing-` + sfx + `" does not exist`}},
		badCase{name: "missing blob", blob: "e2e-" + sfx + "/absent.json", want: []string{"absent.json", "does not exist"}},
		badCase{name: "ETag mismatch", blob: goodName, etag: "0x8D000000DEADBEE", want: []string{`"0x8D000000DEADBEE"`, "has changed"}},
	)
	broken("invalid-json", `{"fhirVersion": "R4", "fhirPathRules": [`, "invalid JSON")
	broken("duplicate-key", strings.Replace(badConfigBase, `"processingErrors": "raise",`, `"processingErrors": "raise", "processingErrors": "skip",`, 1),
		`duplicate key "processingErrors"`)
	broken("unknown-method", strings.Replace(badConfigBase, `"method": "redact"`, `"method": "scramble"`, 1), "fhirPathRules[1]", `unknown method "scramble"`)
	broken("invalid-fhirpath", strings.Replace(badConfigBase, `nodesByType('HumanName')`, `nodesByType('HumanName'`, 1), "fhirPathRules[1]", "invalid FHIRPath")
	broken("encrypt-key-size", strings.Replace(badConfigBase, `704ab12c8e3e46d4bea600ef62a6bec7`, `too-short`, 1), "encryptKey", "72 bits")
	broken("fhir-version", strings.Replace(badConfigBase, `"fhirVersion": "R4"`, `"fhirVersion": "Stu3"`, 1), `fhirVersion "Stu3"`)
	broken("empty-key", string(hipaa), "cryptoHashKey is empty", "references")
	broken("too-large", badConfigBase+strings.Repeat(" ", 1<<20), "too large")

	levels := []struct{ method, path string }{
		{http.MethodGet, "/$export"},
		{http.MethodGet, "/Patient/$export"},
		{http.MethodPost, "/Group/" + g.ID + "/$export"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := svc
			if c.svc != nil {
				s = c.svc
			}
			lvl := levels[i%len(levels)]
			path, body := lvl.path+"?_anonymizationConfig="+url.QueryEscape(c.blob), ""
			if c.etag != "" {
				path += "&_anonymizationConfigEtag=" + url.QueryEscape(c.etag)
			}
			if lvl.method == http.MethodPost {
				path = lvl.path
				ps := []string{`{"name":"_anonymizationConfig","valueString":` + strconvQuote(c.blob) + `}`}
				if c.etag != "" {
					ps = append(ps, `{"name":"_anonymizationConfigEtag","valueString":`+strconvQuote(c.etag)+`}`)
				}
				body = `{"resourceType":"Parameters","parameter":[` + strings.Join(ps, ",") + `]}`
			}
			status, diag := kickOffDiagnostics(t, s, lvl.method, path, body)
			if status != http.StatusBadRequest {
				t.Fatalf("%s %s: status %d, want 400 (%s)", lvl.method, path, status, diag)
			}
			for _, w := range c.want {
				if !strings.Contains(diag, w) {
					t.Errorf("%s %s: the OperationOutcome says %q, which does not name %q", lvl.method, lvl.path, diag, w)
				}
			}
		})
	}
	for _, s := range []*service{svc, noContainer} {
		if n := tableRows(t, s); n != 0 {
			t.Errorf("the job table holds %d rows after refused kick-offs", n)
		}
		if c := serviceSetting(s.env, "EXPORT_CONTAINER"); azuriteContainerExists(t, c) {
			t.Errorf("the export container %s was created by refused kick-offs", c)
		}
	}
	if azuriteContainerExists(t, "anon-missing-"+sfx) {
		t.Errorf("a kick-off created the missing anonymization container")
	}

	// The valid configuration, pinned to its ETag, is accepted, and the job
	// is there for the checks above to see.
	status, diag := kickOffDiagnostics(t, svc, http.MethodGet,
		"/$export?_type=Patient&_anonymizationConfig="+url.QueryEscape(goodName)+"&_anonymizationConfigEtag="+url.QueryEscape(goodETag), "")
	if status != http.StatusAccepted {
		t.Fatalf("kick-off with the valid configuration: status %d (%s), want 202", status, diag)
	}
	if n := tableRows(t, svc); n == 0 {
		t.Error("the accepted kick-off left no job row: the checks of refused kick-offs prove nothing")
	}
}

// strconvQuote is a JSON string of s.
func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
