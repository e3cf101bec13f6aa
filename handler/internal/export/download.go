package export

import (
	"context"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// FileURL returns a read-only URL for one file of a completed job that is
// valid for ttl, for manifests that send clients to storage directly
// (EXPORT_DOWNLOADS=sas). job is the one a Status call returned, so the
// caller has already been allowed to see it; name must be one of the files
// that Status listed. The URL is new on every call, so a client that fetches
// the manifest again gets links that live for ttl from then.
func (e *Engine) FileURL(ctx context.Context, job *Job, name string, ttl time.Duration) (string, error) {
	if job == nil || !ValidJobID(job.ID) {
		return "", fault.New(fault.Internal, "file URL without a job")
	}
	if ttl <= 0 {
		return "", fault.New(fault.Internal, "file URL of job %s: ttl %s is not positive", job.ID, ttl)
	}
	return e.blobs.ReadURL(ctx, job.Request.Container, job.ID+"/"+name, ttl)
}
