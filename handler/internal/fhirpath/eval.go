package fhirpath

import (
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/dlclark/regexp2"

	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// Expression is a compiled FHIRPath expression. It is safe for concurrent use.
type Expression struct {
	src  string
	root expr
	// lead is the type name a path starts with ("Patient" in
	// "Patient.address.state"), when a focus of another type can only give
	// empty: Select then answers without evaluating, which matters because
	// every rule of a configuration is tried on every resource.
	lead string
}

// String returns the source text of the expression.
func (e *Expression) String() string { return e.src }

// Compile parses a FHIRPath expression. A syntax error or an unknown
// function is an error of kind fault.Invalid whose text names the position.
func Compile(src string) (*Expression, error) {
	toks, err := lex(src)
	if err != nil {
		return nil, err
	}
	p := &exprParser{src: src, toks: toks}
	x, err := p.parseLevel(0)
	if err != nil {
		return nil, err
	}
	if t := p.peek(); t.kind != tEOF {
		return nil, syntaxError(src, t.pos, "unexpected %q", t.text)
	}
	return &Expression{src: src, root: x, lead: leadType(x)}, nil
}

// emptyPreserving lists the functions that give empty for an empty input.
var emptyPreserving = map[string]bool{"where": true, "select": true, "nodesByType": true, "nodesByName": true, "ofType": true, "as": true, "first": true, "last": true, "extension": true, "children": true, "descendants": true}

// leadType finds the capitalised identifier that starts a navigation chain
// whose result is empty when that identifier selects nothing.
func leadType(x expr) string {
	for {
		switch e := x.(type) {
		case *memberExpr:
			if e.target == nil {
				if e.first && e.name[0] >= 'A' && e.name[0] <= 'Z' {
					return e.name
				}
				return ""
			}
			x = e.target
		case *typeExpr:
			if e.op != "as" {
				return ""
			}
			x = e.x
		case *callExpr:
			if e.target == nil || !emptyPreserving[e.name] {
				return ""
			}
			x = e.target
		case *indexExpr:
			x = e.x
		default:
			return ""
		}
	}
}

func hasChild(n *Node, name string) bool {
	for _, c := range n.Children {
		if c.Name == name {
			return true
		}
	}
	return false
}

// MustCompile is Compile for expressions fixed in the program; it panics on
// an error. (Added after the first version of this API: additive.)
func MustCompile(src string) *Expression {
	e, err := Compile(src)
	if err != nil {
		panic(err)
	}
	return e
}

// evalCtx carries what an evaluation needs besides its input collection.
type evalCtx struct {
	src   string
	this  *Node
	focus *Node
}

// Select evaluates e with focus and $this = focus. Tree nodes are returned as
// the same pointers, so a caller can change them in place; computed values
// are new detached nodes with Type "boolean", "integer", "decimal", "string",
// "date", "dateTime", "time" or "Quantity". The error (kind fault.Invalid)
// covers what FHIRPath calls an evaluation error, such as comparing a string
// with an integer or an operator given more than one item.
func (e *Expression) Select(focus *Node) ([]*Node, error) {
	if focus == nil {
		return nil, nil
	}
	if e.lead != "" && !typeMatches(focus, e.lead) && !hasChild(focus, e.lead) {
		return nil, nil
	}
	c := &evalCtx{src: e.src, this: focus, focus: focus}
	return e.root.eval(c, []*Node{focus})
}

// IsTrue is FHIRPath's singleton evaluation of a collection as a boolean: a
// single boolean is its value, a single item of any other type is true, and
// empty or several items are false (FHIRPath leaves the latter empty or an
// error; a rule that needs true treats both as "not matched").
func IsTrue(result []*Node) bool {
	if len(result) != 1 {
		return false
	}
	if b, ok := result[0].Value.(bool); ok {
		return b
	}
	return true
}

// Predicate is Firely's Predicate, which Microsoft's generalize method uses
// to test its cases: like IsTrue, except that an empty result counts as true
// (the FHIR invariant convention). Microsoft's published vectors depend on it:
// a date of year precision "2000" matches "$this >= @1990-01-01 and $this <
// @2000-01-01" because the second comparison is empty.
//
// Added after the first version of this API (additive).
func Predicate(result []*Node) bool {
	if len(result) == 0 {
		return true
	}
	return IsTrue(result)
}

func (c *evalCtx) errorf(format string, args ...any) error {
	return fault.New(fault.Invalid, "fhirpath: %q: %s", c.src, fmt.Sprintf(format, args...))
}

func (x *literalExpr) eval(*evalCtx, []*Node) ([]*Node, error) {
	if x.val == nil {
		return nil, nil
	}
	return []*Node{x.val}, nil
}

func (thisExpr) eval(c *evalCtx, _ []*Node) ([]*Node, error) { return []*Node{c.this}, nil }

func (x *varExpr) eval(c *evalCtx, _ []*Node) ([]*Node, error) {
	if x.name == "%resource" || x.name == "%rootResource" {
		r := c.focus.Resource()
		if x.name == "%rootResource" {
			for r != nil && r.Parent != nil && r.Parent.Resource() != nil {
				r = r.Parent.Resource()
			}
		}
		if r != nil {
			return []*Node{r}, nil
		}
		return nil, nil
	}
	return []*Node{c.focus}, nil
}

// typeMatches reports whether n is of type t or derives from it. t may be
// qualified ("FHIR.Age", "System.String"); a System type name matches the
// FHIR primitives that evaluate to it.
func typeMatches(n *Node, t string) bool {
	if s, ok := strings.CutPrefix(t, "FHIR."); ok {
		t = s
	} else if s, ok := strings.CutPrefix(t, "System."); ok {
		return systemTypeMatches(n, s)
	}
	if n.Type == t {
		return true
	}
	switch t {
	case "String", "Integer", "Decimal", "Boolean", "Date", "DateTime", "Time":
		return systemTypeMatches(n, t)
	}
	return lookupType(n.Type).isA(t)
}

func systemTypeMatches(n *Node, t string) bool {
	if n.Value == nil {
		return false
	}
	k := kindOf(n)
	return k.String() == t
}

func (x *memberExpr) eval(c *evalCtx, input []*Node) ([]*Node, error) {
	if x.target != nil {
		var err error
		if input, err = x.target.eval(c, input); err != nil {
			return nil, err
		}
	}
	var out []*Node
	for _, n := range input {
		if x.first && n.Type != "" && x.name[0] >= 'A' && x.name[0] <= 'Z' && typeMatches(n, x.name) {
			out = append(out, n)
			continue
		}
		for _, ch := range n.Children {
			if ch.Name == x.name {
				out = append(out, ch)
			}
		}
	}
	return out, nil
}

func (x *indexExpr) eval(c *evalCtx, input []*Node) ([]*Node, error) {
	items, err := x.x.eval(c, input)
	if err != nil {
		return nil, err
	}
	ix, err := x.index.eval(c, []*Node{c.this})
	if err != nil {
		return nil, err
	}
	if len(ix) != 1 {
		return nil, nil
	}
	i, ok := toInt(ix[0])
	if !ok || i < 0 || i >= int64(len(items)) {
		return nil, nil
	}
	return items[i : i+1], nil
}

func (x *typeExpr) eval(c *evalCtx, input []*Node) ([]*Node, error) {
	items, err := x.x.eval(c, input)
	if err != nil {
		return nil, err
	}
	if x.op == "is" {
		if len(items) == 0 {
			return nil, nil
		}
		if len(items) > 1 {
			return nil, c.errorf("'is' needs a single item, got %d", len(items))
		}
		return []*Node{newValue("boolean", typeMatches(items[0], x.typ))}, nil
	}
	// 'as' filters: Firely applies it item by item, and the shipped
	// configurations rely on that (FamilyMemberHistory.condition.onset as Age).
	var out []*Node
	for _, n := range items {
		if typeMatches(n, x.typ) {
			out = append(out, n)
		}
	}
	return out, nil
}

func (x *unaryExpr) eval(c *evalCtx, input []*Node) ([]*Node, error) {
	v, err := x.x.eval(c, input)
	if err != nil || x.op == "+" || len(v) == 0 {
		return v, err
	}
	if len(v) > 1 {
		return nil, c.errorf("unary minus needs a single item")
	}
	switch kindOf(v[0]) {
	case kInt:
		i, _ := toInt(v[0])
		return []*Node{intNode(-i)}, nil
	case kDec:
		f, _ := toFloat(v[0])
		return []*Node{decimalNode(-f)}, nil
	}
	return nil, c.errorf("unary minus on %s", kindOf(v[0]))
}

// boolOf is singleton evaluation for logic operators: nil for empty.
func boolOf(c *evalCtx, v []*Node) (*bool, error) {
	if len(v) == 0 {
		return nil, nil
	}
	if len(v) > 1 {
		return nil, c.errorf("a boolean operand has %d items", len(v))
	}
	b := true
	if bv, ok := v[0].Value.(bool); ok {
		b = bv
	}
	return &b, nil
}

func boolResult(b *bool) []*Node {
	if b == nil {
		return nil
	}
	return []*Node{newValue("boolean", *b)}
}

func ptr(b bool) *bool { return &b }

func (x *binaryExpr) eval(c *evalCtx, input []*Node) ([]*Node, error) {
	l, err := x.l.eval(c, input)
	if err != nil {
		return nil, err
	}
	// Short-circuit the logic operators where the left side decides.
	switch x.op {
	case "and", "or", "implies", "xor":
		lb, err := boolOf(c, l)
		if err != nil {
			return nil, err
		}
		if x.op == "and" && lb != nil && !*lb {
			return boolResult(ptr(false)), nil
		}
		if x.op == "or" && lb != nil && *lb {
			return boolResult(ptr(true)), nil
		}
		if x.op == "implies" && lb != nil && !*lb {
			return boolResult(ptr(true)), nil
		}
		r, err := x.r.eval(c, input)
		if err != nil {
			return nil, err
		}
		rb, err := boolOf(c, r)
		if err != nil {
			return nil, err
		}
		switch x.op {
		case "and":
			if rb != nil && !*rb {
				return boolResult(ptr(false)), nil
			}
			if lb == nil || rb == nil {
				return nil, nil
			}
			return boolResult(ptr(true)), nil
		case "or":
			if rb != nil && *rb {
				return boolResult(ptr(true)), nil
			}
			if lb == nil || rb == nil {
				return nil, nil
			}
			return boolResult(ptr(false)), nil
		case "implies":
			if rb != nil && *rb {
				return boolResult(ptr(true)), nil
			}
			if lb == nil || rb == nil {
				return nil, nil
			}
			return boolResult(ptr(false)), nil
		default: // xor
			if lb == nil || rb == nil {
				return nil, nil
			}
			return boolResult(ptr(*lb != *rb)), nil
		}
	}
	r, err := x.r.eval(c, input)
	if err != nil {
		return nil, err
	}
	switch x.op {
	case "|":
		return union(l, r), nil
	case "in":
		return membership(c, l, r)
	case "contains":
		return membership(c, r, l)
	case "&":
		ls, rs := "", ""
		if len(l) > 1 || len(r) > 1 {
			return nil, c.errorf("'&' needs single items")
		}
		if len(l) == 1 {
			ls, _ = text(l[0])
		}
		if len(r) == 1 {
			rs, _ = text(r[0])
		}
		return []*Node{newValue("string", ls+rs)}, nil
	}
	if len(l) == 0 || len(r) == 0 {
		return nil, nil
	}
	switch x.op {
	case "=", "!=":
		if len(l) != len(r) {
			return boolResult(ptr(x.op == "!=")), nil
		}
		all := true
		for i := range l {
			eq, ok := equalValues(l[i], r[i])
			if !ok {
				return nil, nil
			}
			all = all && eq
		}
		return boolResult(ptr(all == (x.op == "="))), nil
	case "~", "!~":
		all := len(l) == len(r)
		for i := 0; all && i < len(l); i++ {
			all = equivalentValues(l[i], r[i])
		}
		return boolResult(ptr(all == (x.op == "~"))), nil
	}
	if len(l) > 1 || len(r) > 1 {
		return nil, c.errorf("operator %s needs single items, got %d and %d", x.op, len(l), len(r))
	}
	a, b := l[0], r[0]
	switch x.op {
	case "<", "<=", ">", ">=":
		cmp, ok, err := compareValues(a, b)
		if err != nil {
			return nil, c.errorf("%v", err)
		}
		if !ok {
			return nil, nil
		}
		var res bool
		switch x.op {
		case "<":
			res = cmp < 0
		case "<=":
			res = cmp <= 0
		case ">":
			res = cmp > 0
		default:
			res = cmp >= 0
		}
		return boolResult(&res), nil
	}
	return arithmetic(c, x.op, a, b)
}

func arithmetic(c *evalCtx, op string, a, b *Node) ([]*Node, error) {
	ka, kb := kindOf(a), kindOf(b)
	switch {
	case ka == kString && kb == kString && op == "+":
		x, _ := text(a)
		y, _ := text(b)
		return []*Node{newValue("string", x+y)}, nil
	case (ka == kDate || ka == kDateTime || ka == kTime) && kb == kQuantity && (op == "+" || op == "-"):
		m, ok := momentOf(a, ka)
		val, unit := quantityParts(b)
		f, err := strconv.ParseFloat(val, 64)
		if !ok || err != nil {
			return nil, c.errorf("invalid date arithmetic")
		}
		if op == "-" {
			f = -f
		}
		n, ok := addToMoment(a, m, f, unit)
		if !ok {
			return nil, c.errorf("cannot add %s to a %s", unit, ka)
		}
		return []*Node{n}, nil
	case ka == kInt && kb == kInt && op != "/":
		x, _ := toInt(a)
		y, _ := toInt(b)
		switch op {
		case "+":
			return []*Node{intNode(x + y)}, nil
		case "-":
			return []*Node{intNode(x - y)}, nil
		case "*":
			return []*Node{intNode(x * y)}, nil
		case "div":
			if y == 0 {
				return nil, nil
			}
			return []*Node{intNode(x / y)}, nil
		case "mod":
			if y == 0 {
				return nil, nil
			}
			return []*Node{intNode(x % y)}, nil
		}
	case (ka == kInt || ka == kDec) && (kb == kInt || kb == kDec):
		x, _ := toFloat(a)
		y, _ := toFloat(b)
		switch op {
		case "+":
			return []*Node{decimalNode(x + y)}, nil
		case "-":
			return []*Node{decimalNode(x - y)}, nil
		case "*":
			return []*Node{decimalNode(x * y)}, nil
		case "/":
			if y == 0 {
				return nil, nil
			}
			return []*Node{decimalNode(x / y)}, nil
		case "div":
			if y == 0 {
				return nil, nil
			}
			return []*Node{intNode(int64(x / y))}, nil
		case "mod":
			if y == 0 {
				return nil, nil
			}
			q := float64(int64(x / y))
			return []*Node{decimalNode(x - q*y)}, nil
		}
	}
	return nil, c.errorf("operator %s cannot combine %s and %s", op, ka, kb)
}

// union is '|': both collections, without duplicates (tree nodes by
// identity, computed values by value).
func union(l, r []*Node) []*Node {
	out := make([]*Node, 0, len(l)+len(r))
	for _, n := range append(append([]*Node{}, l...), r...) {
		dup := false
		for _, o := range out {
			if o == n || (n.Parent == nil && o.Parent == nil && o.Value != nil && o.Type == n.Type && o.Value == n.Value) {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, n)
		}
	}
	return out
}

// membership is 'item in collection'.
func membership(c *evalCtx, item, coll []*Node) ([]*Node, error) {
	if len(item) == 0 {
		return nil, nil
	}
	if len(item) > 1 {
		return nil, c.errorf("'in'/'contains' needs a single item, got %d", len(item))
	}
	for _, n := range coll {
		if eq, ok := equalValues(item[0], n); ok && eq {
			return boolResult(ptr(true)), nil
		}
	}
	return boolResult(ptr(false)), nil
}

// walk visits n and its descendants in document order, skipping nested
// resources entirely (the resource node itself included).
func walk(n *Node, visit func(*Node)) {
	visit(n)
	for _, ch := range n.Children {
		if ch.resource {
			continue
		}
		walk(ch, visit)
	}
}

// collect appends n and its descendants whose Type (byType) or Name equals
// key, in document order, without entering nested resources. It is walk
// specialised for nodesByType and nodesByName, which the shipped
// configurations run on every resource.
func collect(out []*Node, n *Node, key string, byType bool) []*Node {
	if (byType && n.Type == key) || (!byType && n.Name == key) {
		out = append(out, n)
	}
	for _, ch := range n.Children {
		if ch.resource {
			continue
		}
		if len(ch.Children) == 0 {
			if (byType && ch.Type == key) || (!byType && ch.Name == key) {
				out = append(out, ch)
			}
			continue
		}
		out = collect(out, ch, key, byType)
	}
	return out
}

type function struct {
	min, max int
	typeArg  bool // the argument is a type name
	// impl gets its arguments unevaluated: where, select, exists and all
	// evaluate them per input item (evalOn), the others once against $this.
	impl func(c *evalCtx, input []*Node, args []expr) ([]*Node, error)
}

var functions map[string]*function

func init() {
	functions = map[string]*function{
		"nodesByType": {min: 1, max: 1, impl: func(c *evalCtx, input []*Node, args []expr) ([]*Node, error) {
			t, err := stringArg(c, args[0])
			if err != nil {
				return nil, err
			}
			var out []*Node
			for _, n := range input {
				out = collect(out, n, t, true)
			}
			return out, nil
		}},
		"nodesByName": {min: 1, max: 1, impl: func(c *evalCtx, input []*Node, args []expr) ([]*Node, error) {
			name, err := stringArg(c, args[0])
			if err != nil {
				return nil, err
			}
			var out []*Node
			for _, n := range input {
				out = collect(out, n, name, false)
			}
			return out, nil
		}},
		"where": {min: 1, max: 1, impl: func(c *evalCtx, input []*Node, args []expr) ([]*Node, error) {
			var out []*Node
			for _, n := range input {
				v, err := evalOn(c, args[0], n)
				if err != nil {
					return nil, err
				}
				b, err := boolOf(c, v)
				if err != nil {
					return nil, err
				}
				if b != nil && *b {
					out = append(out, n)
				}
			}
			return out, nil
		}},
		"select": {min: 1, max: 1, impl: func(c *evalCtx, input []*Node, args []expr) ([]*Node, error) {
			var out []*Node
			for _, n := range input {
				v, err := evalOn(c, args[0], n)
				if err != nil {
					return nil, err
				}
				out = append(out, v...)
			}
			return out, nil
		}},
		"exists": {min: 0, max: 1, impl: func(c *evalCtx, input []*Node, args []expr) ([]*Node, error) {
			if len(args) == 1 {
				var err error
				if input, err = functions["where"].impl(c, input, args); err != nil {
					return nil, err
				}
			}
			return boolResult(ptr(len(input) > 0)), nil
		}},
		"all": {min: 1, max: 1, impl: func(c *evalCtx, input []*Node, args []expr) ([]*Node, error) {
			for _, n := range input {
				v, err := evalOn(c, args[0], n)
				if err != nil {
					return nil, err
				}
				if b, err := boolOf(c, v); err != nil || b == nil || !*b {
					return boolResult(ptr(false)), err
				}
			}
			return boolResult(ptr(true)), nil
		}},
		"empty": {impl: func(c *evalCtx, input []*Node, _ []expr) ([]*Node, error) {
			return boolResult(ptr(len(input) == 0)), nil
		}},
		"count": {impl: func(c *evalCtx, input []*Node, _ []expr) ([]*Node, error) {
			return []*Node{intNode(int64(len(input)))}, nil
		}},
		"first": {impl: func(c *evalCtx, input []*Node, _ []expr) ([]*Node, error) {
			if len(input) == 0 {
				return nil, nil
			}
			return input[:1], nil
		}},
		"last": {impl: func(c *evalCtx, input []*Node, _ []expr) ([]*Node, error) {
			if len(input) == 0 {
				return nil, nil
			}
			return input[len(input)-1:], nil
		}},
		"not": {impl: func(c *evalCtx, input []*Node, _ []expr) ([]*Node, error) {
			b, err := boolOf(c, input)
			if err != nil || b == nil {
				return nil, err
			}
			return boolResult(ptr(!*b)), nil
		}},
		"hasValue": {impl: func(c *evalCtx, input []*Node, _ []expr) ([]*Node, error) {
			return boolResult(ptr(len(input) == 1 && input[0].Value != nil)), nil
		}},
		"children": {impl: func(c *evalCtx, input []*Node, _ []expr) ([]*Node, error) {
			var out []*Node
			for _, n := range input {
				out = append(out, n.Children...)
			}
			return out, nil
		}},
		"descendants": {impl: func(c *evalCtx, input []*Node, _ []expr) ([]*Node, error) {
			var out []*Node
			var rec func(n *Node)
			rec = func(n *Node) {
				for _, ch := range n.Children {
					out = append(out, ch)
					rec(ch)
				}
			}
			for _, n := range input {
				rec(n)
			}
			return out, nil
		}},
		"ofType": {min: 1, max: 1, typeArg: true, impl: typeFilter},
		"as":     {min: 1, max: 1, typeArg: true, impl: typeFilter},
		"is": {min: 1, max: 1, typeArg: true, impl: func(c *evalCtx, input []*Node, args []expr) ([]*Node, error) {
			if len(input) != 1 {
				return nil, nil
			}
			t, _ := stringArg(c, args[0])
			return boolResult(ptr(typeMatches(input[0], t))), nil
		}},
		"extension": {min: 1, max: 1, impl: func(c *evalCtx, input []*Node, args []expr) ([]*Node, error) {
			url, err := stringArg(c, args[0])
			if err != nil {
				return nil, err
			}
			var out []*Node
			for _, n := range input {
				for _, ch := range n.Children {
					if ch.Name != "extension" {
						continue
					}
					for _, u := range ch.Children {
						if u.Name == "url" && u.Value == url {
							out = append(out, ch)
						}
					}
				}
			}
			return out, nil
		}},
		"toString": {impl: func(c *evalCtx, input []*Node, _ []expr) ([]*Node, error) {
			s, ok, err := singleText(c, input)
			if err != nil || !ok {
				return nil, err
			}
			return []*Node{newValue("string", s)}, nil
		}},
		"startsWith": {min: 1, max: 1, impl: stringPredicate(strings.HasPrefix)},
		"endsWith":   {min: 1, max: 1, impl: stringPredicate(strings.HasSuffix)},
		"contains":   {min: 1, max: 1, impl: stringPredicate(strings.Contains)},
		"matches": {min: 1, max: 1, impl: func(c *evalCtx, input []*Node, args []expr) ([]*Node, error) {
			s, ok, err := singleText(c, input)
			if err != nil || !ok {
				return nil, err
			}
			pat, err := stringArg(c, args[0])
			if err != nil {
				return nil, err
			}
			re, err := compileRegex(c, pat)
			if err != nil {
				return nil, err
			}
			m, err := re.MatchString(s)
			if err != nil {
				return nil, c.errorf("matches: %v", err)
			}
			return boolResult(&m), nil
		}},
		"replaceMatches": {min: 2, max: 2, impl: func(c *evalCtx, input []*Node, args []expr) ([]*Node, error) {
			s, ok, err := singleText(c, input)
			if err != nil || !ok {
				return nil, err
			}
			pat, err := stringArg(c, args[0])
			if err != nil {
				return nil, err
			}
			sub, err := stringArg(c, args[1])
			if err != nil {
				return nil, err
			}
			re, err := compileRegex(c, pat)
			if err != nil {
				return nil, err
			}
			out, err := re.Replace(s, sub, -1, -1)
			if err != nil {
				return nil, c.errorf("replaceMatches: %v", err)
			}
			return []*Node{newValue("string", out)}, nil
		}},
		"replace": {min: 2, max: 2, impl: func(c *evalCtx, input []*Node, args []expr) ([]*Node, error) {
			s, ok, err := singleText(c, input)
			if err != nil || !ok {
				return nil, err
			}
			old, err := stringArg(c, args[0])
			if err != nil {
				return nil, err
			}
			repl, err := stringArg(c, args[1])
			if err != nil {
				return nil, err
			}
			return []*Node{newValue("string", strings.ReplaceAll(s, old, repl))}, nil
		}},
		"substring": {min: 1, max: 2, impl: func(c *evalCtx, input []*Node, args []expr) ([]*Node, error) {
			s, ok, err := singleText(c, input)
			if err != nil || !ok {
				return nil, err
			}
			r := []rune(s)
			start, ok, err := intArg(c, args[0])
			if err != nil || !ok || start < 0 || start >= int64(len(r)) {
				return nil, err
			}
			end := int64(len(r))
			if len(args) == 2 {
				n, ok, err := intArg(c, args[1])
				if err != nil || !ok {
					return nil, err
				}
				end = min(end, start+max(n, 0))
			}
			return []*Node{newValue("string", string(r[start:end]))}, nil
		}},
		"length": {impl: func(c *evalCtx, input []*Node, _ []expr) ([]*Node, error) {
			s, ok, err := singleText(c, input)
			if err != nil || !ok {
				return nil, err
			}
			return []*Node{intNode(int64(len([]rune(s))))}, nil
		}},
		"upper": {impl: stringMap(strings.ToUpper)},
		"lower": {impl: stringMap(strings.ToLower)},
		"trim":  {impl: stringMap(strings.TrimSpace)},
		"toInteger": {impl: func(c *evalCtx, input []*Node, _ []expr) ([]*Node, error) {
			s, ok, err := singleText(c, input)
			if err != nil || !ok {
				return nil, err
			}
			i, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return nil, nil
			}
			return []*Node{intNode(i)}, nil
		}},
		"toDecimal": {impl: func(c *evalCtx, input []*Node, _ []expr) ([]*Node, error) {
			s, ok, err := singleText(c, input)
			if err != nil || !ok {
				return nil, err
			}
			f, err := strconv.ParseFloat(s, 64)
			if err != nil {
				return nil, nil
			}
			return []*Node{decimalNode(f)}, nil
		}},
	}
}

// evalOn evaluates a lambda argument with one item as its input and $this.
func evalOn(c *evalCtx, x expr, item *Node) ([]*Node, error) {
	saved := c.this
	c.this = item
	defer func() { c.this = saved }()
	return x.eval(c, []*Node{item})
}

func typeFilter(c *evalCtx, input []*Node, args []expr) ([]*Node, error) {
	t, err := stringArg(c, args[0])
	if err != nil {
		return nil, err
	}
	var out []*Node
	for _, n := range input {
		if typeMatches(n, t) {
			out = append(out, n)
		}
	}
	return out, nil
}

func (x *callExpr) eval(c *evalCtx, input []*Node) ([]*Node, error) {
	if x.target != nil {
		var err error
		if input, err = x.target.eval(c, input); err != nil {
			return nil, err
		}
	}
	return x.fn.impl(c, input, x.args)
}

// stringArg evaluates a non-lambda argument (against $this) to one string.
func stringArg(c *evalCtx, x expr) (string, error) {
	v, err := x.eval(c, []*Node{c.this})
	if err != nil {
		return "", err
	}
	if len(v) != 1 {
		return "", c.errorf("an argument must be a single string, got %d items", len(v))
	}
	s, ok := text(v[0])
	if !ok {
		return "", c.errorf("an argument must be a string")
	}
	return s, nil
}

func intArg(c *evalCtx, x expr) (int64, bool, error) {
	v, err := x.eval(c, []*Node{c.this})
	if err != nil || len(v) == 0 {
		return 0, false, err
	}
	if len(v) > 1 || kindOf(v[0]) != kInt {
		return 0, false, c.errorf("an argument must be a single integer")
	}
	i, ok := toInt(v[0])
	return i, ok, nil
}

// singleText is the text of a single-item input (toString semantics). Like
// Firely, string functions take a non-string primitive (a date, a code, a
// number) through its text.
func singleText(c *evalCtx, input []*Node) (string, bool, error) {
	if len(input) == 0 {
		return "", false, nil
	}
	if len(input) > 1 {
		return "", false, c.errorf("function needs a single item, got %d", len(input))
	}
	s, ok := text(input[0])
	return s, ok, nil
}

func stringPredicate(f func(s, arg string) bool) func(*evalCtx, []*Node, []expr) ([]*Node, error) {
	return func(c *evalCtx, input []*Node, args []expr) ([]*Node, error) {
		s, ok, err := singleText(c, input)
		if err != nil || !ok {
			return nil, err
		}
		a, err := stringArg(c, args[0])
		if err != nil {
			return nil, err
		}
		return boolResult(ptr(f(s, a))), nil
	}
}

func stringMap(f func(string) string) func(*evalCtx, []*Node, []expr) ([]*Node, error) {
	return func(c *evalCtx, input []*Node, _ []expr) ([]*Node, error) {
		s, ok, err := singleText(c, input)
		if err != nil || !ok {
			return nil, err
		}
		return []*Node{newValue("string", f(s))}, nil
	}
}

var regexCache sync.Map // pattern → *regexp2.Regexp

// compileRegex compiles a pattern with .NET semantics (regexp2), as the
// configurations are written for Microsoft's .NET anonymizer: named groups,
// ${name} substitutions, lookarounds and Unicode \d all behave as there.
func compileRegex(c *evalCtx, pat string) (*regexp2.Regexp, error) {
	if re, ok := regexCache.Load(pat); ok {
		return re.(*regexp2.Regexp), nil
	}
	re, err := regexp2.Compile(pat, regexp2.None)
	if err != nil {
		return nil, c.errorf("invalid regular expression %q: %v", pat, err)
	}
	regexCache.Store(pat, re)
	return re, nil
}
