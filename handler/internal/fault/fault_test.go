package fault_test

import (
	"testing"

	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// A work item records its failure's kind as text; reading it back must give
// the same kind, or the status answer would change class after a restart.
func TestParseKindReadsBackEveryKind(t *testing.T) {
	kinds := []fault.Kind{fault.Internal, fault.Invalid, fault.NotFound, fault.Conflict, fault.Transient,
		fault.Permanent, fault.Forbidden, fault.Cancelled, fault.Unavailable, fault.Unauthenticated, fault.Limited}
	for _, k := range kinds {
		got, ok := fault.ParseKind(k.String())
		if !ok || got != k {
			t.Errorf("ParseKind(%q) = %v, %v; want %v", k.String(), got, ok, k)
		}
	}
	for _, s := range []string{"", "Permanent", "gone"} {
		if k, ok := fault.ParseKind(s); ok {
			t.Errorf("ParseKind(%q) = %v, accepted", s, k)
		}
	}
}
