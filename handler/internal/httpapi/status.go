package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/rs/zerolog"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/fhir"
)

// manifest is the complete-status body (IG v2 §1.7). Field order is the
// wire order; error is always present, [] when empty, because clients crash
// or fail without it.
type manifest struct {
	TransactionTime     string         `json:"transactionTime"`
	Request             string         `json:"request"`
	RequiresAccessToken bool           `json:"requiresAccessToken"`
	Output              []manifestFile `json:"output"`
	Deleted             []manifestFile `json:"deleted"`
	Error               []manifestFile `json:"error"`
}

type manifestFile struct {
	Type  string `json:"type"`
	URL   string `json:"url"`
	Count int64  `json:"count"`
}

// status answers GET /jobs/{id}: 202 while running, 200 with the manifest
// when complete, the failure's status with an OperationOutcome when failed.
func (s *server) status(w http.ResponseWriter, r *http.Request, jobID string) error {
	st, err := s.engine.Status(r.Context(), jobID)
	if err != nil {
		return err // a lookup that failed transiently becomes a 503 "transient"
	}
	switch st.Phase {
	case export.InProgress:
		progress := fmt.Sprintf("%d resources", st.Done)
		if st.TotalKnown {
			progress = fmt.Sprintf("%d of %d resources", st.Done, st.Total)
		}
		h := w.Header()
		h.Set("Retry-After", retrySeconds(s.retryAfter))
		h.Set("X-Progress", progress)
		h.Set("Cache-Control", "no-store")
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

// failedJob is the answer for a job that ended in failure: the status its
// cause calls for, and the cause itself in the diagnostics. It is never
// "transient" (nor a 503), since polling again cannot change the outcome.
func failedJob(cause error) error {
	if cause == nil {
		cause = errors.New("unknown cause")
	}
	status := http.StatusInternalServerError
	switch fault.KindOf(cause) {
	case fault.Invalid:
		status = http.StatusBadRequest
	case fault.NotFound, fault.Cancelled:
		status = http.StatusNotFound
	case fault.Forbidden:
		status = http.StatusForbidden
	}
	code := fault.Code(cause)
	if code == "transient" {
		code = "exception"
	}
	return &httpError{status: status, code: code, err: fmt.Errorf("the export failed: %w", cause)}
}

func (s *server) writeManifest(w http.ResponseWriter, r *http.Request, jobID string, st *export.Status) error {
	filesURL := s.baseURL(r) + "/jobs/" + url.PathEscape(jobID) + "/files/"
	m := manifest{
		TransactionTime:     fhir.FormatInstant(st.Job.TransactionTime),
		Request:             st.Job.Request.RequestURL,
		RequiresAccessToken: false,
		Output:              make([]manifestFile, 0, len(st.Output)),
		Deleted:             []manifestFile{},
		Error:               make([]manifestFile, 0, len(st.Errors)),
	}
	for _, f := range st.Output {
		m.Output = append(m.Output, manifestFile{Type: f.Type, URL: filesURL + url.PathEscape(f.Name), Count: f.Count})
	}
	for _, f := range st.Errors {
		m.Error = append(m.Error, manifestFile{Type: "OperationOutcome", URL: filesURL + url.PathEscape(f.Name), Count: f.Count})
	}
	body, err := json.Marshal(m)
	if err != nil {
		return fault.Wrap(fault.Internal, err, "encoding the manifest")
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if !st.CompletedAt.IsZero() {
		h.Set("Expires", st.Expires(s.retention).UTC().Format(http.TimeFormat))
	}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
	return nil
}

// cancel answers DELETE /jobs/{id}: 202, or 404 for an unknown or already
// cancelled job.
func (s *server) cancel(w http.ResponseWriter, r *http.Request, jobID string) error {
	if err := s.engine.Cancel(r.Context(), jobID); err != nil {
		return err
	}
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// download answers GET /jobs/{id}/files/{name} by streaming the file.
func (s *server) download(w http.ResponseWriter, r *http.Request, jobID, name string) error {
	if !fileNamePattern.MatchString(name) {
		return notFound("job %s has no file %q", jobID, name)
	}
	rc, size, err := s.engine.OpenFile(r.Context(), jobID, name)
	if err != nil {
		return err
	}
	defer rc.Close()
	h := w.Header()
	h.Set("Content-Type", "application/fhir+ndjson")
	if size >= 0 {
		h.Set("Content-Length", strconv.FormatInt(size, 10))
	}
	w.WriteHeader(http.StatusOK)
	if n, err := io.Copy(w, rc); err != nil {
		// Too late for an OperationOutcome: the client sees a body shorter
		// than Content-Length, and net/http closes the connection.
		stateOf(r.Context()).err = fmt.Errorf("streaming %s after %d bytes: %w", name, n, err)
		zerolog.Ctx(r.Context()).Warn().Err(err).Str("file", name).Int64("sent", n).Msg("download interrupted")
	}
	return nil
}
