package fhirsample

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// timeRange is the period a FHIR date/dateTime search value stands for: [start, end).
type timeRange struct {
	start time.Time
	end   time.Time
}

// dateTimePattern is the shape of a FHIR date, dateTime or instant: a year, optionally a
// month and a day, optionally a time to the second with optional fraction and a zone.
var dateTimePattern = regexp.MustCompile(
	`^\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2}))?)?)?$`)

// parseDateTimeRange parses a FHIR date/dateTime/instant search value into the period it
// stands for, following FHIR's precision rules in a simplified way:
//
//   - "2024", "2024-03", "2024-03-01": the whole year, month or day, in UTC;
//   - "2024-03-01T10:00:00Z": the whole second;
//   - "2024-03-01T10:00:00.123+02:00" (any fraction): that exact instant.
//
// A time must carry a zone. A space is read as "+", for a "+" that was form-decoded.
func parseDateTimeRange(value string) (timeRange, error) {
	value = strings.ReplaceAll(value, " ", "+")
	if !dateTimePattern.MatchString(value) {
		return timeRange{}, fmt.Errorf("%q is not a FHIR date, dateTime or instant (time needs seconds and a zone)", value)
	}
	switch len(value) {
	case len("2006"):
		return calendarRange(value, "2006", 1, 0, 0)
	case len("2006-01"):
		return calendarRange(value, "2006-01", 0, 1, 0)
	case len("2006-01-02"):
		return calendarRange(value, "2006-01-02", 0, 0, 1)
	}
	t, err := time.Parse(time.RFC3339Nano, value)
	if err != nil {
		return timeRange{}, fmt.Errorf("parse dateTime %q: %w", value, err)
	}
	if strings.Contains(value, ".") {
		return timeRange{start: t, end: t.Add(time.Nanosecond)}, nil
	}
	return timeRange{start: t, end: t.Add(time.Second)}, nil
}

// calendarRange parses a UTC calendar period and returns it with its length in years,
// months and days.
func calendarRange(value, layout string, years, months, days int) (timeRange, error) {
	start, err := time.ParseInLocation(layout, value, time.UTC)
	if err != nil {
		return timeRange{}, fmt.Errorf("parse date %q: %w", value, err)
	}
	return timeRange{start: start, end: start.AddDate(years, months, days)}, nil
}

// datePrefix is a FHIR search comparator for ordered values.
type datePrefix string

const (
	prefixEq datePrefix = "eq"
	prefixGt datePrefix = "gt"
	prefixGe datePrefix = "ge"
	prefixLt datePrefix = "lt"
	prefixLe datePrefix = "le"
)

// dateCondition is one prefixed date search value, such as "ge2024-03-01".
type dateCondition struct {
	prefix datePrefix
	period timeRange
}

// parseDateCondition splits an optional two-letter prefix (default eq) from a date value.
func parseDateCondition(value string) (dateCondition, error) {
	prefix := prefixEq
	if len(value) >= 2 && isLowerLetter(value[0]) && isLowerLetter(value[1]) {
		prefix, value = datePrefix(value[:2]), value[2:]
	}
	switch prefix {
	case prefixEq, prefixGt, prefixGe, prefixLt, prefixLe:
	case "ne", "sa", "eb", "ap":
		return dateCondition{}, fmt.Errorf("prefix %q is not supported (use eq, gt, ge, lt or le)", prefix)
	default:
		return dateCondition{}, fmt.Errorf("unknown prefix %q", prefix)
	}
	period, err := parseDateTimeRange(value)
	if err != nil {
		return dateCondition{}, err
	}
	return dateCondition{prefix: prefix, period: period}, nil
}

func isLowerLetter(b byte) bool { return b >= 'a' && b <= 'z' }

// matches reports whether the instant t satisfies the condition, with FHIR's semantics for a
// point target against a search period: eq means inside the period, gt after it, lt before
// it, ge not before its start, le before its end.
func (c dateCondition) matches(t time.Time) bool {
	switch c.prefix {
	case prefixEq:
		return !t.Before(c.period.start) && t.Before(c.period.end)
	case prefixGt:
		return !t.Before(c.period.end)
	case prefixGe:
		return !t.Before(c.period.start)
	case prefixLt:
		return t.Before(c.period.start)
	case prefixLe:
		return t.Before(c.period.end)
	default:
		return false
	}
}
