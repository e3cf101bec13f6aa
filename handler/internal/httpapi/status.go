package httpapi

import (
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/rs/zerolog"

	"github.com/azfhir/bulkexport/handler/internal/auth"
	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/fhir"
)

// manifest is the complete-status body (IG v2 §1.7), and a page of it for a
// job that allowed partial manifests (IG v3, see pages.go). Field order is
// the wire order; error is always present, [] when empty, because clients
// crash or fail without it.
type manifest struct {
	TransactionTime     string         `json:"transactionTime"`
	Request             string         `json:"request"`
	RequiresAccessToken bool           `json:"requiresAccessToken"`
	Output              []manifestFile `json:"output"`
	Deleted             []manifestFile `json:"deleted"`
	Error               []manifestFile `json:"error"`
	Link                []manifestLink `json:"link,omitempty"` // "next": the following page
}

type manifestLink struct {
	Relation string `json:"relation"`
	URL      string `json:"url"`
}

type manifestFile struct {
	Type  string `json:"type"`
	URL   string `json:"url"`
	Count int64  `json:"count"`
}

// status answers GET /jobs/{id}: 202 while running, 200 with the manifest
// when complete, the failure's status with an OperationOutcome when failed.
func (s *server) status(w http.ResponseWriter, r *http.Request, jobID string) error {
	st, err := s.engine.Status(r.Context(), jobID, stateOf(r.Context()).owner)
	if err != nil {
		return err // a lookup that failed transiently becomes a 503 "transient"
	}
	if st.Phase == export.InProgress {
		// Polls of a running job are what keeps it from hanging on a lost
		// message: the watchdog runs here, best effort, and never on a
		// download. Its failure does not change the answer.
		if _, err := s.engine.RestartStalled(r.Context(), jobID); err != nil {
			zerolog.Ctx(r.Context()).Warn().Err(err).Msg("the stalled-item watchdog failed")
		}
	}
	if st.Phase != export.Failed && st.Job != nil && st.Job.Request.AllowPartialManifests {
		return s.manifestPage(w, r, jobID, st)
	}
	switch st.Phase {
	case export.InProgress:
		s.inProgressHeaders(w, st)
		w.WriteHeader(http.StatusAccepted)
		return nil
	case export.Completed:
		if st.Job == nil {
			return fault.New(fault.Internal, "job %s is complete but the engine returned no job", jobID)
		}
		return s.writeManifest(w, r, jobID, st)
	case export.Failed:
		return failedJob(st.Failure)
	}
	return fault.New(fault.Internal, "job %s has an unknown phase %d", jobID, st.Phase)
}

// inProgressHeaders are the headers of every answer about a running job.
func (s *server) inProgressHeaders(w http.ResponseWriter, st *export.Status) {
	h := w.Header()
	h.Set("Retry-After", retrySeconds(s.retryAfter))
	h.Set("X-Progress", progressHeader(st))
	h.Set("Cache-Control", "no-store")
}

// progressHeader is the X-Progress of a job in progress. It starts with an
// integer percentage below 100, because clients read the leading integer as
// one (the SMART bulk-data-client does, and takes 100 or more as done), then
// says what it counts: "43% (16,531 of 38,483 resources)" when the source's
// counts are exact, else "43% (estimated; 16,531 resources, 3 of 7 work
// items done)": work items, not types, since a large type is split into
// windows (one item each) and a _since export has an item per type for its
// deletions. It is at most about 90 characters, under the IG's 100.
func progressHeader(st *export.Status) string {
	pct := min(max(st.Percent, 0), 99)
	switch {
	case !st.Planned:
		return fmt.Sprintf("%d%% (planning the export)", pct)
	case st.TotalKnown:
		return fmt.Sprintf("%d%% (%s of %s resources)", pct, groupThousands(st.Done), groupThousands(st.Total))
	default:
		return fmt.Sprintf("%d%% (estimated; %s resources, %d of %d work items done)", pct, groupThousands(st.Done), st.ItemsDone, st.ItemsTotal)
	}
}

// groupThousands writes n with a comma between groups of three digits.
func groupThousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	sign := ""
	if n < 0 {
		sign, s = "-", s[1:]
	}
	var b strings.Builder
	b.WriteString(sign)
	for i, d := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(d)
	}
	return b.String()
}

// failedJob is the answer for a job that ended in failure: the cause in the
// diagnostics, with a status and issue type that statusOf derives from the
// cause's kind (never 503 "transient": polling again cannot change it).
func failedJob(cause error) error {
	if cause == nil {
		cause = errors.New("unknown cause")
	}
	return &jobFailed{cause: cause}
}

// newManifest is a manifest without files: the fields every page repeats.
func (s *server) newManifest(st *export.Status) manifest {
	return manifest{
		TransactionTime: fhir.FormatInstant(st.Job.TransactionTime),
		Request:         st.Job.Request.RequestURL,
		// The files stream through this API, which wants the owner's token
		// for them as for the manifest (AUTH_MODE=none has no tokens at all).
		// With SAS downloads the URLs themselves are the (short-lived,
		// read-only, one-blob) credential, and storage wants no token.
		RequiresAccessToken: s.sasTTL == 0 && s.auth != nil && s.auth.Mode() != auth.ModeNone,
		Output:              []manifestFile{},
		Deleted:             []manifestFile{},
		Error:               []manifestFile{},
	}
}

// fileURLs returns the URL of a file of st's job: the proxy route, or a SAS
// URL minted now, so every manifest request gets links that live SASTTL
// from then.
func (s *server) fileURLs(r *http.Request, jobID string, st *export.Status) func(name string) (string, error) {
	filesURL := s.baseURL(r) + "/jobs/" + url.PathEscape(jobID) + "/files/"
	return func(name string) (string, error) {
		if s.sasTTL == 0 {
			return filesURL + url.PathEscape(name), nil
		}
		return s.engine.FileURL(r.Context(), st.Job, name, s.sasTTL)
	}
}

func (s *server) writeManifest(w http.ResponseWriter, r *http.Request, jobID string, st *export.Status) error {
	m := s.newManifest(st)
	fileURL := s.fileURLs(r, jobID, st)
	for _, f := range st.Output {
		u, err := fileURL(f.Name)
		if err != nil {
			return err
		}
		m.Output = append(m.Output, manifestFile{Type: f.Type, URL: u, Count: f.Count})
	}
	for _, f := range st.Deleted { // transaction Bundles of DELETEs (_since)
		u, err := fileURL(f.Name)
		if err != nil {
			return err
		}
		m.Deleted = append(m.Deleted, manifestFile{Type: "Bundle", URL: u, Count: f.Count})
	}
	for _, f := range st.Errors {
		u, err := fileURL(f.Name)
		if err != nil {
			return err
		}
		m.Error = append(m.Error, manifestFile{Type: "OperationOutcome", URL: u, Count: f.Count})
	}
	return s.sendManifest(w, st, m, http.StatusOK)
}

// sendManifest writes m with status code: 200 for a completed job (with
// its Expires), 202 for a partial manifest of a running one.
func (s *server) sendManifest(w http.ResponseWriter, st *export.Status, m manifest, code int) error {
	body, err := json.Marshal(m)
	if err != nil {
		return fault.Wrap(fault.Internal, err, "encoding the manifest")
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if code == http.StatusOK && !st.CompletedAt.IsZero() {
		h.Set("Expires", st.Expires(s.retention).UTC().Format(http.TimeFormat))
	}
	w.WriteHeader(code)
	_, _ = w.Write(body)
	return nil
}

// cancel answers DELETE /jobs/{id}: 202, or 404 for an unknown or already
// cancelled job.
func (s *server) cancel(w http.ResponseWriter, r *http.Request, jobID string) error {
	if err := s.engine.Cancel(r.Context(), jobID, stateOf(r.Context()).owner); err != nil {
		return err
	}
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// download answers GET /jobs/{id}/files/{name} by streaming the file. Files
// are stored uncompressed (docs/design.md, "Compressed downloads"); a client
// whose Accept-Encoding takes gzip gets the stream gzipped on the way, with
// Content-Encoding: gzip and no Content-Length (the compressed size is not
// known before the last byte). The access and audit lines count the bytes
// sent, compressed or not.
func (s *server) download(w http.ResponseWriter, r *http.Request, jobID, name string) error {
	if !fileNamePattern.MatchString(name) {
		return notFound("job %s has no file %q", jobID, name)
	}
	rc, size, err := s.engine.OpenFile(r.Context(), jobID, stateOf(r.Context()).owner, name)
	if err != nil {
		return err
	}
	defer rc.Close()
	gzipped := acceptsGzip(r.Header.Values("Accept-Encoding"))
	h := w.Header()
	h.Set("Content-Type", "application/fhir+ndjson")
	h.Set("Vary", "Accept-Encoding") // the same URL answers two encodings
	switch {
	case gzipped:
		h.Set("Content-Encoding", "gzip")
	case size >= 0:
		h.Set("Content-Length", strconv.FormatInt(size, 10))
	}
	w.WriteHeader(http.StatusOK)
	var n int64
	if gzipped {
		// BestSpeed: NDJSON of FHIR resources shrinks about tenfold even at
		// level 1, which runs several times faster than the default level on
		// the one core a download may take.
		zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed) // the level is valid
		n, err = io.Copy(zw, rc)
		if cerr := zw.Close(); err == nil {
			err = cerr
		}
	} else {
		n, err = io.Copy(w, rc)
	}
	if err != nil {
		// Too late for an OperationOutcome: the client sees a body shorter
		// than Content-Length (or a gzip stream without its trailer), and
		// net/http closes the connection.
		stateOf(r.Context()).err = fmt.Errorf("streaming %s after %d bytes of the file: %w", name, n, err)
		zerolog.Ctx(r.Context()).Warn().Err(err).Str("file", name).Int64("read", n).Bool("gzip", gzipped).Msg("download interrupted")
	}
	return nil
}

// acceptsGzip reads Accept-Encoding (RFC 9110 §12.5.3) over any number of
// header lines: gzip (or x-gzip), else "*", with a q-value above zero, and
// not less than identity's when the client ranks identity explicitly. No
// header, "identity" alone, or gzip;q=0 means the plain file.
func acceptsGzip(lines []string) bool {
	gzipQ, starQ, identityQ := -1.0, -1.0, -1.0
	for _, line := range lines {
		for item := range strings.SplitSeq(line, ",") {
			coding, params, _ := strings.Cut(item, ";")
			q := qValue(params)
			switch strings.ToLower(strings.TrimSpace(coding)) {
			case "gzip", "x-gzip":
				gzipQ = max(gzipQ, q)
			case "*":
				starQ = max(starQ, q)
			case "identity":
				identityQ = max(identityQ, q)
			}
		}
	}
	if gzipQ < 0 {
		gzipQ = starQ // "*" stands for every coding not named
	}
	return gzipQ > 0 && gzipQ >= identityQ
}
