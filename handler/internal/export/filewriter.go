package export

import (
	"bytes"
	"context"
	"fmt"
)

// fileWriter appends NDJSON lines to a work item's files. It keeps at most one
// block of lines in memory, stages full blocks as it goes, and rolls to a new
// file before a line would take the current one past the size limit. Nothing
// it writes is visible until commit; the caller records the item after each
// commit, so the item entity always describes exactly the committed files.
type fileWriter struct {
	blobs     Blobs
	container string
	folder    string // "<jobID>/"
	typ       string // the file name prefix: the resource type, or "<Type>-errors"
	maxBytes  int64
	blockSize int
	// The item's record of this writer's files, updated in place: Files,
	// Blocks, BlobETag and Done for output, their Error* twins for errors.
	files  *[]File
	blocks *int
	etag   *string
	done   *int64

	buf        bytes.Buffer // lines not yet staged
	bufLines   int64
	staged     int   // blocks of the last file staged after its last commit
	stagedSize int64 // bytes in those blocks
	stagedCnt  int64 // lines in those blocks
}

func newFileWriter(blobs Blobs, job *Job, item *WorkItem, set Settings) *fileWriter {
	prefix := filePrefix(item)
	switch item.Kind {
	case ItemDeleted:
		prefix = deletedFilePrefix(item.Type)
	case ItemAssociated:
		prefix = associatedFilePrefix
	}
	return &fileWriter{
		blobs:     blobs,
		container: job.Request.Container,
		folder:    job.ID + "/",
		typ:       prefix,
		maxBytes:  set.MaxFileBytes,
		blockSize: set.BlockBytes,
		files:     &item.Files,
		blocks:    &item.Blocks,
		etag:      &item.BlobETag,
		done:      &item.Done,
	}
}

// newErrorWriter writes the item's error files (<Type>-errors-<n>.ndjson).
// It is a second writer of the same kind, recorded in the item's Error*
// fields, so its lines are committed, repaired and fenced exactly as output.
func newErrorWriter(blobs Blobs, job *Job, item *WorkItem, set Settings) *fileWriter {
	w := newFileWriter(blobs, job, item, set)
	w.typ = errorFilePrefix(w.typ)
	w.files, w.blocks, w.etag, w.done = &item.ErrorFiles, &item.ErrorBlocks, &item.ErrorBlobETag, &item.ErrorCount
	// Error lines are few: a small buffer, not an output block.
	w.blockSize = min(w.blockSize, 64<<10)
	return w
}

// errorFilePrefix is the name prefix of the error files of type typ.
func errorFilePrefix(typ string) string { return typ + "-errors" }

// fileName is the name of part n (1-based) of type typ within the job folder.
func fileName(typ string, n int) string { return fmt.Sprintf("%s-%d.ndjson", typ, n) }

func (w *fileWriter) blobName(name string) string { return w.folder + name }

// repair makes the blobs agree with the recorded item after a crash: the last
// file is committed again with exactly its recorded blocks (dropping any block
// a lost invocation committed after the last record), and the file after it,
// which a crash during a roll-over may have created, is deleted.
func (w *fileWriter) repair(ctx context.Context) error {
	n := len(*w.files)
	if n > 0 {
		last := (*w.files)[n-1]
		// Unconditional: whatever a lost invocation committed after the last
		// record is dropped, and its later commits fail on the new ETag.
		etag, err := w.blobs.CommitBlocks(ctx, w.container, w.blobName(last.Name), *w.blocks, Condition{})
		if err != nil {
			return fmt.Errorf("repair %s: %w", last.Name, err)
		}
		*w.etag = etag
	}
	if err := w.blobs.Delete(ctx, w.container, w.blobName(fileName(w.typ, n+1))); err != nil {
		return fmt.Errorf("repair: delete unrecorded %s: %w", fileName(w.typ, n+1), err)
	}
	return nil
}

// pending reports the bytes written since the last commit.
func (w *fileWriter) pending() int64 { return w.stagedSize + int64(w.buf.Len()) }

// add appends one resource, already compact JSON, as a line.
func (w *fileWriter) add(ctx context.Context, compact []byte) error {
	if w.buf.Cap() == 0 {
		w.buf.Grow(w.blockSize + 64<<10) // one allocation for the block, not a doubling series
	}
	start := w.buf.Len()
	w.buf.Write(compact)
	w.buf.WriteByte('\n')
	lineLen := int64(w.buf.Len() - start)

	// Roll before this line if it would take a non-empty file past the limit.
	if w.currentBytes()+w.pending()-lineLen > 0 && w.currentBytes()+w.pending() > w.maxBytes {
		line := bytes.Clone(w.buf.Bytes()[start:])
		w.buf.Truncate(start)
		if err := w.roll(ctx); err != nil {
			return err
		}
		w.buf.Write(line)
	}
	w.bufLines++
	if w.buf.Len() >= w.blockSize {
		return w.stage(ctx)
	}
	return nil
}

// currentBytes is the committed size of the last file (0 if there is none).
func (w *fileWriter) currentBytes() int64 {
	if n := len(*w.files); n > 0 {
		return (*w.files)[n-1].Bytes
	}
	return 0
}

// stage writes the buffered lines as the next block of the last file,
// starting the first file if there is none.
func (w *fileWriter) stage(ctx context.Context) error {
	if w.buf.Len() == 0 {
		return nil
	}
	if len(*w.files) == 0 {
		w.startFile()
	}
	if *w.blocks+w.staged >= MaxBlocksPerBlob-1 {
		// The blob is full of small blocks: finish it and go on in a new file.
		pending := bytes.Clone(w.buf.Bytes())
		lines := w.bufLines
		w.buf.Reset()
		w.bufLines = 0
		if err := w.roll(ctx); err != nil {
			return err
		}
		w.buf.Write(pending)
		w.bufLines = lines
	}
	last := (*w.files)[len(*w.files)-1]
	block := *w.blocks + w.staged
	if err := w.blobs.StageBlock(ctx, w.container, w.blobName(last.Name), block, w.buf.Bytes()); err != nil {
		return fmt.Errorf("stage block %d of %s: %w", block, last.Name, err)
	}
	w.staged++
	w.stagedSize += int64(w.buf.Len())
	w.stagedCnt += w.bufLines
	w.buf.Reset()
	w.bufLines = 0
	return nil
}

func (w *fileWriter) startFile() {
	*w.files = append(*w.files, File{Name: fileName(w.typ, len(*w.files)+1)})
	*w.blocks = 0
	*w.etag = ""
}

// commit stages what is buffered and commits the last file's block list. The
// item then describes the committed state; the caller must record it.
func (w *fileWriter) commit(ctx context.Context) error {
	if err := w.stage(ctx); err != nil {
		return err
	}
	if w.staged == 0 {
		return nil
	}
	i := len(*w.files) - 1
	blocks := *w.blocks + w.staged
	// Fencing: a file is created only if it does not exist, and extended only
	// if nobody committed it since our last commit.
	cond := Condition{IfMatch: *w.etag}
	if *w.blocks == 0 {
		cond = Condition{IfMissing: true}
	}
	etag, err := w.blobs.CommitBlocks(ctx, w.container, w.blobName((*w.files)[i].Name), blocks, cond)
	if err != nil {
		return fmt.Errorf("commit %s: %w", (*w.files)[i].Name, err)
	}
	*w.blocks = blocks
	*w.etag = etag
	(*w.files)[i].Bytes += w.stagedSize
	(*w.files)[i].Count += w.stagedCnt
	*w.done += w.stagedCnt
	w.staged, w.stagedSize, w.stagedCnt = 0, 0, 0
	return nil
}

// roll commits the last file as it stands and starts the next one.
func (w *fileWriter) roll(ctx context.Context) error {
	if err := w.commit(ctx); err != nil {
		return err
	}
	w.startFile()
	return nil
}

// removeAll deletes every file of the item (used when the job is cancelled).
func (w *fileWriter) removeAll(ctx context.Context) error {
	for i := range len(*w.files) + 1 {
		if err := w.blobs.Delete(ctx, w.container, w.blobName(fileName(w.typ, i+1))); err != nil {
			return err
		}
	}
	return nil
}
