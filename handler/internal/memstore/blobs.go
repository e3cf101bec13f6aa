package memstore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// ContentType is what every commit sets on a blob.
const ContentType = "application/fhir+ndjson"

// Blobs is an in-memory export.Blobs with block blob semantics: staged blocks
// are invisible until a commit, a commit of n blocks takes for each id
// 0..n-1 the block staged last or else the committed one, and discards every
// other block.
type Blobs struct {
	mu         sync.Mutex
	containers map[string]map[string]*blob
	etags      int // ETag sequence
}

type blob struct {
	committed   [][]byte       // committed blocks by id
	staged      map[int][]byte // uncommitted blocks by id
	exists      bool           // committed at least once
	contentType string
	etag        string
}

var _ export.Blobs = (*Blobs)(nil)

// NewBlobs returns an empty blob service without containers.
func NewBlobs() *Blobs {
	return &Blobs{containers: map[string]map[string]*blob{}}
}

// EnsureContainer creates the container if it is missing.
func (b *Blobs) EnsureContainer(ctx context.Context, container string) error {
	if err := checkContainer(container); err != nil {
		return fault.Wrap(fault.Internal, err, "ensure container")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.containers[container] == nil {
		b.containers[container] = map[string]*blob{}
	}
	return nil
}

// StageBlock stores data as uncommitted block number block of the blob.
func (b *Blobs) StageBlock(ctx context.Context, container, name string, block int, data []byte) error {
	if block < 0 || block >= export.MaxBlocksPerBlob {
		return fault.New(fault.Internal, "stage block %d of %s/%s: out of range", block, container, name)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	bl, err := b.blob(container, name, true)
	if err != nil {
		return fault.Wrap(fault.KindOf(err), err, "stage block %d of %s/%s", block, container, name)
	}
	if bl.staged == nil {
		bl.staged = map[int][]byte{}
	}
	bl.staged[block] = bytes.Clone(data)
	return nil
}

// CommitBlocks makes the blob exactly blocks 0..blocks-1 and sets its
// Content-Type. A block neither staged nor committed is a fault.Internal.
func (b *Blobs) CommitBlocks(ctx context.Context, container, name string, blocks int, cond export.Condition) (string, error) {
	if blocks < 0 || blocks > export.MaxBlocksPerBlob {
		return "", fault.New(fault.Internal, "commit %d blocks of %s/%s: out of range", blocks, container, name)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	bl, err := b.blob(container, name, true)
	if err != nil {
		return "", fault.Wrap(fault.KindOf(err), err, "commit %s/%s", container, name)
	}
	if (cond.IfMissing && bl.exists) || (cond.IfMatch != "" && (!bl.exists || bl.etag != cond.IfMatch)) {
		return "", fault.New(fault.Conflict, "commit %s/%s: the blob changed", container, name)
	}
	list := make([][]byte, blocks)
	for i := range list {
		data, ok := bl.staged[i]
		if !ok && i < len(bl.committed) {
			data, ok = bl.committed[i], true
		}
		if !ok {
			return "", fault.New(fault.Internal, "commit %s/%s: block %d is neither staged nor committed", container, name, i)
		}
		list[i] = data
	}
	b.etags++
	*bl = blob{committed: list, exists: true, contentType: ContentType, etag: fmt.Sprintf(`"0x%X"`, b.etags)}
	return bl.etag, nil
}

// Delete removes the blob; a missing blob or container is not an error.
func (b *Blobs) Delete(ctx context.Context, container, name string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.containers[container], name)
	return nil
}

// DeletePrefix removes every blob whose name starts with prefix, which must
// not be empty.
func (b *Blobs) DeletePrefix(ctx context.Context, container, prefix string) error {
	if prefix == "" {
		return fault.New(fault.Internal, "delete prefix in %s: empty prefix", container)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for name := range b.containers[container] {
		if strings.HasPrefix(name, prefix) {
			delete(b.containers[container], name)
		}
	}
	return nil
}

// Open returns the committed content and its size; fault.NotFound for a blob
// that was never committed.
func (b *Blobs) Open(ctx context.Context, container, name string) (io.ReadCloser, int64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	bl, err := b.blob(container, name, false)
	if err != nil {
		return nil, 0, fault.Wrap(fault.KindOf(err), err, "open %s/%s", container, name)
	}
	content := bytes.Join(bl.committed, nil)
	return io.NopCloser(bytes.NewReader(content)), int64(len(content)), nil
}

// ReadSmall returns the committed content and ETag of a blob of at most max
// bytes, with the errors export.Blobs.ReadSmall promises.
func (b *Blobs) ReadSmall(ctx context.Context, container, name, ifMatch string, max int64) ([]byte, string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.containers[container] == nil {
		return nil, "", fault.New(fault.NotFound, "container %q does not exist", container)
	}
	bl, err := b.blob(container, name, false)
	if err != nil {
		return nil, "", fault.New(fault.NotFound, "blob %q does not exist in container %q", name, container)
	}
	if ifMatch != "" && ifMatch != bl.etag {
		return nil, "", fault.New(fault.Conflict, "blob %q in container %q does not have ETag %s: it has changed", name, container, ifMatch)
	}
	content := bytes.Join(bl.committed, nil)
	if int64(len(content)) > max {
		return nil, "", fault.New(fault.Invalid, "blob %q in container %q is %d bytes, more than the %d allowed", name, container, len(content), max)
	}
	return content, bl.etag, nil
}

// ReadURL returns memory://<container>/<blob>?ttl=<ttl>: nothing can fetch
// it, but a test sees which blob and lifetime the engine asked for. Like a
// SAS, it is made without looking at the blob.
func (b *Blobs) ReadURL(ctx context.Context, container, name string, ttl time.Duration) (string, error) {
	if err := checkContainer(container); err != nil {
		return "", fault.Wrap(fault.Internal, err, "read URL")
	}
	if ttl <= 0 {
		return "", fault.New(fault.Internal, "read URL of %s/%s: ttl %s is not positive", container, name, ttl)
	}
	u := url.URL{Scheme: "memory", Host: container, Path: "/" + name, RawQuery: url.Values{"ttl": {ttl.String()}}.Encode()}
	return u.String(), nil
}

// ContentType returns the blob's Content-Type; fault.NotFound as for Open.
func (b *Blobs) ContentType(ctx context.Context, container, name string) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	bl, err := b.blob(container, name, false)
	if err != nil {
		return "", fault.Wrap(fault.KindOf(err), err, "content type of %s/%s", container, name)
	}
	return bl.contentType, nil
}

// blob finds a blob; with create it makes an uncommitted one, otherwise only
// committed blobs count. The caller holds b.mu.
func (b *Blobs) blob(container, name string, create bool) (*blob, error) {
	c := b.containers[container]
	if c == nil {
		return nil, fault.New(fault.NotFound, "container %s not found", container)
	}
	bl := c[name]
	if bl == nil && create {
		bl = &blob{}
		c[name] = bl
	}
	if bl == nil || (!create && !bl.exists) {
		return nil, fault.New(fault.NotFound, "blob not found")
	}
	return bl, nil
}

// checkContainer applies the service's container naming rules.
func checkContainer(name string) error {
	if len(name) < 3 || len(name) > 63 {
		return fmt.Errorf("container name %q: must be 3 to 63 characters", name)
	}
	for i, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' && i > 0 && i < len(name)-1 && name[i-1] != '-'
		if !ok {
			return fmt.Errorf("container name %q: lowercase letters, digits and single inner hyphens only", name)
		}
	}
	return nil
}
