package fhirsource

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// Page fetches the search page at pageURL and calls visit for each entry, in
// order, while the body streams in: the page is never held in memory, only
// one entry at a time, and the Entry's bytes are reused for the next entry.
// It returns the page's next link, resolved against pageURL ("" on the last
// page).
//
// pageURL and the next link must have the origin (scheme, host, port) of the
// base URL and a path under the base path (see underBase), because requests
// carry the bearer token and the source host may serve more than FHIR;
// anything else is fault.Permanent. A visit error stops the page and is
// returned as is.
//
// A failure is retried inside Page only while no entry has been visited.
// Once visit has run, the caller has acted on part of the page (written
// resources to a file), and fetching the page again here would hand it those
// entries twice. So a failure after that point, such as a connection reset in
// the middle of the body, is returned as fault.Transient without a retry: the
// caller resumes from its last checkpoint (a page URL saved with the output it
// had committed), so every entry is written once.
func (c *Client) Page(ctx context.Context, pageURL string, visit func(export.Entry) error) (string, error) {
	page, err := c.checkPageURL(pageURL, "page")
	if err != nil {
		return "", err
	}
	op := "GET " + page.EscapedPath()
	var next string
	err = c.get(ctx, page, fault.Permanent, func(resp *http.Response) (bool, error) {
		next = ""
		visited, err := decodePage(resp.Body, func(link string) error {
			if next != "" {
				return nil // the first next link wins
			}
			n, err := c.resolveNext(page, link)
			next = n
			return err
		}, visit)
		if pe, ok := err.(pageError); ok {
			var se *syntaxError
			if errors.As(pe.error, &se) && ctx.Err() == nil {
				err = fault.Wrap(fault.Permanent, se, "%s: the source FHIR server sent JSON that cannot be read", op)
			} else {
				err = bodyError(ctx, pe.error, op)
			}
			// Retried only while nothing was visited; see above.
			return visited == 0 && fault.Is(err, fault.Transient), err
		}
		return false, err // nil, visit's own error, or a permanent fault
	})
	if err != nil {
		return "", err
	}
	return next, nil
}

// basePath is the path of the source's base URL without a trailing slash
// ("" for a base at the root of its host).
func (c *Client) basePath() string {
	return strings.TrimRight(c.base.Path, "/")
}

// underBase reports whether u (of the base's origin) is the base URL or
// below it: a same-origin link elsewhere (/admin/secret) may be another
// application, and a source that hands one out is not followed there. The
// decoded path is checked, and a dot segment anywhere refuses the link,
// since a server may undo an encoded "%2e%2e" after this check.
func (c *Client) underBase(u *url.URL) bool { return underBasePath(u, c.base) }

func underBasePath(u, base *url.URL) bool {
	for seg := range strings.SplitSeq(u.Path, "/") {
		if seg == "." || seg == ".." {
			return false
		}
	}
	b := strings.TrimRight(base.Path, "/")
	return b == "" || u.Path == b || strings.HasPrefix(u.Path, b+"/")
}

// resolveNext resolves a next link against the page it came from and checks
// that it stays at the source.
func (c *Client) resolveNext(page *url.URL, link string) (string, error) {
	ref, err := url.Parse(link)
	if err != nil || link == "" {
		return "", fault.New(fault.Permanent, "the source FHIR server's next link %q is not a URL", truncate(link, 200))
	}
	u := page.ResolveReference(ref)
	if !sameOrigin(u, c.base) {
		return "", fault.New(fault.Permanent, "the source FHIR server's next link points at %s, not at the source %s; it is not followed so that the access token is never sent elsewhere",
			originOf(u), originOf(c.base))
	}
	if !c.underBase(u) {
		// The link itself is not repeated: its query may carry a
		// server's paging secrets, and it points where we never go.
		return "", fault.New(fault.Permanent, "the source FHIR server's next link leaves its base path %s; it is not followed, so that nothing outside the FHIR API (and no other application on that host) is read or exported",
			c.basePath())
	}
	u.Fragment, u.RawFragment = "", ""
	next := u.String()
	if next == page.String() {
		return "", fault.New(fault.Permanent, "the source FHIR server's next link for %s points at the same page", page.EscapedPath())
	}
	return next, nil
}

// pageError marks a failure to read or decode the page body (as opposed to an
// error returned by visit or by the next-link check).
type pageError struct{ error }

// syntaxError is a page body that is not JSON. It is the source's fault and
// fetching the page again returns the same bytes, so it is permanent.
type syntaxError struct {
	msg    string
	offset int64 // bytes of the body read before the error
}

func (e *syntaxError) Error() string {
	return fmt.Sprintf("%s (at byte %d of the page)", e.msg, e.offset)
}

// searchMode is Bundle.entry.search.mode; decoding the usual codes allocates
// nothing.
type searchMode string

func (m *searchMode) UnmarshalJSON(b []byte) error {
	switch string(b) {
	case `"match"`:
		*m = "match"
	case `"include"`:
		*m = "include"
	case `"outcome"`:
		*m = "outcome"
	case "null":
		*m = ""
	default:
		return json.Unmarshal(b, (*string)(m))
	}
	return nil
}

type bundleLink struct {
	Relation string `json:"relation"`
	URL      string `json:"url"`
}

// decodePage walks a Bundle in one pass over its bytes: it calls visit for
// each entry as soon as the entry's end has arrived and onNext for each next
// link, wherever "link" stands. Each resource is validated and compacted
// while it is read, into a buffer reused entry after entry, so the engine
// gets bytes it can write as they are (Entry.Compact) instead of decoding,
// re-scanning and compacting them again. visited counts the calls to visit.
// A failure to read the body or an invalid body is a pageError; a non-Bundle
// is fault.Permanent; errors from onNext and visit are returned as they are.
func decodePage(r io.Reader, onNext func(string) error, visit func(export.Entry) error) (visited int, err error) {
	s := scanners.Get().(*bundleScanner)
	s.reset(r)
	defer func() {
		s.reset(nil)
		scanners.Put(s)
	}()
	return s.bundle(onNext, visit)
}

// scanners recycles the read buffer and the entry buffers from page to page.
var scanners = sync.Pool{New: func() any { return &bundleScanner{buf: make([]byte, 64<<10)} }}

// bundleScanner reads one JSON document from a stream, a buffer at a time. It
// is a validating JSON scanner that copies what it reads, minus insignificant
// whitespace, to a destination the caller chooses: the same output as
// json.Compact, with the same syntax accepted.
type bundleScanner struct {
	r        io.Reader
	buf      []byte
	pos, end int
	off      int64 // body offset of buf[0]
	err      error // what ended the stream (io.EOF at its end)
	resource []byte
	scratch  []byte
	key      []byte
}

func (s *bundleScanner) reset(r io.Reader) {
	s.r, s.pos, s.end, s.off, s.err = r, 0, 0, 0, nil
	s.resource, s.scratch, s.key = s.resource[:0], s.scratch[:0], s.key[:0]
	// A rare huge resource (a Binary of many MB) is not kept for the next page.
	if cap(s.resource) > maxKeptBuffer {
		s.resource = nil
	}
	if cap(s.scratch) > maxKeptBuffer {
		s.scratch = nil
	}
}

// maxKeptBuffer is the largest entry buffer a scanner keeps between pages.
const maxKeptBuffer = 1 << 20

// maxDepth is encoding/json's nesting limit.
const maxDepth = 10000

func (s *bundleScanner) bundle(onNext func(string) error, visit func(export.Entry) error) (visited int, err error) {
	c, err := s.peek()
	if err != nil {
		return 0, pageError{err}
	}
	if c != '{' {
		return 0, fault.New(fault.Permanent, "the source FHIR server sent a page that is not a JSON Bundle (expected '{', got %q)", c)
	}
	s.pos++
	var resourceType string
	err = s.members(func(key []byte) error {
		switch string(key) {
		case "resourceType":
			v, err := s.value(s.scratch[:0], 1)
			if err != nil {
				return pageError{err}
			}
			if err := json.Unmarshal(v, &resourceType); err != nil {
				return pageError{err}
			}
			if resourceType != "Bundle" {
				return fault.New(fault.Permanent, "the source FHIR server answered a search with a %q, not a Bundle", truncate(resourceType, 64))
			}
		case "entry":
			n, err := s.entries(visit)
			visited += n
			return err
		case "link":
			v, err := s.value(s.scratch[:0], 1)
			if err != nil {
				return pageError{err}
			}
			var links []bundleLink
			if err := json.Unmarshal(v, &links); err != nil {
				return pageError{err}
			}
			for _, l := range links {
				if l.Relation == "next" {
					if err := onNext(l.URL); err != nil {
						return err
					}
				}
			}
		default:
			var err error
			if s.scratch, err = s.value(s.scratch[:0], 1); err != nil {
				return pageError{err}
			}
		}
		return nil
	})
	if err != nil {
		return visited, err
	}
	if resourceType != "Bundle" {
		return visited, fault.New(fault.Permanent, "the source FHIR server answered a search with JSON that has no resourceType Bundle")
	}
	return visited, nil
}

// entries reads Bundle.entry: null or an array of entries.
func (s *bundleScanner) entries(visit func(export.Entry) error) (visited int, err error) {
	c, err := s.peek()
	if err != nil {
		return 0, pageError{err}
	}
	if c == 'n' {
		if _, err := s.literal(s.scratch[:0], "null"); err != nil {
			return 0, pageError{err}
		}
		return 0, nil
	}
	if c != '[' {
		return 0, fault.New(fault.Permanent, "the source FHIR server sent a Bundle whose entry is not an array")
	}
	s.pos++
	err = s.elements(func() error {
		c, err := s.peek()
		switch {
		case err != nil:
			return pageError{err}
		case c == 'n':
			if _, err := s.literal(s.scratch[:0], "null"); err != nil {
				return pageError{err}
			}
			return nil
		case c != '{':
			return pageError{s.syntax("a Bundle entry is not a JSON object")}
		}
		s.pos++
		s.resource = s.resource[:0]
		var mode searchMode
		err = s.members(func(key []byte) error {
			var err error
			switch string(key) {
			case "resource":
				s.resource, err = s.value(s.resource[:0], 2)
			case "search":
				if s.scratch, err = s.value(s.scratch[:0], 2); err != nil {
					break
				}
				mode, err = readMode(s.scratch)
			default:
				s.scratch, err = s.value(s.scratch[:0], 2)
			}
			if err != nil {
				return pageError{err}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if len(s.resource) == 0 || string(s.resource) == "null" {
			return nil // an entry without a resource has nothing to export
		}
		visited++
		return visit(export.Entry{Resource: s.resource, Mode: string(mode), Compact: true})
	})
	return visited, err
}

// readMode reads Bundle.entry.search (compact JSON) for its mode.
func readMode(search []byte) (searchMode, error) {
	if string(search) == `{"mode":"match"}` {
		return "match", nil
	}
	var v struct {
		Mode searchMode `json:"mode"`
	}
	err := json.Unmarshal(search, &v)
	return v.Mode, err
}

// members reads the members of an object whose '{' has been consumed,
// calling member with each key (unescaped; valid until the next key) to read
// the value, and consumes the closing '}'.
func (s *bundleScanner) members(member func(key []byte) error) error {
	c, err := s.peek()
	if err != nil {
		return pageError{err}
	}
	if c == '}' {
		s.pos++
		return nil
	}
	for {
		if c != '"' {
			return pageError{s.syntax("an object key is not a string")}
		}
		if s.key, err = s.str(s.key[:0]); err != nil {
			return pageError{err}
		}
		key := s.key[1 : len(s.key)-1]
		if bytes.IndexByte(key, '\\') >= 0 {
			var k string
			if err := json.Unmarshal(s.key, &k); err != nil {
				return pageError{err}
			}
			key = []byte(k)
		}
		if c, err = s.peek(); err != nil {
			return pageError{err}
		}
		if c != ':' {
			return pageError{s.syntax("an object key is not followed by ':'")}
		}
		s.pos++
		if err := member(key); err != nil {
			return err
		}
		if c, err = s.peek(); err != nil {
			return pageError{err}
		}
		s.pos++
		switch c {
		case '}':
			return nil
		case ',':
			if c, err = s.peek(); err != nil {
				return pageError{err}
			}
		default:
			s.pos--
			return pageError{s.syntax("an object member is not followed by ',' or '}'")}
		}
	}
}

// elements reads the elements of an array whose '[' has been consumed,
// calling element to read each, and consumes the closing ']'.
func (s *bundleScanner) elements(element func() error) error {
	c, err := s.peek()
	if err != nil {
		return pageError{err}
	}
	if c == ']' {
		s.pos++
		return nil
	}
	for {
		if err := element(); err != nil {
			return err
		}
		if c, err = s.peek(); err != nil {
			return pageError{err}
		}
		s.pos++
		switch c {
		case ']':
			return nil
		case ',':
		default:
			s.pos--
			return pageError{s.syntax("an array element is not followed by ',' or ']'")}
		}
	}
}

// fill reads the next part of the body into buf once buf is used up; false
// when the body has ended (s.err says how).
func (s *bundleScanner) fill() bool {
	if s.err != nil {
		return false
	}
	s.off += int64(s.end)
	s.pos, s.end = 0, 0
	for range 100 {
		n, err := s.r.Read(s.buf)
		s.end = n
		if err != nil {
			s.err = err
		}
		if n > 0 {
			return true
		}
		if err != nil {
			return false
		}
	}
	s.err = io.ErrNoProgress
	return false
}

// ended is the error for a body that ended inside the document.
func (s *bundleScanner) ended() error {
	if s.err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return s.err
}

func (s *bundleScanner) syntax(msg string) error {
	return &syntaxError{msg: msg, offset: s.off + int64(s.pos)}
}

// peek skips whitespace and returns the next byte without consuming it.
func (s *bundleScanner) peek() (byte, error) {
	for {
		for ; s.pos < s.end; s.pos++ {
			if c := s.buf[s.pos]; c != ' ' && c != '\n' && c != '\r' && c != '\t' {
				return c, nil
			}
		}
		if !s.fill() {
			return 0, s.ended()
		}
	}
}

// next consumes and returns the next byte, whitespace included.
func (s *bundleScanner) next() (byte, error) {
	if s.pos == s.end && !s.fill() {
		return 0, s.ended()
	}
	c := s.buf[s.pos]
	s.pos++
	return c, nil
}

// value reads one JSON value and appends it, compacted, to dst.
func (s *bundleScanner) value(dst []byte, depth int) ([]byte, error) {
	if depth > maxDepth {
		return dst, s.syntax("JSON nested too deeply")
	}
	c, err := s.peek()
	if err != nil {
		return dst, err
	}
	switch {
	case c == '{':
		s.pos++
		dst = append(dst, '{')
		c, err := s.peek()
		if err != nil {
			return dst, err
		}
		if c == '}' {
			s.pos++
			return append(dst, '}'), nil
		}
		for {
			if c != '"' {
				return dst, s.syntax("an object key is not a string")
			}
			if dst, err = s.str(dst); err != nil {
				return dst, err
			}
			if c, err = s.peek(); err != nil {
				return dst, err
			}
			if c != ':' {
				return dst, s.syntax("an object key is not followed by ':'")
			}
			s.pos++
			dst = append(dst, ':')
			if dst, err = s.value(dst, depth+1); err != nil {
				return dst, err
			}
			if c, err = s.peek(); err != nil {
				return dst, err
			}
			switch c {
			case '}':
				s.pos++
				return append(dst, '}'), nil
			case ',':
				s.pos++
				dst = append(dst, ',')
				if c, err = s.peek(); err != nil {
					return dst, err
				}
			default:
				return dst, s.syntax("an object member is not followed by ',' or '}'")
			}
		}
	case c == '[':
		s.pos++
		dst = append(dst, '[')
		c, err := s.peek()
		if err != nil {
			return dst, err
		}
		if c == ']' {
			s.pos++
			return append(dst, ']'), nil
		}
		for {
			if dst, err = s.value(dst, depth+1); err != nil {
				return dst, err
			}
			if c, err = s.peek(); err != nil {
				return dst, err
			}
			switch c {
			case ']':
				s.pos++
				return append(dst, ']'), nil
			case ',':
				s.pos++
				dst = append(dst, ',')
			default:
				return dst, s.syntax("an array element is not followed by ',' or ']'")
			}
		}
	case c == '"':
		return s.str(dst)
	case c == '-' || '0' <= c && c <= '9':
		return s.number(dst)
	case c == 't':
		return s.literal(dst, "true")
	case c == 'f':
		return s.literal(dst, "false")
	case c == 'n':
		return s.literal(dst, "null")
	default:
		return dst, s.syntax(fmt.Sprintf("invalid character %q looking for the beginning of a value", c))
	}
}

// plain marks the bytes a string copies without a second look: everything
// but the quote, the backslash and the control characters JSON forbids.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// str reads a string (the next byte is its opening quote) and appends it,
// quotes and escapes as they are, to dst.
func (s *bundleScanner) str(dst []byte) ([]byte, error) {
	s.pos++
	dst = append(dst, '"')
	for {
		i := s.pos
		for i < s.end && plain[s.buf[i]] {
			i++
		}
		dst = append(dst, s.buf[s.pos:i]...)
		s.pos = i
		if i == s.end {
			if !s.fill() {
				return dst, s.ended()
			}
			continue
		}
		switch c := s.buf[i]; c {
		case '"':
			s.pos++
			return append(dst, '"'), nil
		case '\\':
			s.pos++
			e, err := s.next()
			if err != nil {
				return dst, err
			}
			dst = append(dst, '\\', e)
			switch e {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				for range 4 {
					h, err := s.next()
					if err != nil {
						return dst, err
					}
					if !('0' <= h && h <= '9' || 'a' <= h && h <= 'f' || 'A' <= h && h <= 'F') {
						return dst, s.syntax("invalid character in a \\u escape")
					}
					dst = append(dst, h)
				}
			default:
				return dst, s.syntax(fmt.Sprintf("invalid escape %q in a string", e))
			}
		default:
			return dst, s.syntax("a control character in a string")
		}
	}
}

// number reads a number (the next byte is '-' or a digit) and appends it to dst.
func (s *bundleScanner) number(dst []byte) ([]byte, error) {
	c, err := s.next()
	if err != nil {
		return dst, err
	}
	dst = append(dst, c)
	if c == '-' {
		if c, err = s.next(); err != nil {
			return dst, err
		}
		if c < '0' || c > '9' {
			return dst, s.syntax("a '-' not followed by a digit")
		}
		dst = append(dst, c)
	}
	if c != '0' {
		dst = s.digits(dst)
	}
	if c, ok := s.current(); ok && c == '.' {
		s.pos++
		dst = append(dst, c)
		if dst, err = s.someDigits(dst); err != nil {
			return dst, err
		}
	}
	if c, ok := s.current(); ok && (c == 'e' || c == 'E') {
		s.pos++
		dst = append(dst, c)
		if c, ok := s.current(); ok && (c == '+' || c == '-') {
			s.pos++
			dst = append(dst, c)
		}
		if dst, err = s.someDigits(dst); err != nil {
			return dst, err
		}
	}
	return dst, nil
}

// current returns the next byte without consuming it or skipping whitespace.
func (s *bundleScanner) current() (byte, bool) {
	if s.pos == s.end && !s.fill() {
		return 0, false
	}
	return s.buf[s.pos], true
}

// digits appends the digits that follow, if any.
func (s *bundleScanner) digits(dst []byte) []byte {
	for {
		c, ok := s.current()
		if !ok || c < '0' || c > '9' {
			return dst
		}
		s.pos++
		dst = append(dst, c)
	}
}

// someDigits appends the digits that follow: at least one.
func (s *bundleScanner) someDigits(dst []byte) ([]byte, error) {
	n := len(dst)
	dst = s.digits(dst)
	if len(dst) > n {
		return dst, nil
	}
	if _, ok := s.current(); !ok {
		return dst, s.ended()
	}
	return dst, s.syntax("a number without digits after '.' or the exponent")
}

// literal reads true, false or null.
func (s *bundleScanner) literal(dst []byte, word string) ([]byte, error) {
	for i := range len(word) {
		c, err := s.next()
		if err != nil {
			return dst, err
		}
		if c != word[i] {
			return dst, s.syntax(fmt.Sprintf("invalid character %q in the literal %s", c, word))
		}
	}
	return append(dst, word...), nil
}

// checkPageURL parses a page URL (what names it in errors) and refuses one
// that is not absolute, points at another origin (the access token must
// never be sent elsewhere) or leaves the source's base path.
func (c *Client) checkPageURL(pageURL, what string) (*url.URL, error) {
	page, err := url.Parse(pageURL)
	if err != nil || !page.IsAbs() {
		return nil, fault.New(fault.Permanent, "the %s URL %q is not an absolute URL", what, pageURL)
	}
	if !sameOrigin(page, c.base) {
		return nil, fault.New(fault.Permanent, "the %s URL points at %s, not at the source FHIR server %s; it is not fetched so that the access token is never sent elsewhere",
			what, originOf(page), originOf(c.base))
	}
	if !c.underBase(page) {
		return nil, fault.New(fault.Permanent, "the %s URL leaves the source's base path %s; it is not fetched", what, c.basePath())
	}
	return page, nil
}
