package azstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue/queueerror"

	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// kindOf maps a storage error to a fault kind; every adapter uses it.
//
//	404 → NotFound, but a missing table or queue (a deployment error) → Internal;
//	409, 412 → Conflict; 401, 403 → Forbidden;
//	408, 429, 5xx, network errors, cancellation → Transient; anything else → Internal.
func kindOf(err error) fault.Kind {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		if hasTableCode(err, aztables.TableNotFound) || queueerror.HasCode(err, queueerror.QueueNotFound) {
			return fault.Internal
		}
		return statusKind(re.StatusCode)
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return fault.Transient
	}
	return fault.Internal
}

func statusKind(status int) fault.Kind {
	switch {
	case status == http.StatusNotFound:
		return fault.NotFound
	case status == http.StatusConflict, status == http.StatusPreconditionFailed:
		return fault.Conflict
	case status == http.StatusUnauthorized, status == http.StatusForbidden:
		return fault.Forbidden
	case status == http.StatusRequestTimeout, status == http.StatusTooManyRequests, status >= 500:
		return fault.Transient
	}
	return fault.Internal
}

// wrap gives a storage error its kind, the server's Retry-After if it sent
// one, and context.
func wrap(err error, format string, args ...any) error {
	return wrapAs(kindOf(err), err, format, args...)
}

// wrapAs is wrap with a kind the caller decided.
func wrapAs(kind fault.Kind, err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return &fault.Error{Kind: kind, Msg: fmt.Sprintf(format, args...), Err: err, RetryAfter: retryAfter(err)}
}

func retryAfter(err error) time.Duration {
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.RawResponse == nil {
		return 0
	}
	s, err := strconv.Atoi(re.RawResponse.Header.Get("Retry-After"))
	if err != nil || s <= 0 {
		return 0
	}
	return time.Duration(s) * time.Second
}

// hasTableCode reports whether err is a table service error with one of the
// codes: aztables (v1.4) has typed codes but, unlike bloberror and queueerror,
// no HasCode.
func hasTableCode(err error, codes ...aztables.TableErrorCode) bool {
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		return false
	}
	for _, c := range codes {
		if re.ErrorCode == string(c) {
			return true
		}
	}
	return false
}
