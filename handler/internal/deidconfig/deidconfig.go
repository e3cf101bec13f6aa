// Package deidconfig gives the export engine its de-identification
// configurations (export.Anonymizers): it reads them from the anonymization
// container of the export destination and builds package deid anonymizers
// from them. The engine knows neither the configuration format nor where it
// is stored; package deid knows nothing of blobs.
package deidconfig

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/azfhir/bulkexport/handler/internal/deid"
	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// MaxBytes is the largest configuration read, Azure's limit (1 MB).
const MaxBytes = 1 << 20

// maxCached bounds the anonymizers kept in a process. A job uses one
// configuration version; a few jobs at once use a few.
const maxCached = 32

// Reader is the blob read the configurations need (export.Blobs has it).
type Reader interface {
	ReadSmall(ctx context.Context, container, blob, ifMatch string, max int64) ([]byte, string, error)
}

// Configs is an export.Anonymizers over the configuration blobs of one
// container. It is safe for concurrent use.
type Configs struct {
	blobs     Reader
	container string
	opts      []deid.Option

	mu    sync.Mutex
	cache map[version]*loaded
}

// version is one configuration blob at one ETag: the content of a blob
// version never changes, so an anonymizer built from it may be reused.
type version struct{ name, etag string }

type loaded struct {
	anonymizer *deid.Anonymizer
	warnings   []string
}

var _ export.Anonymizers = (*Configs)(nil)

// New returns the configurations in container of blobs. opts go to every
// deid.New (tests fix the clock and the random source with them).
func New(blobs Reader, container string, opts ...deid.Option) *Configs {
	return &Configs{blobs: blobs, container: container, opts: opts, cache: map[version]*loaded{}}
}

// Check reads, parses and validates the named configuration at kick-off, and
// returns the ETag it read: the job records it, so that every work item uses
// this version. Every problem of the configuration is fault.Invalid naming
// it; a storage outage keeps its own kind.
func (c *Configs) Check(ctx context.Context, name, etag string) (string, []string, error) {
	data, got, err := c.blobs.ReadSmall(ctx, c.container, name, etag, MaxBytes)
	if err != nil {
		return "", nil, c.readError(name, etag, err)
	}
	l, err := c.build(name, data)
	if err != nil {
		return "", nil, err
	}
	c.keep(version{name, got}, l)
	return got, l.warnings, nil
}

// Load returns the anonymizer of exactly the version the kick-off validated.
// A blob that has changed or vanished since is fault.Permanent: the job
// fails rather than use another version, or none.
func (c *Configs) Load(ctx context.Context, name, etag string) (export.Anonymizer, []string, error) {
	if etag == "" {
		return nil, nil, fault.New(fault.Internal, "anonymization configuration %q: the job recorded no ETag", name)
	}
	v := version{name, etag}
	c.mu.Lock()
	l := c.cache[v]
	c.mu.Unlock()
	if l != nil {
		return l.anonymizer, l.warnings, nil
	}
	data, _, err := c.blobs.ReadSmall(ctx, c.container, name, etag, MaxBytes)
	switch {
	case fault.Is(err, fault.NotFound), fault.Is(err, fault.Conflict):
		return nil, nil, fault.New(fault.Permanent, "anonymization configuration %q (ETag %s) has changed or been deleted since the export was accepted; "+
			"the export uses only the version it validated: start a new export", name, etag)
	case err != nil:
		return nil, nil, c.readError(name, etag, err)
	}
	l, err = c.build(name, data)
	if err != nil {
		// The same bytes passed at kick-off: only a change of this code can
		// get here, and retrying will not help.
		return nil, nil, fault.Wrap(fault.Permanent, err, "anonymization configuration %q", name)
	}
	c.keep(v, l)
	return l.anonymizer, l.warnings, nil
}

// build parses a configuration and makes its anonymizer.
func (c *Configs) build(name string, data []byte) (*loaded, error) {
	cfg, warnings, err := deid.ParseConfig(data)
	if err != nil {
		return nil, named(name, err)
	}
	if err := checkKeys(cfg); err != nil {
		return nil, named(name, err)
	}
	a, err := deid.New(cfg, c.opts...)
	if err != nil {
		return nil, named(name, err)
	}
	return &loaded{anonymizer: a, warnings: warnings}, nil
}

// keep caches an anonymizer. When the cache is full an arbitrary entry goes:
// it is read again if a job still needs it.
func (c *Configs) keep(v version, l *loaded) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.cache) >= maxCached {
		for k := range c.cache {
			delete(c.cache, k)
			break
		}
	}
	c.cache[v] = l
}

// checkKeys refuses a configuration whose rules need a key it leaves empty.
// Microsoft's engine makes up a random key then; here every work item (and
// every retry) builds its own anonymizer, so each file would be hashed,
// encrypted or shifted with a different key, and references between files
// would no longer resolve.
func checkKeys(cfg *deid.Config) error {
	p := cfg.Parameters
	for _, r := range cfg.Rules {
		var method, key string
		switch {
		case r.Method == deid.CryptoHash && p.CryptoHashKey == "":
			method, key = "cryptoHash", "cryptoHashKey"
		case r.Method == deid.Encrypt && p.EncryptKey == "":
			method, key = "encrypt", "encryptKey"
		case r.Method == deid.DateShift && p.DateShiftKey == "" && p.DateShiftFixedOffsetInDays == nil:
			method, key = "dateShift", "dateShiftKey"
		default:
			continue
		}
		return fault.New(fault.Invalid, "fhirPathRules[%d] (%s) uses %s but parameters.%s is empty: "+
			"a random key would differ between the export's work items and break references across files; set %s",
			r.Index, r.Path, method, key, key)
	}
	return nil
}

// named gives a configuration error the blob's name, keeping its kind.
func named(name string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "anonymization configuration: ")
	return &fault.Error{Kind: fault.KindOf(err), Msg: fmt.Sprintf("anonymization configuration %q: %s", name, msg)}
}

// readError explains a failed read. What the client can fix (a missing
// container or blob, another ETag, a blob too large) is fault.Invalid; an
// identity that may not read the container and an outage keep their kinds.
func (c *Configs) readError(name, etag string, err error) error {
	switch fault.KindOf(err) {
	case fault.NotFound:
		return fault.New(fault.Invalid, "anonymization configuration %q cannot be read: %s (configurations are blobs in the container %q of the export destination account)",
			name, msgOf(err), c.container)
	case fault.Conflict:
		return fault.New(fault.Invalid, "anonymization configuration %q does not have the ETag %s given in _anonymizationConfigEtag: it has changed", name, etag)
	case fault.Invalid:
		return fault.New(fault.Invalid, "anonymization configuration %q is too large: %s", name, msgOf(err))
	case fault.Forbidden:
		return fault.Wrap(fault.Forbidden, err, "the service's identity may not read the anonymization container %q "+
			"(it needs the Storage Blob Data Reader role on it)", c.container)
	}
	return fault.Wrap(fault.KindOf(err), err, "read anonymization configuration %q", name)
}

// msgOf is the message of a fault.Error without the errors it wraps.
func msgOf(err error) string {
	if e, ok := errors.AsType[*fault.Error](err); ok && e.Msg != "" {
		return e.Msg
	}
	return err.Error()
}
