package export

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// newJobID returns a sortable, unguessable job id: 12 hex digits of Unix
// milliseconds and 32 of randomness. The 128 random bits make an id
// impossible to guess even though the time part is not; owners are checked
// as well (activeJob), so a leaked id alone reaches nothing.
func newJobID(now time.Time) string {
	var r [16]byte
	_, _ = rand.Read(r[:])
	return fmt.Sprintf("%012x%s", now.UnixMilli(), hex.EncodeToString(r[:]))
}

var jobIDPattern = regexp.MustCompile(`^[0-9a-f]{44}$`)

// ValidJobID reports whether id could be a job id (newJobID's form); anything
// else is not looked up, so no client input reaches a storage query. The HTTP
// API answers 404 for other ids with it before calling the engine.
func ValidJobID(id string) bool { return jobIDPattern.MatchString(id) }

// KickOff accepts an export: it checks that the source can find associated
// Provenance if includeAssociatedData asks for it, validates the
// de-identification configuration if one is named, fixes the transaction time from the source's
// clock, checks that the Group exists and the destination container can be
// created, writes the job and its plan item, and enqueues the plan.
func (e *Engine) KickOff(ctx context.Context, req Request) (*Job, error) {
	if err := e.checkAssociated(ctx, &req); err != nil {
		return nil, err
	}
	if err := e.checkAnonymization(ctx, &req); err != nil {
		return nil, err
	}
	sourceNow, err := e.source.Now(ctx)
	if err != nil {
		return nil, fault.Wrap(fault.Unavailable, err, "the source FHIR server cannot be reached")
	}
	if req.Level == LevelGroup {
		body, err := e.source.Read(ctx, "Group", req.GroupID)
		if err != nil {
			if fault.Is(err, fault.NotFound) {
				return nil, fault.New(fault.NotFound, "Group/%s was not found on the source FHIR server", req.GroupID)
			}
			return nil, fmt.Errorf("read Group/%s: %w", req.GroupID, err)
		}
		if err := checkMembers(body, req); err != nil {
			return nil, err
		}
	}
	if err := e.preflight(ctx, req.Container); err != nil {
		return nil, err
	}
	if err := e.checkShare(ctx, req.Owner); err != nil {
		return nil, err
	}

	job := &Job{
		ID:              newJobID(e.now()),
		Request:         req,
		TransactionTime: sourceNow.Add(-e.set.ClockMargin).UTC().Truncate(time.Millisecond),
		CreatedAt:       e.now().UTC(),
		State:           JobActive,
	}
	if req.Owner != "" {
		// Indexed first: a job missing from the index would escape the cap,
		// while an entry whose job was never created is dropped at the next
		// count.
		if err := e.store.AddOwnerJob(ctx, req.Owner, job.ID); err != nil {
			return nil, fmt.Errorf("index job: %w", err)
		}
	}
	if err := e.store.CreateJob(ctx, job); err != nil {
		return nil, fmt.Errorf("record job: %w", err)
	}
	plan := &WorkItem{JobID: job.ID, ID: PlanItemID, State: ItemPending, UpdatedAt: e.now().UTC()}
	if err := e.store.CreateItem(ctx, plan); err != nil {
		return nil, fmt.Errorf("record plan of job %s: %w", job.ID, err)
	}
	if err := e.queue.Enqueue(ctx, Message{Job: job.ID, Item: PlanItemID}); err != nil {
		// Without its message the job could never progress: withdraw it.
		job.State, job.CancelledAt = JobCancelled, e.now().UTC()
		if uerr := e.store.UpdateJob(ctx, job); uerr != nil {
			zerolog.Ctx(ctx).Error().Err(uerr).Str("job", job.ID).Msg("could not withdraw a job whose plan was not enqueued")
		}
		return nil, fmt.Errorf("enqueue plan of job %s: %w", job.ID, err)
	}
	zerolog.Ctx(ctx).Info().Str("job", job.ID).Str("exportLevel", string(req.Level)).
		Time("transactionTime", job.TransactionTime).Msg("export accepted")
	return job, nil
}

// checkAnonymization reads and validates the de-identification
// configuration a kick-off names, before anything is created: a bad one is
// the client's 400 now rather than a failed job later. The job then records
// the ETag read here, so every work item and retry uses this version and no
// other, and the configuration's warnings go to the job's error files.
func (e *Engine) checkAnonymization(ctx context.Context, req *Request) error {
	if req.AnonymizationConfig == "" {
		if req.AnonymizationETag != "" {
			return fault.New(fault.Invalid, "_anonymizationConfigEtag is given without _anonymizationConfig")
		}
		return nil
	}
	if e.set.Anonymizers == nil {
		return fault.New(fault.Invalid, "de-identified export is not configured on this server (_anonymizationConfig)")
	}
	etag, warnings, err := e.set.Anonymizers.Check(ctx, req.AnonymizationConfig, req.AnonymizationETag)
	if err != nil {
		return err
	}
	req.AnonymizationETag = etag
	for _, w := range warnings {
		if !slices.Contains(req.Warnings, w) {
			req.Warnings = append(req.Warnings, w)
		}
	}
	return nil
}

// checkMembers refuses a Group kick-off whose patient parameter names a
// patient that is not an active member of the Group: the client asked for
// something the Group does not hold, and exporting less than asked without a
// word would look like a complete answer.
func checkMembers(group []byte, req Request) error {
	if len(req.Patients) == 0 {
		return nil
	}
	ids, err := groupMembers(group)
	if err != nil {
		return fmt.Errorf("read the members of Group/%s: %w", req.GroupID, err)
	}
	member := make(map[string]bool, len(ids))
	for _, id := range ids {
		member[id] = true
	}
	var missing []string
	for _, p := range req.Patients {
		if !member[p] {
			missing = append(missing, "Patient/"+p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	n := len(missing)
	if n > 5 {
		missing = append(missing[:5], fmt.Sprintf("and %d more", n-5))
	}
	return fault.New(fault.Invalid, "patient: not an active member of Group/%s: %s", req.GroupID, strings.Join(missing, ", "))
}

// preflight proves, before a job is accepted, that the destination container
// exists (or can be created) and can be written, so that an export that could
// never finish is refused at kick-off with the reason instead.
func (e *Engine) preflight(ctx context.Context, container string) error {
	explain := func(err error) error {
		if fault.Is(err, fault.Forbidden) {
			return fault.Wrap(fault.Forbidden, err, "the service's identity may not write to the destination container %q "+
				"(it needs the Storage Blob Data Contributor role on it)", container)
		}
		return fmt.Errorf("the destination container %q cannot be written: %w", container, err)
	}
	if err := e.blobs.EnsureContainer(ctx, container); err != nil {
		return explain(err)
	}
	probe := ".preflight/" + newOwner()
	if err := e.blobs.StageBlock(ctx, container, probe, 0, []byte("{}\n")); err != nil {
		return explain(err)
	}
	if _, err := e.blobs.CommitBlocks(ctx, container, probe, 1, Condition{IfMissing: true}); err != nil {
		return explain(err)
	}
	if err := e.blobs.Delete(ctx, container, probe); err != nil {
		return explain(err)
	}
	return nil
}

// checkShare refuses a kick-off when owner already has
// Settings.MaxActivePerOwner unfinished jobs, so one client cannot take all
// the workers and source capacity. A job counts until its status is complete
// or failed or it is cancelled; the index entries of finished jobs are
// removed on the way. Two kick-offs of one client at the same instant may
// both pass: the cap is a share, not a hard limit.
func (e *Engine) checkShare(ctx context.Context, owner string) error {
	limit := e.set.MaxActivePerOwner
	if owner == "" || limit <= 0 {
		return nil
	}
	ids, err := e.store.OwnerJobs(ctx, owner)
	if err != nil {
		return fmt.Errorf("count the client's jobs: %w", err)
	}
	active := 0
	for _, id := range ids {
		unfinished, err := e.unfinished(ctx, id)
		if err != nil {
			return fmt.Errorf("count the client's jobs: %w", err)
		}
		if !unfinished {
			if err := e.store.RemoveOwnerJob(ctx, owner, id); err != nil {
				zerolog.Ctx(ctx).Warn().Err(err).Str("job", id).Msg("could not remove a finished job from the owner index")
			}
			continue
		}
		if active++; active >= limit {
			// A job takes minutes: a minute is a fair first wait.
			return &fault.Error{Kind: fault.Limited, RetryAfter: time.Minute,
				Msg: fmt.Sprintf("this client already has %d unfinished exports, the most it may have at once; "+
					"wait for one to complete or cancel one, then try again", limit)}
		}
	}
	return nil
}

// unfinished reports whether a job exists, is not cancelled and has not yet
// completed or failed.
func (e *Engine) unfinished(ctx context.Context, jobID string) (bool, error) {
	job, err := e.store.GetJob(ctx, jobID)
	if fault.Is(err, fault.NotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if job.State == JobCancelled {
		return false, nil
	}
	items, err := e.store.ListItems(ctx, jobID)
	if err != nil {
		return false, err
	}
	return deriveStatus(job, items).Phase == InProgress, nil
}

// Cancel stops a job of owner: later status requests answer not found,
// workers stop at their next checkpoint, and the job's files are deleted.
func (e *Engine) Cancel(ctx context.Context, jobID, owner string) error {
	for {
		job, err := e.activeJob(ctx, jobID, owner)
		if err != nil {
			return err
		}
		job.State, job.CancelledAt = JobCancelled, e.now().UTC()
		err = e.store.UpdateJob(ctx, job)
		if fault.Is(err, fault.Conflict) {
			continue // changed under us: read again
		}
		if err != nil {
			return fmt.Errorf("cancel job %s: %w", jobID, err)
		}
		break
	}
	job, err := e.store.GetJob(ctx, jobID)
	if err != nil {
		return fmt.Errorf("read cancelled job %s: %w", jobID, err)
	}
	if err := e.blobs.DeletePrefix(ctx, job.Request.Container, jobID+"/"); err != nil {
		// The workers delete their own files when they see the cancel; this is
		// not the client's problem.
		zerolog.Ctx(ctx).Warn().Err(err).Msg("deleting files of a cancelled job failed")
	}
	zerolog.Ctx(ctx).Info().Msg("export cancelled")
	return nil
}

// activeJob reads a job of owner that exists and is not cancelled. Another
// client's job is answered exactly as an unknown one, so that nobody learns
// which ids exist.
func (e *Engine) activeJob(ctx context.Context, jobID, owner string) (*Job, error) {
	if !ValidJobID(jobID) {
		return nil, fault.New(fault.NotFound, "there is no export job %q", jobID)
	}
	job, err := e.store.GetJob(ctx, jobID)
	if fault.Is(err, fault.NotFound) {
		return nil, fault.New(fault.NotFound, "there is no export job %q", jobID)
	}
	if err != nil {
		return nil, fmt.Errorf("read job %s: %w", jobID, err)
	}
	if job.Request.Owner != owner {
		zerolog.Ctx(ctx).Warn().Msg("a client asked for another client's job")
		return nil, fault.New(fault.NotFound, "there is no export job %q", jobID)
	}
	if job.State == JobCancelled {
		return nil, fault.New(fault.NotFound, "export job %s was cancelled", jobID)
	}
	return job, nil
}

// OpenFile opens one file of the manifest of owner's completed job for
// download, or, if the job allowed partial manifests, one of the files a
// partial manifest of the running job may list (Status.Files).
func (e *Engine) OpenFile(ctx context.Context, jobID, owner, name string) (io.ReadCloser, int64, error) {
	st, err := e.Status(ctx, jobID, owner)
	if err != nil {
		return nil, 0, err
	}
	files := slices.Concat(st.Output, st.Deleted, st.Errors)
	if st.Phase != Completed {
		if st.Phase != InProgress || !st.Job.Request.AllowPartialManifests {
			return nil, 0, fault.New(fault.NotFound, "export job %s has no files yet", jobID)
		}
		for _, f := range st.Files {
			files = append(files, f.OutputFile)
		}
	}
	for _, f := range files {
		if f.Name == name {
			return e.blobs.Open(ctx, st.Job.Request.Container, jobID+"/"+name)
		}
	}
	return nil, 0, fault.New(fault.NotFound, "export job %s has no file %q", jobID, name)
}
