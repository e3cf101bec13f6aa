package azstore

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/service"
	"golang.org/x/sync/errgroup"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// ContentType is what every commit sets on a blob.
const ContentType = "application/fhir+ndjson"

const deleteParallelism = 8

// Blobs is an export.Blobs on Azure block blobs. Block n has the id
// base64("%08d" of n); a commit of n blocks lists ids 0..n-1 as "latest", so
// each is the block staged last or else the committed one, and the service
// drops every other block.
type Blobs struct {
	svc    *service.Client
	signer signer // makes ReadURL's SAS
	now    func() time.Time
}

var _ export.Blobs = (*Blobs)(nil)

// EnsureContainer creates the container if it is missing.
func (b *Blobs) EnsureContainer(ctx context.Context, name string) error {
	_, err := b.svc.NewContainerClient(name).Create(ctx, nil)
	if err != nil && !bloberror.HasCode(err, bloberror.ContainerAlreadyExists) {
		return wrap(err, "create container %s", name)
	}
	return nil
}

// StageBlock uploads data as uncommitted block number block of the blob.
func (b *Blobs) StageBlock(ctx context.Context, container, name string, block int, data []byte) error {
	if block < 0 || block >= export.MaxBlocksPerBlob {
		return fault.New(fault.Internal, "stage block %d of %s/%s: out of range", block, container, name)
	}
	body := streaming.NopCloser(bytes.NewReader(data))
	if _, err := b.block(container, name).StageBlock(ctx, blockID(block), body, nil); err != nil {
		return wrap(err, "stage block %d of %s/%s", block, container, name)
	}
	return nil
}

// CommitBlocks makes the blob exactly blocks 0..blocks-1 (an empty blob for
// 0) and sets its Content-Type, which every commit would otherwise reset.
func (b *Blobs) CommitBlocks(ctx context.Context, container, name string, blocks int, cond export.Condition) (string, error) {
	if blocks < 0 || blocks > export.MaxBlocksPerBlob {
		return "", fault.New(fault.Internal, "commit %d blocks of %s/%s: out of range", blocks, container, name)
	}
	ids := make([]string, blocks)
	for i := range ids {
		ids[i] = blockID(i)
	}
	ct := ContentType
	opts := &blockblob.CommitBlockListOptions{HTTPHeaders: &blob.HTTPHeaders{BlobContentType: &ct}}
	switch {
	case cond.IfMissing:
		anyETag := azcore.ETagAny
		opts.AccessConditions = &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfNoneMatch: &anyETag}}
	case cond.IfMatch != "":
		etag := azcore.ETag(cond.IfMatch)
		opts.AccessConditions = &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfMatch: &etag}}
	}
	resp, err := b.block(container, name).CommitBlockList(ctx, ids, opts)
	if err != nil {
		// 412 (If-Match) and 409 (If-None-Match) are fault.Conflict: the blob changed.
		return "", wrap(err, "commit %d blocks of %s/%s", blocks, container, name)
	}
	if resp.ETag == nil {
		return "", fault.New(fault.Internal, "commit %s/%s: no ETag in the answer", container, name)
	}
	return string(*resp.ETag), nil
}

// Delete removes the blob; a missing blob or container is not an error.
func (b *Blobs) Delete(ctx context.Context, container, name string) error {
	_, err := b.svc.NewContainerClient(container).NewBlobClient(name).Delete(ctx, nil)
	if err != nil && !bloberror.HasCode(err, bloberror.BlobNotFound, bloberror.ContainerNotFound) {
		return wrap(err, "delete %s/%s", container, name)
	}
	return nil
}

// DeletePrefix removes every committed blob whose name starts with prefix,
// which must not be empty. Uncommitted blocks are left to the service, which
// drops them after a week.
func (b *Blobs) DeletePrefix(ctx context.Context, containerName, prefix string) error {
	if prefix == "" {
		return fault.New(fault.Internal, "delete prefix in %s: empty prefix", containerName)
	}
	pager := b.svc.NewContainerClient(containerName).NewListBlobsFlatPager(&container.ListBlobsFlatOptions{Prefix: &prefix})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if bloberror.HasCode(err, bloberror.ContainerNotFound) {
			return nil
		}
		if err != nil {
			return wrap(err, "list %s/%s*", containerName, prefix)
		}
		if err := b.deleteAll(ctx, containerName, page.Segment.BlobItems); err != nil {
			return err
		}
	}
	return nil
}

func (b *Blobs) deleteAll(ctx context.Context, containerName string, items []*container.BlobItem) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(deleteParallelism)
	for _, item := range items {
		if item.Name == nil {
			continue
		}
		g.Go(func() error { return b.Delete(ctx, containerName, *item.Name) })
	}
	return g.Wait()
}

// Open returns the blob's content and size; fault.NotFound if the blob or
// its container is missing. The caller closes the reader.
func (b *Blobs) Open(ctx context.Context, container, name string) (io.ReadCloser, int64, error) {
	resp, err := b.block(container, name).DownloadStream(ctx, nil)
	if err != nil {
		return nil, 0, wrap(err, "open %s/%s", container, name)
	}
	return resp.Body, deref(resp.ContentLength), nil
}

// ReadSmall downloads a whole blob of at most max bytes, If-Match ifMatch
// when it is set, and returns it with its ETag. The errors a client may see
// (missing container or blob, changed ETag, too large) carry no storage
// response text; the service's codes decide which one it is.
func (b *Blobs) ReadSmall(ctx context.Context, container, name, ifMatch string, max int64) ([]byte, string, error) {
	var opts *blob.DownloadStreamOptions
	if ifMatch != "" {
		etag := azcore.ETag(ifMatch)
		opts = &blob.DownloadStreamOptions{AccessConditions: &blob.AccessConditions{
			ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfMatch: &etag}}}
	}
	resp, err := b.block(container, name).DownloadStream(ctx, opts)
	switch {
	case bloberror.HasCode(err, bloberror.ContainerNotFound):
		return nil, "", fault.New(fault.NotFound, "container %q does not exist", container)
	case bloberror.HasCode(err, bloberror.BlobNotFound):
		return nil, "", fault.New(fault.NotFound, "blob %q does not exist in container %q", name, container)
	case bloberror.HasCode(err, bloberror.ConditionNotMet):
		return nil, "", fault.New(fault.Conflict, "blob %q in container %q does not have ETag %s: it has changed", name, container, ifMatch)
	case err != nil:
		return nil, "", wrap(err, "read %s/%s", container, name)
	}
	defer resp.Body.Close()
	tooLarge := func(n int64) error {
		return fault.New(fault.Invalid, "blob %q in container %q is %d bytes, more than the %d allowed", name, container, n, max)
	}
	if n := deref(resp.ContentLength); n > max {
		return nil, "", tooLarge(n)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, "", wrap(err, "read %s/%s", container, name)
	}
	if int64(len(data)) > max {
		return nil, "", tooLarge(int64(len(data)))
	}
	if resp.ETag == nil {
		return nil, "", fault.New(fault.Internal, "read %s/%s: no ETag in the answer", container, name)
	}
	return data, string(*resp.ETag), nil
}

// ContentType returns the blob's Content-Type; fault.NotFound as for Open.
func (b *Blobs) ContentType(ctx context.Context, container, name string) (string, error) {
	props, err := b.block(container, name).GetProperties(ctx, nil)
	if err != nil {
		return "", wrap(err, "properties of %s/%s", container, name)
	}
	return deref(props.ContentType), nil
}

// ReadURL returns the blob's URL with a SAS that grants read (and nothing
// else) on this blob alone until ttl from now: a user-delegation SAS when
// the account is reached with a token credential, a service SAS signed with
// the account key when it is reached with a connection string. The SAS has
// no start time, so a clock behind the service's does not make it "not yet
// valid"; it is limited to HTTPS when the account is served over HTTPS.
func (b *Blobs) ReadURL(ctx context.Context, container, name string, ttl time.Duration) (string, error) {
	if ttl <= 0 {
		return "", fault.New(fault.Internal, "read URL of %s/%s: ttl %s is not positive", container, name, ttl)
	}
	client := b.block(container, name)
	v := sas.BlobSignatureValues{
		ExpiryTime:    b.now().Add(ttl).UTC(),
		Permissions:   (&sas.BlobPermissions{Read: true}).String(),
		ContainerName: container,
		BlobName:      name,
	}
	if !isHTTP(client.URL()) {
		v.Protocol = sas.ProtocolHTTPS
	}
	qp, err := b.signer.sign(ctx, v)
	if err != nil {
		return "", fault.Wrap(fault.KindOf(err), err, "sign a read URL for %s/%s", container, name)
	}
	return client.URL() + "?" + qp.Encode(), nil
}

func (b *Blobs) block(container, name string) *blockblob.Client {
	return b.svc.NewContainerClient(container).NewBlockBlobClient(name)
}

// blockID is the id of block n: base64 of a fixed-width decimal, as the
// service wants ids of one blob to have equal lengths.
func blockID(n int) string {
	return base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "%08d", n))
}
