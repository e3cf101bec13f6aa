package e2e

import (
	"strings"
	"testing"
	"time"
)

// _until with _since exports exactly the resources last updated in
// (_since, _until]: the sample data's lastUpdated values spread over 2024, so
// both bounds cut through every type.
func TestUntilWithSinceExportsOnlyTheWindow(t *testing.T) {
	svc := startService(t)
	since := time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC)
	until := time.Date(2024, 7, 19, 0, 0, 3, 0, time.UTC) // equal to many resources' lastUpdated: they are in
	res, err := svc.client.Export(ctx(t), "/$export?_type=Patient,Observation,Encounter&_since=2024-03-01T00:00:00Z&_until=2024-07-19T02:00:03.000%2B02:00")
	if err != nil {
		t.Fatal(err)
	}
	before, after, atUntil := 0, 0, 0
	want := fixture(t, func(typ string, r map[string]any) bool {
		if typ != "Patient" && typ != "Observation" && typ != "Encounter" {
			return false
		}
		lu := lastUpdated(r)
		switch {
		case !lu.After(since):
			before++
		case lu.After(until):
			after++
		case lu.Equal(until):
			atUntil++
		}
		return lu.After(since) && !lu.After(until)
	})
	if before == 0 || after == 0 || atUntil == 0 {
		t.Fatalf("the sample data has %d resources before _since, %d after _until and %d at it; the test needs some of each", before, after, atUntil)
	}
	sameResources(t, res.Resources, want)
}

func TestUntilBeforeSinceIsRefused(t *testing.T) {
	svc := startService(t)
	_, err := svc.client.KickOff(ctx(t), "/$export?_since=2024-07-01T00:00:00Z&_until=2024-06-01T00:00:00Z")
	if err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), "is before _since") {
		t.Fatalf("kick-off with _until before _since: %v; want a 400 saying _until is before _since", err)
	}
}
