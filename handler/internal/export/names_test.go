package export

import (
	"strings"
	"testing"
	"time"
)

func TestValidContainerName(t *testing.T) {
	for name, want := range map[string]bool{
		"bulk-export": true, "abc": true, "a1-b2": true, "ab": false, "a--b": false, "-abc": false, "abc-": false,
		"ABC": false, strings.Repeat("a", 63): true, strings.Repeat("a", 64): false, "a_b": false, "": false,
	} {
		if got := ValidContainerName(name); got != want {
			t.Errorf("ValidContainerName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestValidJobIDAcceptsExactlyNewJobIDs(t *testing.T) {
	for _, now := range []time.Time{time.Unix(0, 0), time.Date(2024, 3, 1, 9, 20, 30, 0, time.UTC), time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)} {
		if id := newJobID(now); !ValidJobID(id) {
			t.Errorf("ValidJobID(%q) = false for an id newJobID made", id)
		}
	}
	now := time.Now()
	a, b := newJobID(now), newJobID(now)
	if len(a) != 44 || a[12:] == b[12:] {
		t.Errorf("two ids of one instant: %q and %q; want 12 hex digits of time and 32 random ones each", a, b)
	}
	for _, id := range []string{"", "job-1", "0190000000000000000000000001a",
		"0190000000000000000000000001", // the 64-bit form of earlier versions
		"019000000000000000000000000000000000000000001", "019000000000000000000000000000000000000000A1", "019000000000000000000000000", "019000000000000000000000000A", "0190000000000000000000000/01"} {
		if ValidJobID(id) {
			t.Errorf("ValidJobID(%q) = true", id)
		}
	}
}
