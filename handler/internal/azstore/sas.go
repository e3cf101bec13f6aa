package azstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/service"

	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// signer signs SAS query parameters for one blob. An account reached with a
// connection string signs a service SAS with its account key (Azurite, whose
// user-delegation keys need OAuth over HTTPS); an account reached with a
// token credential signs a user-delegation SAS, so no account key is needed
// (Azure accounts here have shared-key access disabled).
type signer interface {
	sign(ctx context.Context, v sas.BlobSignatureValues) (sas.QueryParameters, error)
}

// sharedKeySigner signs service SAS with the account key.
type sharedKeySigner struct{ cred *sas.SharedKeyCredential }

func (s sharedKeySigner) sign(_ context.Context, v sas.BlobSignatureValues) (sas.QueryParameters, error) {
	return v.SignWithSharedKey(s.cred)
}

// noSigner is the signer of a connection string without an account key (a
// SAS connection string): it cannot make URLs.
type noSigner struct{}

func (noSigner) sign(context.Context, sas.BlobSignatureValues) (sas.QueryParameters, error) {
	return sas.QueryParameters{}, errors.New("the storage connection string has no AccountKey to sign download URLs with")
}

// User-delegation keys are asked for with this much life beyond the SAS
// that needs them, and reused while they outlive a new SAS by keyMargin, so
// a key is fetched about once an hour, not once per manifest.
const (
	keyExtraLife = time.Hour
	keyMargin    = time.Minute
	keyMaxLife   = 7*24*time.Hour - time.Hour // the service allows at most 7 days
	keySkew      = 5 * time.Minute            // key start in the past, for clock skew
)

// delegationSigner signs user-delegation SAS with a key from the service
// (GetUserDelegationCredential, which needs the
// Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey
// action: Storage Blob Data Contributor has it).
type delegationSigner struct {
	svc *service.Client
	now func() time.Time

	mu    sync.Mutex
	cred  *service.UserDelegationCredential
	until time.Time // the key's expiry
}

func (s *delegationSigner) sign(ctx context.Context, v sas.BlobSignatureValues) (sas.QueryParameters, error) {
	cred, err := s.key(ctx, v.ExpiryTime)
	if err != nil {
		return sas.QueryParameters{}, err
	}
	return v.SignWithUserDelegation(cred)
}

// key returns a cached user-delegation key that is valid past need, or
// fetches a new one.
func (s *delegationSigner) key(ctx context.Context, need time.Time) (*service.UserDelegationCredential, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cred != nil && !need.Add(keyMargin).After(s.until) {
		return s.cred, nil
	}
	now := s.now().UTC()
	until := need.Add(keyExtraLife)
	if limit := now.Add(keyMaxLife); until.After(limit) {
		until = limit
	}
	until = until.UTC().Truncate(time.Second)
	if until.Before(need) {
		return nil, fault.New(fault.Internal, "a download URL valid until %s outlives the longest user-delegation key", need.Format(time.RFC3339))
	}
	start, expiry := now.Add(-keySkew).Format(sas.TimeFormat), until.Format(sas.TimeFormat)
	cred, err := s.svc.GetUserDelegationCredential(ctx, service.KeyInfo{Start: &start, Expiry: &expiry}, nil)
	if err != nil {
		return nil, wrap(err, "get a user-delegation key")
	}
	s.cred, s.until = cred, until
	return cred, nil
}

// connectionSigner returns the shared-key signer of a connection string.
func connectionSigner(cs string) (signer, error) {
	name, key := connectionValue(cs, "AccountName"), connectionValue(cs, "AccountKey")
	if name == "" || key == "" {
		return noSigner{}, nil
	}
	cred, err := service.NewSharedKeyCredential(name, key)
	if err != nil {
		return nil, fmt.Errorf("account key: %w", err)
	}
	return sharedKeySigner{cred: cred}, nil
}

func connectionValue(cs, key string) string {
	for part := range strings.SplitSeq(cs, ";") {
		if k, v, ok := strings.Cut(part, "="); ok && strings.EqualFold(strings.TrimSpace(k), key) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
