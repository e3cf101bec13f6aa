package deid

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/fhirpath"
)

// Config is a parsed and validated anonymization configuration in the format
// of Microsoft's FHIR anonymizer (Tools-for-Health-Data-Anonymization,
// docs/FHIR-anonymization.md): ordered fhirPathRules and global parameters.
// It holds no random keys; New fills in any that are empty.
type Config struct {
	FHIRVersion string // "R4" or "" (empty is accepted with a warning)
	// SkipErrors is processingErrors == "skip": a resource whose
	// anonymization fails is left out instead of failing the export.
	SkipErrors bool
	Rules      []Rule
	Parameters Parameters
}

// Parameters is the "parameters" object.
type Parameters struct {
	DateShiftKey string
	// DateShiftScope is "resource", "file" or "folder". Only "resource" means
	// anything in an export: like Microsoft's own $export (which never gives
	// the engine a file context), the other two shift by the resource id too.
	DateShiftScope string
	// DateShiftFixedOffsetInDays, when set, replaces the keyed offset.
	DateShiftFixedOffsetInDays       *int
	CryptoHashKey                    string
	EncryptKey                       string
	EnablePartialAgesForRedact       bool
	EnablePartialDatesForRedact      bool
	EnablePartialZipCodesForRedact   bool
	RestrictedZipCodeTabulationAreas []string
}

// Method is an anonymization method, lower case.
type Method string

const (
	Keep       Method = "keep"
	Redact     Method = "redact"
	DateShift  Method = "dateshift"
	CryptoHash Method = "cryptohash"
	Encrypt    Method = "encrypt"
	Substitute Method = "substitute"
	Perturb    Method = "perturb"
	Generalize Method = "generalize"
)

var methods = map[Method]bool{Keep: true, Redact: true, DateShift: true, CryptoHash: true, Encrypt: true, Substitute: true, Perturb: true, Generalize: true}

// Rule is one entry of fhirPathRules.
type Rule struct {
	Index  int    // position in fhirPathRules, from 0
	Path   string // as written
	Method Method

	// ResourceType is the leading capitalised identifier of Path ("Patient"
	// in "Patient.address"), "" for paths such as nodesByType('X'). The rule
	// applies to resources of that type; "", "Resource" and "DomainResource"
	// apply to every resource (ResourceProcessor.GetRulesByType).
	ResourceType string
	match        matcher

	// substitute
	replaceWith json.RawMessage
	// perturb
	span         float64
	proportional bool
	roundTo      int
	// generalize
	cases      []generalizeCase
	keepOthers bool
}

type generalizeCase struct {
	predicate, value *fhirpath.Expression
	text             string // "predicate: value", for error messages
}

// matcher says how a rule finds its nodes in one resource.
type matcher struct {
	kind   matchKind
	key    string   // type or name for byType/byName
	member string   // optional ".member" after nodesByType/nodesByName
	steps  []string // member names for a plain dotted path
	expr   *fhirpath.Expression
}

type matchKind int

const (
	matchResource matchKind = iota // the path is just the resource type: the resource node itself
	matchByType                    // nodesByType('T')[.member]: from the per-resource type index
	matchByName                    // nodesByName('n')[.member]: from the per-resource name index
	matchSteps                     // a.b.c: member navigation
	matchExpr                      // anything else: the FHIRPath evaluator
)

var (
	// The same patterns as AnonymizationFhirPathRule.
	pathPattern     = regexp.MustCompile(`^(?P<type>[A-Z][a-zA-Z]*)?(\.)?(?P<expr>.*?)$`)
	byTypePattern   = regexp.MustCompile(`^nodesByType\(['|"]([A-Za-z0-9]+)['|"]\)(\.([A-Za-z0-9]+))?$`)
	byNamePattern   = regexp.MustCompile(`^nodesByName\(['|"]([A-Za-z0-9]+)['|"]\)(\.([A-Za-z0-9]+))?$`)
	dottedPattern   = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$`)
	reservedInSteps = map[string]bool{"and": true, "or": true, "xor": true, "implies": true, "as": true, "is": true, "div": true, "mod": true, "in": true, "contains": true, "true": true, "false": true}
)

// ParseConfig reads a configuration blob (callers cap it at 1 MB). An error
// is fault.Invalid with a message naming the problem; warnings describe what
// was accepted but may not do what the author meant.
//
// A leading UTF-8 byte order mark is skipped: Microsoft's own configuration
// files carry one, and .NET readers skip it.
func ParseConfig(data []byte) (*Config, []string, error) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if err := checkDuplicateKeys(data); err != nil {
		return nil, nil, invalid("%v", err)
	}
	var raw struct {
		FHIRVersion      *string           `json:"fhirVersion"`
		ProcessingErrors *string           `json:"processingErrors"`
		ProcessingError  *string           `json:"processingError"`
		FHIRPathRules    []json.RawMessage `json:"fhirPathRules"`
		Parameters       json.RawMessage   `json:"parameters"`
	}
	if err := strictUnmarshal(data, &raw); err != nil {
		return nil, nil, invalid("%v", err)
	}
	cfg := &Config{}
	var warnings []string

	switch {
	case raw.FHIRVersion == nil || *raw.FHIRVersion == "":
		warnings = append(warnings, "fhirVersion is not set; the configuration is read as R4")
	case strings.EqualFold(*raw.FHIRVersion, "R4"):
		cfg.FHIRVersion = "R4"
	default:
		return nil, nil, invalid("fhirVersion %q is not supported; expected R4", *raw.FHIRVersion)
	}

	processing := raw.ProcessingErrors
	if raw.ProcessingError != nil {
		if raw.ProcessingErrors != nil {
			warnings = append(warnings, `the key "processingError" is ignored: "processingErrors" is also set and applies`)
		} else {
			// Microsoft's engine ignores the misspelt key (the one its own
			// documentation sample uses) and so always raises; we read it,
			// because that is what its author meant.
			processing = raw.ProcessingError
			warnings = append(warnings, fmt.Sprintf(`the key "processingError" is read as "processingErrors" (%q); Microsoft's anonymizer ignores it and always raises`, *raw.ProcessingError))
		}
	}
	if processing != nil {
		switch strings.ToLower(*processing) {
		case "raise":
		case "skip":
			cfg.SkipErrors = true
		default:
			return nil, nil, invalid("processingErrors %q is not supported; expected raise or skip", *processing)
		}
	}

	if raw.FHIRPathRules == nil {
		return nil, nil, invalid("fhirPathRules is missing")
	}
	for i, r := range raw.FHIRPathRules {
		rule, err := parseRule(i, r)
		if err != nil {
			return nil, nil, err
		}
		cfg.Rules = append(cfg.Rules, rule)
	}

	w, err := parseParameters(raw.Parameters, &cfg.Parameters)
	if err != nil {
		return nil, nil, err
	}
	warnings = append(warnings, w...)
	return cfg, warnings, nil
}

func invalid(format string, args ...any) error {
	return fault.New(fault.Invalid, "anonymization configuration: "+format, args...)
}

// strictUnmarshal decodes one JSON value into v and rejects trailing data.
func strictUnmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return fmt.Errorf("%s is a JSON %s; expected %s", te.Field, te.Value, jsonKind(te.Type.Kind()))
		}
		return fmt.Errorf("invalid JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("invalid JSON: data after the configuration object")
	}
	return nil
}

func jsonKind(k reflect.Kind) string {
	switch k {
	case reflect.Slice:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	default:
		return "a number"
	}
}

// checkDuplicateKeys rejects a property name that appears twice in one
// object anywhere in the document, as Newtonsoft does for Microsoft's
// engine; encoding/json would silently keep the last one.
func checkDuplicateKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var walk func(path string) error
	walk = func(path string) error {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("invalid JSON: %w", err)
		}
		switch tok {
		case json.Delim('{'):
			seen := map[string]bool{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return fmt.Errorf("invalid JSON: %w", err)
				}
				k := kt.(string)
				if seen[k] {
					return fmt.Errorf("duplicate key %q in %s", k, path)
				}
				seen[k] = true
				if err := walk(path + "." + k); err != nil {
					return err
				}
			}
			_, err = dec.Token()
		case json.Delim('['):
			for i := 0; dec.More(); i++ {
				if err := walk(fmt.Sprintf("%s[%d]", path, i)); err != nil {
					return err
				}
			}
			_, err = dec.Token()
		}
		if err != nil {
			return fmt.Errorf("invalid JSON: %w", err)
		}
		return nil
	}
	if err := walk("$"); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("invalid JSON: data after the configuration object")
	}
	return nil
}

func parseRule(i int, data json.RawMessage) (Rule, error) {
	var obj map[string]json.RawMessage
	if err := strictUnmarshal(data, &obj); err != nil || obj == nil {
		return Rule{}, invalid("fhirPathRules[%d] is not an object", i)
	}
	str := func(key string) (string, bool, error) {
		v, ok := obj[key]
		if !ok {
			return "", false, nil
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return "", true, invalid("fhirPathRules[%d]: %s must be a string", i, key)
		}
		return s, true, nil
	}
	path, ok, err := str("path")
	if err != nil {
		return Rule{}, err
	}
	if !ok || path == "" {
		return Rule{}, invalid("fhirPathRules[%d] has no path", i)
	}
	method, ok, err := str("method")
	if err != nil {
		return Rule{}, err
	}
	if !ok || method == "" {
		return Rule{}, invalid("fhirPathRules[%d] (path %q) has no method", i, path)
	}
	r := Rule{Index: i, Path: path, Method: Method(strings.ToLower(method))}
	if !methods[r.Method] {
		return Rule{}, invalid("fhirPathRules[%d] (path %q): unknown method %q; expected keep, redact, dateShift, cryptoHash, encrypt, substitute, perturb or generalize", i, path, method)
	}
	if err := r.compilePath(); err != nil {
		return Rule{}, invalid("fhirPathRules[%d]: invalid FHIRPath %q: %v", i, path, err)
	}

	switch r.Method {
	case Substitute:
		v, ok := obj["replaceWith"]
		if !ok {
			return Rule{}, invalid("fhirPathRules[%d] (path %q): substitute needs replaceWith", i, path)
		}
		r.replaceWith = v
	case Perturb:
		if err := r.parsePerturb(obj); err != nil {
			return Rule{}, err
		}
	case Generalize:
		if err := r.parseGeneralize(obj); err != nil {
			return Rule{}, err
		}
	}
	return r, nil
}

// compilePath splits the resource-type prefix off the path the way
// Microsoft's engine does and decides how the rest is matched. Every form is
// compiled by the FHIRPath compiler, so an invalid path is caught here even
// when a faster matcher evaluates it.
func (r *Rule) compilePath() error {
	m := pathPattern.FindStringSubmatch(r.Path)
	typ, expr := m[1], m[3]
	r.ResourceType = typ
	if r.Path == typ {
		// "Patient", "Resource": the resource node itself.
		r.match = matcher{kind: matchResource}
		return nil
	}
	if expr == "" {
		expr = r.Path
	}
	compiled, err := fhirpath.Compile(expr)
	if err != nil {
		return err
	}
	r.match = matcher{kind: matchExpr, expr: compiled}
	if typ == "" {
		if sm := byTypePattern.FindStringSubmatch(expr); sm != nil {
			r.match = matcher{kind: matchByType, key: sm[1], member: sm[3]}
		} else if sm := byNamePattern.FindStringSubmatch(expr); sm != nil {
			r.match = matcher{kind: matchByName, key: sm[1], member: sm[3]}
		}
		return nil
	}
	if dottedPattern.MatchString(expr) {
		steps := strings.Split(expr, ".")
		for _, s := range steps {
			if reservedInSteps[s] || s[0] >= 'A' && s[0] <= 'Z' {
				// A type name or keyword inside: leave it to the evaluator.
				return nil
			}
		}
		r.match = matcher{kind: matchSteps, steps: steps}
	}
	return nil
}

func (r *Rule) parsePerturb(obj map[string]json.RawMessage) error {
	number := func(key string) (float64, bool, error) {
		v, ok := obj[key]
		if !ok {
			return 0, false, nil
		}
		var n json.Number
		if err := json.Unmarshal(v, &n); err != nil {
			// Microsoft converts the value's text, so "0.1" works too.
			var s string
			if json.Unmarshal(v, &s) != nil {
				return 0, true, invalid("fhirPathRules[%d] (path %q): %s must be a number", r.Index, r.Path, key)
			}
			n = json.Number(strings.TrimSpace(s))
		}
		f, err := strconv.ParseFloat(string(n), 64)
		if err != nil {
			return 0, true, invalid("fhirPathRules[%d] (path %q): %s must be a number", r.Index, r.Path, key)
		}
		return f, true, nil
	}
	span, ok, err := number("span")
	if err != nil {
		return err
	}
	if !ok {
		return invalid("fhirPathRules[%d] (path %q): perturb needs span", r.Index, r.Path)
	}
	if span < 0 {
		return invalid("fhirPathRules[%d] (path %q): span must not be negative", r.Index, r.Path)
	}
	r.span = span
	r.roundTo = 2
	if rt, ok, err := number("roundTo"); err != nil {
		return err
	} else if ok {
		if rt != float64(int(rt)) || rt < 0 || rt > 28 {
			return invalid("fhirPathRules[%d] (path %q): roundTo must be an integer from 0 to 28", r.Index, r.Path)
		}
		r.roundTo = int(rt)
	}
	if v, ok := obj["rangeType"]; ok {
		var s string
		_ = json.Unmarshal(v, &s)
		switch strings.ToLower(s) {
		case "fixed":
		case "proportional":
			r.proportional = true
		default:
			return invalid("fhirPathRules[%d] (path %q): rangeType %s is not supported; expected fixed or proportional", r.Index, r.Path, v)
		}
	}
	return nil
}

func (r *Rule) parseGeneralize(obj map[string]json.RawMessage) error {
	v, ok := obj["cases"]
	if !ok {
		return invalid("fhirPathRules[%d] (path %q): generalize needs cases", r.Index, r.Path)
	}
	// cases is an ordered object: read it token by token to keep the order.
	dec := json.NewDecoder(bytes.NewReader(v))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return invalid("fhirPathRules[%d] (path %q): cases must be an object of FHIRPath predicate to FHIRPath value", r.Index, r.Path)
	}
	for dec.More() {
		kt, _ := dec.Token()
		pred := kt.(string)
		var val string
		if err := dec.Decode(&val); err != nil {
			return invalid("fhirPathRules[%d] (path %q): case %q: the value must be a FHIRPath expression in a string", r.Index, r.Path, pred)
		}
		p, err := fhirpath.Compile(pred)
		if err != nil {
			return invalid("fhirPathRules[%d] (path %q): case %q does not compile: %v", r.Index, r.Path, pred, err)
		}
		e, err := fhirpath.Compile(val)
		if err != nil {
			return invalid("fhirPathRules[%d] (path %q): the value %q of case %q does not compile: %v", r.Index, r.Path, val, pred, err)
		}
		r.cases = append(r.cases, generalizeCase{predicate: p, value: e, text: pred + ": " + val})
	}
	if v, ok := obj["otherValues"]; ok {
		var s string
		_ = json.Unmarshal(v, &s)
		switch strings.ToLower(s) {
		case "redact":
		case "keep":
			r.keepOthers = true
		default:
			return invalid("fhirPathRules[%d] (path %q): otherValues %s is not supported; expected redact or keep", r.Index, r.Path, v)
		}
	}
	return nil
}

func parseParameters(data json.RawMessage, p *Parameters) ([]string, error) {
	p.DateShiftScope = "resource"
	if len(data) == 0 || string(data) == "null" {
		return nil, nil
	}
	var raw struct {
		DateShiftKey                     *string          `json:"dateShiftKey"`
		DateShiftScope                   *string          `json:"dateShiftScope"`
		DateShiftFixedOffsetInDays       *json.Number     `json:"dateShiftFixedOffsetInDays"`
		CryptoHashKey                    *string          `json:"cryptoHashKey"`
		EncryptKey                       *string          `json:"encryptKey"`
		EnablePartialAgesForRedact       *bool            `json:"enablePartialAgesForRedact"`
		EnablePartialDatesForRedact      *bool            `json:"enablePartialDatesForRedact"`
		EnablePartialZipCodesForRedact   *bool            `json:"enablePartialZipCodesForRedact"`
		RestrictedZipCodeTabulationAreas []string         `json:"restrictedZipCodeTabulationAreas"`
		CustomSettings                   *json.RawMessage `json:"customSettings"`
	}
	if err := strictUnmarshal(data, &raw); err != nil {
		return nil, invalid("parameters: %v", err)
	}
	var warnings []string
	deref := func(s *string) string {
		if s == nil {
			return ""
		}
		return *s
	}
	p.DateShiftKey = deref(raw.DateShiftKey)
	p.CryptoHashKey = deref(raw.CryptoHashKey)
	p.EncryptKey = deref(raw.EncryptKey)
	if raw.DateShiftScope != nil {
		switch s := strings.ToLower(*raw.DateShiftScope); s {
		case "resource":
		case "file", "folder":
			p.DateShiftScope = s
			warnings = append(warnings, fmt.Sprintf("dateShiftScope %q has no meaning in an export: dates are shifted per resource, as in Microsoft's $export", *raw.DateShiftScope))
		default:
			return nil, invalid("parameters: dateShiftScope %q is not supported; expected resource, file or folder", *raw.DateShiftScope)
		}
	}
	if raw.DateShiftFixedOffsetInDays != nil {
		n, err := strconv.Atoi(string(*raw.DateShiftFixedOffsetInDays))
		if err != nil {
			return nil, invalid("parameters: dateShiftFixedOffsetInDays must be an integer, not %s", *raw.DateShiftFixedOffsetInDays)
		}
		p.DateShiftFixedOffsetInDays = &n
	}
	if k := p.EncryptKey; k != "" && len(k) != 16 && len(k) != 24 && len(k) != 32 {
		return nil, invalid("parameters: encryptKey is %d bits; AES needs 128, 192 or 256 (16, 24 or 32 bytes of UTF-8)", len(k)*8)
	}
	p.EnablePartialAgesForRedact = raw.EnablePartialAgesForRedact != nil && *raw.EnablePartialAgesForRedact
	p.EnablePartialDatesForRedact = raw.EnablePartialDatesForRedact != nil && *raw.EnablePartialDatesForRedact
	p.EnablePartialZipCodesForRedact = raw.EnablePartialZipCodesForRedact != nil && *raw.EnablePartialZipCodesForRedact
	p.RestrictedZipCodeTabulationAreas = raw.RestrictedZipCodeTabulationAreas
	for _, k := range [...]struct{ name, key string }{{"dateShiftKey", p.DateShiftKey}, {"cryptoHashKey", p.CryptoHashKey}, {"encryptKey", p.EncryptKey}} {
		if k.key == "" {
			warnings = append(warnings, fmt.Sprintf("%s is empty: a random key is used for each anonymizer, so its results differ between runs and work items; set it for consistent output", k.name))
		}
	}
	if raw.CustomSettings != nil {
		warnings = append(warnings, "parameters.customSettings is ignored: it only configures custom processors of Microsoft's library")
	}
	return warnings, nil
}
