// Command bulk-client runs one FHIR Bulk Data export against a server the way
// an IG client does, downloads every file into a folder and prints a summary.
// With allowPartialManifests=true in the path it downloads the files of each
// partial manifest while the export runs.
//
//	bulk-client -base http://127.0.0.1:7071 -path '/$export?allowPartialManifests=true' -out ./export
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/azfhir/bulkexport/tests/bulkclient"
)

func main() {
	base := flag.String("base", "http://127.0.0.1:7071", "service base URL")
	path := flag.String("path", "/$export", "kick-off path and query, e.g. /Patient/$export?_type=Patient,Observation")
	out := flag.String("out", "", "folder to write <Type>.ndjson files into, with deleted/Bundle.ndjson and error/OperationOutcome.ndjson (optional)")
	wait := flag.Duration("wait", 10*time.Minute, "give up after this long")
	token := flag.String("token", os.Getenv("BULK_TOKEN"), "bearer token sent to the service (default $BULK_TOKEN); never sent to other hosts, such as SAS download URLs")
	flag.Parse()

	c := &bulkclient.Client{Base: strings.TrimRight(*base, "/"), MaxWait: *wait}
	if *token != "" {
		c.HTTP = &http.Client{Transport: &bearer{base: c.Base + "/", token: *token, next: http.DefaultTransport}}
	}
	start := time.Now()
	res, err := c.Export(context.Background(), *path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "export failed:", err)
		os.Exit(1)
	}
	types := make([]string, 0, len(res.Resources))
	total := 0
	for t, lines := range res.Resources {
		types = append(types, t)
		total += len(lines)
	}
	sort.Strings(types)
	fmt.Printf("export complete in %s: %d resources of %d types in %d files, %d polls, transactionTime %s\n",
		time.Since(start).Round(time.Millisecond), total, len(types), len(res.Manifest.Output), res.Polls, res.Manifest.TransactionTime)
	for _, t := range types {
		fmt.Printf("  %-28s %6d\n", t, len(res.Resources[t]))
	}
	if len(res.Deleted) > 0 {
		fmt.Printf("  %d deletions (Bundle lines) in the deleted files\n", len(res.Deleted))
	}
	if len(res.Errors) > 0 {
		fmt.Printf("  %d OperationOutcome lines in the error files\n", len(res.Errors))
	}
	if len(res.Pages) > 1 || res.Early > 0 {
		fmt.Printf("  %d manifest pages; %d files downloaded while the export ran\n", len(res.Pages), res.Early)
	}
	if *out == "" {
		return
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	files := map[string][][]byte{}
	for _, t := range types {
		files[t+".ndjson"] = res.Resources[t]
	}
	if len(res.Deleted) > 0 {
		files[filepath.Join("deleted", "Bundle.ndjson")] = res.Deleted
	}
	if len(res.Errors) > 0 {
		files[filepath.Join("error", "OperationOutcome.ndjson")] = res.Errors
	}
	for name, lines := range files {
		var b []byte
		for _, l := range lines {
			b = append(append(b, l...), '\n')
		}
		path := filepath.Join(*out, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	fmt.Println("files written to", *out)
}

// bearer adds the token to requests under the service's base URL only, so
// that it never reaches the storage account a SAS download URL points at.
type bearer struct {
	base, token string
	next        http.RoundTripper
}

func (b *bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasPrefix(r.URL.String(), b.base) {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+b.token)
	}
	return b.next.RoundTrip(r)
}
