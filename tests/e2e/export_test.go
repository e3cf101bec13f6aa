package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

var compartmentTypes = map[string]bool{
	"AllergyIntolerance": true, "CarePlan": true, "CareTeam": true, "Claim": true, "Condition": true,
	"Device": true, "DiagnosticReport": true, "Encounter": true, "ExplanationOfBenefit": true,
	"ImagingStudy": true, "Immunization": true, "MedicationRequest": true, "Observation": true,
	"Patient": true, "Procedure": true,
}

func TestSystemExportReturnsExactlyTheSourceData(t *testing.T) {
	svc := startService(t)
	res, err := svc.client.Export(ctx(t), "/$export")
	if err != nil {
		t.Fatal(err)
	}
	sameResources(t, res.Resources, fixture(t, nil))
	m := res.Manifest
	if !strings.HasSuffix(m.Request, "/$export") || m.RequiresAccessToken {
		t.Errorf("manifest request %q requiresAccessToken %v", m.Request, m.RequiresAccessToken)
	}
	tt, err := time.Parse(time.RFC3339Nano, m.TransactionTime)
	if err != nil || time.Since(tt) > time.Minute || time.Until(tt) > 0 {
		t.Errorf("transactionTime %q is not the kick-off time", m.TransactionTime)
	}
	if m.Deleted == nil || m.Error == nil || len(m.Error) != 0 {
		t.Errorf("manifest deleted %v error %v, want both present and empty", m.Deleted, m.Error)
	}
}

func TestPatientExportReturnsTheCompartmentOnce(t *testing.T) {
	svc := startService(t, "EXPORT_MEMBER_BATCH=3", "EXPORT_PAGE_SIZE=50")
	res, err := svc.client.Export(ctx(t), "/Patient/$export")
	if err != nil {
		t.Fatal(err)
	}
	sameResources(t, res.Resources, fixture(t, func(typ string, _ map[string]any) bool { return compartmentTypes[typ] }))
}

func TestGroupExportWithTypeReturnsTheMembersData(t *testing.T) {
	svc := startService(t, "EXPORT_MEMBER_BATCH=4")
	group := fixture(t, nil)["Group"][0]
	var g struct{ ID string }
	json.Unmarshal([]byte(group), &g)
	res, err := svc.client.Export(ctx(t), "/Group/"+g.ID+"/$export?_type=Patient,Observation")
	if err != nil {
		t.Fatal(err)
	}
	sameResources(t, res.Resources, fixture(t, func(typ string, _ map[string]any) bool {
		return typ == "Patient" || typ == "Observation"
	}))
}

func TestSinceExportsOnlyLaterChanges(t *testing.T) {
	svc := startService(t)
	since := time.Date(2024, 7, 1, 0, 0, 0, 0, time.UTC)
	// An unencoded '+' arrives as a space, as real clients send it.
	res, err := svc.client.Export(ctx(t), "/$export?_type=Patient,Encounter&_since=2024-07-01T02:00:00.000+02:00")
	if err != nil {
		t.Fatal(err)
	}
	sameResources(t, res.Resources, fixture(t, func(typ string, r map[string]any) bool {
		return (typ == "Patient" || typ == "Encounter") && lastUpdated(r).After(since)
	}))
}

func TestTypeFilterRestrictsItsTypeOnly(t *testing.T) {
	svc := startService(t)
	filter := url.QueryEscape("Observation?category=laboratory") + "," + url.QueryEscape("Observation?category=survey")
	res, err := svc.client.Export(ctx(t), "/$export?_type=Observation,Patient&_typeFilter="+filter)
	if err != nil {
		t.Fatal(err)
	}
	sameResources(t, res.Resources, fixture(t, func(typ string, r map[string]any) bool {
		if typ == "Patient" {
			return true
		}
		if typ != "Observation" {
			return false
		}
		b, _ := json.Marshal(r["category"])
		return strings.Contains(string(b), `"code":"laboratory"`) || strings.Contains(string(b), `"code":"survey"`)
	}))
}

func TestRolloverKeepsFilesUnderTheLimit(t *testing.T) {
	const limit = 150000
	svc := startService(t, "EXPORT_MAX_FILE_BYTES="+strconv.Itoa(limit), "EXPORT_BLOCK_BYTES=40000", "EXPORT_PAGE_SIZE=100")
	res, err := svc.client.Export(ctx(t), "/$export?_type=Claim,ExplanationOfBenefit,Patient")
	if err != nil {
		t.Fatal(err)
	}
	sameResources(t, res.Resources, fixture(t, func(typ string, _ map[string]any) bool {
		return typ == "Claim" || typ == "ExplanationOfBenefit" || typ == "Patient"
	}))
	files := map[string]int{}
	for _, f := range res.Manifest.Output {
		files[f.Type]++
		resp, err := http.Get(f.URL)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if len(body) > limit {
			t.Errorf("%s is %d bytes, over the %d limit", f.URL, len(body), limit)
		}
	}
	if files["Claim"] < 6 || files["ExplanationOfBenefit"] < 11 {
		t.Errorf("files per type %v: 1 MB of Claims and 1.7 MB of EOBs must roll over at 150 kB", files)
	}
}

func TestCancelThenStatusIsNotFound(t *testing.T) {
	svc := startService(t)
	statusURL, err := svc.client.KickOff(ctx(t), "/$export")
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodDelete, statusURL, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE answered %d, want 202", resp.StatusCode)
	}
	for _, method := range []string{http.MethodGet, http.MethodDelete} {
		req, _ := http.NewRequest(method, statusURL, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		checkOutcome(t, method+" after cancel", resp, http.StatusNotFound)
	}
}

func TestStatusWhileRunningHasRetryAfterAndProgress(t *testing.T) {
	svc := startService(t, "EXPORT_PAGE_SIZE=20", "EXPORT_WORKERS=1")
	statusURL, err := svc.client.KickOff(ctx(t), "/$export")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(statusURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("first poll answered %d, want 202 while the export runs", resp.StatusCode)
	}
	n, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || n < 1 || n > 5 {
		t.Errorf("Retry-After %q, want whole seconds from 1 to 5", resp.Header.Get("Retry-After"))
	}
	if p := resp.Header.Get("X-Progress"); p == "" || len(p) > 100 {
		t.Errorf("X-Progress %q", p)
	}
	if _, _, err := svc.client.Wait(ctx(t), statusURL); err != nil {
		t.Fatal(err)
	}
}
