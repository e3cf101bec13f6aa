package fhirsample

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
)

// pageTokenParam is the query parameter of next links. Its value is opaque to clients.
const pageTokenParam = "_pageToken"

// pageToken is what a next link carries: the search, where the next page starts, and the
// server instance that issued it.
type pageToken struct {
	Instance string `json:"i"`
	Type     string `json:"t"`
	Query    string `json:"q"` // searchQuery.params, URL-encoded
	Offset   int    `json:"o"`
}

// encode returns the token as unpadded base64url JSON.
func (t pageToken) encode() (string, error) {
	body, err := marshalJSON(t)
	if err != nil {
		return "", fmt.Errorf("encode page token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(body), nil
}

// decodePageToken parses a token and checks that this instance issued it for this type.
func decodePageToken(value, instance, typeName string) (pageToken, error) {
	body, err := base64.RawURLEncoding.DecodeString(value)
	if err != nil {
		return pageToken{}, invalid("malformed %s: %v", pageTokenParam, err)
	}
	var t pageToken
	if err := json.Unmarshal(body, &t); err != nil {
		return pageToken{}, invalid("malformed %s: %v", pageTokenParam, err)
	}
	if t.Instance != instance {
		return pageToken{}, gone("the search has expired: the link was issued by another server instance")
	}
	if t.Type != typeName || t.Offset < 0 {
		return pageToken{}, invalid("%s does not belong to a search on %s", pageTokenParam, typeName)
	}
	return t, nil
}

// gone is a 410 for a paging link the server no longer honours.
func gone(format string, args ...any) *requestError {
	return &requestError{status: http.StatusGone, code: "expired", diagnostics: fmt.Sprintf(format, args...)}
}
