package e2e

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/azfhir/bulkexport/tests/testproc"
)

// The oversized and hostile kick-offs (a 600 KB _typeFilter, 10,000
// _typeFilter queries, a long query string, a paging parameter smuggled
// into a _typeFilter, a Group id of dots) answer 4xx with an
// OperationOutcome before any side effect: the destination container is
// not created and the job table stays empty.
func TestOversizedKickOffsCreateNothing(t *testing.T) {
	dest := "e2e-limits-" + testproc.RandomSuffix()
	def := "e2e-" + testproc.RandomSuffix()
	svc := startService(t, "EXPORT_CONTAINER="+def, "EXPORT_CONTAINERS="+def+","+dest)
	t.Cleanup(func() { deleteAzuriteContainer(dest) })

	filters := func(queries ...string) string {
		var ps []string
		for _, q := range queries {
			ps = append(ps, fmt.Sprintf(`{"name":"_typeFilter","valueString":%q}`, q))
		}
		ps = append(ps, fmt.Sprintf(`{"name":"_container","valueString":%q}`, dest))
		return `{"resourceType":"Parameters","parameter":[` + strings.Join(ps, ",") + `]}`
	}
	many := make([]string, 10000)
	for i := range many {
		many[i] = fmt.Sprintf("Patient?_id=p%d", i)
	}
	cases := []struct {
		name, method, path, body string
		want                     int
	}{
		{name: "600 KB _typeFilter", method: "POST", path: "/$export", body: filters("Patient?name=" + strings.Repeat("a", 600<<10)), want: 400},
		{name: "10,000 _typeFilter queries", method: "POST", path: "/$export", body: filters(many...), want: 400},
		{name: "query string over 8 KiB", path: "/$export?_container=" + dest + "&_typeFilter=" + url.QueryEscape("Patient?name="+strings.Repeat("a", 9<<10)), want: 400},
		{name: "_offset in a _typeFilter", path: "/$export?_container=" + dest + "&_typeFilter=" + url.QueryEscape("Observation?_offset=100"), want: 400},
		{name: "Group id ..", path: "/Group/%2E%2E/$export?_container=" + dest, want: 400},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			method := c.method
			if method == "" {
				method = http.MethodGet
			}
			req, _ := http.NewRequestWithContext(ctx(t), method, svc.base+c.path, strings.NewReader(c.body))
			req.Header.Set("Accept", "application/fhir+json")
			req.Header.Set("Prefer", "respond-async")
			if c.body != "" {
				req.Header.Set("Content-Type", "application/fhir+json")
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			checkOutcome(t, c.name, resp, c.want)
		})
	}
	if azuriteContainerExists(t, dest) {
		t.Errorf("container %s was created by refused kick-offs", dest)
	}
	if rows := tableRows(t, svc); rows != 0 {
		t.Errorf("the job table holds %d rows after refused kick-offs", rows)
	}
}
