package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"github.com/azfhir/bulkexport/tests/testproc"
)

// patientParams is a kick-off Parameters body with one patient
// valueReference per reference and the destination container.
func patientParams(container string, refs ...string) string {
	ps := []string{fmt.Sprintf(`{"name":"_type","valueString":"Patient,Observation"},{"name":"_container","valueString":%q}`, container)}
	for _, r := range refs {
		ps = append(ps, fmt.Sprintf(`{"name":"patient","valueReference":{"reference":%q}}`, r))
	}
	return `{"resourceType":"Parameters","parameter":[` + strings.Join(ps, ",") + `]}`
}

// postKickOff POSTs body to path and returns the response.
func postKickOff(t *testing.T, svc *service, path, body string) *http.Response {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx(t), http.MethodPost, svc.base+path, strings.NewReader(body))
	req.Header.Set("Accept", "application/fhir+json")
	req.Header.Set("Prefer", "respond-async")
	req.Header.Set("Content-Type", "application/fhir+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// tableRows counts the rows of the service's job table.
func tableRows(t *testing.T, svc *service) int {
	t.Helper()
	tables, err := aztables.NewServiceClientFromConnectionString(os.Getenv("AZURE_STORAGE_CONNECTION_STRING"), nil)
	if err != nil {
		t.Fatal(err)
	}
	pager := tables.NewClient(serviceSetting(svc.env, "EXPORT_TABLE")).NewListEntitiesPager(nil)
	rows := 0
	for pager.More() {
		page, err := pager.NextPage(ctx(t))
		if err != nil {
			if strings.Contains(err.Error(), "TableNotFound") {
				return 0
			}
			t.Fatal(err)
		}
		rows += len(page.Entities)
	}
	return rows
}

// A Group export with the patient parameter naming two of its members holds
// exactly those two patients' compartments (Patient and Observation, through
// subject and performer), computed here from the sample data. Naming a
// patient who is not a member, or using patient where the IG does not define
// it, answers 400 with an OperationOutcome and creates nothing.
func TestPatientParameterAtGroupLevelExportsOnlyThosePatients(t *testing.T) {
	dest := "e2e-patient-" + testproc.RandomSuffix()
	def := "e2e-" + testproc.RandomSuffix()
	svc := startService(t, "EXPORT_MEMBER_BATCH=1", "EXPORT_CONTAINER="+def, "EXPORT_CONTAINERS="+def+","+dest)
	t.Cleanup(func() { deleteAzuriteContainer(dest) })

	var g struct {
		ID     string
		Member []struct{ Entity struct{ Reference string } }
	}
	if err := json.Unmarshal([]byte(fixture(t, nil)["Group"][0]), &g); err != nil || len(g.Member) < 3 {
		t.Fatalf("the sample Group must have at least 3 members: %v", err)
	}
	var members []string
	for _, m := range g.Member {
		members = append(members, m.Entity.Reference)
	}
	slices.Sort(members)
	chosen := []string{members[len(members)-1], members[0]} // in separate member batches
	path := "/Group/" + g.ID + "/$export"

	refused := []struct{ name, path, body string }{
		{"a patient who is not a member", path, patientParams(dest, chosen[0], "Patient/not-a-member-of-the-group")},
		{"patient at system level", "/$export", patientParams(dest, chosen[0])},
		{"patient as a string", path, fmt.Sprintf(`{"resourceType":"Parameters","parameter":[{"name":"_container","valueString":%q},{"name":"patient","valueString":%q}]}`, dest, chosen[0])},
	}
	for _, c := range refused {
		checkOutcome(t, c.name, postKickOff(t, svc, c.path, c.body), http.StatusBadRequest)
	}
	if azuriteContainerExists(t, dest) {
		t.Errorf("container %s was created by refused kick-offs", dest)
	}
	if n := tableRows(t, svc); n != 0 {
		t.Errorf("the job table holds %d rows after refused kick-offs", n)
	}

	resp := postKickOff(t, svc, path, patientParams(dest, chosen...))
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("kick-off: status %d, want 202", resp.StatusCode)
	}
	m, _, err := svc.client.Wait(ctx(t), resp.Header.Get("Content-Location"))
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := svc.client.Download(ctx(t), m)
	if err != nil {
		t.Fatal(err)
	}
	inChosen := func(v any) bool {
		r, _ := v.(map[string]any)
		ref, _ := r["reference"].(string)
		return slices.Contains(chosen, ref)
	}
	want := fixture(t, func(typ string, r map[string]any) bool {
		switch typ {
		case "Patient":
			return slices.Contains(chosen, "Patient/"+r["id"].(string))
		case "Observation":
			if inChosen(r["subject"]) {
				return true
			}
			perf, _ := r["performer"].([]any)
			return slices.ContainsFunc(perf, inChosen)
		}
		return false
	})
	if len(want["Patient"]) != 2 || len(want["Observation"]) == 0 {
		t.Fatalf("premise: the sample data should hold both patients and their observations, got %d and %d", len(want["Patient"]), len(want["Observation"]))
	}
	sameResources(t, got, want)
}
