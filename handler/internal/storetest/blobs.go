package storetest

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// Blobs is an export.Blobs that can also report a blob's Content-Type, which
// the engine never reads but clients downloading the files do.
type Blobs interface {
	export.Blobs
	ContentType(ctx context.Context, container, blob string) (string, error)
}

// NDJSON is the Content-Type every commit must set.
const NDJSON = "application/fhir+ndjson"

// RunBlobs checks a blob store. newBlobs returns the store and the name of a
// container that does not exist yet, unique to the case.
func RunBlobs(t *testing.T, newBlobs func(t *testing.T) (Blobs, string)) {
	cases := []struct {
		name string
		run  func(t *testing.T, b Blobs, container string)
	}{
		{"EnsureContainerTwice", testEnsureContainerTwice},
		{"CommitPrefix", testCommitPrefix},
		{"RestageAndRecommit", testRestage},
		{"Grow", testGrow},
		{"ShrinkRepairsCrash", testShrink},
		{"CommitZero", testCommitZero},
		{"CommitUnknownBlock", testCommitUnknownBlock},
		{"UncommittedInvisible", testUncommittedInvisible},
		{"MissingContainer", testMissingContainer},
		{"Delete", testDelete},
		{"DeletePrefix", testDeletePrefix},
		{"ConditionalCommitFencesStaleWriters", testConditionalCommit},
		{"ReadSmall", testReadSmall},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b, container := newBlobs(t)
			c.run(t, b, container)
		})
	}
}

// block returns distinct NDJSON content for block n of a version.
func block(n int, version string) []byte {
	return fmt.Appendf(nil, "{\"resourceType\":\"Observation\",\"id\":\"%s-%d\"}\n", version, n)
}

func concat(blocks ...[]byte) string {
	var s string
	for _, b := range blocks {
		s += string(b)
	}
	return s
}

func testEnsureContainerTwice(t *testing.T, b Blobs, container string) {
	mustOK(t, b.EnsureContainer(t.Context(), container), "first EnsureContainer")
	mustOK(t, b.EnsureContainer(t.Context(), container), "second EnsureContainer")
}

func testCommitPrefix(t *testing.T, b Blobs, container string) {
	ctx := t.Context()
	mustOK(t, b.EnsureContainer(ctx, container), "EnsureContainer")
	const name = "job/Observation-1.ndjson"
	stage(t, b, container, name, "v1", 0, 1, 2)
	mustOK(t, commitErr(b.CommitBlocks(ctx, container, name, 2, export.Condition{})), "CommitBlocks(2)")
	wantContent(t, b, container, name, concat(block(0, "v1"), block(1, "v1")))
	wantNDJSON(t, b, container, name)
}

func testRestage(t *testing.T, b Blobs, container string) {
	ctx := t.Context()
	mustOK(t, b.EnsureContainer(ctx, container), "EnsureContainer")
	const name = "job/Patient-1.ndjson"
	stage(t, b, container, name, "v1", 0, 1)
	mustOK(t, commitErr(b.CommitBlocks(ctx, container, name, 2, export.Condition{})), "first CommitBlocks(2)")
	stage(t, b, container, name, "v2", 1)
	mustOK(t, commitErr(b.CommitBlocks(ctx, container, name, 2, export.Condition{})), "second CommitBlocks(2)")
	wantContent(t, b, container, name, concat(block(0, "v1"), block(1, "v2")))
	wantNDJSON(t, b, container, name)
}

func testGrow(t *testing.T, b Blobs, container string) {
	ctx := t.Context()
	mustOK(t, b.EnsureContainer(ctx, container), "EnsureContainer")
	const name = "job/Encounter-1.ndjson"
	stage(t, b, container, name, "v1", 0, 1)
	mustOK(t, commitErr(b.CommitBlocks(ctx, container, name, 2, export.Condition{})), "CommitBlocks(2)")
	stage(t, b, container, name, "v1", 2)
	mustOK(t, commitErr(b.CommitBlocks(ctx, container, name, 3, export.Condition{})), "CommitBlocks(3)")
	wantContent(t, b, container, name, concat(block(0, "v1"), block(1, "v1"), block(2, "v1")))
	wantNDJSON(t, b, container, name)
}

// testShrink is how a work item that crashed after committing more than it
// recorded is repaired: commit the recorded count again.
func testShrink(t *testing.T, b Blobs, container string) {
	ctx := t.Context()
	mustOK(t, b.EnsureContainer(ctx, container), "EnsureContainer")
	const name = "job/Condition-1.ndjson"
	stage(t, b, container, name, "v1", 0, 1)
	mustOK(t, commitErr(b.CommitBlocks(ctx, container, name, 2, export.Condition{})), "CommitBlocks(2)")
	mustOK(t, commitErr(b.CommitBlocks(ctx, container, name, 1, export.Condition{})), "CommitBlocks(1)")
	wantContent(t, b, container, name, string(block(0, "v1")))
	wantNDJSON(t, b, container, name)
}

func testCommitZero(t *testing.T, b Blobs, container string) {
	ctx := t.Context()
	mustOK(t, b.EnsureContainer(ctx, container), "EnsureContainer")
	const name = "job/Empty-1.ndjson"
	mustOK(t, commitErr(b.CommitBlocks(ctx, container, name, 0, export.Condition{})), "CommitBlocks(0)")
	wantContent(t, b, container, name, "")
	wantNDJSON(t, b, container, name)
}

// testCommitUnknownBlock: a commit may only list blocks that are staged or
// committed; a block dropped by an earlier commit is gone.
func testCommitUnknownBlock(t *testing.T, b Blobs, container string) {
	ctx := t.Context()
	mustOK(t, b.EnsureContainer(ctx, container), "EnsureContainer")
	const name = "job/Procedure-1.ndjson"
	stage(t, b, container, name, "v1", 0, 1)
	mustOK(t, commitErr(b.CommitBlocks(ctx, container, name, 1, export.Condition{})), "CommitBlocks(1)")
	wantKind(t, commitErr(b.CommitBlocks(ctx, container, name, 2, export.Condition{})), fault.Internal, "CommitBlocks(2) after block 1 was dropped")
	wantContent(t, b, container, name, string(block(0, "v1")))
}

func testUncommittedInvisible(t *testing.T, b Blobs, container string) {
	ctx := t.Context()
	mustOK(t, b.EnsureContainer(ctx, container), "EnsureContainer")
	const name = "job/Staged-1.ndjson"
	stage(t, b, container, name, "v1", 0)
	_, _, err := b.Open(ctx, container, name)
	wantKind(t, err, fault.NotFound, "Open of a blob with only staged blocks")
}

func testMissingContainer(t *testing.T, b Blobs, container string) {
	ctx := t.Context()
	_, _, err := b.Open(ctx, container, "job/x.ndjson")
	wantKind(t, err, fault.NotFound, "Open in a missing container")
	wantKind(t, b.StageBlock(ctx, container, "job/x.ndjson", 0, block(0, "v1")), fault.NotFound, "StageBlock in a missing container")
	mustOK(t, b.Delete(ctx, container, "job/x.ndjson"), "Delete in a missing container")
	mustOK(t, b.DeletePrefix(ctx, container, "job/"), "DeletePrefix in a missing container")
	mustOK(t, b.EnsureContainer(ctx, container), "EnsureContainer")
	_, _, err = b.Open(ctx, container, "job/x.ndjson")
	wantKind(t, err, fault.NotFound, "Open of a missing blob")
	_, err = b.ContentType(ctx, container, "job/x.ndjson")
	wantKind(t, err, fault.NotFound, "ContentType of a missing blob")
}

func testDelete(t *testing.T, b Blobs, container string) {
	ctx := t.Context()
	mustOK(t, b.EnsureContainer(ctx, container), "EnsureContainer")
	const name = "job/Observation-2.ndjson"
	stage(t, b, container, name, "v1", 0)
	mustOK(t, commitErr(b.CommitBlocks(ctx, container, name, 1, export.Condition{})), "CommitBlocks(1)")
	stage(t, b, container, name, "v1", 1)
	mustOK(t, b.Delete(ctx, container, name), "Delete")
	_, _, err := b.Open(ctx, container, name)
	wantKind(t, err, fault.NotFound, "Open after Delete")
	mustOK(t, b.Delete(ctx, container, name), "second Delete")
	// Deleting a blob drops its committed and its staged blocks.
	wantKind(t, commitErr(b.CommitBlocks(ctx, container, name, 2, export.Condition{})), fault.Internal, "CommitBlocks(2) after Delete")
}

func testDeletePrefix(t *testing.T, b Blobs, container string) {
	ctx := t.Context()
	mustOK(t, b.EnsureContainer(ctx, container), "EnsureContainer")
	var doomed []string
	for i := range 25 {
		doomed = append(doomed, fmt.Sprintf("job1/Observation-%d.ndjson", i))
	}
	kept := []string{"job12/Patient-1.ndjson", "job2/Patient-1.ndjson", "job1.ndjson"}
	for _, name := range append(doomed, kept...) {
		stage(t, b, container, name, "v1", 0)
		mustOK(t, commitErr(b.CommitBlocks(ctx, container, name, 1, export.Condition{})), "CommitBlocks "+name)
	}
	mustOK(t, b.DeletePrefix(ctx, container, "job1/"), "DeletePrefix")
	for _, name := range doomed {
		_, _, err := b.Open(ctx, container, name)
		wantKind(t, err, fault.NotFound, "Open of deleted "+name)
	}
	for _, name := range kept {
		wantContent(t, b, container, name, string(block(0, "v1")))
	}
	if err := b.DeletePrefix(ctx, container, ""); err == nil {
		t.Error("DeletePrefix with an empty prefix succeeded, want an error")
	}
}

func stage(t *testing.T, b Blobs, container, name, version string, blocks ...int) {
	t.Helper()
	for _, n := range blocks {
		mustOK(t, b.StageBlock(t.Context(), container, name, n, block(n, version)), fmt.Sprintf("StageBlock(%d)", n))
	}
}

func wantContent(t *testing.T, b Blobs, container, name, want string) {
	t.Helper()
	r, size, err := b.Open(t.Context(), container, name)
	mustOK(t, err, "Open "+name)
	defer r.Close()
	got, err := io.ReadAll(r)
	mustOK(t, err, "read "+name)
	if string(got) != want || size != int64(len(want)) {
		t.Fatalf("%s holds %q (size %d), want %q (size %d)", name, got, size, want, len(want))
	}
}

func wantNDJSON(t *testing.T, b Blobs, container, name string) {
	t.Helper()
	ct, err := b.ContentType(t.Context(), container, name)
	mustOK(t, err, "ContentType "+name)
	if ct != NDJSON {
		t.Fatalf("%s has Content-Type %q, want %q", name, ct, NDJSON)
	}
}

// commitErr drops the ETag of an unconditional commit.
func commitErr(_ string, err error) error { return err }

// testConditionalCommit checks the fencing the engine relies on: a file is
// created only if missing, extended only with the ETag of the last commit,
// and a commit by someone else makes the old ETag fail.
func testConditionalCommit(t *testing.T, b Blobs, container string) {
	ctx := t.Context()
	mustOK(t, b.EnsureContainer(ctx, container), "EnsureContainer")
	const name = "job/Patient-1.ndjson"
	stage(t, b, container, name, "v1", 0, 1, 2)
	first, err := b.CommitBlocks(ctx, container, name, 1, export.Condition{IfMissing: true})
	mustOK(t, err, "first commit with IfMissing")
	if first == "" {
		t.Fatal("commit returned no ETag")
	}
	_, err = b.CommitBlocks(ctx, container, name, 1, export.Condition{IfMissing: true})
	wantKind(t, err, fault.Conflict, "IfMissing commit of an existing blob")
	stage(t, b, container, name, "v1", 1, 2) // a commit discards uncommitted blocks
	second, err := b.CommitBlocks(ctx, container, name, 2, export.Condition{IfMatch: first})
	mustOK(t, err, "commit If-Match the last ETag")
	if second == first {
		t.Error("a commit did not change the ETag")
	}
	stage(t, b, container, name, "v1", 2)
	_, err = b.CommitBlocks(ctx, container, name, 3, export.Condition{IfMatch: first})
	wantKind(t, err, fault.Conflict, "commit If-Match a stale ETag")
	wantContent(t, b, container, name, concat(block(0, "v1"), block(1, "v1")))
	repaired, err := b.CommitBlocks(ctx, container, name, 1, export.Condition{})
	mustOK(t, err, "unconditional repair commit")
	_, err = b.CommitBlocks(ctx, container, name, 2, export.Condition{IfMatch: second})
	wantKind(t, err, fault.Conflict, "commit by a writer that missed the repair")
	wantContent(t, b, container, name, concat(block(0, "v1")))
	wantNDJSON(t, b, container, name)
	if repaired == second {
		t.Error("the repair commit did not change the ETag")
	}
}

// testReadSmall checks the read an anonymization configuration takes: the
// content with the ETag a later If-Match pins, and errors that tell a missing
// container from a missing blob, a changed blob and one too large.
func testReadSmall(t *testing.T, b Blobs, container string) {
	ctx := t.Context()
	const name = "configs/deid.json"
	_, _, err := b.ReadSmall(ctx, container, name, "", 1<<20)
	wantKind(t, err, fault.NotFound, "ReadSmall in a missing container")
	if err != nil && !strings.Contains(err.Error(), "container") {
		t.Errorf("ReadSmall in a missing container: %q does not say the container is missing", err)
	}
	mustOK(t, b.EnsureContainer(ctx, container), "EnsureContainer")
	_, _, err = b.ReadSmall(ctx, container, name, "", 1<<20)
	wantKind(t, err, fault.NotFound, "ReadSmall of a missing blob")
	if err != nil && !strings.Contains(err.Error(), name) {
		t.Errorf("ReadSmall of a missing blob: %q does not name the blob", err)
	}

	stage(t, b, container, name, "v1", 0, 1)
	first, err := b.CommitBlocks(ctx, container, name, 2, export.Condition{})
	mustOK(t, err, "CommitBlocks(2)")
	want := concat(block(0, "v1"), block(1, "v1"))
	got, etag, err := b.ReadSmall(ctx, container, name, "", int64(len(want)))
	mustOK(t, err, "ReadSmall of exactly max bytes")
	if string(got) != want || etag != first {
		t.Fatalf("ReadSmall = %q, ETag %s; want %q, ETag %s (the commit's)", got, etag, want, first)
	}
	got, _, err = b.ReadSmall(ctx, container, name, first, 1<<20)
	mustOK(t, err, "ReadSmall If-Match the current ETag")
	if string(got) != want {
		t.Fatalf("ReadSmall If-Match = %q, want %q", got, want)
	}
	_, _, err = b.ReadSmall(ctx, container, name, "", int64(len(want))-1)
	wantKind(t, err, fault.Invalid, "ReadSmall of a blob larger than max")

	stage(t, b, container, name, "v2", 0)
	second, err := b.CommitBlocks(ctx, container, name, 1, export.Condition{})
	mustOK(t, err, "CommitBlocks of a new version")
	_, _, err = b.ReadSmall(ctx, container, name, first, 1<<20)
	wantKind(t, err, fault.Conflict, "ReadSmall If-Match the ETag of an older version")
	got, etag, err = b.ReadSmall(ctx, container, name, second, 1<<20)
	mustOK(t, err, "ReadSmall If-Match the new ETag")
	if string(got) != string(block(0, "v2")) || etag != second {
		t.Fatalf("ReadSmall of the new version = %q, ETag %s; want %q, ETag %s", got, etag, block(0, "v2"), second)
	}
}
