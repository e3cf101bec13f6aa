// Package azstore implements the export engine's storage ports on Azure
// Storage: jobs and work items in a table (aztables), work item messages in a
// queue (azqueue) and NDJSON files as block blobs (azblob). It also offers the
// receive side of the queue for the standalone worker.
package azstore

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/service"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue/queueerror"

	"github.com/azfhir/bulkexport/handler/devstorage"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// Default names of the table and the queue: the defaults of EXPORT_TABLE and
// EXPORT_QUEUE (config reads them from here).
const (
	DefaultTable = "exportjobs"
	DefaultQueue = "export-workitems"
)

// PoisonSuffix names the queue that takes messages that failed too often, as
// the Functions host does.
const PoisonSuffix = "-poison"

// maxQueueName leaves room for PoisonSuffix within the 63-character limit.
const maxQueueName = 63 - len(PoisonSuffix)

// Options says how to reach the storage account: either a connection string,
// or the three service URLs and a token credential (identity-based access, as
// the Functions settings AzureWebJobsStorage__blobServiceUri etc. describe).
type Options struct {
	ConnectionString string // "UseDevelopmentStorage=true" means Azurite on its default ports (devstorage)

	BlobURL, QueueURL, TableURL string
	Credential                  azcore.TokenCredential

	Table string // table of jobs and work items; DefaultTable if empty
	Queue string // work item queue; DefaultQueue if empty
}

// Account holds the clients of one storage account.
type Account struct {
	tables *aztables.ServiceClient
	queues *azqueue.ServiceClient
	blobs  *service.Client
	signer signer // of blobs
	table  string
	queue  string
}

var (
	tableName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9]{2,62}$`)
	queueName = regexp.MustCompile(`^[a-z0-9]+(?:-[a-z0-9]+)*$`)
)

// ValidTableName reports whether s is a valid Azure table name: 3 to 63
// letters and digits, starting with a letter.
func ValidTableName(s string) bool { return tableName.MatchString(s) }

// ValidQueueName reports whether s is a valid name for the work item queue:
// an Azure queue name (lowercase letters, digits and single inner hyphens)
// of 3 to 56 characters, so that its PoisonSuffix queue fits in 63.
func ValidQueueName(s string) bool {
	return len(s) >= 3 && len(s) <= maxQueueName && queueName.MatchString(s)
}

// Open builds the service clients. It does no I/O: a wrong key or URL shows
// up at the first call (EnsureInfrastructure, typically).
func Open(ctx context.Context, o Options) (*Account, error) {
	o = o.withDefaults()
	if err := o.validate(); err != nil {
		return nil, fault.Wrap(fault.Invalid, err, "storage options")
	}
	a := &Account{table: o.Table, queue: o.Queue}
	var err error
	if o.ConnectionString != "" {
		err = a.fromConnectionString(devstorage.Expand(o.ConnectionString))
	} else {
		err = a.fromCredential(o)
	}
	if err != nil {
		return nil, fault.Wrap(fault.Invalid, err, "storage clients")
	}
	return a, nil
}

func (o Options) withDefaults() Options {
	if o.Table == "" {
		o.Table = DefaultTable
	}
	if o.Queue == "" {
		o.Queue = DefaultQueue
	}
	return o
}

func (o Options) validate() error {
	urls := o.BlobURL != "" || o.QueueURL != "" || o.TableURL != ""
	switch {
	case o.ConnectionString != "" && (urls || o.Credential != nil):
		return errors.New("give either a connection string or service URLs with a credential, not both")
	case o.ConnectionString == "" && (o.BlobURL == "" || o.QueueURL == "" || o.TableURL == "" || o.Credential == nil):
		return errors.New("give a connection string, or the blob, queue and table URLs and a credential")
	case !ValidTableName(o.Table):
		return fmt.Errorf("table name %q: 3 to 63 letters and digits, starting with a letter", o.Table)
	case !ValidQueueName(o.Queue):
		return fmt.Errorf("queue name %q: 3 to 56 lowercase letters, digits and single inner hyphens", o.Queue)
	}
	return nil
}

func (a *Account) fromConnectionString(cs string) error {
	var err error
	if a.tables, err = aztables.NewServiceClientFromConnectionString(cs, nil); err != nil {
		return fmt.Errorf("table client: %w", err)
	}
	if a.queues, err = azqueue.NewServiceClientFromConnectionString(cs, nil); err != nil {
		return fmt.Errorf("queue client: %w", err)
	}
	if a.blobs, a.signer, err = blobClientFromConnectionString(cs); err != nil {
		return err
	}
	return nil
}

func blobClientFromConnectionString(cs string) (*service.Client, signer, error) {
	svc, err := service.NewClientFromConnectionString(cs, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("blob client: %w", err)
	}
	sig, err := connectionSigner(cs)
	if err != nil {
		return nil, nil, fmt.Errorf("blob client: %w", err)
	}
	return svc, sig, nil
}

func blobClientFromCredential(blobURL string, cred azcore.TokenCredential) (*service.Client, signer, error) {
	bo := &service.ClientOptions{ClientOptions: clientOptions(blobURL)}
	svc, err := service.NewClient(blobURL, cred, bo)
	if err != nil {
		return nil, nil, fmt.Errorf("blob client: %w", err)
	}
	return svc, &delegationSigner{svc: svc, now: time.Now}, nil
}

func (a *Account) fromCredential(o Options) error {
	var err error
	if a.tables, err = tableClient(o.TableURL, o.Credential); err != nil {
		return fmt.Errorf("table client: %w", err)
	}
	qo := &azqueue.ClientOptions{ClientOptions: clientOptions(o.QueueURL)}
	if a.queues, err = azqueue.NewServiceClient(o.QueueURL, o.Credential, qo); err != nil {
		return fmt.Errorf("queue client: %w", err)
	}
	if a.blobs, a.signer, err = blobClientFromCredential(o.BlobURL, o.Credential); err != nil {
		return err
	}
	return nil
}

// tableClient authenticates with a token. aztables' NewServiceClient refuses
// tokens over plain HTTP whatever the options say, so for an http:// endpoint
// (Azurite) the bearer token policy is added by hand with HTTP allowed.
func tableClient(serviceURL string, cred azcore.TokenCredential) (*aztables.ServiceClient, error) {
	if !isHTTP(serviceURL) {
		return aztables.NewServiceClient(serviceURL, cred, nil)
	}
	bearer := runtime.NewBearerTokenPolicy(cred, []string{"https://storage.azure.com/.default"},
		&policy.BearerTokenOptions{InsecureAllowCredentialWithHTTP: true})
	opts := &aztables.ClientOptions{ClientOptions: clientOptions(serviceURL)}
	opts.PerRetryPolicies = append(opts.PerRetryPolicies, bearer)
	return aztables.NewServiceClientWithNoCredential(serviceURL, opts)
}

// clientOptions allows a credential over plain HTTP, which only Azurite serves.
func clientOptions(serviceURL string) azcore.ClientOptions {
	return azcore.ClientOptions{InsecureAllowCredentialWithHTTP: isHTTP(serviceURL)}
}

func isHTTP(serviceURL string) bool {
	u, err := url.Parse(serviceURL)
	return err == nil && strings.EqualFold(u.Scheme, "http")
}

// Store returns the job and work item store on the account's table.
func (a *Account) Store() *Store {
	return &Store{table: a.tables.NewClient(a.table), name: a.table}
}

// Queue returns the work item queue.
func (a *Account) Queue() *Queue {
	return newQueue(a.queues, a.queue)
}

// Blobs returns the blob store for NDJSON files on this account (used when
// no separate export account is configured; see OpenBlobs).
func (a *Account) Blobs() *Blobs {
	return &Blobs{svc: a.blobs, signer: a.signer, now: time.Now}
}

// BlobOptions say how to reach a storage account that holds only export
// files (EXPORT_STORAGE), apart from the host account with the job table and
// the queue, so that the identity's write role on exports can be scoped to
// it: a connection string, or the blob service URL with a token credential.
type BlobOptions struct {
	ConnectionString string // "UseDevelopmentStorage=true" means Azurite on its default ports
	URL              string
	Credential       azcore.TokenCredential
}

// OpenBlobs returns the blob store of an export account. Like Open it does
// no I/O.
func OpenBlobs(o BlobOptions) (*Blobs, error) {
	var (
		svc *service.Client
		sig signer
		err error
	)
	switch {
	case o.ConnectionString != "" && (o.URL != "" || o.Credential != nil):
		return nil, fault.New(fault.Invalid, "export storage: give either a connection string or a blob service URL with a credential, not both")
	case o.ConnectionString != "":
		svc, sig, err = blobClientFromConnectionString(devstorage.Expand(o.ConnectionString))
	case o.URL != "" && o.Credential != nil:
		svc, sig, err = blobClientFromCredential(o.URL, o.Credential)
	default:
		return nil, fault.New(fault.Invalid, "export storage: give a connection string, or a blob service URL and a credential")
	}
	if err != nil {
		return nil, fault.Wrap(fault.Invalid, err, "export storage")
	}
	return &Blobs{svc: svc, signer: sig, now: time.Now}, nil
}

// EnsureInfrastructure creates the table, the queue and its poison queue if
// they are missing. Containers are made per export by Blobs.EnsureContainer.
func (a *Account) EnsureInfrastructure(ctx context.Context) error {
	if _, err := a.tables.CreateTable(ctx, a.table, nil); err != nil && !hasTableCode(err, aztables.TableAlreadyExists) {
		return wrap(err, "create table %s", a.table)
	}
	for _, name := range []string{a.queue, a.queue + PoisonSuffix} {
		if _, err := a.queues.CreateQueue(ctx, name, nil); err != nil && !queueerror.HasCode(err, queueerror.QueueAlreadyExists) {
			return wrap(err, "create queue %s", name)
		}
	}
	return nil
}
