package deid

import (
	"bytes"
	"encoding/json"

	"github.com/azfhir/bulkexport/handler/internal/fhirpath"
)

// substitute replaces n with the rule's replaceWith (SubstituteProcessor).
// On a primitive the value becomes replaceWith; on a complex element
// replaceWith is an object of the element's type, merged child by child:
// children of a replaced name are replaced pairwise, extra replacement
// children are added, and other source children are removed, except those
// an earlier rule already processed (or that contain such a node), which are
// kept so that earlier rules' work is not undone. The whole subtree then
// belongs to this rule.
//
// Deliberate difference: a JSON number or boolean in replaceWith stays a
// number or boolean; Microsoft turns every replacement into text first.
func (r *run) substitute(rule *Rule, n *fhirpath.Node) (ops, error) {
	var repl *fhirpath.Node
	if isPrimitiveType(n) {
		repl = &fhirpath.Node{Value: jsonScalar(rule.replaceWith)}
	} else {
		var err error
		if repl, err = parseElement(n.Type, rule.replaceWith); err != nil {
			return 0, &methodError{reason: "replaceWith is not a JSON object of the element's type", err: err}
		}
	}
	keep := map[*fhirpath.Node]bool{}
	r.collectKept(n, keep)
	done := r.substituteNode(n, repl, keep)
	r.markSubtree(n)
	return done, nil
}

// collectKept marks the nodes under n (n included) that were processed by an
// earlier rule or contain one; substitution keeps them.
func (r *run) collectKept(n *fhirpath.Node, keep map[*fhirpath.Node]bool) bool {
	kept := false
	for _, c := range n.Children {
		if r.collectKept(c, keep) {
			kept = true
		}
	}
	if _, ok := r.visited[n]; ok || kept {
		keep[n] = true
		return true
	}
	return false
}

func (r *run) substituteNode(n, repl *fhirpath.Node, keep map[*fhirpath.Node]bool) ops {
	if _, ok := r.visited[n]; ok {
		return 0
	}
	replNames := map[string]bool{}
	var names []string
	for _, c := range repl.Children {
		if !replNames[c.Name] {
			replNames[c.Name] = true
			names = append(names, c.Name)
		}
	}
	dummy := &fhirpath.Node{}
	for _, name := range names {
		var targets []*fhirpath.Node
		for _, c := range repl.Children {
			if c.Name == name {
				targets = append(targets, c)
			}
		}
		var sources []*fhirpath.Node
		for _, c := range n.Children {
			if c.Name == name {
				sources = append(sources, c)
			}
		}
		i := 0
		for _, c := range sources {
			if _, ok := r.visited[c]; ok {
				i++
				continue
			}
			switch {
			case i < len(targets):
				r.substituteNode(c, targets[i], keep)
				i++
			case keep[c]:
				r.substituteNode(c, dummy, keep)
			default:
				c.Remove()
			}
		}
		for ; i < len(targets); i++ {
			addChild(n, targets[i])
		}
	}
	for _, c := range append([]*fhirpath.Node(nil), n.Children...) {
		if replNames[c.Name] {
			continue
		}
		if _, ok := r.visited[c]; ok {
			continue
		}
		if keep[c] {
			r.substituteNode(c, dummy, keep)
		} else {
			c.Remove()
		}
	}
	n.Value = repl.Value
	return opSubstitute
}

// addChild attaches c to n after the last child with the same JSON name, so
// that the members of one JSON property stay together.
func addChild(n, c *fhirpath.Node) {
	c.Parent = n
	at := len(n.Children)
	for i, s := range n.Children {
		if s.JSONName == c.JSONName {
			at = i + 1
		}
	}
	n.Children = insertAt(n.Children, at, c)
}

// jsonScalar is the value of a JSON scalar as Node.Value holds it; an object
// or array is kept as its text.
func jsonScalar(raw json.RawMessage) any {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return string(raw)
	}
	switch v := v.(type) {
	case string, json.Number, bool:
		return v
	default:
		var b bytes.Buffer
		_ = json.Compact(&b, raw)
		return b.String()
	}
}

// parseElement reads replaceWith as an element of FHIR type typ. The
// fhirpath package parses whole resources only, so the element is read as
// the value[x] of an extension on a Basic resource, which gives its children
// their R4 types for every type an extension may hold; for other types
// (backbone elements) the children are read without types.
func parseElement(typ string, raw json.RawMessage) (*fhirpath.Node, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		raw = json.RawMessage("{}")
	}
	if raw[0] != '{' {
		return nil, errNotObject
	}
	if typ != "" && typ[0] >= 'A' && typ[0] <= 'Z' {
		doc := make([]byte, 0, len(raw)+80)
		doc = append(doc, `{"resourceType":"Basic","extension":[{"url":"x","value`...)
		doc = append(doc, typ...)
		doc = append(doc, `":`...)
		doc = append(doc, raw...)
		doc = append(doc, `}]}`...)
		if root, err := fhirpath.ParseResource(doc); err == nil {
			for _, ext := range root.Children {
				for _, v := range ext.Children {
					if v.Name == "value" && v.Type == typ {
						v.Remove()
						return v, nil
					}
				}
			}
		}
	}
	// Untyped: wrap it as a contained resource of no known type is not
	// possible either, so read it generically.
	root, err := fhirpath.ParseResource(append([]byte(`{"resourceType":"_","x":`), append(raw, '}')...))
	if err != nil {
		return nil, err
	}
	for _, c := range root.Children {
		if c.JSONName == "x" {
			c.Remove()
			c.Type = typ
			return c, nil
		}
	}
	return &fhirpath.Node{Type: typ}, nil
}

var errNotObject = &methodError{reason: "replaceWith must be a JSON object for a complex element"}
