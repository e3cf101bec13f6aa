package fhirpath

import (
	"fmt"
	"strings"

	"github.com/azfhir/bulkexport/handler/internal/fault"
)

type tokKind int

const (
	tEOF tokKind = iota
	tIdent
	tString
	tNumber
	tDate // @2015-02-07, @2015-02-07T13:28:17Z, @T14:30
	tVar  // $this, %resource
	tOp   // punctuation and symbolic operators
)

type token struct {
	kind tokKind
	text string // identifier, decoded string, number text, date text without '@', operator
	pos  int    // byte offset in the expression, for errors
	quot bool   // a `delimited` identifier (never a keyword)
}

func syntaxError(expr string, pos int, format string, args ...any) error {
	return fault.New(fault.Invalid, "fhirpath: %q at position %d: %s", expr, pos, fmt.Sprintf(format, args...))
}

// lex splits a FHIRPath expression into tokens.
func lex(src string) ([]token, error) {
	var toks []token
	i := 0
	for i < len(src) {
		c := src[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '/' && i+1 < len(src) && src[i+1] == '/':
			for i < len(src) && src[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < len(src) && src[i+1] == '*':
			end := strings.Index(src[i+2:], "*/")
			if end < 0 {
				return nil, syntaxError(src, i, "unterminated comment")
			}
			i += end + 4
		case isIdentStart(c):
			j := i + 1
			for j < len(src) && isIdentPart(src[j]) {
				j++
			}
			toks = append(toks, token{kind: tIdent, text: src[i:j], pos: i})
			i = j
		case c == '`':
			j := strings.IndexByte(src[i+1:], '`')
			if j <= 0 {
				return nil, syntaxError(src, i, "unterminated or empty delimited identifier")
			}
			toks = append(toks, token{kind: tIdent, text: src[i+1 : i+1+j], pos: i, quot: true})
			i += j + 2
		case c == '\'':
			s, n, err := unquote(src, i)
			if err != nil {
				return nil, err
			}
			toks = append(toks, token{kind: tString, text: s, pos: i})
			i = n
		case c >= '0' && c <= '9':
			j := i
			for j < len(src) && src[j] >= '0' && src[j] <= '9' {
				j++
			}
			if j+1 < len(src) && src[j] == '.' && src[j+1] >= '0' && src[j+1] <= '9' {
				j++
				for j < len(src) && src[j] >= '0' && src[j] <= '9' {
					j++
				}
			}
			toks = append(toks, token{kind: tNumber, text: src[i:j], pos: i})
			i = j
		case c == '@':
			j := scanDateLiteral(src, i+1)
			if j == i+1 {
				return nil, syntaxError(src, i, "empty date/time literal")
			}
			toks = append(toks, token{kind: tDate, text: src[i+1 : j], pos: i})
			i = j
		case c == '$' || c == '%':
			j := i + 1
			for j < len(src) && isIdentPart(src[j]) {
				j++
			}
			toks = append(toks, token{kind: tVar, text: src[i:j], pos: i})
			i = j
		default:
			op := ""
			for _, o := range []string{"!=", "!~", "<=", ">=", ".", "(", ")", "{", "}", "[", "]", ",", "|", "=", "~", "<", ">", "+", "-", "*", "/", "&"} {
				if strings.HasPrefix(src[i:], o) {
					op = o
					break
				}
			}
			if op == "" {
				return nil, syntaxError(src, i, "unexpected character %q", c)
			}
			toks = append(toks, token{kind: tOp, text: op, pos: i})
			i += len(op)
		}
	}
	return append(toks, token{kind: tEOF, pos: len(src)}), nil
}

func isIdentStart(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func isIdentPart(c byte) bool { return isIdentStart(c) || (c >= '0' && c <= '9') }

// unquote reads the string literal starting at src[i] == '\”.
func unquote(src string, i int) (string, int, error) {
	var b strings.Builder
	j := i + 1
	for j < len(src) {
		c := src[j]
		switch c {
		case '\'':
			return b.String(), j + 1, nil
		case '\\':
			if j+1 >= len(src) {
				return "", 0, syntaxError(src, j, "unterminated string")
			}
			e := src[j+1]
			switch e {
			case 't':
				b.WriteByte('\t')
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 'f':
				b.WriteByte('\f')
			case 'u':
				if j+6 > len(src) {
					return "", 0, syntaxError(src, j, "bad \\u escape")
				}
				var r rune
				if _, err := fmt.Sscanf(src[j+2:j+6], "%04x", &r); err != nil {
					return "", 0, syntaxError(src, j, "bad \\u escape")
				}
				b.WriteRune(r)
				j += 4
			case '\'', '"', '`', '\\', '/':
				b.WriteByte(e)
			default:
				// Not a FHIRPath escape: keep the backslash, as Firely does, so
				// that regular expressions such as '\d{4}' reach the regex engine.
				b.WriteByte('\\')
				b.WriteByte(e)
			}
			j += 2
		default:
			b.WriteByte(c)
			j++
		}
	}
	return "", 0, syntaxError(src, i, "unterminated string")
}

// scanDateLiteral returns the end of the date/time literal text starting at
// src[i] (after '@'): [YYYY[-MM[-DD]]][T[hh[:mm[:ss[.fff]]]][Z|(+|-)hh:mm]].
// It stops where the literal's grammar stops, so "@2015T.toString()" is the
// literal "2015T" followed by an invocation. Malformed parts (such as
// "2015-1-1") are taken whole so that parsing reports them.
func scanDateLiteral(src string, i int) int {
	j := i
	digits := func() {
		for j < len(src) && src[j] >= '0' && src[j] <= '9' {
			j++
		}
	}
	sep := func(s byte) bool {
		if j+1 < len(src) && src[j] == s && src[j+1] >= '0' && src[j+1] <= '9' {
			j++
			digits()
			return true
		}
		return false
	}
	if j < len(src) && src[j] != 'T' {
		digits()
		if sep('-') {
			sep('-')
		}
	}
	if j < len(src) && src[j] == 'T' {
		j++
		digits()
		if sep(':') { // hh:mm
			if sep(':') { // :ss
				sep('.')
			}
		}
		if j < len(src) && src[j] == 'Z' {
			j++
		} else if j+1 < len(src) && (src[j] == '+' || src[j] == '-') && src[j+1] >= '0' && src[j+1] <= '9' && j > i && src[j-1] >= '0' {
			j++
			digits()
			sep(':')
		}
	}
	return j
}
