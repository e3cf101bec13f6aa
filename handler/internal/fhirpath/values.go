package fhirpath

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

func jsonNumber(s string) json.Number { return json.Number(s) }

// newValue makes a detached node holding a computed value.
func newValue(typ string, v any) *Node { return &Node{Type: typ, Value: v, prim: true} }

// newQuantity makes a detached Quantity node: value and unit (or code for a
// calendar duration such as 'year').
func newQuantity(num *Node, unit string) *Node {
	q := &Node{Type: "Quantity", def: lookupType("Quantity")}
	v := &Node{Name: "value", JSONName: "value", Type: "decimal", Value: num.Value, prim: true, Parent: q}
	u := &Node{Name: "unit", JSONName: "unit", Type: "string", Value: unit, prim: true, Parent: q}
	q.Children = []*Node{v, u}
	return q
}

// calendarUnit maps FHIRPath calendar duration keywords to a unit name.
func calendarUnit(s string) string {
	switch s {
	case "year", "years":
		return "year"
	case "month", "months":
		return "month"
	case "week", "weeks":
		return "week"
	case "day", "days":
		return "day"
	case "hour", "hours":
		return "hour"
	case "minute", "minutes":
		return "minute"
	case "second", "seconds":
		return "second"
	case "millisecond", "milliseconds":
		return "millisecond"
	}
	return ""
}

// kind is the FHIRPath System type a primitive value is evaluated as.
type kind int

const (
	kNone kind = iota
	kBool
	kString
	kInt
	kDec
	kDate
	kDateTime
	kTime
	kQuantity
)

func (k kind) String() string {
	return [...]string{"none", "Boolean", "String", "Integer", "Decimal", "Date", "DateTime", "Time", "Quantity"}[k]
}

// kindOf maps a node's FHIR type to its System type.
func kindOf(n *Node) kind {
	switch n.Type {
	case "boolean":
		return kBool
	case "integer", "positiveInt", "unsignedInt", "integer64":
		return kInt
	case "decimal":
		return kDec
	case "date":
		return kDate
	case "dateTime", "instant":
		return kDateTime
	case "time":
		return kTime
	case "Quantity", "Age", "Duration", "Distance", "Count", "SimpleQuantity", "MoneyQuantity":
		return kQuantity
	}
	switch v := n.Value.(type) {
	case bool:
		return kBool
	case string:
		return kString
	case json.Number:
		if strings.ContainsAny(string(v), ".eE") {
			return kDec
		}
		return kInt
	}
	return kNone
}

// text is the value as FHIRPath's toString() gives it.
func text(n *Node) (string, bool) {
	switch v := n.Value.(type) {
	case string:
		return v, true
	case json.Number:
		return string(v), true
	case bool:
		if v {
			return "true", true
		}
		return "false", true
	}
	if kindOf(n) == kQuantity {
		val, unit := quantityParts(n)
		if val == "" {
			return "", false
		}
		if calendarUnit(unit) != "" {
			return val + " " + unit, true
		}
		return val + " '" + unit + "'", true
	}
	return "", false
}

func quantityParts(n *Node) (value, unit string) {
	for _, c := range n.Children {
		switch c.Name {
		case "value":
			value, _ = text(c)
		case "unit":
			if unit == "" {
				unit, _ = c.Value.(string)
			}
		case "code":
			if s, ok := c.Value.(string); ok {
				unit = s
			}
		}
	}
	return value, unit
}

func toFloat(n *Node) (float64, bool) {
	s, ok := text(n)
	if !ok {
		return 0, false
	}
	f, err := strconv.ParseFloat(s, 64)
	return f, err == nil
}

func toInt(n *Node) (int64, bool) {
	s, ok := text(n)
	if !ok {
		return 0, false
	}
	i, err := strconv.ParseInt(s, 10, 64)
	return i, err == nil
}

func decimalNode(f float64) *Node {
	return newValue("decimal", json.Number(strconv.FormatFloat(f, 'f', -1, 64)))
}

func intNode(i int64) *Node { return newValue("integer", json.Number(strconv.FormatInt(i, 10))) }

// moment is a partial date, dateTime or time. Components beyond prec are unset.
type moment struct {
	kind  kind
	parts [7]int // year, month, day, hour, minute, second, millisecond
	prec  int    // number of parts set; seconds and milliseconds count as one precision
	tz    bool
	off   int // zone offset in minutes when tz
}

// parseMoment reads FHIR/FHIRPath date, dateTime and time text.
func parseMoment(s string, k kind) (moment, error) {
	m := moment{kind: k}
	rest := s
	num := func(width int) (int, bool) {
		if len(rest) < width {
			return 0, false
		}
		v, err := strconv.Atoi(rest[:width])
		if err != nil {
			return 0, false
		}
		rest = rest[width:]
		return v, true
	}
	bad := fmt.Errorf("invalid %s %q", k, s)
	if k != kTime {
		y, ok := num(4)
		if !ok {
			return m, bad
		}
		m.parts[0], m.prec = y, 1
		for _, i := range []int{1, 2} {
			if !strings.HasPrefix(rest, "-") {
				break
			}
			rest = rest[1:]
			v, ok := num(2)
			if !ok {
				return m, bad
			}
			m.parts[i], m.prec = v, i+1
		}
		if rest == "" || rest == "T" {
			if rest == "T" && k == kDate {
				m.kind = kDateTime
			}
			return m, nil
		}
		if rest[0] != 'T' {
			return m, bad
		}
		rest = rest[1:]
		if k == kDate {
			m.kind = kDateTime
		}
	}
	base := 3
	h, ok := num(2)
	if !ok {
		return m, bad
	}
	m.parts[base], m.prec = h, base+1
	for _, i := range []int{base + 1, base + 2} {
		if !strings.HasPrefix(rest, ":") {
			break
		}
		rest = rest[1:]
		v, ok := num(2)
		if !ok {
			return m, bad
		}
		m.parts[i], m.prec = v, i+1
	}
	if strings.HasPrefix(rest, ".") {
		rest = rest[1:]
		j := 0
		for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
			j++
		}
		frac := (rest[:j] + "000")[:3]
		ms, _ := strconv.Atoi(frac)
		m.parts[6] = ms
		rest = rest[j:]
	}
	switch {
	case rest == "":
	case rest == "Z":
		m.tz = true
	case (rest[0] == '+' || rest[0] == '-') && len(rest) == 6 && rest[3] == ':':
		hh, err1 := strconv.Atoi(rest[1:3])
		mm, err2 := strconv.Atoi(rest[4:6])
		if err1 != nil || err2 != nil {
			return m, bad
		}
		m.tz, m.off = true, hh*60+mm
		if rest[0] == '-' {
			m.off = -m.off
		}
	default:
		return m, bad
	}
	return m, nil
}

// parseDateLiteral reads the text of an @ literal.
func parseDateLiteral(s string) (*Node, error) {
	if strings.HasPrefix(s, "T") {
		if _, err := parseMoment(s[1:], kTime); err != nil {
			return nil, err
		}
		return newValue("time", s[1:]), nil
	}
	m, err := parseMoment(s, kDate)
	if err != nil {
		return nil, err
	}
	if m.kind == kDateTime {
		return newValue("dateTime", strings.TrimSuffix(s, "T")), nil
	}
	return newValue("date", s), nil
}

func momentOf(n *Node, k kind) (moment, bool) {
	s, ok := n.Value.(string)
	if !ok {
		return moment{}, false
	}
	m, err := parseMoment(s, k)
	return m, err == nil
}

// utc shifts a moment with a zone and a time of day to UTC.
func (m moment) utc() moment {
	if !m.tz || m.off == 0 || m.prec < 4 || m.kind == kTime {
		return m
	}
	t := time.Date(m.parts[0], time.Month(max(m.parts[1], 1)), max(m.parts[2], 1), m.parts[3], m.parts[4], m.parts[5], m.parts[6]*1e6, time.UTC)
	t = t.Add(-time.Duration(m.off) * time.Minute)
	m.parts = [7]int{t.Year(), int(t.Month()), t.Day(), t.Hour(), t.Minute(), t.Second(), t.Nanosecond() / 1e6}
	m.off = 0
	return m
}

// compareMoments is FHIRPath's comparison of partial dates and times: it
// returns -1, 0 or 1, or ok=false (empty) when the values agree up to the
// precision of the less precise one. Seconds and milliseconds are one precision.
func compareMoments(a, b moment) (int, bool) {
	// A value with a zone is compared in UTC; one without is taken as UTC,
	// which is what Firely (and so Microsoft's published vectors) does.
	a, b = a.utc(), b.utc()
	start, end := 0, 7
	if a.kind == kTime {
		start = 3
	}
	for i := start; i < end; i++ {
		ha, hb := i < a.prec || (i == 6 && a.prec == 6), i < b.prec || (i == 6 && b.prec == 6)
		if !ha || !hb {
			if ha != hb {
				return 0, false
			}
			return 0, true
		}
		if a.parts[i] != b.parts[i] {
			if a.parts[i] < b.parts[i] {
				return -1, true
			}
			return 1, true
		}
	}
	return 0, true
}

// addToMoment adds a calendar quantity to a date or dateTime, keeping its text precision.
func addToMoment(n *Node, m moment, amount float64, unit string) (*Node, bool) {
	t := time.Date(m.parts[0], time.Month(max(m.parts[1], 1)), max(m.parts[2], 1), m.parts[3], m.parts[4], m.parts[5], m.parts[6]*1e6, time.UTC)
	whole := int(amount)
	switch calendarUnit(unit) {
	case "year":
		t = t.AddDate(whole, 0, 0)
	case "month":
		t = t.AddDate(0, whole, 0)
	case "week":
		t = t.AddDate(0, 0, 7*whole)
	case "day":
		t = t.AddDate(0, 0, whole)
	case "hour":
		t = t.Add(time.Duration(whole) * time.Hour)
	case "minute":
		t = t.Add(time.Duration(whole) * time.Minute)
	case "second":
		t = t.Add(time.Duration(amount * float64(time.Second)))
	default:
		return nil, false
	}
	if m.kind == kTime {
		return nil, false
	}
	layouts := []string{"2006", "2006-01", "2006-01-02", "2006-01-02T15", "2006-01-02T15:04", "2006-01-02T15:04:05", "2006-01-02T15:04:05.000"}
	prec := m.prec
	if prec == 6 && m.parts[6] != 0 {
		prec = 7
	}
	s := t.Format(layouts[prec-1])
	if prec == 4 {
		s += ":00" // FHIR has no hour-only form
	}
	if m.tz && prec > 3 {
		orig, _ := n.Value.(string)
		if i := strings.LastIndexAny(orig, "Z+-"); i > 10 {
			s += orig[i:]
		}
	}
	typ := n.Type
	if typ == "instant" {
		typ = "dateTime"
	}
	return newValue(typ, s), true
}

// compareValues orders two singletons. ok=false means empty (precision);
// an error means the types cannot be compared.
func compareValues(a, b *Node) (int, bool, error) {
	ka, kb := kindOf(a), kindOf(b)
	switch {
	case (ka == kInt || ka == kDec) && (kb == kInt || kb == kDec):
		if ka == kInt && kb == kInt {
			x, ok1 := toInt(a)
			y, ok2 := toInt(b)
			if ok1 && ok2 {
				return cmp3(x < y, x > y), true, nil
			}
		}
		x, ok1 := toFloat(a)
		y, ok2 := toFloat(b)
		if !ok1 || !ok2 {
			return 0, false, nil
		}
		return cmp3(x < y, x > y), true, nil
	case ka == kString && kb == kString:
		x, _ := text(a)
		y, _ := text(b)
		return strings.Compare(x, y), true, nil
	case (ka == kDate || ka == kDateTime) && (kb == kDate || kb == kDateTime), ka == kTime && kb == kTime:
		ma, ok1 := momentOf(a, ka)
		mb, ok2 := momentOf(b, kb)
		if !ok1 || !ok2 {
			return 0, false, fmt.Errorf("invalid date/time value")
		}
		c, ok := compareMoments(ma, mb)
		return c, ok, nil
	case ka == kQuantity && kb == kQuantity:
		va, ua := quantityParts(a)
		vb, ub := quantityParts(b)
		if ua != ub {
			return 0, false, nil
		}
		x, err1 := strconv.ParseFloat(va, 64)
		y, err2 := strconv.ParseFloat(vb, 64)
		if err1 != nil || err2 != nil {
			return 0, false, nil
		}
		return cmp3(x < y, x > y), true, nil
	}
	return 0, false, fmt.Errorf("cannot compare %s with %s", ka, kb)
}

func cmp3(less, more bool) int {
	if less {
		return -1
	}
	if more {
		return 1
	}
	return 0
}

// equalValues is FHIRPath '=' on two singletons; ok=false means empty.
func equalValues(a, b *Node) (eq, ok bool) {
	ka, kb := kindOf(a), kindOf(b)
	if ka == kBool && kb == kBool {
		return a.Value == b.Value, true
	}
	if ka == kNone || kb == kNone {
		return equalNodes(a, b), true
	}
	c, ok, err := compareValues(a, b)
	if err != nil {
		return false, true // different types are not equal
	}
	return c == 0, ok
}

// equivalentValues is FHIRPath '~'.
func equivalentValues(a, b *Node) bool {
	ka, kb := kindOf(a), kindOf(b)
	if ka == kString && kb == kString {
		x, _ := text(a)
		y, _ := text(b)
		return strings.EqualFold(strings.Join(strings.Fields(x), " "), strings.Join(strings.Fields(y), " "))
	}
	if ka == kDec || kb == kDec {
		x, ok1 := toFloat(a)
		y, ok2 := toFloat(b)
		return ok1 && ok2 && math.Abs(x-y) < 1e-8
	}
	eq, ok := equalValues(a, b)
	return ok && eq
}

// equalNodes compares complex nodes by their children, in order.
func equalNodes(a, b *Node) bool {
	if a == b {
		return true
	}
	if a.Value != b.Value || len(a.Children) != len(b.Children) {
		return false
	}
	for i := range a.Children {
		if a.Children[i].Name != b.Children[i].Name || !equalNodes(a.Children[i], b.Children[i]) {
			return false
		}
	}
	return true
}
