package fhir

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// instantPattern is the regex of the FHIR instant type: a full date and time
// to at least the second, with Z or an offset.
var instantPattern = regexp.MustCompile(`^([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?(Z|[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))$`)

// ParseInstant parses a FHIR instant such as 2024-01-02T03:04:05.678+01:00.
// A space where the offset's '+' should be is read as '+', because an
// unencoded '+' in a query string decodes to a space.
func ParseInstant(s string) (time.Time, error) {
	if i := strings.LastIndexByte(s, ' '); i > 0 && strings.Count(s, " ") == 1 {
		s = s[:i] + "+" + s[i+1:]
	}
	if !instantPattern.MatchString(s) {
		return time.Time{}, fmt.Errorf("%q is not a FHIR instant (like 2024-01-02T03:04:05Z or 2024-01-02T03:04:05.678+01:00)", s)
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not a valid instant: %w", s, err)
	}
	return t, nil
}

// FormatInstant writes t as a FHIR instant with millisecond precision in UTC,
// the precision every search bound we send uses.
func FormatInstant(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
}
