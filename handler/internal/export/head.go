package export

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"
)

// head is what the engine reads of every resource.
type head struct {
	ResourceType string
	ID           string
	LastUpdated  time.Time // zero if absent or unparsable
}

// readHead reads a resource's type, id and meta.lastUpdated from compact
// JSON. FHIR servers put resourceType, id and meta first, so a scan of the
// first keys usually finds all three after a few dozen bytes; anything the
// scan does not expect falls back to a full decode.
func readHead(compact []byte) head {
	if h, ok := scanHead(compact); ok {
		return h
	}
	return decodeHead(compact)
}

func decodeHead(resource []byte) head {
	var r struct {
		ResourceType string `json:"resourceType"`
		ID           string `json:"id"`
		Meta         struct {
			LastUpdated string `json:"lastUpdated"`
		} `json:"meta"`
	}
	if json.Unmarshal(resource, &r) != nil {
		return head{}
	}
	h := head{ResourceType: r.ResourceType, ID: r.ID}
	if t, err := time.Parse(time.RFC3339Nano, r.Meta.LastUpdated); err == nil {
		h.LastUpdated = t
	}
	return h
}

// scanHead walks the top-level keys of a compact JSON object until it has
// the three fields; ok is false when it meets something it does not handle
// (escapes in a key or value it needs, malformed input), or when a field is
// missing (the fallback then decides).
func scanHead(b []byte) (h head, ok bool) {
	s := scanner{b: b}
	if !s.eat('{') {
		return head{}, false
	}
	var haveType, haveID, haveMeta bool
	for !(haveType && haveID && haveMeta) {
		key, ok := s.str()
		if !ok || !s.eat(':') {
			return head{}, false
		}
		switch string(key) {
		case "resourceType":
			v, ok := s.str()
			if !ok {
				return head{}, false
			}
			h.ResourceType, haveType = string(v), true
		case "id":
			v, ok := s.str()
			if !ok {
				return head{}, false
			}
			h.ID, haveID = string(v), true
		case "meta":
			lu, ok := s.lastUpdated()
			if !ok {
				return head{}, false
			}
			h.LastUpdated, haveMeta = lu, true
		default:
			if !s.skip() {
				return head{}, false
			}
		}
		if s.eat('}') {
			return h, haveType && haveID && haveMeta
		}
		if !s.eat(',') {
			return head{}, false
		}
	}
	return h, true
}

type scanner struct {
	b []byte
	i int
}

func (s *scanner) eat(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// str reads a string without escapes and returns its bytes.
func (s *scanner) str() ([]byte, bool) {
	if !s.eat('"') {
		return nil, false
	}
	end := bytes.IndexByte(s.b[s.i:], '"')
	if end < 0 {
		return nil, false
	}
	v := s.b[s.i : s.i+end]
	if bytes.IndexByte(v, '\\') >= 0 {
		return nil, false
	}
	s.i += end + 1
	return v, true
}

// lastUpdated reads the meta object and returns its lastUpdated (zero if absent).
func (s *scanner) lastUpdated() (time.Time, bool) {
	if !s.eat('{') {
		return time.Time{}, false
	}
	var lu time.Time
	if s.eat('}') {
		return lu, true
	}
	for {
		key, ok := s.str()
		if !ok || !s.eat(':') {
			return time.Time{}, false
		}
		if string(key) == "lastUpdated" {
			v, ok := s.str()
			if !ok {
				return time.Time{}, false
			}
			if t, err := time.Parse(time.RFC3339Nano, string(v)); err == nil {
				lu = t
			}
		} else if !s.skip() {
			return time.Time{}, false
		}
		if s.eat('}') {
			return lu, true
		}
		if !s.eat(',') {
			return time.Time{}, false
		}
	}
}

// skip moves past one value of compact JSON.
func (s *scanner) skip() bool {
	if s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; c {
	case '"':
		return s.skipString()
	case '{', '[':
		depth := 0
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case '"':
				if !s.skipString() {
					return false
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					s.i++
					return true
				}
			}
			s.i++
		}
		return false
	default: // number, true, false, null
		start := s.i
		for s.i < len(s.b) && s.b[s.i] != ',' && s.b[s.i] != '}' && s.b[s.i] != ']' {
			s.i++
		}
		_, err := strconv.ParseFloat(string(s.b[start:s.i]), 64)
		lit := string(s.b[start:s.i])
		return err == nil || lit == "true" || lit == "false" || lit == "null"
	}
}

// skipString moves past a string, escapes included.
func (s *scanner) skipString() bool {
	s.i++ // opening quote
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case '\\':
			s.i += 2
			continue
		case '"':
			s.i++
			return true
		}
		s.i++
	}
	return false
}
