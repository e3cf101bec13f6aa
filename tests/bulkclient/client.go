// Package bulkclient is a small FHIR Bulk Data client that follows the IG the
// way real clients do: kick-off with Accept and Prefer, poll the
// Content-Location honouring Retry-After and reading X-Progress as the SMART
// bulk-data-client does (a running export must answer a percentage below
// 100 there), follow manifest pages (IG v3 allowPartialManifests: a 202 with
// a manifest and a next link, downloaded while the export runs), then
// download every output, deleted and error file and check that each line is
// a resource of the file's type (Bundle for deleted, OperationOutcome for
// error) and that the count matches. The end-to-end tests use it, and
// cmd/bulk-client runs it against `make run`.
package bulkclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Client talks to one $export server.
type Client struct {
	Base    string // service base URL, e.g. http://127.0.0.1:7071
	HTTP    *http.Client
	MaxWait time.Duration // give up polling after this (default 5 minutes)
	// Progress, when set, is called with every in-progress answer: the
	// percentage read from X-Progress (see Percent) and the header itself.
	Progress func(percent int, header string)
}

// Manifest is the complete-status body, or one page of it.
type Manifest struct {
	TransactionTime     string         `json:"transactionTime"`
	Request             string         `json:"request"`
	RequiresAccessToken bool           `json:"requiresAccessToken"`
	Output              []ManifestFile `json:"output"`
	Deleted             []ManifestFile `json:"deleted"`
	Error               []ManifestFile `json:"error"`
	Link                []Link         `json:"link,omitempty"` // IG v3 paging: {"relation":"next"}
}

// Link is a manifest link.
type Link struct {
	Relation string `json:"relation"`
	URL      string `json:"url"`
}

// Next is the URL of the next manifest page; "" on the last.
func (m Manifest) Next() string {
	for _, l := range m.Link {
		if l.Relation == "next" {
			return l.URL
		}
	}
	return ""
}

// Page is one manifest page a status poll answered.
type Page struct {
	URL      string // the URL asked (the polling URL or a next link)
	Status   int    // 202: a partial manifest of a running export; 200: the export is complete
	Manifest Manifest
}

// ManifestFile is one output, deleted or error item.
type ManifestFile struct {
	Type  string `json:"type"`
	URL   string `json:"url"`
	Count *int64 `json:"count,omitempty"`
}

// Result is a finished export: the manifest (the union of its pages) and
// every downloaded line.
type Result struct {
	StatusURL string
	Manifest  Manifest
	Resources map[string][][]byte // type -> lines of the output files, in file order
	Deleted   [][]byte            // lines of the deleted files (Bundles)
	Errors    [][]byte            // lines of the error files (OperationOutcomes)
	Polls     int
	Pages     []Page // the manifest pages, in the order they came
	// Early counts the files downloaded from partial manifests, before the
	// export was complete.
	Early int
}

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// KickOff starts an export with a GET on path (e.g. "/$export?_type=Patient")
// and returns the polling URL.
func (c *Client) KickOff(ctx context.Context, path string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Base+path, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", "application/fhir+json")
	req.Header.Set("Prefer", "respond-async")
	resp, err := c.http().Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("kick-off %s: %s: %s", path, resp.Status, body)
	}
	loc := resp.Header.Get("Content-Location")
	if !strings.HasPrefix(loc, "http://") && !strings.HasPrefix(loc, "https://") {
		return "", fmt.Errorf("kick-off %s: Content-Location %q is not an absolute URL", path, loc)
	}
	return loc, nil
}

// Wait polls statusURL until the export completes, following manifest
// pages, and returns the whole manifest (the union of the pages).
func (c *Client) Wait(ctx context.Context, statusURL string) (Manifest, int, error) {
	return c.Follow(ctx, statusURL, nil)
}

// Follow polls statusURL as the SMART bulk-data-client does and hands each
// manifest page to onPage (when not nil) as it arrives: a 202 whose body is
// a manifest with a next link is a partial manifest of a running export;
// the client goes on at the link. A 202 without one is polled again after
// Retry-After; a 200 without a next link is the last page. A file listed by
// two pages, or a page that repeats, is an error: each file must come once.
// It returns the union of the pages and the number of polls.
func (c *Client) Follow(ctx context.Context, statusURL string, onPage func(context.Context, Page) error) (Manifest, int, error) {
	maxWait := c.MaxWait
	if maxWait == 0 {
		maxWait = 5 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, maxWait)
	defer cancel()
	var all Manifest
	seenPages := map[string]bool{}
	seenFiles := map[string]string{} // file URL without its query -> the page that listed it
	url := statusURL
	for polls := 1; ; polls++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return all, polls, err
		}
		req.Header.Set("Accept", "application/json")
		resp, err := c.http().Do(req)
		if err != nil {
			return all, polls, err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted {
			return all, polls, &StatusError{Code: resp.StatusCode, Body: body}
		}
		page, err := readPage(resp, body)
		if err != nil {
			return all, polls, fmt.Errorf("%s: %w", url, err)
		}
		last := resp.StatusCode == http.StatusOK && (page == nil || page.Next() == "")
		if page != nil && (page.Next() != "" || last) {
			if seenPages[url] {
				return all, polls, fmt.Errorf("manifest page %s came twice", url)
			}
			seenPages[url] = true
			for _, f := range slices.Concat(page.Output, page.Deleted, page.Error) {
				key, _, _ := strings.Cut(f.URL, "?") // SAS URLs differ per request
				if other, dup := seenFiles[key]; dup {
					return all, polls, fmt.Errorf("file %s is listed by page %s and again by page %s", key, other, url)
				}
				seenFiles[key] = url
			}
			all.TransactionTime, all.Request, all.RequiresAccessToken = page.TransactionTime, page.Request, page.RequiresAccessToken
			all.Output = appendFiles(all.Output, page.Output)
			all.Deleted = appendFiles(all.Deleted, page.Deleted)
			all.Error = appendFiles(all.Error, page.Error)
			if onPage != nil {
				if err := onPage(ctx, Page{URL: url, Status: resp.StatusCode, Manifest: *page}); err != nil {
					return all, polls, err
				}
			}
			if last {
				return all, polls, nil
			}
			url = page.Next()
			if resp.StatusCode == http.StatusOK {
				continue // the export is complete: the next page is ready
			}
		} else if last {
			return all, polls, fmt.Errorf("a 200 status answer without a manifest")
		}
		// A running export: wait as told.
		wait, err := retryAfter(resp.Header.Get("Retry-After"))
		if err != nil {
			return all, polls, err
		}
		progress := resp.Header.Get("X-Progress")
		pct, ok := Percent(progress)
		if !ok || pct < 0 || pct > 99 || len(progress) > 100 {
			return all, polls, fmt.Errorf("X-Progress %q of a running export: want a percentage from 0 to 99 first, under 100 characters", progress)
		}
		if c.Progress != nil {
			c.Progress(pct, progress)
		}
		select {
		case <-ctx.Done():
			return all, polls, fmt.Errorf("export did not finish in %s (last X-Progress %q)", maxWait, progress)
		case <-time.After(wait):
		}
	}
}

// appendFiles appends a page's list to the union's, keeping a list that a
// page sent, even empty, apart from one no page sent (nil).
func appendFiles(all, page []ManifestFile) []ManifestFile {
	if all == nil && page != nil {
		all = []ManifestFile{}
	}
	return append(all, page...)
}

// readPage reads a status answer's manifest: nil for a 202 without a body.
// A manifest must be application/json and hold the keys clients rely on.
func readPage(resp *http.Response, body []byte) (*Manifest, error) {
	if resp.StatusCode == http.StatusAccepted && len(bytes.TrimSpace(body)) == 0 {
		return nil, nil
	}
	if ct := resp.Header.Get("Content-Type"); !strings.Contains(ct, "application/json") {
		return nil, fmt.Errorf("manifest Content-Type %q is not application/json", ct)
	}
	var m Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("manifest is not JSON: %w", err)
	}
	if err := checkManifestKeys(body); err != nil {
		return nil, err
	}
	return &m, nil
}

// StatusError is a status answer that is neither 200 nor 202.
type StatusError struct {
	Code int
	Body []byte
}

func (e *StatusError) Error() string { return fmt.Sprintf("status %d: %s", e.Code, e.Body) }

// Percent reads an X-Progress as the SMART bulk-data-client does
// (parseInt(header.trim(), 10) in its waitForExport): the leading integer,
// after white space and an optional sign, is the percentage complete, and
// anything after the digits is ignored. ok is false when the header does not
// start with a number, which that client reports as unknown progress.
func Percent(header string) (percent int, ok bool) {
	s := strings.TrimSpace(header)
	sign := 1
	if s != "" && (s[0] == '+' || s[0] == '-') {
		if s[0] == '-' {
			sign = -1
		}
		s = s[1:]
	}
	digits := 0
	for digits < len(s) && s[digits] >= '0' && s[digits] <= '9' {
		digits++
	}
	if digits == 0 {
		return 0, false
	}
	n, err := strconv.Atoi(s[:min(digits, 18)]) // JavaScript would lose precision past that anyway
	if err != nil {
		return 0, false
	}
	return sign * n, true
}

// retryAfter reads an integer Retry-After as the IG clients do.
func retryAfter(v string) (time.Duration, error) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 1 || n > 120 {
		return 0, fmt.Errorf("Retry-After %q is not a small whole number of seconds", v)
	}
	return time.Duration(n) * time.Second, nil
}

func checkManifestKeys(body []byte) error {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(body, &keys); err != nil {
		return err
	}
	for _, k := range []string{"transactionTime", "request", "requiresAccessToken", "output", "error"} {
		if _, ok := keys[k]; !ok {
			return fmt.Errorf("manifest lacks the required key %q", k)
		}
	}
	return nil
}

// Download fetches every output and error file of m and checks each line.
// It leaves out the deleted files; DownloadAll fetches those too.
func (c *Client) Download(ctx context.Context, m Manifest) (map[string][][]byte, [][]byte, error) {
	res := &Result{Resources: map[string][][]byte{}}
	m.Deleted = nil
	if err := c.DownloadAll(ctx, m, res); err != nil {
		return nil, nil, err
	}
	return res.Resources, res.Errors, nil
}

// DownloadAll fetches every file of m (a manifest or one page of it) into
// res: output lines by type, deleted lines (Bundles) and error lines
// (OperationOutcomes), each file checked as Lines checks it.
func (c *Client) DownloadAll(ctx context.Context, m Manifest, res *Result) error {
	if res.Resources == nil {
		res.Resources = map[string][][]byte{}
	}
	for _, f := range m.Output {
		lines, err := c.Lines(ctx, f)
		if err != nil {
			return err
		}
		res.Resources[f.Type] = append(res.Resources[f.Type], lines...)
	}
	for _, f := range m.Deleted {
		if f.Type != "Bundle" {
			return fmt.Errorf("deleted file %s has type %q; the IG's deleted files hold Bundles", f.URL, f.Type)
		}
		lines, err := c.Lines(ctx, f)
		if err != nil {
			return err
		}
		res.Deleted = append(res.Deleted, lines...)
	}
	for _, f := range m.Error {
		if f.Type != "OperationOutcome" {
			return fmt.Errorf("error file %s has type %q, not OperationOutcome", f.URL, f.Type)
		}
		lines, err := c.Lines(ctx, f)
		if err != nil {
			return err
		}
		res.Errors = append(res.Errors, lines...)
	}
	return nil
}

// Lines downloads one file and returns its lines, checking that each is a
// JSON resource of the file's type and that there are as many as its count.
func (c *Client) Lines(ctx context.Context, f ManifestFile) ([][]byte, error) {
	return c.file(ctx, f)
}

func (c *Client) file(ctx context.Context, f ManifestFile) ([][]byte, error) {
	if !strings.HasPrefix(f.URL, "http://") && !strings.HasPrefix(f.URL, "https://") {
		return nil, fmt.Errorf("file URL %q is not absolute", f.URL)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.URL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("download %s: %s: %s", f.URL, resp.Status, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/fhir+ndjson") {
		return nil, fmt.Errorf("download %s: Content-Type %q is not application/fhir+ndjson", f.URL, ct)
	}
	var lines [][]byte
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 1<<20), 10_000_000)
	for sc.Scan() {
		line := bytes.Clone(sc.Bytes())
		var r struct {
			ResourceType string `json:"resourceType"`
		}
		if err := json.Unmarshal(line, &r); err != nil {
			return nil, fmt.Errorf("%s line %d is not JSON: %w", f.URL, len(lines)+1, err)
		}
		if r.ResourceType != f.Type {
			return nil, fmt.Errorf("%s line %d is a %s in a %s file", f.URL, len(lines)+1, r.ResourceType, f.Type)
		}
		lines = append(lines, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", f.URL, err)
	}
	if f.Count != nil && *f.Count != int64(len(lines)) {
		return nil, fmt.Errorf("%s: manifest count %d but the file has %d lines", f.URL, *f.Count, len(lines))
	}
	return lines, nil
}

// Export runs a whole export: kick-off, then the status polls, downloading
// each manifest page's files as the page arrives (so a partial manifest's
// files are fetched while the export runs).
func (c *Client) Export(ctx context.Context, path string) (*Result, error) {
	statusURL, err := c.KickOff(ctx, path)
	if err != nil {
		return nil, err
	}
	res := &Result{StatusURL: statusURL, Resources: map[string][][]byte{}}
	m, polls, err := c.Follow(ctx, statusURL, func(ctx context.Context, p Page) error {
		res.Pages = append(res.Pages, p)
		if p.Status == http.StatusAccepted {
			res.Early += len(p.Manifest.Output) + len(p.Manifest.Deleted) + len(p.Manifest.Error)
		}
		return c.DownloadAll(ctx, p.Manifest, res)
	})
	if err != nil {
		return nil, err
	}
	res.Manifest, res.Polls = m, polls
	return res, nil
}
