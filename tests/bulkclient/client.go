// Package bulkclient is a small FHIR Bulk Data client that follows the IG the
// way real clients do: kick-off with Accept and Prefer, poll the
// Content-Location honouring Retry-After and reading X-Progress as the SMART
// bulk-data-client does (a running export must answer a percentage below
// 100 there), then download every file of the manifest and check that each line is a resource of the file's type and that
// the count matches. The end-to-end tests use it, and cmd/bulk-client runs it
// against `make run`.
package bulkclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
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

// Manifest is the complete-status body.
type Manifest struct {
	TransactionTime     string         `json:"transactionTime"`
	Request             string         `json:"request"`
	RequiresAccessToken bool           `json:"requiresAccessToken"`
	Output              []ManifestFile `json:"output"`
	Deleted             []ManifestFile `json:"deleted"`
	Error               []ManifestFile `json:"error"`
}

// ManifestFile is one output, deleted or error item.
type ManifestFile struct {
	Type  string `json:"type"`
	URL   string `json:"url"`
	Count *int64 `json:"count,omitempty"`
}

// Result is a finished export: the manifest and every downloaded line by type.
type Result struct {
	StatusURL string
	Manifest  Manifest
	Resources map[string][][]byte // type -> lines, in file order
	Errors    [][]byte            // lines of the error files
	Polls     int
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

// Wait polls statusURL until the export completes, then returns the manifest.
func (c *Client) Wait(ctx context.Context, statusURL string) (Manifest, int, error) {
	maxWait := c.MaxWait
	if maxWait == 0 {
		maxWait = 5 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, maxWait)
	defer cancel()
	for polls := 1; ; polls++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, statusURL, nil)
		if err != nil {
			return Manifest{}, polls, err
		}
		req.Header.Set("Accept", "application/json")
		resp, err := c.http().Do(req)
		if err != nil {
			return Manifest{}, polls, err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			if ct := resp.Header.Get("Content-Type"); !strings.Contains(ct, "application/json") {
				return Manifest{}, polls, fmt.Errorf("manifest Content-Type %q is not application/json", ct)
			}
			var m Manifest
			if err := json.Unmarshal(body, &m); err != nil {
				return Manifest{}, polls, fmt.Errorf("manifest is not JSON: %w", err)
			}
			if err := checkManifestKeys(body); err != nil {
				return Manifest{}, polls, err
			}
			return m, polls, nil
		case http.StatusAccepted:
			wait, err := retryAfter(resp.Header.Get("Retry-After"))
			if err != nil {
				return Manifest{}, polls, err
			}
			progress := resp.Header.Get("X-Progress")
			pct, ok := Percent(progress)
			if !ok || pct < 0 || pct > 99 || len(progress) > 100 {
				return Manifest{}, polls, fmt.Errorf("X-Progress %q of a running export: want a percentage from 0 to 99 first, under 100 characters", progress)
			}
			if c.Progress != nil {
				c.Progress(pct, progress)
			}
			select {
			case <-ctx.Done():
				return Manifest{}, polls, fmt.Errorf("export did not finish in %s (last X-Progress %q)", maxWait, resp.Header.Get("X-Progress"))
			case <-time.After(wait):
			}
		default:
			return Manifest{}, polls, &StatusError{Code: resp.StatusCode, Body: body}
		}
	}
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
func (c *Client) Download(ctx context.Context, m Manifest) (map[string][][]byte, [][]byte, error) {
	out := map[string][][]byte{}
	for _, f := range m.Output {
		lines, err := c.file(ctx, f)
		if err != nil {
			return nil, nil, err
		}
		out[f.Type] = append(out[f.Type], lines...)
	}
	var errs [][]byte
	for _, f := range m.Error {
		lines, err := c.file(ctx, f)
		if err != nil {
			return nil, nil, err
		}
		errs = append(errs, lines...)
	}
	return out, errs, nil
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

// Export runs a whole export: kick-off, wait, download.
func (c *Client) Export(ctx context.Context, path string) (*Result, error) {
	statusURL, err := c.KickOff(ctx, path)
	if err != nil {
		return nil, err
	}
	m, polls, err := c.Wait(ctx, statusURL)
	if err != nil {
		return nil, err
	}
	res, errs, err := c.Download(ctx, m)
	if err != nil {
		return nil, err
	}
	return &Result{StatusURL: statusURL, Manifest: m, Resources: res, Errors: errs, Polls: polls}, nil
}
