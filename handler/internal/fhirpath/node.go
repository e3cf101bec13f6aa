// Package fhirpath holds FHIR resources as mutable trees of nodes and
// evaluates the FHIRPath subset that de-identification rules use over them.
// Selection returns the tree's own nodes, so a caller can change or remove
// what a rule matched in place; no served Go FHIRPath module allows that.
// Element types come from the R4 StructureDefinitions (r4types_gen.go).
package fhirpath

import (
	"encoding/json"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// Node is one element of a FHIR resource held as a mutable tree.
type Node struct {
	// Name is the element name FHIRPath uses: "value" for JSON "valueQuantity",
	// "birthDate"; "" for a resource root.
	Name string
	// JSONName is the JSON property the node came from ("valueQuantity"); array
	// items keep their property's name; "" for a resource root.
	JSONName string
	// Type is the FHIR type of the instance: "date", "string", "HumanName",
	// "Age", "Quantity", "Reference", "BackboneElement", "Patient" (resources,
	// also contained and Bundle.entry.resource); "" for an element R4 does not
	// define (kept as it is, never an error).
	Type string
	// Value is set on primitives only: string, json.Number or bool. It is nil
	// when the primitive has no value (only id/extension from "_name") and on
	// complex nodes. Setting Value to nil removes the value.
	Value any
	// Children are in document order. A primitive's id and extension (from
	// the JSON "_name" sibling) are its children.
	Children []*Node
	Parent   *Node
	// Array says the element repeats, so it is written as a JSON array even
	// with one item.
	Array bool

	def      *typeDef // definition used to read the children; nil if unknown
	resource bool     // a resource node (root, contained, entry.resource...)
	prim     bool     // read as a JSON primitive or from a "_name" object
	raw      string   // JSON R4 cannot hold (nested arrays), written back verbatim
}

// IsResource reports whether n is a resource: the root, a contained resource,
// a Bundle.entry.resource or a Parameters.parameter.resource.
func (n *Node) IsResource() bool { return n != nil && n.resource }

// Resource returns the nearest enclosing resource node, n itself if it is one.
func (n *Node) Resource() *Node {
	for ; n != nil; n = n.Parent {
		if n.resource {
			return n
		}
	}
	return nil
}

// Remove detaches n from its parent. It is a no-op on a root.
func (n *Node) Remove() {
	p := n.Parent
	if p == nil {
		return
	}
	for i, c := range p.Children {
		if c == n {
			copy(p.Children[i:], p.Children[i+1:])
			p.Children[len(p.Children)-1] = nil
			p.Children = p.Children[:len(p.Children)-1]
			break
		}
	}
	n.Parent = nil
}

// isPrimitive reports whether n is written as a JSON primitive. FHIR
// primitive type names start with a lower-case letter, resource and complex
// type names with a capital.
func (n *Node) isPrimitive() bool {
	if n.prim || n.Value != nil {
		return true
	}
	// A node read from JSON knows (prim); one built by a caller is judged by
	// its type.
	return n.def == nil && !n.resource && n.Type != "" && n.Type[0] >= 'a' && n.Type[0] <= 'z'
}

// ParseResource reads one JSON resource into a tree. Types come from the R4
// definitions: the root's from its resourceType, nested resources' from theirs.
// Properties R4 does not define are kept with an empty Type.
func ParseResource(data []byte) (*Node, error) {
	// One copy of the input backs every string in the tree (values, unknown
	// keys, numbers): substrings share it instead of allocating each.
	p := parser{data: data, s: string(data)}
	p.ws()
	if p.pos >= len(p.data) || p.data[p.pos] != '{' {
		return nil, fault.New(fault.Invalid, "fhirpath: resource is not a JSON object")
	}
	root := p.node()
	if err := p.object(root, true); err != nil {
		return nil, err
	}
	p.ws()
	if p.pos != len(p.data) {
		return nil, p.errorf("trailing data after the resource")
	}
	if !root.resource {
		return nil, fault.New(fault.Invalid, "fhirpath: resource has no resourceType")
	}
	return root, nil
}

type parser struct {
	data []byte
	s    string // string(data)
	pos  int
	// Nodes and child lists are allocated in blocks, the first sized from
	// the input: a few allocations per resource instead of two per node.
	slab  []Node
	ptrs  []*Node
	block int
	// stack holds the children of the objects being read; an object's
	// children move to an exact-size slice of ptrs when it ends.
	stack []*Node
	keys  []string // the keys of the objects being read, to refuse duplicates
}

// node allocates a Node from the current block.
func (p *parser) node() *Node {
	if len(p.slab) == 0 {
		// Synthea averages one node per 28 bytes of JSON: the first block
		// usually holds the whole resource, later ones are small.
		p.block = 32
		if p.slab == nil {
			p.block = len(p.data)/24 + 8
		}
		p.slab = make([]Node, p.block)
	}
	n := &p.slab[0]
	p.slab = p.slab[1:]
	return n
}

// children moves the children read since mark off the stack.
func (p *parser) children(mark int) []*Node {
	k := len(p.stack) - mark
	if k == 0 {
		return nil
	}
	if len(p.ptrs) < k {
		p.ptrs = make([]*Node, max(k, p.block))
	}
	out := p.ptrs[:k:k]
	p.ptrs = p.ptrs[k:]
	copy(out, p.stack[mark:])
	clear(p.stack[mark:])
	p.stack = p.stack[:mark]
	return out
}

func (p *parser) errorf(msg string) error {
	return fault.New(fault.Invalid, "fhirpath: invalid JSON at byte %d: %s", p.pos, msg)
}

func (p *parser) ws() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

// object reads a JSON object into n, whose def (possibly nil) names its
// elements. maybeResource says the slot may hold a resource: then a
// "resourceType" property gives n its type, wherever it appears.
func (p *parser) object(n *Node, maybeResource bool) error {
	p.pos++ // '{'
	if maybeResource {
		if rt, ok := p.findResourceType(); ok {
			n.Type = rt
			n.def = lookupType(rt)
			n.resource = true
		}
	}
	sawExt := false
	mark, kmark := len(p.stack), len(p.keys)
	defer func() { p.keys = p.keys[:kmark] }()
	p.ws()
	if p.pos < len(p.data) && p.data[p.pos] == '}' {
		p.pos++
		return nil
	}
	for {
		p.ws()
		kb, err := p.stringBytes()
		if err != nil {
			return err
		}
		for _, k := range p.keys[kmark:] {
			if k == string(kb) {
				return p.errorf("duplicate key " + strconv.Quote(k))
			}
		}
		p.keys = append(p.keys, p.sub(kb))
		p.ws()
		if p.pos >= len(p.data) || p.data[p.pos] != ':' {
			return p.errorf("expected ':'")
		}
		p.pos++
		p.ws()
		if n.resource && string(kb) == "resourceType" {
			if _, err := p.stringBytes(); err != nil {
				return err
			}
		} else if len(kb) > 1 && kb[0] == '_' {
			sawExt = true
			if err := p.primitiveExt(n, mark, p.sub(kb[1:])); err != nil {
				return err
			}
		} else if err := p.member(n, mark, kb, sawExt); err != nil {
			return err
		}
		p.ws()
		if p.pos >= len(p.data) {
			return p.errorf("unterminated object")
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
		case '}':
			p.pos++
			if n.Children == nil {
				n.Children = p.children(mark)
			} else {
				n.Children = append(n.Children, p.children(mark)...)
			}
			return nil
		default:
			return p.errorf("expected ',' or '}'")
		}
	}
}

// findResourceType looks ahead in the object just opened for "resourceType"
// at its top level, without moving the parser.
func (p *parser) findResourceType() (string, bool) {
	save := p.pos
	defer func() { p.pos = save }()
	for {
		p.ws()
		if p.pos >= len(p.data) || p.data[p.pos] != '"' {
			return "", false
		}
		kb, err := p.stringBytes()
		if err != nil {
			return "", false
		}
		p.ws()
		if p.pos >= len(p.data) || p.data[p.pos] != ':' {
			return "", false
		}
		p.pos++
		p.ws()
		if string(kb) == "resourceType" {
			v, err := p.stringBytes()
			if err != nil {
				return "", false
			}
			return p.sub(v), true
		}
		if err := p.skip(); err != nil {
			return "", false
		}
		p.ws()
		if p.pos >= len(p.data) || p.data[p.pos] != ',' {
			return "", false
		}
		p.pos++
	}
}

// sub returns b, a slice of p.data, as the same bytes of p.s without copying;
// decoded (escaped) bytes are copied.
func (p *parser) sub(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	off := cap(p.data) - cap(b)
	if off >= 0 && off+len(b) <= len(p.data) && &p.data[off] == &b[0] {
		return p.s[off : off+len(b)]
	}
	return string(b)
}

// elemOf finds the definition of JSON property key on n; nil when unknown.
func elemOf(n *Node, key []byte) *elemDef {
	if n.def == nil {
		return nil
	}
	return n.def.elems[string(key)]
}

// newChild makes the node for property key of parent.
func (p *parser) newChild(parent *Node, e *elemDef, key string) *Node {
	c := p.node()
	c.Parent = parent
	if e != nil {
		c.Name, c.JSONName, c.Type, c.def, c.Array = e.name, e.jsonName, e.typ, e.def, e.array
	} else {
		c.Name, c.JSONName = key, key
	}
	return c
}

// member reads the value of property key into new children of n. When a
// "_key" sibling came first (sawExt), the primitives it created get the values.
func (p *parser) member(n *Node, mark int, kb []byte, sawExt bool) error {
	e := elemOf(n, kb)
	key := ""
	if e != nil {
		key = e.jsonName
	} else {
		key = p.sub(kb)
	}
	var pending []*Node
	if sawExt {
		for _, c := range p.stack[mark:] {
			if c.JSONName == key && c.prim && c.Value == nil {
				pending = append(pending, c)
			}
		}
	}
	if p.pos < len(p.data) && p.data[p.pos] == '[' {
		p.pos++
		p.ws()
		if p.pos < len(p.data) && p.data[p.pos] == ']' {
			p.pos++ // an empty array holds nothing (and FHIR forbids it): dropped
			return nil
		}
		for i := 0; ; i++ {
			p.ws()
			var c *Node
			if i < len(pending) {
				c = pending[i]
				if err := p.value(c); err != nil {
					return err
				}
			} else {
				c = p.newChild(n, e, key)
				c.Array = true
				p.stack = append(p.stack, c)
				if err := p.value(c); err != nil {
					return err
				}
			}
			if end, err := p.afterItem(); end || err != nil {
				return err
			}
		}
	}
	if len(pending) > 0 {
		return p.value(pending[0])
	}
	c := p.newChild(n, e, key)
	p.stack = append(p.stack, c)
	return p.value(c)
}

// value reads one JSON value (not an array item list) into c.
func (p *parser) value(c *Node) error {
	if p.pos >= len(p.data) {
		return p.errorf("unexpected end")
	}
	switch b := p.data[p.pos]; {
	case b == '{':
		slot := c.def == nil || c.Type == "Resource" || c.Type == "DomainResource"
		return p.object(c, slot)
	case b == '[':
		start := p.pos
		if err := p.skip(); err != nil {
			return err
		}
		c.raw = p.s[start:p.pos]
		return nil
	case b == '"':
		s, err := p.str()
		if err != nil {
			return err
		}
		c.Value, c.prim = s, true
	case b == 't' || b == 'f':
		if p.lit("true") {
			c.Value = true
		} else if p.lit("false") {
			c.Value = false
		} else {
			return p.errorf("invalid literal")
		}
		c.prim = true
	case b == 'n':
		if !p.lit("null") {
			return p.errorf("invalid literal")
		}
		c.prim = true
	default:
		start := p.pos
		for p.pos < len(p.data) {
			b := p.data[p.pos]
			if (b >= '0' && b <= '9') || b == '-' || b == '+' || b == '.' || b == 'e' || b == 'E' {
				p.pos++
				continue
			}
			break
		}
		if p.pos == start {
			return p.errorf("unexpected character")
		}
		num := p.s[start:p.pos]
		if !json.Valid(p.data[start:p.pos]) {
			return p.errorf("invalid number")
		}
		c.Value, c.prim = json.Number(num), true
	}
	return nil
}

// primitiveExt reads a "_name" property: the id and extensions of the
// primitive(s) called name, created here if their values have not been read yet.
func (p *parser) primitiveExt(n *Node, mark int, name string) error {
	e := elemOf(n, []byte(name))
	if e != nil {
		name = e.jsonName
	}
	var existing []*Node
	for _, c := range p.stack[mark:] {
		if c.JSONName == name {
			existing = append(existing, c)
		}
	}
	one := func(i int, arr bool) error {
		var c *Node
		if i < len(existing) {
			c = existing[i]
		} else {
			c = p.newChild(n, e, name)
			c.Array = arr
			p.stack = append(p.stack, c)
		}
		c.prim = true
		if p.lit("null") {
			return nil
		}
		if p.pos >= len(p.data) || p.data[p.pos] != '{' {
			return p.errorf("expected an object for a primitive's id and extension")
		}
		saved := c.def
		c.def = elementDef()
		err := p.object(c, false)
		c.def = saved
		return err
	}
	if p.pos < len(p.data) && p.data[p.pos] == '[' {
		p.pos++
		for i := 0; ; i++ {
			p.ws()
			if i == 0 && p.pos < len(p.data) && p.data[p.pos] == ']' {
				p.pos++
				return nil
			}
			if err := one(i, true); err != nil {
				return err
			}
			if end, err := p.afterItem(); end || err != nil {
				return err
			}
		}
	}
	return one(0, false)
}

func (p *parser) lit(s string) bool {
	if len(p.data)-p.pos >= len(s) && string(p.data[p.pos:p.pos+len(s)]) == s {
		p.pos += len(s)
		return true
	}
	return false
}

// stringBytes reads a JSON string and returns its raw bytes when it has no
// escapes (no copy), or its decoded bytes otherwise.
func (p *parser) stringBytes() ([]byte, error) {
	if p.pos >= len(p.data) || p.data[p.pos] != '"' {
		return nil, p.errorf("expected a string")
	}
	start := p.pos + 1
	for i := start; i < len(p.data); i++ {
		switch p.data[i] {
		case '"':
			p.pos = i + 1
			return p.data[start:i], nil
		case '\\':
			s, err := p.str()
			return []byte(s), err
		}
	}
	return nil, p.errorf("unterminated string")
}

// str reads and decodes a JSON string.
func (p *parser) str() (string, error) {
	start := p.pos + 1
	i := start
	for ; i < len(p.data); i++ {
		b := p.data[i]
		if b == '"' {
			p.pos = i + 1
			return p.s[start:i], nil
		}
		if b == '\\' {
			break
		}
	}
	// Slow path: escapes. Bytes other than escapes are kept as they are, as
	// on the fast path, so text that is not valid UTF-8 round-trips the same.
	b := make([]byte, 0, i-start+16)
	b = append(b, p.data[start:i]...)
	for i < len(p.data) {
		c := p.data[i]
		switch {
		case c == '"':
			p.pos = i + 1
			return string(b), nil
		case c == '\\' && i+1 < len(p.data):
			e := p.data[i+1]
			i += 2
			switch e {
			case '"', '\\', '/':
				b = append(b, e)
			case 'b':
				b = append(b, '\b')
			case 'f':
				b = append(b, '\f')
			case 'n':
				b = append(b, '\n')
			case 'r':
				b = append(b, '\r')
			case 't':
				b = append(b, '\t')
			case 'u':
				r, ok := p.hex4(i)
				if !ok {
					return "", p.errorf("invalid \\u escape")
				}
				i += 4
				if utf16.IsSurrogate(r) {
					if r2, ok := p.hex4(i + 2); ok && p.data[i] == '\\' && p.data[i+1] == 'u' {
						if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
							r = d
							i += 6
						}
					}
				}
				b = utf8.AppendRune(b, r)
			default:
				return "", p.errorf("invalid escape")
			}
		default:
			b = append(b, c)
			i++
		}
	}
	return "", p.errorf("unterminated string")
}

// hex4 reads four hex digits at data[i:].
func (p *parser) hex4(i int) (rune, bool) {
	if i+4 > len(p.data) {
		return 0, false
	}
	v, err := strconv.ParseUint(string(p.data[i:i+4]), 16, 32)
	return rune(v), err == nil
}

// skip moves past one JSON value of any kind.
func (p *parser) skip() error {
	if p.pos >= len(p.data) {
		return p.errorf("unexpected end")
	}
	switch p.data[p.pos] {
	case '"':
		_, err := p.stringBytes()
		return err
	case '{', '[':
		depth := 0
		for p.pos < len(p.data) {
			switch p.data[p.pos] {
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					p.pos++
					return nil
				}
			case '"':
				if _, err := p.stringBytes(); err != nil {
					return err
				}
				continue
			}
			p.pos++
		}
		return p.errorf("unterminated value")
	default:
		var c Node
		return p.value(&c)
	}
}

// AppendJSON appends n as compact JSON to dst. Properties are written in the
// order of Children. Primitives without a value and without id/extension,
// and complex nodes left with nothing to write, are omitted; a primitive's id
// and extension go to the "_name" sibling, with nulls in arrays where needed.
// A resource writes "resourceType" first.
func (n *Node) AppendJSON(dst []byte) []byte {
	if n.raw != "" {
		return append(dst, n.raw...)
	}
	if n.isPrimitive() {
		if str, ok := n.Value.(string); ok && jsonNumberOrBool(n.Type, str) {
			// A number or boolean set as text (by a substitute or generalize
			// rule) keeps its JSON type.
			return append(dst, str...)
		}
		return appendPrimitive(dst, n.Value)
	}
	dst, _ = n.appendObject(dst)
	return dst
}

// appendObject writes n's children as an object and reports whether it wrote
// any property (resourceType does not count: an emptied resource is still omitted).
func (n *Node) appendObject(dst []byte) ([]byte, bool) {
	dst = append(dst, '{')
	first := true
	if n.resource {
		dst = append(dst, `"resourceType":`...)
		dst = appendString(dst, n.Type)
		first = false
	}
	any := false
	ch := n.Children
	for i := 0; i < len(ch); {
		j := i + 1
		for j < len(ch) && ch[j].JSONName == ch[i].JSONName {
			j++
		}
		var wrote bool
		dst, wrote = appendMember(dst, ch[i:j], first)
		if wrote {
			first, any = false, true
		}
		i = j
	}
	return append(dst, '}'), any
}

// appendMember writes one property (and its "_name" sibling for primitives)
// from the run of children that share its JSON name.
func appendMember(dst []byte, group []*Node, first bool) ([]byte, bool) {
	start := len(dst)
	comma := func() {
		if !first {
			dst = append(dst, ',')
		}
	}
	key := group[0].JSONName
	array := len(group) > 1 || group[0].Array
	if group[0].raw != "" && len(group) == 1 && !array {
		comma()
		dst = appendKey(dst, key)
		return append(dst, group[0].raw...), true
	}
	allPrimitive := true
	for _, c := range group {
		allPrimitive = allPrimitive && c.raw == "" && c.isPrimitive()
	}
	if allPrimitive {
		var live []*Node
		hasValue, hasExt := false, false
		for _, c := range group {
			v, x := c.Value != nil || c.raw != "", hasContent(c)
			if !v && !x {
				continue
			}
			live = append(live, c)
			hasValue = hasValue || v
			hasExt = hasExt || x
		}
		if len(live) == 0 {
			return dst, false
		}
		if hasValue {
			comma()
			first = false
			dst = appendKey(dst, key)
			if array {
				dst = append(dst, '[')
				for i, c := range live {
					if i > 0 {
						dst = append(dst, ',')
					}
					dst = c.AppendJSON(dst)
				}
				dst = append(dst, ']')
			} else {
				dst = live[0].AppendJSON(dst)
			}
		}
		if hasExt {
			comma()
			dst = appendKey(dst, "_"+key)
			if array {
				dst = append(dst, '[')
				for i, c := range live {
					if i > 0 {
						dst = append(dst, ',')
					}
					if hasContent(c) {
						dst, _ = c.appendObject(dst)
					} else {
						dst = append(dst, "null"...)
					}
				}
				dst = append(dst, ']')
			} else {
				dst, _ = live[0].appendObject(dst)
			}
		}
		return dst, len(dst) > start
	}
	comma()
	dst = appendKey(dst, key)
	if !array {
		var ok bool
		dst, ok = group[0].appendObject(dst)
		if !ok {
			return dst[:start], false
		}
		return dst, true
	}
	dst = append(dst, '[')
	n := 0
	for _, c := range group {
		mark := len(dst)
		if n > 0 {
			dst = append(dst, ',')
		}
		// Arrays R4 does not define may mix kinds: write each as it is.
		switch {
		case c.raw != "":
			dst = append(dst, c.raw...)
		case c.isPrimitive():
			if c.Value == nil {
				dst = dst[:mark]
				continue
			}
			dst = c.AppendJSON(dst)
		default:
			var ok bool
			if dst, ok = c.appendObject(dst); !ok {
				dst = dst[:mark]
				continue
			}
		}
		n++
	}
	if n == 0 {
		return dst[:start], false
	}
	return append(dst, ']'), true
}

// hasContent reports whether a primitive has an id or extension left to write.
func hasContent(n *Node) bool {
	for _, c := range n.Children {
		if c.raw != "" || c.Value != nil || hasContent(c) {
			return true
		}
	}
	return false
}

func appendKey(dst []byte, k string) []byte {
	dst = appendString(dst, k)
	return append(dst, ':')
}

// jsonNumberOrBool reports whether s, the text value of a primitive of FHIR
// type typ, is written bare in JSON: the numeric and boolean types.
func jsonNumberOrBool(typ, s string) bool {
	switch typ {
	case "boolean":
		return s == "true" || s == "false"
	case "integer", "positiveInt", "unsignedInt", "decimal":
		return s != "" && json.Valid([]byte(s)) && (s[0] == '-' || (s[0] >= '0' && s[0] <= '9'))
	}
	return false
}

func appendPrimitive(dst []byte, v any) []byte {
	switch v := v.(type) {
	case string:
		return appendString(dst, v)
	case json.Number:
		return append(dst, v...)
	case bool:
		return strconv.AppendBool(dst, v)
	case int:
		return strconv.AppendInt(dst, int64(v), 10)
	case int64:
		return strconv.AppendInt(dst, v, 10)
	case float64:
		return strconv.AppendFloat(dst, v, 'f', -1, 64)
	default:
		return append(dst, "null"...)
	}
}

const hexDigits = "0123456789abcdef"

// appendString writes s as a JSON string, escaping only what JSON requires,
// so that text written by common FHIR servers (and Synthea) round-trips.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b >= 0x20 && b != '"' && b != '\\' {
			i++ // UTF-8 and everything else is written as read
			continue
		}
		dst = append(dst, s[start:i]...)
		switch b {
		case '"', '\\':
			dst = append(dst, '\\', b)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// afterItem reads the separator after an array item; end is true after the
// closing bracket.
func (p *parser) afterItem() (end bool, err error) {
	p.ws()
	if p.pos >= len(p.data) {
		return false, p.errorf("unterminated array")
	}
	switch p.data[p.pos] {
	case ',':
		p.pos++
		return false, nil
	case ']':
		p.pos++
		return true, nil
	}
	return false, p.errorf("expected ',' or ']'")
}
