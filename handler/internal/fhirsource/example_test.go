package fhirsource_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fhirsource"
)

// Example pages through a search: each page's entries are visited while the
// page streams in, and the next link leads to the following page.
func Example() {
	src := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("page") == "2" {
			fmt.Fprint(w, `{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","id":"b"},"search":{"mode":"match"}}]}`)
			return
		}
		fmt.Fprint(w, `{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","id":"a"},"search":{"mode":"match"}}],
			"link":[{"relation":"next","url":"Patient?_count=1&page=2"}]}`)
	}))
	defer src.Close()

	c, err := fhirsource.New(fhirsource.Options{BaseURL: src.URL + "/fhir"})
	if err != nil {
		panic(err)
	}
	for next := c.SearchURL("Patient", "_count=1"); next != ""; {
		next, err = c.Page(context.Background(), next, func(e export.Entry) error {
			fmt.Printf("%s %s\n", e.Mode, e.Resource)
			return nil
		})
		if err != nil {
			panic(err)
		}
	}
	// Output:
	// match {"resourceType":"Patient","id":"a"}
	// match {"resourceType":"Patient","id":"b"}
}
