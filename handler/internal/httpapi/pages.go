package httpapi

import (
	"net/http"
	"net/url"

	"github.com/azfhir/bulkexport/handler/internal/export"
)

// DefaultManifestPageFiles is how many files one manifest page lists at
// most (Options.ManifestPageFiles). A manifest entry is about 150 bytes with
// proxy URLs and about 450 with SAS URLs, so a page stays under about 250 KB,
// which the Functions host buffers and a client parses without trouble;
// 500 files of up to 64 MiB are up to 31 GiB, so most exports complete in
// one page, as they did before paging.
const DefaultManifestPageFiles = 500

// manifestPage answers a status request of a job that allowed partial
// manifests (IG v3 allowPartialManifests). Its manifest is a chain of
// pages, each linking to the next with {"relation":"next"}; the union of
// the pages a client follows from the polling URL is the complete manifest,
// each file once. The IG wants a manifest that was returned never to
// change except by gaining a link or fresher file URLs, so every manifest
// served while the job runs lives at a URL that fixes its files:
//
//   - The polling URL, and an open page /jobs/{id}?from=<position>, name
//     the files already handed out (export.Position; the polling URL is the
//     zero position). While the job runs they answer 202 without a body if
//     no file past the position is complete, else 303 See Other to the
//     closed page of the complete files past it (at most pageFiles). Once the job is complete they answer 200
//     with the files past the position, at most pageFiles, and a next link
//     to the open page after them while files remain: the job's files are
//     then final, so that answer never changes either.
//   - A closed page /jobs/{id}?from=<position>&take=<advance> lists exactly
//     the files from the position to the position advanced by the advance
//     (export.Position.Add), which are complete and never change
//     (export.Status.Files), and links to the open page at its end. It
//     answers 202 while the job runs and 200 after.
//
// A position is the count of files handed out per work item and file list,
// compactly encoded (export.Position.Encode), so a page URL is the same
// whoever computes it and from any instance, and short for thousands of
// work items. Nothing is stored. The status request is owner-checked as
// always, so a page of another client's job is a 404, as is a position no
// link of ours holds.
func (s *server) manifestPage(w http.ResponseWriter, r *http.Request, jobID string, st *export.Status) error {
	q := r.URL.Query()
	from, err := export.DecodePosition(q.Get("from"), st.Items)
	if err != nil {
		return notFound("job %s has no such manifest page: %v", jobID, err)
	}
	if q.Has("take") {
		take, err := export.DecodePosition(q.Get("take"), st.Items)
		if err != nil {
			return notFound("job %s has no such manifest page: %v", jobID, err)
		}
		to := from.Add(take)
		page, ok := export.PageBetween(st.Files, from, to)
		if !ok {
			return notFound("job %s has no such manifest page", jobID)
		}
		return s.sendPage(w, r, jobID, st, page, s.pageURL(r, jobID, st, to, nil))
	}
	page, next, more := export.PageAfter(st.Files, from, s.pageFiles)
	if st.Phase == export.InProgress {
		s.inProgressHeaders(w, st)
		if len(page) == 0 {
			w.WriteHeader(http.StatusAccepted)
			return nil
		}
		w.Header().Set("Location", s.pageURL(r, jobID, st, from, next))
		w.WriteHeader(http.StatusSeeOther)
		return nil
	}
	link := ""
	if more {
		link = s.pageURL(r, jobID, st, next, nil)
	}
	return s.sendPage(w, r, jobID, st, page, link)
}

// pageURL is the absolute URL of the open page at from (to nil) or of the
// closed page from from to to.
func (s *server) pageURL(r *http.Request, jobID string, st *export.Status, from, to export.Position) string {
	q := "?from=" + from.Encode(st.Items) // base64url: nothing to escape
	if to != nil {
		q += "&take=" + from.Sub(to).Encode(st.Items)
	}
	return s.baseURL(r) + "/jobs/" + url.PathEscape(jobID) + q
}

// sendPage writes one manifest page: 202 with the progress headers while
// the job runs, 200 once it is complete; next, when set, is its link.
func (s *server) sendPage(w http.ResponseWriter, r *http.Request, jobID string, st *export.Status, page []export.ManifestEntry, next string) error {
	m := s.newManifest(st)
	fileURL := s.fileURLs(r, jobID, st)
	for _, f := range page {
		u, err := fileURL(f.Name)
		if err != nil {
			return err
		}
		e := manifestFile{Type: f.Type, URL: u, Count: f.Count}
		switch f.Section {
		case export.SectionError:
			m.Error = append(m.Error, e)
		case export.SectionDeleted:
			m.Deleted = append(m.Deleted, e)
		default:
			m.Output = append(m.Output, e)
		}
	}
	if next != "" {
		m.Link = []manifestLink{{Relation: "next", URL: next}}
	}
	code := http.StatusOK
	if st.Phase == export.InProgress {
		s.inProgressHeaders(w, st)
		code = http.StatusAccepted
	}
	return s.sendManifest(w, st, m, code)
}
