package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// checkOutcome asserts a status and a valid FHIR OperationOutcome body.
func checkOutcome(t *testing.T, what string, resp *http.Response, want int) {
	t.Helper()
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		t.Errorf("%s: status %d, want %d: %s", what, resp.StatusCode, want, body)
		return
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/fhir+json") {
		t.Errorf("%s: Content-Type %q, want application/fhir+json", what, ct)
	}
	var oo struct {
		ResourceType string `json:"resourceType"`
		Issue        []struct {
			Severity    string `json:"severity"`
			Code        string `json:"code"`
			Diagnostics string `json:"diagnostics"`
		} `json:"issue"`
	}
	if err := json.Unmarshal(body, &oo); err != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 ||
		oo.Issue[0].Severity == "" || oo.Issue[0].Code == "" || oo.Issue[0].Diagnostics == "" {
		t.Errorf("%s: body is not a valid OperationOutcome: %s", what, body)
	}
}

func TestBadInputGetsA4xxOperationOutcome(t *testing.T) {
	svc := startService(t)
	cases := []struct {
		name, method, path, body, contentType string
		header                                map[string]string
		want                                  int
	}{
		{name: "unknown type", path: "/$export?_type=Observation,Nonsense", want: 400},
		{name: "bad _since", path: "/$export?_since=yesterday", want: 400},
		{name: "bad _outputFormat", path: "/$export?_outputFormat=text/csv", want: 400},
		{name: "bad _container", path: "/$export?_container=Bad_Name", want: 400},
		{name: "_elements below the top level", path: "/$export?_elements=code.coding", want: 400},
		{name: "unknown parameter", path: "/$export?foo=bar", want: 400},
		{name: "typeFilter type outside _type", path: "/$export?_type=Patient&_typeFilter=Observation%3Fstatus%3Dfinal", want: 400},
		{name: "malformed typeFilter", path: "/$export?_typeFilter=Observation", want: 400},
		{name: "non-compartment type at Patient level", path: "/Patient/$export?_type=Organization", want: 400},
		{name: "unsatisfiable Accept", path: "/$export", header: map[string]string{"Accept": "text/html"}, want: 400},
		{name: "unknown Group", path: "/Group/does-not-exist/$export", want: 404},
		{name: "unknown job", path: "/jobs/0123456789abcdef0123456789ab0000000000000000", want: 404},
		{name: "job id that is not one", path: "/jobs/..%2F..%2Fetc", want: 404},
		{name: "file of an unknown job", path: "/jobs/0123456789abcdef0123456789ab0000000000000000/files/Patient-1.ndjson", want: 404},
		{name: "POST without body", method: "POST", path: "/$export", contentType: "application/fhir+json", want: 400},
		{name: "POST not Parameters", method: "POST", path: "/$export", body: `{"resourceType":"Patient"}`, contentType: "application/fhir+json", want: 400},
		{name: "POST invalid JSON", method: "POST", path: "/$export", body: `{`, contentType: "application/json", want: 400},
		{name: "unknown path", path: "/nothing-here", want: 404},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			method := c.method
			if method == "" {
				method = http.MethodGet
			}
			req, _ := http.NewRequest(method, svc.base+c.path, strings.NewReader(c.body))
			req.Header.Set("Accept", "application/fhir+json")
			req.Header.Set("Prefer", "respond-async")
			if c.contentType != "" {
				req.Header.Set("Content-Type", c.contentType)
			}
			for k, v := range c.header {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			checkOutcome(t, c.name, resp, c.want)
		})
	}
}

func TestLenientIgnoresUnsupportedParametersAndReportsThem(t *testing.T) {
	svc := startService(t)
	req, _ := http.NewRequest(http.MethodGet, svc.base+"/$export?_type=Patient&organizeOutputBy=Patient", nil)
	req.Header.Set("Accept", "application/fhir+json")
	req.Header.Set("Prefer", "respond-async, handling=lenient")
	req.Header.Set("Authorization", "Bearer ")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("lenient kick-off answered %d", resp.StatusCode)
	}
	m, _, err := svc.client.Wait(ctx(t), resp.Header.Get("Content-Location"))
	if err != nil {
		t.Fatal(err)
	}
	_, errs, err := svc.client.Download(ctx(t), m)
	if err != nil {
		t.Fatal(err)
	}
	if len(errs) != 1 || !strings.Contains(string(errs[0]), "organizeOutputBy") {
		t.Errorf("error files hold %q, want one OperationOutcome naming organizeOutputBy", errs)
	}
}

func TestPOSTKickOffWithParameters(t *testing.T) {
	svc := startService(t)
	body := `{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Patient"},{"name":"_type","valueString":"Device"}]}`
	req, _ := http.NewRequest(http.MethodPost, svc.base+"/$export", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST kick-off answered %d", resp.StatusCode)
	}
	m, _, err := svc.client.Wait(ctx(t), resp.Header.Get("Content-Location"))
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := svc.client.Download(ctx(t), m)
	if err != nil {
		t.Fatal(err)
	}
	sameResources(t, got, fixture(t, func(typ string, _ map[string]any) bool { return typ == "Patient" || typ == "Device" }))
}
