package bulkclient

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

func TestPercentReadsTheLeadingIntegerAsTheSMARTClientDoes(t *testing.T) {
	for header, want := range map[string]int{
		"43% (16,531 of 38,483 resources)": 43,
		"16531 of 38483 resources":         16531, // the old header: read as 16531%
		"  7% complete":                    7,
		"12.5%":                            12,
		"+5":                               5,
		"-3%":                              -3,
		"0% (planning the export)":         0,
	} {
		if got, ok := Percent(header); !ok || got != want {
			t.Errorf("Percent(%q) = %d, %v; want %d", header, got, ok, want)
		}
	}
	for _, header := range []string{"", "in progress", "% done", "- 5"} {
		if got, ok := Percent(header); ok {
			t.Errorf("Percent(%q) = %d, want no percentage", header, got)
		}
	}
}

// TestWaitRefusesAProgressThatIsNotARunningPercentage: a running export whose
// X-Progress a percentage-reading client would take as done, or as nothing,
// fails the wait.
func TestWaitRefusesAProgressThatIsNotARunningPercentage(t *testing.T) {
	for _, tc := range []struct {
		progress string
		ok       bool
	}{
		{"43% (16,531 of 38,483 resources)", true},
		{"99% (10 of 10 resources)", true},
		{"100% (10 of 10 resources)", false},
		{"16531 of 38483 resources", false},
		{"", false},
		{"in progress", false},
	} {
		t.Run(tc.progress, func(t *testing.T) {
			var polls atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if polls.Add(1) == 1 {
					w.Header().Set("Retry-After", "1")
					w.Header().Set("X-Progress", tc.progress)
					w.WriteHeader(http.StatusAccepted)
					return
				}
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprint(w, `{"transactionTime":"2024-03-01T00:00:00Z","request":"x","requiresAccessToken":false,"output":[],"error":[]}`)
			}))
			defer srv.Close()
			var seen []int
			c := &Client{Base: srv.URL, Progress: func(p int, _ string) { seen = append(seen, p) }}
			_, _, err := c.Wait(context.Background(), srv.URL)
			if tc.ok && (err != nil || len(seen) != 1) {
				t.Errorf("err %v, progress seen %v", err, seen)
			}
			if !tc.ok && (err == nil || !strings.Contains(err.Error(), "X-Progress")) {
				t.Errorf("err %v, want the X-Progress refused", err)
			}
		})
	}
}
