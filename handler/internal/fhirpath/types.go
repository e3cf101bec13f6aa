package fhirpath

import (
	"strings"
	"sync"
)

// typeDef is one R4 type (or one backbone element of a type, named by its
// path, such as "Patient.contact") with the elements an instance may carry,
// keyed by their JSON property name. Choice elements appear once per allowed
// type ("valueQuantity", "valueString"...), so parsing a property is a single
// map lookup.
type typeDef struct {
	name  string // "Patient", "HumanName", "date", "Patient.contact"
	base  *typeDef
	elems map[string]*elemDef // JSON name → element, inherited ones included
}

// elemDef is one element as it appears in JSON.
type elemDef struct {
	name     string // FHIRPath name: "value" for "valueQuantity"
	jsonName string
	typ      string // instance type: "Quantity", "Age", "BackboneElement"
	def      *typeDef
	array    bool
}

// instanceType is the Type a node of this definition reports: a backbone
// element has no type name of its own in R4, so it reports its base.
func (d *typeDef) instanceType() string {
	if d == nil {
		return ""
	}
	if strings.IndexByte(d.name, '.') >= 0 {
		if d.base != nil {
			return d.base.name
		}
		return "BackboneElement"
	}
	return d.name
}

// isA reports whether d is the type named t or derives from it (Age is a Quantity,
// Patient is a DomainResource and a Resource).
func (d *typeDef) isA(t string) bool {
	for ; d != nil; d = d.base {
		if d.name == t {
			return true
		}
	}
	return false
}

var (
	typesOnce sync.Once
	types     map[string]*typeDef
)

// lookupType returns the definition of a type or backbone path, nil if R4 has none.
func lookupType(name string) *typeDef {
	typesOnce.Do(loadTypes)
	return types[name]
}

// elementDef is the definition of the "_name" object of a primitive: id and extension.
func elementDef() *typeDef { return lookupType("Element") }

// loadTypes parses r4Types (generated, see internal/gen) into the type table.
// The format is one type per line:
//
//	Name<Base|elem:type,type|elem[x]:type,type:*
//
// where ":*" marks a repeating element and a type with a "." names a backbone
// element by its path.
func loadTypes() {
	type rawElem struct {
		name  string
		types []string
		array bool
	}
	raw := map[string][]rawElem{}
	bases := map[string]string{}
	var order []string
	for _, line := range strings.Split(r4Types, "\n") {
		if line == "" {
			continue
		}
		parts := strings.Split(line, "|")
		head := parts[0]
		name, base, _ := strings.Cut(head, "<")
		order = append(order, name)
		bases[name] = base
		var elems []rawElem
		for _, p := range parts[1:] {
			f := strings.Split(p, ":")
			e := rawElem{name: f[0]}
			if len(f) > 1 && f[1] != "" {
				e.types = strings.Split(f[1], ",")
			}
			e.array = len(f) > 2 && f[2] == "*"
			elems = append(elems, e)
		}
		raw[name] = elems
	}
	types = make(map[string]*typeDef, len(order))
	for _, n := range order {
		types[n] = &typeDef{name: n}
	}
	for _, n := range order {
		types[n].base = types[bases[n]]
	}
	var fill func(d *typeDef)
	done := map[*typeDef]bool{}
	fill = func(d *typeDef) {
		if done[d] {
			return
		}
		done[d] = true
		d.elems = map[string]*elemDef{}
		if d.base != nil {
			fill(d.base)
			for k, v := range d.base.elems {
				d.elems[k] = v
			}
		}
		for _, e := range raw[d.name] {
			if name, ok := strings.CutSuffix(e.name, "[x]"); ok {
				for _, t := range e.types {
					jn := name + strings.ToUpper(t[:1]) + t[1:]
					d.elems[jn] = &elemDef{name: name, jsonName: jn, typ: t, def: types[t], array: e.array}
				}
				continue
			}
			t := ""
			if len(e.types) > 0 {
				t = e.types[0]
			}
			ed := &elemDef{name: e.name, jsonName: e.name, def: types[t], array: e.array}
			ed.typ = t
			if ed.def != nil {
				ed.typ = ed.def.instanceType()
			}
			d.elems[e.name] = ed
		}
	}
	for _, n := range order {
		fill(types[n])
	}
}
