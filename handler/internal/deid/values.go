package deid

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/fhir"
)

// This file holds the value-level algorithms, as functions over strings, so
// that each can be checked against Microsoft's published vectors without a
// resource tree. Sources are in Tools-for-Health-Data-Anonymization,
// FHIR/src/Microsoft.Health.Fhir.Anonymizer.Shared.Core/Utility.

// hashValue is cryptoHash: HMAC-SHA256 keyed with the UTF-8 bytes of the key
// over the UTF-8 bytes of the value, as 64 lowercase hex digits
// (CryptoHashUtility.ComputeHmacSHA256Hash).
func hashValue(key []byte, value string) string {
	m := hmac.New(sha256.New, key)
	io.WriteString(m, value)
	var sum [sha256.Size]byte
	return hex.EncodeToString(m.Sum(sum[:0]))
}

var (
	oidReference  = regexp.MustCompile(`^urn:oid:[0-2](\.(0|[1-9][0-9]*))+$`)
	uuidReference = regexp.MustCompile(`^urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
)

// transformReference applies f to the id part of a Reference.reference only,
// so that a hashed "Patient/123" still points at the Patient whose hashed id
// is the same (ReferenceUtility.TransformReferenceId):
//   - "#x" (contained) becomes "#"+f(x); a bare "#" stays;
//   - "[base/]Type/id[/_history/vid]" keeps base, type and history;
//   - "urn:oid:…" and "urn:uuid:…" keep their prefix;
//   - anything else is transformed whole.
//
// Deliberate difference: Microsoft's base-URL pattern admits only letters,
// digits and \ / . : % $, so a base with a hyphen or underscore (every Azure
// Health Data Services host name has one) does not match and the whole
// reference is hashed, which breaks the link. We accept the RFC 3986
// unreserved characters (adding - _ ~) in the base as well.
func transformReference(ref string, f func(string) string) string {
	if ref == "" {
		return ref
	}
	if id, ok := strings.CutPrefix(ref, "#"); ok {
		if id == "" {
			return ref
		}
		return "#" + f(id)
	}
	if prefix, id, suffix, ok := splitLiteralReference(ref); ok {
		return prefix + f(id) + suffix
	}
	if oidReference.MatchString(ref) {
		return "urn:oid:" + f(ref[len("urn:oid:"):])
	}
	if uuidReference.MatchString(ref) {
		return "urn:uuid:" + f(ref[len("urn:uuid:"):])
	}
	return f(ref)
}

// splitLiteralReference splits "[http(s)://base/]Type/id[/_history/vid]"
// into the part before the id, the id and the part after it.
func splitLiteralReference(ref string) (prefix, id, suffix string, ok bool) {
	s := ref
	if i := strings.LastIndex(s, "/_history/"); i >= 0 && isReferenceID(s[i+len("/_history/"):]) {
		s, suffix = s[:i], s[i:]
	}
	slash := strings.LastIndexByte(s, '/')
	if slash < 0 || !isReferenceID(s[slash+1:]) {
		return "", "", "", false
	}
	id = s[slash+1:]
	rest := s[:slash]
	typeStart := strings.LastIndexByte(rest, '/') + 1
	if !fhir.IsResourceType(rest[typeStart:]) {
		return "", "", "", false
	}
	prefix = s[:slash+1]
	if base := rest[:typeStart]; base != "" && !isReferenceBase(base) {
		return "", "", "", false
	}
	return prefix, id, suffix, true
}

// isReferenceID reports whether s fits Microsoft's id pattern [A-Za-z0-9\-\.]{1,64}.
func isReferenceID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// isReferenceBase reports whether base (ending in "/") is an http(s) base URL
// made of Microsoft's characters plus the unreserved - _ ~.
func isReferenceBase(base string) bool {
	rest, ok := strings.CutPrefix(base, "https://")
	if !ok {
		if rest, ok = strings.CutPrefix(base, "http://"); !ok {
			return false
		}
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(`\/.:%$-_~`, c) >= 0) {
			return false
		}
	}
	return true
}

// encryptValue is encrypt: AES-CBC with PKCS#7 padding under a fresh random
// 16-byte IV, returned as base64(IV ‖ ciphertext), which is what .NET's
// Aes.Create() defaults give EncryptUtility.EncryptTextToBase64WithAes.
func encryptValue(block cipher.Block, random io.Reader, plain string) (string, error) {
	pad := aes.BlockSize - len(plain)%aes.BlockSize
	buf := make([]byte, aes.BlockSize+len(plain)+pad)
	iv := buf[:aes.BlockSize]
	if _, err := io.ReadFull(random, iv); err != nil {
		return "", fmt.Errorf("reading an IV: %w", err)
	}
	body := buf[aes.BlockSize:]
	copy(body, plain)
	for i := len(plain); i < len(body); i++ {
		body[i] = byte(pad)
	}
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(body, body)
	return base64.StdEncoding.EncodeToString(buf), nil
}

// decryptValue reverses encryptValue; it is what a holder of encryptKey runs
// to read an encrypted element back.
func decryptValue(block cipher.Block, text string) (string, error) {
	data, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		return "", err
	}
	if len(data) < 2*aes.BlockSize || len(data)%aes.BlockSize != 0 {
		return "", errors.New("ciphertext is not IV plus whole AES blocks")
	}
	iv, body := data[:aes.BlockSize], data[aes.BlockSize:]
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(body, body)
	pad := int(body[len(body)-1])
	if pad == 0 || pad > aes.BlockSize {
		return "", errors.New("bad PKCS#7 padding")
	}
	for _, b := range body[len(body)-pad:] {
		if int(b) != pad {
			return "", errors.New("bad PKCS#7 padding")
		}
	}
	return string(body[:len(body)-pad]), nil
}

// shiftOffset is the keyed date-shift offset in days, in [−50, +50]
// (DateTimeUtility.GetDateShiftValue): o = (o·131 + b) mod 101 over the
// UTF-8 bytes of prefix+key, minus 50.
func shiftOffset(prefix, key string) int {
	o := 0
	for _, s := range [2]string{prefix, key} {
		for i := 0; i < len(s); i++ {
			o = (o*131 + int(s[i])) % 101
		}
	}
	return o - 50
}

// The FHIR date and dateTime patterns exactly as DateTimeUtility uses them:
// unanchored, group 1 the year, 5 the month, 7 the day, 8 the "T…" suffix.
var (
	datePattern     = regexp.MustCompile(`([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?`)
	dateTimePattern = regexp.MustCompile(`([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?`)
	timePattern     = regexp.MustCompile(`([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?`)
)

// dateParts is a date, dateTime or instant value split by the FHIR pattern.
type dateParts struct {
	year, month, day int    // month and day are 0 when absent
	yearText         string // the year as written
	suffix           string // "T…" with zone, or ""
	timeEnd          int    // where hh:mm:ss(.f) ends in suffix; 0 when not known
}

// parseDate splits a value the way DateTimeUtility's patterns do.
func parseDate(value string, dateTime bool) (dateParts, bool) {
	if d, ok := parseDateStrict(value, dateTime); ok {
		return d, true
	}
	return parseDatePattern(value, dateTime)
}

func parseDatePattern(value string, dateTime bool) (dateParts, bool) {
	p := datePattern
	if dateTime {
		p = dateTimePattern
	}
	m := p.FindStringSubmatchIndex(value)
	if m == nil {
		return dateParts{}, false
	}
	group := func(i int) string {
		if m[2*i] < 0 {
			return ""
		}
		return value[m[2*i]:m[2*i+1]]
	}
	var d dateParts
	d.yearText = group(1)
	d.year, _ = strconv.Atoi(d.yearText)
	d.month, _ = strconv.Atoi(group(5))
	d.day, _ = strconv.Atoi(group(7))
	if dateTime {
		d.suffix = group(8)
	}
	return d, true
}

// parseDateStrict reads the common, fully valid layouts (YYYY, YYYY-MM,
// YYYY-MM-DD and, for dateTime, YYYY-MM-DDThh:mm:ss[.f+](Z|±hh:mm)) without
// a regular expression. When the whole value is valid, the pattern's match
// is the whole value, so the parts are the same; anything else goes to the
// pattern.
func parseDateStrict(v string, dateTime bool) (dateParts, bool) {
	num := func(i, n int) int {
		x := 0
		for j := i; j < i+n; j++ {
			c := v[j]
			if c < '0' || c > '9' {
				return -1
			}
			x = x*10 + int(c-'0')
		}
		return x
	}
	var d dateParts
	if len(v) < 4 {
		return d, false
	}
	if d.year = num(0, 4); d.year <= 0 {
		return d, false
	}
	d.yearText = v[:4]
	if len(v) == 4 {
		return d, true
	}
	if len(v) < 7 || v[4] != '-' {
		return d, false
	}
	if d.month = num(5, 2); d.month < 1 || d.month > 12 {
		return d, false
	}
	if len(v) == 7 {
		return d, true
	}
	if len(v) < 10 || v[7] != '-' {
		return d, false
	}
	if d.day = num(8, 2); d.day < 1 || d.day > 31 {
		return d, false
	}
	if len(v) == 10 {
		return d, true
	}
	if !dateTime || len(v) < 20 || v[10] != 'T' || v[13] != ':' || v[16] != ':' {
		return d, false
	}
	if h, m, s := num(11, 2), num(14, 2), num(17, 2); h < 0 || h > 23 || m < 0 || m > 59 || s < 0 || s > 60 {
		return d, false
	}
	i := 19
	if v[i] == '.' {
		i++
		start := i
		for i < len(v) && v[i] >= '0' && v[i] <= '9' {
			i++
		}
		if i == start || i == len(v) {
			return d, false
		}
	}
	zone := v[i:]
	switch {
	case zone == "Z":
	case len(zone) == 6 && (zone[0] == '+' || zone[0] == '-') && zone[3] == ':':
		h, m := num(i+1, 2), num(i+4, 2)
		if !(h >= 0 && h <= 13 && m >= 0 && m <= 59 || h == 14 && m == 0) {
			return d, false
		}
	default:
		return d, false
	}
	d.suffix, d.timeEnd = v[10:], i-10
	return d, true
}

// overAgeThreshold reports whether a date implies an age over 89 on the day
// now (DateTimeUtility.IndicateAgeOverThreshold; a missing month or day
// counts as 1).
func (d dateParts) overAgeThreshold(now time.Time) bool {
	month, day := max(d.month, 1), max(d.day, 1)
	age := now.Year() - d.year
	if int(now.Month()) < month || int(now.Month()) == month && now.Day() < day {
		age--
	}
	return age > 89
}

// redactDate is redact on a date, dateTime or instant: with partial dates it
// keeps the year unless the date implies an age over 89; otherwise the value
// goes. ok=false means the value is removed.
//
// Deliberate difference: when partial dates are on and the value does not
// match the FHIR date pattern at all, Microsoft leaves it unchanged (and
// still labels it REDACTED); we remove it.
func redactDate(value string, dateTime, partial bool, now time.Time) (string, bool) {
	if !partial {
		return "", false
	}
	d, ok := parseDate(value, dateTime)
	if !ok || d.overAgeThreshold(now) {
		return "", false
	}
	return d.yearText, true
}

// shiftDate is dateShift on a date, dateTime or instant that has a day and
// does not imply an age over 89 (the caller redacts otherwise): the calendar
// date as written, in its own zone, moved by offset days; a time part keeps
// its layout and zone with every digit of hh:mm:ss(.fff) set to 0
// (DateTimeUtility.ShiftDateTimeAndInstantNode).
func shiftDate(d dateParts, offset int) string {
	t := time.Date(d.year, time.Month(d.month), d.day, 0, 0, 0, 0, time.UTC).AddDate(0, 0, offset)
	y, m, day := t.Date()
	var out string
	if y >= 0 && y <= 9999 {
		b := make([]byte, 10, 10+len(d.suffix))
		b[0], b[1], b[2], b[3] = byte('0'+y/1000), byte('0'+y/100%10), byte('0'+y/10%10), byte('0'+y%10)
		b[4], b[5], b[6] = '-', byte('0'+int(m)/10), byte('0'+int(m)%10)
		b[7], b[8], b[9] = '-', byte('0'+day/10), byte('0'+day%10)
		if d.timeEnd > 0 {
			b = append(b, 'T')
			for _, c := range []byte(d.suffix[1:d.timeEnd]) {
				if c >= '0' && c <= '9' {
					c = '0'
				}
				b = append(b, c)
			}
			return string(append(b, d.suffix[d.timeEnd:]...))
		}
		out = string(b)
	} else {
		out = fmt.Sprintf("%04d-%02d-%02d", y, int(m), day)
	}
	if d.suffix == "" {
		return out
	}
	suffix := d.suffix
	if loc := timePattern.FindStringIndex(suffix); loc != nil {
		zeroed := zeroDigits(suffix[loc[0]:loc[1]])
		suffix = strings.ReplaceAll(suffix, suffix[loc[0]:loc[1]], zeroed)
	}
	return out + suffix
}

func zeroDigits(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= '0' && c <= '9' {
			b[i] = '0'
		}
	}
	return string(b)
}

// redactPostalCode is redact on an element named postalCode with partial
// zip codes on: a value starting with a restricted prefix has every digit
// zeroed; otherwise the first three characters stay and later digits are
// zeroed (PostalCodeUtility.RedactPostalCode).
func redactPostalCode(value string, restricted []string) string {
	for _, p := range restricted {
		if strings.HasPrefix(value, p) {
			return zeroDigits(value)
		}
	}
	if len(value) >= 3 {
		return value[:3] + zeroDigits(value[3:])
	}
	return value
}

// keepAge reports whether an Age.value survives redaction with partial ages
// on: it does when it is at most 89.
//
// Deliberate difference: Microsoft parses the value with int.Parse, which
// throws on a decimal age such as 89.5 and fails the whole export; we
// compare the decimal value.
func keepAge(value string) bool {
	f, err := strconv.ParseFloat(value, 64)
	return err == nil && f <= 89
}

// perturbValue is perturb on a number: uniform noise in [−span/2, +span/2]
// (span scaled by the value when proportional), rounded half to even to
// roundTo decimals like .NET decimal.Round, written with exactly roundTo
// decimals. u is a uniform sample in [0, 1). Integer types round to 0
// decimals; a positiveInt at or below 0 becomes 1 and an unsignedInt below 0
// becomes 0 (PerturbProcessor.AddNoise).
func perturbValue(value string, typ string, span float64, proportional bool, roundTo int, u float64) (string, error) {
	v, err := strconv.ParseFloat(value, 64)
	if err != nil {
		return "", fmt.Errorf("perturb needs a number")
	}
	switch typ {
	case "integer", "positiveInt", "unsignedInt", "integer64":
		roundTo = 0
	}
	if proportional {
		span = v * span
	}
	noisy := v + (u-0.5)*span
	scale := math.Pow10(roundTo)
	r := math.RoundToEven(noisy*scale) / scale
	if typ == "positiveInt" && r <= 0 {
		r = 1
	}
	if typ == "unsignedInt" && r < 0 {
		r = 0
	}
	if r == 0 {
		r = 0 // no "-0"
	}
	return strconv.FormatFloat(r, 'f', roundTo, 64), nil
}
