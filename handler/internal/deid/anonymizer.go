// Package deid anonymizes FHIR R4 resources one at a time with the
// configuration format and methods of Microsoft's FHIR anonymizer
// (Tools-for-Health-Data-Anonymization), so that a configuration written for
// Azure's de-identified $export gives the same output here for the
// deterministic methods. Where Microsoft's engine has a known defect the
// code says so and does the right thing instead.
package deid

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/azfhir/bulkexport/handler/internal/fhirpath"
)

// Anonymizer applies one configuration. It is safe for concurrent use when
// its random source is (the default, crypto/rand, is).
type Anonymizer struct {
	cfg     *Config
	hashKey []byte
	dateKey string
	block   cipher.Block
	now     func() time.Time
	random  io.Reader
	// byType lists, for each resource type named by a rule prefix, the rules
	// that apply to it in file order; generic holds the rules for any other type.
	byType  map[string][]*Rule
	generic []*Rule
	// typeSlots and nameSlots number the types and names that
	// nodesByType/nodesByName rules ask for; slot[i] is rule i's number.
	typeSlots, nameSlots map[string]int
	// stepSlots numbers the first members of dotted paths ("address" in
	// Patient.address.state), so one pass over a resource's children serves
	// every such rule.
	stepSlots map[string]int
	slot      []int
	hmacs     sync.Pool // of keyed HMAC-SHA256 states, reset before use
	runs      sync.Pool // of *run, to reuse their visited maps
}

// Option changes how New builds an Anonymizer.
type Option func(*Anonymizer)

// WithClock sets the clock the over-89 rule reads (an age is computed from
// today's date, as in Microsoft's engine).
func WithClock(now func() time.Time) Option { return func(a *Anonymizer) { a.now = now } }

// WithRandom sets the source of encrypt IVs, perturb noise and keys left
// empty in the configuration.
func WithRandom(r io.Reader) Option { return func(a *Anonymizer) { a.random = r } }

// New builds an Anonymizer for cfg. Keys the configuration leaves empty get a
// random value, as in Microsoft's engine; ParseConfig warns about them.
func New(cfg *Config, opts ...Option) (*Anonymizer, error) {
	a := &Anonymizer{cfg: cfg, now: time.Now, random: rand.Reader, byType: map[string][]*Rule{}}
	for _, o := range opts {
		o(a)
	}
	p := cfg.Parameters
	randomKey := func() (string, error) {
		var b [16]byte
		if _, err := io.ReadFull(a.random, b[:]); err != nil {
			return "", fmt.Errorf("deid: generating a key: %w", err)
		}
		return hex.EncodeToString(b[:]), nil // 32 characters, like Microsoft's Guid.ToString("N")
	}
	var err error
	if a.dateKey = p.DateShiftKey; a.dateKey == "" {
		if a.dateKey, err = randomKey(); err != nil {
			return nil, err
		}
	}
	hashKey := p.CryptoHashKey
	if hashKey == "" {
		if hashKey, err = randomKey(); err != nil {
			return nil, err
		}
	}
	a.hashKey = []byte(hashKey)
	a.hmacs.New = func() any { return hmac.New(sha256.New, a.hashKey) }
	encKey := p.EncryptKey
	if encKey == "" {
		if encKey, err = randomKey(); err != nil {
			return nil, err
		}
	}
	if a.block, err = aes.NewCipher([]byte(encKey)); err != nil {
		return nil, invalid("parameters: encryptKey: %v", err)
	}
	a.typeSlots, a.nameSlots, a.stepSlots = map[string]int{}, map[string]int{}, map[string]int{}
	a.slot = make([]int, len(cfg.Rules))
	for i := range cfg.Rules {
		r := &cfg.Rules[i]
		slots := a.typeSlots
		key := r.match.key
		switch r.match.kind {
		case matchByName:
			slots = a.nameSlots
		case matchByType:
		case matchSteps:
			slots, key = a.stepSlots, r.match.steps[0]
		default:
			slots = nil
		}
		if slots != nil {
			n, ok := slots[key]
			if !ok {
				n = len(slots)
				slots[key] = n
			}
			a.slot[i] = n
		}
		if r.ResourceType != "" && r.ResourceType != "Resource" && r.ResourceType != "DomainResource" {
			a.byType[r.ResourceType] = nil
		}
	}
	for i := range cfg.Rules {
		r := &cfg.Rules[i]
		generic := r.ResourceType == "" || r.ResourceType == "Resource" || r.ResourceType == "DomainResource"
		for t := range a.byType {
			if generic || r.ResourceType == t {
				a.byType[t] = append(a.byType[t], r)
			}
		}
		if generic {
			a.generic = append(a.generic, r)
		}
	}
	return a, nil
}

// SkipErrors reports whether processingErrors is "skip": a resource that
// fails is left out and reported instead of failing the export.
func (a *Anonymizer) SkipErrors() bool { return a.cfg.SkipErrors }

// AnonymizedID is what a report about a skipped resource may carry instead of
// its id: the id hashed as cryptoHash would hash Resource.id, never the original.
func (a *Anonymizer) AnonymizedID(id string) string {
	if id == "" {
		return ""
	}
	return a.hash(id)
}

// hash is hashValue with a's key, reusing keyed HMAC states.
func (a *Anonymizer) hash(value string) string {
	m := a.hmacs.Get().(hash.Hash)
	m.Reset()
	io.WriteString(m, value)
	var sum [sha256.Size]byte
	out := hex.EncodeToString(m.Sum(sum[:0]))
	a.hmacs.Put(m)
	return out
}

// ProcessingError says that one resource could not be anonymized. Its text
// names the rule and the resource type and never carries a value from the
// resource.
type ProcessingError struct {
	RuleIndex    int    // index in fhirPathRules; -1 when the resource could not be read
	Path         string // the rule's path
	ResourceType string
	Reason       string // fixed text written here, free of resource values
	Err          error  // the cause; its text may hold values, so Error leaves it out
}

func (e *ProcessingError) Error() string {
	if e.RuleIndex < 0 {
		return fmt.Sprintf("anonymization failed on a %s resource: %s", orUnknown(e.ResourceType), e.Reason)
	}
	return fmt.Sprintf("anonymization rule %d (%s) failed on a %s resource: %s", e.RuleIndex, e.Path, orUnknown(e.ResourceType), e.Reason)
}

func (e *ProcessingError) Unwrap() error { return e.Err }

func orUnknown(t string) string {
	if t == "" {
		return "resource of unknown type"
	}
	return t
}

// Anonymize applies the configuration to one resource (a JSON object) and
// returns it as compact JSON. An error is a *ProcessingError.
func (a *Anonymizer) Anonymize(resource []byte) ([]byte, error) {
	root, err := fhirpath.ParseResource(resource)
	if err != nil {
		return nil, &ProcessingError{RuleIndex: -1, Reason: "the resource is not a readable FHIR JSON resource", Err: err}
	}
	if err := a.AnonymizeNode(root); err != nil {
		return nil, err
	}
	return root.AppendJSON(make([]byte, 0, len(resource)+256)), nil
}

// AnonymizeNode applies the configuration to a parsed resource in place.
// Nodes left without a value or children are dropped when the tree is
// written (fhirpath.Node.AppendJSON), which is Microsoft's RemoveEmptyNodes.
func (a *Anonymizer) AnonymizeNode(root *fhirpath.Node) error {
	r, _ := a.runs.Get().(*run)
	if r == nil {
		r = &run{a: a, visited: map[*fhirpath.Node]struct{}{}}
		r.byType = make([][]*fhirpath.Node, len(a.typeSlots))
		r.byName = make([][]*fhirpath.Node, len(a.nameSlots))
		r.first = make([][]*fhirpath.Node, len(a.stepSlots))
	}
	_, err := r.visitResource(root)
	// Drop the references to this tree before the run is reused. Clearing
	// a map costs its capacity, so one that a huge resource grew is dropped.
	if len(r.visited) > 4096 {
		r.visited = map[*fhirpath.Node]struct{}{}
	} else {
		clear(r.visited)
	}
	for i := range r.byType {
		clear(r.byType[i][:cap(r.byType[i])])
		r.byType[i] = r.byType[i][:0]
	}
	for i := range r.byName {
		clear(r.byName[i][:cap(r.byName[i])])
		r.byName[i] = r.byName[i][:0]
	}
	for i := range r.first {
		clear(r.first[i][:cap(r.first[i])])
		r.first[i] = r.first[i][:0]
	}
	a.runs.Put(r)
	return err
}

// run is the state of one Anonymize call: the nodes already owned by a rule.
type run struct {
	a       *Anonymizer
	visited map[*fhirpath.Node]struct{}
	// byType and byName are the per-resource lookups of nodesByType and
	// nodesByName rules, by slot; indexed says they are built for the
	// resource being processed.
	byType, byName [][]*fhirpath.Node
	indexed        bool
	// first holds, by step slot, the resource's children that dotted paths
	// start from; firstDone says it is built for the current resource.
	first     [][]*fhirpath.Node
	firstDone bool
	// shiftID and shiftOffset remember the last date-shift offset computed,
	// since every date of a resource shares it.
	shiftID     string
	shiftOffset int
	shiftValid  bool
}

// ops is the set of operations recorded on a resource, which decides its
// security labels.
type ops uint8

const (
	opRedact ops = 1 << iota
	opAbstract
	opCryptoHash
	opEncrypt
	opPerturb
	opSubstitute
	opGeneralize
)

// visitResource runs the rules on res, then on the resources nested in it
// (parent before child, as Microsoft's AnonymizationVisitor), and labels res
// unless it is contained. A nested resource's operations count for its
// parent too, so a Bundle carries the labels of its entries.
func (r *run) visitResource(res *fhirpath.Node) (ops, error) {
	done, err := r.processResource(res)
	if err != nil {
		return 0, err
	}
	var walk func(n *fhirpath.Node) error
	walk = func(n *fhirpath.Node) error {
		for _, c := range n.Children {
			if c.IsResource() {
				o, err := r.visitResource(c)
				if err != nil {
					return err
				}
				done |= o
				continue
			}
			if err := walk(c); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(res); err != nil {
		return 0, err
	}
	if res.Name != "contained" {
		addSecurityLabels(res, done)
	}
	return done, nil
}

// processResource applies, in file order, the rules that concern res's type.
func (r *run) processResource(res *fhirpath.Node) (ops, error) {
	rules, ok := r.a.byType[res.Type]
	if !ok {
		rules = r.a.generic
	}
	r.indexed, r.firstDone = false, false
	var done ops
	for _, rule := range rules {
		nodes, err := r.match(rule, res)
		if err != nil {
			return 0, &ProcessingError{RuleIndex: rule.Index, Path: rule.Path, ResourceType: res.Type, Reason: "its path could not be evaluated", Err: err}
		}
		for _, n := range nodes {
			o, err := r.applyRecursive(rule, n)
			if err != nil {
				return 0, &ProcessingError{RuleIndex: rule.Index, Path: rule.Path, ResourceType: res.Type, Reason: reasonOf(err), Err: err}
			}
			done |= o
		}
	}
	return done, nil
}

// reasonOf gives the fixed text of an error from a method.
func reasonOf(err error) string {
	if e, ok := err.(*methodError); ok {
		return e.reason
	}
	return "the method failed"
}

// methodError is a failure of a method on one node; reason is free of values.
type methodError struct {
	reason string
	err    error
}

func (e *methodError) Error() string {
	if e.err == nil {
		return e.reason
	}
	return e.reason + ": " + e.err.Error()
}

func (e *methodError) Unwrap() error { return e.err }

// match finds the nodes of res a rule reaches.
func (r *run) match(rule *Rule, res *fhirpath.Node) ([]*fhirpath.Node, error) {
	m := &rule.match
	switch m.kind {
	case matchResource:
		return []*fhirpath.Node{res}, nil
	case matchByType, matchByName:
		r.index(res)
		idx := r.byType
		if m.kind == matchByName {
			idx = r.byName
		}
		nodes := idx[r.a.slot[rule.Index]]
		if m.member == "" {
			return nodes, nil
		}
		var out []*fhirpath.Node
		for _, n := range nodes {
			out = appendChildren(out, n, m.member)
		}
		return out, nil
	case matchSteps:
		if !r.firstDone {
			r.firstDone = true
			for i := range r.first {
				r.first[i] = r.first[i][:0]
			}
			for _, c := range res.Children {
				if i, ok := r.a.stepSlots[c.Name]; ok {
					r.first[i] = append(r.first[i], c)
				}
			}
		}
		cur := r.first[r.a.slot[rule.Index]]
		if len(cur) == 0 {
			return nil, nil
		}
		for _, s := range m.steps[1:] {
			next := make([]*fhirpath.Node, 0, len(cur))
			for _, n := range cur {
				next = appendChildren(next, n, s)
			}
			if len(next) == 0 {
				return nil, nil
			}
			cur = next
		}
		if len(m.steps) == 1 {
			// r.first changes as rules remove nodes; hand out a copy.
			return append([]*fhirpath.Node(nil), cur...), nil
		}
		return cur, nil
	default:
		return m.expr.Select(res)
	}
}

// appendChildren is FHIRPath member navigation on one node: its children
// whose FHIRPath name (choice types resolved) is name.
func appendChildren(out []*fhirpath.Node, n *fhirpath.Node, name string) []*fhirpath.Node {
	for _, c := range n.Children {
		if c.Name == name {
			out = append(out, c)
		}
	}
	return out
}

// index builds, once per resource, the lookup Microsoft's ResourceProcessor
// uses for nodesByType('T') and nodesByName('n') rules: every descendant of
// res by instance type and by name, not descending into nested resources
// (whose own node is still listed). res itself is not listed.
func (r *run) index(res *fhirpath.Node) {
	if r.indexed {
		return
	}
	r.indexed = true
	for i := range r.byType {
		r.byType[i] = r.byType[i][:0]
	}
	for i := range r.byName {
		r.byName[i] = r.byName[i][:0]
	}
	r.indexWalk(res)
}

func (r *run) indexWalk(n *fhirpath.Node) {
	for _, c := range n.Children {
		if i, ok := r.a.typeSlots[c.Type]; ok {
			r.byType[i] = append(r.byType[i], c)
		}
		if i, ok := r.a.nameSlots[c.Name]; ok {
			r.byName[i] = append(r.byName[i], c)
		}
		if !c.IsResource() {
			r.indexWalk(c)
		}
	}
}

// applyRecursive applies the rule's method to n and to every descendant not
// inside a nested resource, skipping nodes an earlier rule already owns and
// marking each one it reaches (ResourceProcessor.ProcessNodeRecursive).
func (r *run) applyRecursive(rule *Rule, n *fhirpath.Node) (ops, error) {
	if _, ok := r.visited[n]; ok {
		return 0, nil
	}
	done, err := r.apply(rule, n)
	if err != nil {
		return 0, err
	}
	r.visited[n] = struct{}{}
	// Iterate over a copy: substitute may change the children.
	for _, c := range append([]*fhirpath.Node(nil), n.Children...) {
		if c.IsResource() {
			continue
		}
		o, err := r.applyRecursive(rule, c)
		if err != nil {
			return 0, err
		}
		done |= o
	}
	return done, nil
}

func (r *run) markSubtree(n *fhirpath.Node) {
	for _, c := range n.Children {
		r.visited[c] = struct{}{}
		r.markSubtree(c)
	}
}

// valueText is a primitive's value as text; "" when it has none.
func valueText(n *fhirpath.Node) string {
	switch v := n.Value.(type) {
	case string:
		return v
	case json.Number:
		return string(v)
	case bool:
		if v {
			return "true"
		}
		return "false"
	case nil:
		return ""
	default:
		return fmt.Sprint(v)
	}
}

// apply runs the rule's method on the single node n.
func (r *run) apply(rule *Rule, n *fhirpath.Node) (ops, error) {
	switch rule.Method {
	case Keep:
		return 0, nil
	case Redact:
		return r.redact(n), nil
	case DateShift:
		return r.dateShift(n), nil
	case CryptoHash:
		v := valueText(n)
		if v == "" {
			return 0, nil
		}
		if isReferenceString(n) {
			n.Value = transformReference(v, r.a.hash)
		} else {
			n.Value = r.a.hash(v)
		}
		return opCryptoHash, nil
	case Encrypt:
		v := valueText(n)
		if v == "" {
			return 0, nil
		}
		enc, err := encryptValue(r.a.block, r.a.random, v)
		if err != nil {
			return 0, &methodError{reason: "encrypt could not read random bytes", err: err}
		}
		n.Value = enc
		return opEncrypt, nil
	case Substitute:
		// Substitution adds and removes children, so the list of a
		// resource's children that dotted paths start from is stale.
		r.firstDone = false
		return r.substitute(rule, n)
	case Perturb:
		return r.perturb(rule, n)
	case Generalize:
		return r.generalize(rule, n)
	}
	return 0, nil
}

func isReferenceString(n *fhirpath.Node) bool {
	return n.Name == "reference" && n.Parent != nil && n.Parent.Type == "Reference"
}

func isDateTimeType(t string) bool { return t == "dateTime" || t == "instant" }

// redact removes n's value, except for the partial forms the parameters
// allow (RedactProcessor).
func (r *run) redact(n *fhirpath.Node) ops {
	v := valueText(n)
	if v == "" {
		return 0
	}
	p := &r.a.cfg.Parameters
	switch {
	case n.Type == "date" || isDateTimeType(n.Type):
		if kept, ok := redactDate(v, n.Type != "date", p.EnablePartialDatesForRedact, r.a.now()); ok {
			n.Value = kept
		} else {
			n.Value = nil
		}
		return opRedact
	case n.Type == "decimal" && n.Parent != nil && n.Parent.Type == "Age":
		if !p.EnablePartialAgesForRedact || !keepAge(v) {
			n.Value = nil
		}
		return opRedact
	case n.Name == "postalCode":
		if p.EnablePartialZipCodesForRedact {
			n.Value = redactPostalCode(v, p.RestrictedZipCodeTabulationAreas)
			return opAbstract
		}
		n.Value = nil
		return opRedact
	default:
		n.Value = nil
		return opRedact
	}
}

// dateShift moves a date, dateTime or instant by the resource's offset, or
// redacts it when it has no day or implies an age over 89
// (DateTimeUtility.ShiftDateNode, ShiftDateTimeAndInstantNode). Other types
// are left alone.
func (r *run) dateShift(n *fhirpath.Node) ops {
	if n.Type != "date" && !isDateTimeType(n.Type) {
		return 0
	}
	v := valueText(n)
	if v == "" {
		return 0
	}
	d, ok := parseDate(v, n.Type != "date")
	if !ok || d.day == 0 || d.overAgeThreshold(r.a.now()) {
		return r.redact(n)
	}
	var offset int
	if f := r.a.cfg.Parameters.DateShiftFixedOffsetInDays; f != nil {
		offset = *f
	} else {
		id := topResourceID(n)
		if !r.shiftValid || id != r.shiftID {
			r.shiftID, r.shiftOffset, r.shiftValid = id, shiftOffset(id, r.a.dateKey), true
		}
		offset = r.shiftOffset
	}
	n.Value = shiftDate(d, offset)
	return opPerturb
}

// topResourceID is the id of the outermost resource, read now: a contained
// resource shifts with its container, a Bundle entry with its Bundle. When
// Resource.id was hashed by an earlier rule (as in Microsoft's sample), this
// is the hash, which is what Microsoft's engine mixes in too.
func topResourceID(n *fhirpath.Node) string {
	for n.Parent != nil {
		n = n.Parent
	}
	for _, c := range n.Children {
		if c.Name == "id" {
			return valueText(c)
		}
	}
	return ""
}

var quantityTypes = map[string]bool{"Age": true, "Count": true, "Duration": true, "Distance": true, "Money": true, "MoneyQuantity": true, "Quantity": true, "SimpleQuantity": true}

// perturb adds noise to a number, or to the value of a quantity
// (PerturbProcessor); other types are left alone.
func (r *run) perturb(rule *Rule, n *fhirpath.Node) (ops, error) {
	valueNode := n
	switch {
	case n.Type == "decimal" || n.Type == "integer" || n.Type == "positiveInt" || n.Type == "unsignedInt":
	case quantityTypes[n.Type]:
		valueNode = nil
		for _, c := range n.Children {
			if c.Name == "value" {
				valueNode = c
				break
			}
		}
	default:
		return 0, nil
	}
	if valueNode == nil || valueNode.Value == nil {
		return 0, nil
	}
	if _, ok := r.visited[valueNode]; ok {
		return 0, nil
	}
	var b [8]byte
	if _, err := io.ReadFull(r.a.random, b[:]); err != nil {
		return 0, &methodError{reason: "perturb could not read random bytes", err: err}
	}
	u := float64(binary.LittleEndian.Uint64(b[:])>>11) / (1 << 53)
	out, err := perturbValue(valueText(valueNode), valueNode.Type, rule.span, rule.proportional, rule.roundTo, u)
	if err != nil {
		return 0, &methodError{reason: "perturb needs a numeric value"}
	}
	valueNode.Value = json.Number(out)
	r.markSubtree(n)
	return opPerturb, nil
}

// generalize replaces a primitive's value with the value of the first case
// whose predicate holds for it ($this = the node), or applies otherValues
// (GeneralizeProcessor). The label is added even when otherValues keeps it.
func (r *run) generalize(rule *Rule, n *fhirpath.Node) (ops, error) {
	if !isPrimitiveType(n) {
		return 0, &methodError{reason: "generalize applies to primitive elements only; the path reached a complex element"}
	}
	if n.Value == nil {
		return 0, nil
	}
	for _, c := range rule.cases {
		res, err := c.predicate.Select(n)
		if err != nil {
			return 0, &methodError{reason: "generalize case " + c.text + " could not be evaluated", err: err}
		}
		// Firely's Predicate, as Microsoft's GeneralizeProcessor uses it: an
		// empty result (a comparison across date precisions) counts as true.
		if !fhirpath.Predicate(res) {
			continue
		}
		val, err := c.value.Select(n)
		if err != nil {
			return 0, &methodError{reason: "generalize case " + c.text + " could not be evaluated", err: err}
		}
		if len(val) == 0 {
			n.Value = nil
		} else {
			n.Value = val[0].Value
		}
		return opGeneralize, nil
	}
	if !rule.keepOthers {
		n.Value = nil
	}
	return opGeneralize, nil
}

// isPrimitiveType reports whether n is a FHIR primitive: primitive type
// names start with a lower-case letter; an element of unknown type counts
// when it holds a value.
func isPrimitiveType(n *fhirpath.Node) bool {
	if n.Type == "" {
		return n.Value != nil
	}
	return n.Type[0] >= 'a' && n.Type[0] <= 'z'
}

// The security labels, in the order Microsoft's ResourceProcessor.AddSecurityTag
// adds them. CRYTOHASH is Microsoft's spelling, kept so that consumers
// filtering on Azure's output see the same code; v3-ObservationValue has no
// code for a hash.
var securityLabels = []struct {
	op                    ops
	system, code, display string
}{
	{opRedact, "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "REDACTED", "redacted"},
	{opAbstract, "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "ABSTRED", "abstracted"},
	{opCryptoHash, "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "CRYTOHASH", "cryptographic hash function"},
	{opEncrypt, "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "MASKED", "masked"},
	{opPerturb, "", "PERTURBED", "exact value is replaced with another exact value"},
	{opSubstitute, "", "SUBSTITUTED", "exact value is replaced with a predefined value"},
	{opGeneralize, "", "GENERALIZED", "exact value is replaced with a general value"},
}

// addSecurityLabels adds to res's meta.security a label for each operation
// done, unless a label with that code is already there.
func addSecurityLabels(res *fhirpath.Node, done ops) {
	if done == 0 {
		return
	}
	var meta *fhirpath.Node
	for _, c := range res.Children {
		if c.Name == "meta" {
			meta = c
			break
		}
	}
	if meta == nil {
		meta = &fhirpath.Node{Name: "meta", JSONName: "meta", Type: "Meta", Parent: res}
		at := 0
		for i, c := range res.Children {
			if c.Name == "id" {
				at = i + 1
			}
		}
		res.Children = insertAt(res.Children, at, meta)
	}
	var present ops // labels already there, matched by code as Microsoft does (case-insensitively)
	last := -1
	for i, c := range meta.Children {
		if c.Name != "security" {
			continue
		}
		last = i
		for _, f := range c.Children {
			if f.Name != "code" {
				continue
			}
			for _, l := range securityLabels {
				if strings.EqualFold(valueText(f), l.code) {
					present |= l.op
				}
			}
		}
	}
	at := last + 1
	if last < 0 {
		// FHIR order: security goes before tag, after everything else.
		at = len(meta.Children)
		for i, c := range meta.Children {
			if c.Name == "tag" {
				at = i
				break
			}
		}
	}
	for _, l := range securityLabels {
		if done&l.op == 0 || present&l.op != 0 {
			continue
		}
		// One allocation for the coding and its three elements.
		nodes := make([]fhirpath.Node, 4)
		ptrs := make([]*fhirpath.Node, 0, 3)
		coding := &nodes[0]
		*coding = fhirpath.Node{Name: "security", JSONName: "security", Type: "Coding", Parent: meta, Array: true}
		for i, e := range [3]struct{ name, typ, value string }{{"system", "uri", l.system}, {"code", "code", l.code}, {"display", "string", l.display}} {
			if e.value == "" {
				continue
			}
			nodes[i+1] = fhirpath.Node{Name: e.name, JSONName: e.name, Type: e.typ, Value: e.value, Parent: coding}
			ptrs = append(ptrs, &nodes[i+1])
		}
		coding.Children = ptrs
		meta.Children = insertAt(meta.Children, at, coding)
		at++
	}
}

func insertAt(s []*fhirpath.Node, i int, n *fhirpath.Node) []*fhirpath.Node {
	s = append(s, nil)
	copy(s[i+1:], s[i:])
	s[i] = n
	return s
}
