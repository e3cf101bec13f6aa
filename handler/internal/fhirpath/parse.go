package fhirpath

import "strings"

// expr is a node of the compiled expression tree.
type expr interface {
	eval(c *evalCtx, input []*Node) ([]*Node, error)
}

type (
	literalExpr struct{ val *Node } // nil: the empty collection {}
	thisExpr    struct{}
	varExpr     struct{ name string }
	// memberExpr navigates from each input node to its children called name;
	// at the start of a path, a type name selects the input nodes of that type.
	memberExpr struct {
		target expr // nil: the input collection
		name   string
		first  bool // the first identifier of a path: may name the focus type
	}
	callExpr struct {
		target expr // nil: the input collection
		name   string
		fn     *function
		args   []expr
		pos    int
	}
	binaryExpr struct {
		op   string
		l, r expr
		pos  int
	}
	unaryExpr struct {
		op string
		x  expr
	}
	typeExpr struct { // x is T, x as T
		op  string
		x   expr
		typ string
	}
	indexExpr struct{ x, index expr }
)

// exprParser is a recursive-descent parser over the tokens of one
// expression, one method per precedence level.
type exprParser struct {
	src  string
	toks []token
	i    int
}

func (p *exprParser) peek() token { return p.toks[p.i] }
func (p *exprParser) next() token { t := p.toks[p.i]; p.i++; return t }

func (p *exprParser) isOp(s string) bool {
	t := p.peek()
	return t.kind == tOp && t.text == s
}

func (p *exprParser) isKeyword(s string) bool {
	t := p.peek()
	return t.kind == tIdent && !t.quot && t.text == s
}

func (p *exprParser) expect(s string) error {
	if !p.isOp(s) {
		return syntaxError(p.src, p.peek().pos, "expected %q", s)
	}
	p.i++
	return nil
}

// Precedence levels, lowest first (FHIRPath §Operator precedence).
var binaryLevels = [][]string{
	{"implies"},
	{"or", "xor"},
	{"and"},
	{"in", "contains"},
	{"=", "~", "!=", "!~"},
	{"<", ">", "<=", ">="},
	{"|"},
	// level 7 is is/as, handled in parseLevel
	{"+", "-", "&"},
	{"*", "/", "div", "mod"},
}

const typeLevel = 7

func (p *exprParser) matchOp(ops []string) (string, int, bool) {
	t := p.peek()
	for _, o := range ops {
		if (t.kind == tOp || (t.kind == tIdent && !t.quot)) && t.text == o {
			if t.kind == tIdent && !isWordOp(o) {
				continue
			}
			return o, t.pos, true
		}
	}
	return "", 0, false
}

func isWordOp(o string) bool {
	return o[0] >= 'a' && o[0] <= 'z'
}

func (p *exprParser) parseLevel(level int) (expr, error) {
	if level == typeLevel {
		x, err := p.parseLevel(level + 1)
		if err != nil {
			return nil, err
		}
		for p.isKeyword("is") || p.isKeyword("as") {
			op := p.next().text
			typ, err := p.typeSpecifier()
			if err != nil {
				return nil, err
			}
			x = &typeExpr{op: op, x: x, typ: typ}
		}
		return x, nil
	}
	if level > len(binaryLevels) {
		return p.parseUnary()
	}
	idx := level
	if level > typeLevel {
		idx = level - 1
	}
	l, err := p.parseLevel(level + 1)
	if err != nil {
		return nil, err
	}
	for {
		op, pos, ok := p.matchOp(binaryLevels[idx])
		if !ok {
			return l, nil
		}
		p.i++
		r, err := p.parseLevel(level + 1)
		if err != nil {
			return nil, err
		}
		l = &binaryExpr{op: op, l: l, r: r, pos: pos}
	}
}

func (p *exprParser) typeSpecifier() (string, error) {
	t := p.next()
	if t.kind != tIdent {
		return "", syntaxError(p.src, t.pos, "expected a type name")
	}
	name := t.text
	for p.isOp(".") && p.toks[p.i+1].kind == tIdent {
		p.i++
		name += "." + p.next().text
	}
	return name, nil
}

func (p *exprParser) parseUnary() (expr, error) {
	if p.isOp("-") || p.isOp("+") {
		op := p.next().text
		x, err := p.parseUnary()
		if err != nil {
			return nil, err
		}
		return &unaryExpr{op: op, x: x}, nil
	}
	return p.parsePostfix()
}

func (p *exprParser) parsePostfix() (expr, error) {
	x, err := p.parseTerm()
	if err != nil {
		return nil, err
	}
	for {
		switch {
		case p.isOp("."):
			p.i++
			t := p.next()
			if t.kind != tIdent {
				return nil, syntaxError(p.src, t.pos, "expected a name after '.'")
			}
			if p.isOp("(") {
				x, err = p.parseCall(x, t)
				if err != nil {
					return nil, err
				}
				continue
			}
			x = &memberExpr{target: x, name: t.text}
		case p.isOp("["):
			p.i++
			ix, err := p.parseLevel(0)
			if err != nil {
				return nil, err
			}
			if err := p.expect("]"); err != nil {
				return nil, err
			}
			x = &indexExpr{x: x, index: ix}
		default:
			return x, nil
		}
	}
}

func (p *exprParser) parseTerm() (expr, error) {
	t := p.next()
	switch t.kind {
	case tEOF:
		return nil, syntaxError(p.src, t.pos, "unexpected end of expression")
	case tString:
		return &literalExpr{val: newValue("string", t.text)}, nil
	case tNumber:
		typ := "integer"
		if strings.IndexByte(t.text, '.') >= 0 {
			typ = "decimal"
		}
		n := newValue(typ, jsonNumber(t.text))
		// A quantity literal: 4 'mg', 1 year.
		if nt := p.peek(); nt.kind == tString || (nt.kind == tIdent && !nt.quot && calendarUnit(nt.text) != "") {
			p.i++
			return &literalExpr{val: newQuantity(n, nt.text)}, nil
		}
		return &literalExpr{val: n}, nil
	case tDate:
		v, err := parseDateLiteral(t.text)
		if err != nil {
			return nil, syntaxError(p.src, t.pos, "%v", err)
		}
		return &literalExpr{val: v}, nil
	case tVar:
		switch t.text {
		case "$this", "%resource", "%context", "%rootResource":
			if t.text == "$this" {
				return thisExpr{}, nil
			}
			return &varExpr{name: t.text}, nil
		}
		return nil, syntaxError(p.src, t.pos, "unsupported variable %s", t.text)
	case tOp:
		if t.text == "(" {
			x, err := p.parseLevel(0)
			if err != nil {
				return nil, err
			}
			if err := p.expect(")"); err != nil {
				return nil, err
			}
			return x, nil
		}
		if t.text == "{" {
			if err := p.expect("}"); err != nil {
				return nil, err
			}
			return &literalExpr{}, nil
		}
		return nil, syntaxError(p.src, t.pos, "unexpected %q", t.text)
	case tIdent:
		if !t.quot {
			switch t.text {
			case "true", "false":
				return &literalExpr{val: newValue("boolean", t.text == "true")}, nil
			}
		}
		if p.isOp("(") {
			return p.parseCall(nil, t)
		}
		return &memberExpr{name: t.text, first: true}, nil
	}
	return nil, syntaxError(p.src, t.pos, "unexpected token")
}

func (p *exprParser) parseCall(target expr, name token) (expr, error) {
	fn, ok := functions[name.text]
	if !ok {
		return nil, syntaxError(p.src, name.pos, "unknown function %s()", name.text)
	}
	p.i++ // '('
	var args []expr
	if !p.isOp(")") {
		for {
			// ofType(T), is(T), as(T) take a type name, not an expression.
			if fn.typeArg {
				typ, err := p.typeSpecifier()
				if err != nil {
					return nil, err
				}
				args = append(args, &literalExpr{val: newValue("string", typ)})
			} else {
				a, err := p.parseLevel(0)
				if err != nil {
					return nil, err
				}
				args = append(args, a)
			}
			if !p.isOp(",") {
				break
			}
			p.i++
		}
	}
	if err := p.expect(")"); err != nil {
		return nil, err
	}
	if len(args) < fn.min || len(args) > fn.max {
		return nil, syntaxError(p.src, name.pos, "%s() takes %d to %d arguments, got %d", name.text, fn.min, fn.max, len(args))
	}
	return &callExpr{target: target, name: name.text, fn: fn, args: args, pos: name.pos}, nil
}
