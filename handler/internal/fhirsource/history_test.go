package fhirsource

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

func TestHistoryTypesAreThoseDeclaringHistoryType(t *testing.T) {
	c, _, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/fhir+json")
		fmt.Fprint(w, `{"resourceType":"CapabilityStatement","rest":[{"mode":"server","resource":[
			{"type":"Patient","interaction":[{"code":"read"},{"code":"search-type"},{"code":"history-type"}]},
			{"type":"Observation","interaction":[{"code":"search-type"},{"code":"history-instance"}]},
			{"type":"Encounter"}]},
			{"mode":"client","resource":[{"type":"Device","interaction":[{"code":"history-type"}]}]}]}`)
	})
	got, err := c.HistoryTypes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Encounter has no interaction list: the statement is silent, so its
	// history is tried; Observation has only instance history.
	if want := []string{"Patient", "Encounter"}; !reflect.DeepEqual(got, want) {
		t.Errorf("HistoryTypes = %v, want %v", got, want)
	}
}

func TestHistoryURL(t *testing.T) {
	c, srv, _ := setup(t, http.NotFound)
	if got, want := c.HistoryURL("Patient", "", "_since=2024-01-01T00%3A00%3A00Z"), srv.URL+"/fhir/Patient/_history?_since=2024-01-01T00%3A00%3A00Z"; got != want {
		t.Errorf("type history URL %s, want %s", got, want)
	}
	if got, want := c.HistoryURL("Patient", "p-1", ""), srv.URL+"/fhir/Patient/p-1/_history"; got != want {
		t.Errorf("instance history URL %s, want %s", got, want)
	}
}

func TestHistoryPageReadsEveryEntryAndFollowsNext(t *testing.T) {
	c, srv, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/fhir/Patient/_history" {
			http.NotFound(w, r)
			return
		}
		if r.URL.Query().Get("page") == "2" {
			fmt.Fprint(w, `{"resourceType":"Bundle","type":"history","entry":[
				{"fullUrl":"http://x/fhir/Patient/p3","request":{"method":"DELETE","url":"http://x/fhir/Patient/p3/_history/4"},"response":{"status":"204"}}]}`)
			return
		}
		fmt.Fprint(w, `{"resourceType":"Bundle","type":"history","link":[{"relation":"self","url":"x"},{"relation":"next","url":"/fhir/Patient/_history?page=2"}],"entry":[
			{"request":{"method":"DELETE","url":"Patient/p1"},"response":{"status":"204","lastModified":"2024-06-01T10:00:00.123+02:00"}},
			{"fullUrl":"urn:uuid:1","resource":{"resourceType":"Patient","id":"p2","meta":{"lastUpdated":"2024-06-01T09:00:00Z"},"name":[{"family":"X"}]},
			 "request":{"method":"post","url":"Patient"},"response":{"status":"201"}}]}`)
	})
	var got []export.HistoryEntry
	visit := func(h export.HistoryEntry) error { got = append(got, h); return nil }
	next, err := c.HistoryPage(context.Background(), c.HistoryURL("Patient", "", "_since=2024-01-01T00%3A00%3A00Z"), visit)
	if err != nil {
		t.Fatal(err)
	}
	if want := srv.URL + "/fhir/Patient/_history?page=2"; next != want {
		t.Fatalf("next %q, want %q", next, want)
	}
	if next, err = c.HistoryPage(context.Background(), next, visit); err != nil || next != "" {
		t.Fatalf("second page: next %q, err %v; want the last page", next, err)
	}
	want := []export.HistoryEntry{
		{Method: "DELETE", Type: "Patient", ID: "p1", At: time.Date(2024, 6, 1, 8, 0, 0, 123e6, time.UTC)},
		{Method: "POST", Type: "Patient", ID: "p2", At: time.Date(2024, 6, 1, 9, 0, 0, 0, time.UTC)},
		{Method: "DELETE", Type: "Patient", ID: "p3"}, // no time given
	}
	if len(got) != len(want) {
		t.Fatalf("entries %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i].Method != want[i].Method || got[i].Type != want[i].Type || got[i].ID != want[i].ID || !got[i].At.Equal(want[i].At) {
			t.Errorf("entry %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestHistoryRefusalsAreNoHistoryAndOtherFailuresAreNot(t *testing.T) {
	for _, tc := range []struct {
		status    int
		noHistory bool
		kind      fault.Kind
	}{
		{http.StatusBadRequest, true, fault.Permanent},
		{http.StatusNotFound, true, fault.Permanent},
		{http.StatusMethodNotAllowed, true, fault.Permanent},
		{http.StatusNotImplemented, true, fault.Permanent},
		{http.StatusUnprocessableEntity, false, fault.Permanent},
		{http.StatusForbidden, false, fault.Forbidden},
		{http.StatusInternalServerError, false, fault.Transient},
	} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			c, _, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/fhir+json")
				w.WriteHeader(tc.status)
				// Diagnostics that name another status must not fool the check.
				fmt.Fprint(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-supported","diagnostics":"GET /fhir/Patient/_history with 404 Not Found"}]}`)
			})
			_, err := c.HistoryPage(context.Background(), c.HistoryURL("Patient", "", "_since=2024-01-01T00%3A00%3A00Z"), func(export.HistoryEntry) error {
				t.Fatal("an entry of a refused request was visited")
				return nil
			})
			if err == nil {
				t.Fatal("no error")
			}
			if got := errors.Is(err, export.ErrNoHistory); got != tc.noHistory {
				t.Errorf("errors.Is(ErrNoHistory) = %v, want %v: %v", got, tc.noHistory, err)
			}
			if got := fault.KindOf(err); got != tc.kind {
				t.Errorf("kind %v, want %v: %v", got, tc.kind, err)
			}
		})
	}
}

func TestHistoryPageStaysAtTheSource(t *testing.T) {
	c, _, _ := setup(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"resourceType":"Bundle","type":"history","link":[{"relation":"next","url":"https://elsewhere.example/fhir/Patient/_history?page=2"}],"entry":[]}`)
	})
	_, err := c.HistoryPage(context.Background(), c.HistoryURL("Patient", "", ""), func(export.HistoryEntry) error { return nil })
	if !fault.Is(err, fault.Permanent) || errors.Is(err, export.ErrNoHistory) {
		t.Fatalf("a next link to another origin gave %v; want a permanent failure, not a missing history", err)
	}
	for _, u := range []string{"https://elsewhere.example/fhir/Patient/_history", "Patient/_history"} {
		if _, err := c.HistoryPage(context.Background(), u, func(export.HistoryEntry) error { return nil }); !fault.Is(err, fault.Permanent) {
			t.Errorf("HistoryPage(%q) = %v; want a permanent refusal", u, err)
		}
	}
}
