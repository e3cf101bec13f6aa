package deid

import (
	"crypto/aes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// anonymizer builds an Anonymizer from a configuration text.
func anonymizer(t testing.TB, config string, opts ...Option) *Anonymizer {
	t.Helper()
	cfg, _, err := ParseConfig([]byte(config))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	a, err := New(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// anonymize runs a on resource and decodes the result.
func anonymize(t testing.TB, a *Anonymizer, resource string) map[string]any {
	t.Helper()
	out, err := a.Anonymize([]byte(resource))
	if err != nil {
		t.Fatalf("anonymize: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	return m
}

func decode(t testing.TB, s string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func config(params string, rules ...string) string {
	if params == "" {
		params = `"cryptoHashKey":"123","dateShiftKey":"123","encryptKey":"704ab12c8e3e46d4bea600ef62a6bec7"`
	}
	return `{"fhirVersion":"R4","fhirPathRules":[` + strings.Join(rules, ",") + `],"parameters":{` + params + `}}`
}

const partial = `"cryptoHashKey":"123","dateShiftKey":"123","encryptKey":"704ab12c8e3e46d4bea600ef62a6bec7","enablePartialDatesForRedact":true,"enablePartialAgesForRedact":true,"enablePartialZipCodesForRedact":true,"restrictedZipCodeTabulationAreas":["203","556"]`

func TestFHIRServerVectors(t *testing.T) {
	// fhir-server ExportAnonymizerTests: Resource.id with key "123" on id "123".
	a := anonymizer(t, config(`"cryptoHashKey":"123"`, `{"path":"Resource.id","method":"cryptoHash"}`))
	got := anonymize(t, a, `{"resourceType":"Patient","id":"123"}`)
	if got["id"] != "3cafe40f92be6ac77d2792b4b267c2da11e3f3087b93bb19c6c5133786984b44" {
		t.Errorf("id = %v", got["id"])
	}
	// dateShift with key "123" on a Patient without id: +50 days.
	a = anonymizer(t, config(`"dateShiftKey":"123"`, `{"path":"Patient.birthDate","method":"dateShift"}`))
	got = anonymize(t, a, `{"resourceType":"Patient","birthDate":"2001-01-01"}`)
	if got["birthDate"] != "2001-02-20" {
		t.Errorf("birthDate = %v, want 2001-02-20", got["birthDate"])
	}
	// Microsoft's functional test patient-basic: id "example", key "123": +41.
	got = anonymize(t, a, `{"resourceType":"Patient","id":"example","birthDate":"2000-01-01"}`)
	if got["birthDate"] != "2000-02-11" {
		t.Errorf("birthDate = %v, want 2000-02-11", got["birthDate"])
	}
}

func TestFirstRuleOwnsNodeAndSubtree(t *testing.T) {
	patient := `{"resourceType":"Patient","name":[{"use":"official","family":"Doe","given":["John"]}]}`
	keepFirst := anonymizer(t, config("", `{"path":"nodesByType('HumanName').use","method":"keep"}`, `{"path":"nodesByType('HumanName')","method":"redact"}`))
	if got := anonymize(t, keepFirst, patient)["name"]; !reflect.DeepEqual(got, decode(t, `[{"use":"official"}]`)) {
		t.Errorf("keep before redact: name = %v, want only use kept", got)
	}
	redactFirst := anonymizer(t, config("", `{"path":"nodesByType('HumanName')","method":"redact"}`, `{"path":"nodesByType('HumanName').use","method":"keep"}`))
	if got, ok := anonymize(t, redactFirst, patient)["name"]; ok {
		t.Errorf("redact before keep: name = %v, want it gone", got)
	}
}

func TestRedactPrunesEmptiedElementsButKeepsPartialValues(t *testing.T) {
	a := anonymizer(t, config(partial, `{"path":"nodesByType('Extension')","method":"redact"}`, `{"path":"Patient.telecom","method":"redact"}`),
		WithClock(func() time.Time { return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) }))
	got := anonymize(t, a, `{"resourceType":"Patient","extension":[{"url":"http://x/a","valueDateTime":"2000-05-06T10:00:00Z"},{"url":"http://x/b","valueString":"secret"}],"telecom":[{"system":"phone","value":"555-1234"}],"active":true}`)
	want := decode(t, `{"resourceType":"Patient","extension":[{"valueDateTime":"2000"}],"active":true,"meta":{"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue","code":"REDACTED","display":"redacted"}]}}`)
	if !reflect.DeepEqual(any(got), want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
}

func TestRedactAgesAndPostalCodes(t *testing.T) {
	a := anonymizer(t, config(partial, `{"path":"nodesByType('Age')","method":"redact"}`, `{"path":"nodesByType('Address')","method":"redact"}`))
	got := anonymize(t, a, `{"resourceType":"Condition","onsetAge":{"value":57,"unit":"a","system":"http://unitsofmeasure.org","code":"a"},"abatementAge":{"value":92,"unit":"a"}}`)
	if !reflect.DeepEqual(got["onsetAge"], decode(t, `{"value":57}`)) {
		t.Errorf("onsetAge = %v, want only the value 57", got["onsetAge"])
	}
	if v, ok := got["abatementAge"]; ok {
		t.Errorf("abatementAge = %v, want an age over 89 removed", v)
	}
	got = anonymize(t, a, `{"resourceType":"Patient","address":[{"line":["1 Main St"],"city":"Redmond","postalCode":"98052"},{"postalCode":"20301-1830"}]}`)
	if !reflect.DeepEqual(got["address"], decode(t, `[{"postalCode":"98000"},{"postalCode":"00000-0000"}]`)) {
		t.Errorf("address = %v", got["address"])
	}
	if codes := securityCodes(got); !reflect.DeepEqual(codes, []string{"REDACTED", "ABSTRED"}) {
		t.Errorf("labels %v", codes)
	}
	// Without the partial flags everything goes.
	b := anonymizer(t, config("", `{"path":"nodesByType('Age')","method":"redact"}`, `{"path":"nodesByType('Address')","method":"redact"}`))
	got = anonymize(t, b, `{"resourceType":"Condition","id":"c","onsetAge":{"value":57,"unit":"a"}}`)
	if v, ok := got["onsetAge"]; ok {
		t.Errorf("onsetAge = %v without partial ages, want it removed", v)
	}
}

func TestOver89RuleUsesTheClock(t *testing.T) {
	cfg := config(partial, `{"path":"nodesByType('date')","method":"dateShift"}`)
	patient := `{"resourceType":"Patient","id":"p","birthDate":"1925-02-07"}`
	now := anonymizer(t, cfg, WithClock(func() time.Time { return time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC) }))
	if v, ok := anonymize(t, now, patient)["birthDate"]; ok {
		t.Errorf("birthDate = %v in 2026, want removed (age 101)", v)
	}
	then := anonymizer(t, cfg, WithClock(func() time.Time { return time.Date(1990, 6, 1, 0, 0, 0, 0, time.UTC) }))
	d, _ := parseDate("1925-02-07", false)
	if v := anonymize(t, then, patient)["birthDate"]; v != shiftDate(d, shiftOffset("p", "123")) {
		t.Errorf("birthDate = %v in 1990, want it shifted (age 65)", v)
	}
}

func TestContainedResourcesShiftWithTheirContainer(t *testing.T) {
	a := anonymizer(t, config("", `{"path":"nodesByType('date')","method":"dateShift"}`, `{"path":"nodesByType('dateTime')","method":"dateShift"}`))
	if shiftOffset("sr1", "123") == shiftOffset("pat", "123") {
		t.Fatal("premise: the two ids must give different offsets")
	}
	got := anonymize(t, a, `{"resourceType":"ServiceRequest","id":"sr1","contained":[{"resourceType":"Patient","id":"pat","birthDate":"1980-03-04"}],"authoredOn":"2015-02-07T13:28:17Z"}`)
	off := shiftOffset("sr1", "123")
	d, _ := parseDate("1980-03-04", false)
	contained := got["contained"].([]any)[0].(map[string]any)
	if contained["birthDate"] != shiftDate(d, off) {
		t.Errorf("contained birthDate = %v, want %s (the container's offset %d)", contained["birthDate"], shiftDate(d, off), off)
	}
	if _, ok := contained["meta"]; ok {
		t.Error("a contained resource got security labels; Microsoft labels only its container")
	}
	if codes := securityCodes(got); !reflect.DeepEqual(codes, []string{"PERTURBED"}) {
		t.Errorf("container labels %v, want [PERTURBED]", codes)
	}
}

func TestSecurityLabelsInMicrosoftOrder(t *testing.T) {
	a := anonymizer(t, config(partial,
		`{"path":"Patient.birthDate","method":"dateShift"}`,
		`{"path":"Patient.gender","method":"substitute","replaceWith":"unknown"}`,
		`{"path":"Patient.name.family","method":"encrypt"}`,
		`{"path":"Resource.id","method":"cryptoHash"}`,
		`{"path":"nodesByType('Address').postalCode","method":"redact"}`,
		`{"path":"Patient.telecom","method":"redact"}`,
		`{"path":"Patient.multipleBirth","method":"generalize","cases":{"$this > 1":"2"}}`))
	got := anonymize(t, a, `{"resourceType":"Patient","id":"x","meta":{"versionId":"1","security":[{"code":"redacted"}]},"birthDate":"2000-01-01","gender":"male","name":[{"family":"Doe"}],"address":[{"postalCode":"98052"}],"telecom":[{"value":"1"}],"multipleBirthInteger":3}`)
	want := []string{"redacted", "ABSTRED", "CRYTOHASH", "MASKED", "PERTURBED", "SUBSTITUTED", "GENERALIZED"}
	if codes := securityCodes(got); !reflect.DeepEqual(codes, want) {
		t.Errorf("labels %v, want %v (an existing code is not added twice)", codes, want)
	}
	sec := got["meta"].(map[string]any)["security"].([]any)
	if c := sec[2].(map[string]any); c["system"] != "http://terminology.hl7.org/CodeSystem/v3-ObservationValue" || c["display"] != "cryptographic hash function" {
		t.Errorf("CRYTOHASH coding = %v", c)
	}
	if c := sec[4].(map[string]any); c["system"] != nil {
		t.Errorf("PERTURBED has a system: %v", c)
	}
	if got["gender"] != "unknown" || got["multipleBirthInteger"] != 2.0 {
		t.Errorf("gender %v, multipleBirthInteger %v", got["gender"], got["multipleBirthInteger"])
	}
}

func TestBundleCarriesItsEntriesLabels(t *testing.T) {
	a := anonymizer(t, config("", `{"path":"nodesByType('HumanName')","method":"redact"}`))
	got := anonymize(t, a, `{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient","name":[{"family":"Doe"}]}}]}`)
	entry := got["entry"].([]any)[0].(map[string]any)["resource"].(map[string]any)
	if _, ok := entry["name"]; ok {
		t.Error("entry name not redacted")
	}
	if !reflect.DeepEqual(securityCodes(entry), []string{"REDACTED"}) || !reflect.DeepEqual(securityCodes(got), []string{"REDACTED"}) {
		t.Errorf("entry labels %v, bundle labels %v; want REDACTED on both", securityCodes(entry), securityCodes(got))
	}
}

func TestCryptoHashKeepsReferencesLinked(t *testing.T) {
	a := anonymizer(t, config("", `{"path":"Resource.id","method":"cryptoHash"}`, `{"path":"nodesByType('Reference').reference","method":"cryptoHash"}`, `{"path":"nodesByType('Identifier').system","method":"cryptoHash"}`))
	got := anonymize(t, a, `{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/example"},"identifier":[{"system":"urn:uuid:c757873d-ec9a-4326-a141-556f43239520"}]}`)
	if ref := got["subject"].(map[string]any)["reference"]; ref != "Patient/698d54f0494528a759f19c8e87a9f99e75a5881b9267ee3926bcf62c992d84ba" {
		t.Errorf("reference %v", ref)
	}
	// Identifier.system is not a reference: hashed whole, prefix included.
	if sys := got["identifier"].([]any)[0].(map[string]any)["system"]; sys != hashValue([]byte("123"), "urn:uuid:c757873d-ec9a-4326-a141-556f43239520") {
		t.Errorf("identifier system %v", sys)
	}
	if a.AnonymizedID("example") != "698d54f0494528a759f19c8e87a9f99e75a5881b9267ee3926bcf62c992d84ba" {
		t.Error("AnonymizedID differs from the hashed id")
	}
}

func TestEncryptedValuesDecryptWithTheKey(t *testing.T) {
	a := anonymizer(t, config("", `{"path":"Patient.name.family","method":"encrypt"}`))
	got := anonymize(t, a, `{"resourceType":"Patient","name":[{"family":"Doe"}]}`)
	enc := got["name"].([]any)[0].(map[string]any)["family"].(string)
	block, _ := aes.NewCipher([]byte("704ab12c8e3e46d4bea600ef62a6bec7"))
	if plain, err := decryptValue(block, enc); err != nil || plain != "Doe" {
		t.Errorf("decrypt(%s) = %q, %v", enc, plain, err)
	}
}

func TestSubstitute(t *testing.T) {
	a := anonymizer(t, config("",
		`{"path":"Patient.address.state","method":"keep"}`,
		`{"path":"Patient.address","method":"substitute","replaceWith":{"city":"Nowhere","line":["L1"]}}`,
		`{"path":"Patient.name.family","method":"substitute","replaceWith":"Anon"}`,
		`{"path":"Patient.telecom","method":"substitute","replaceWith":null}`))
	got := anonymize(t, a, `{"resourceType":"Patient","name":[{"family":"Doe","given":["J"]}],"telecom":[{"system":"phone","value":"555"}],"address":[{"line":["1 Main St","Apt 2"],"city":"Boston","state":"MA","postalCode":"02101"}]}`)
	if !reflect.DeepEqual(got["address"], decode(t, `[{"line":["L1"],"city":"Nowhere","state":"MA"}]`)) {
		t.Errorf("address %v: want lines replaced pairwise, city replaced, kept state kept, the rest removed", got["address"])
	}
	if !reflect.DeepEqual(got["name"], decode(t, `[{"family":"Anon","given":["J"]}]`)) {
		t.Errorf("name %v", got["name"])
	}
	if v, ok := got["telecom"]; ok {
		t.Errorf("telecom %v, want a null replacement to empty it", v)
	}
}

// fixedRandom returns the same byte forever.
type fixedRandom byte

func (f fixedRandom) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(f)
	}
	return len(p), nil
}

func TestPerturbAgeAsInTheSample(t *testing.T) {
	rule := `{"path":"FamilyMemberHistory.condition.onset as Age","method":"perturb","span":0.1,"rangeType":"proportional","roundTo":0}`
	fmh := `{"resourceType":"FamilyMemberHistory","condition":[{"onsetAge":{"value":60,"unit":"a"}},{"onsetString":"young"}]}`
	for _, c := range []struct {
		random fixedRandom
		want   float64
	}{{0x00, 57}, {0xff, 63}} {
		a := anonymizer(t, config("", rule), WithRandom(c.random))
		got := anonymize(t, a, fmh)
		cond := got["condition"].([]any)
		if v := cond[0].(map[string]any)["onsetAge"].(map[string]any)["value"]; v != c.want {
			t.Errorf("random %#x: onsetAge %v, want %v (60 ± 5%%, rounded)", byte(c.random), v, c.want)
		}
		if cond[1].(map[string]any)["onsetString"] != "young" {
			t.Error("a string onset was touched")
		}
		if !reflect.DeepEqual(securityCodes(got), []string{"PERTURBED"}) {
			t.Errorf("labels %v", securityCodes(got))
		}
	}
}

// The cases are GeneralizeProcessorTests' (Microsoft), applied to elements of
// the same types.
func TestGeneralizeTable(t *testing.T) {
	ranges := `{"$this>=0 and $this<20":"20","$this>=20 and $this<40":"40","$this>=40 and $this<60":"60","$this>=60 and $this<80":"80"}`
	approx := `{"$this>=-20 and $this<80":"($this div 10 -1)*10 "}`
	valueSet := `{"$this in ('en-AU' | 'en-CA' | 'en-GB' | 'en-IN' | 'en-NZ' | 'en-SG' | 'en-US')":"'en'","('es-AR' | 'es-ES' | 'es-UY') contains $this":"'es'"}`
	mask := `{"$this.startsWith('123') or $this.endsWith('234')":"$this.substring(0,3)+'****'"}`
	dates := `{"$this >= @1990-01-01 and $this < @2000-01-01":"@1990","$this = @2010":"@2010-01-01"}`
	omitDay := `{"true":"$this.toString().replaceMatches('\\b(?<year>\\d{2,4})-(?<month>\\d{1,2})-(?<day>\\d{1,2})\\b','${year}-${month}')"}`
	for _, c := range []struct {
		path, cases, others, field, in string
		want                           any // nil = removed
	}{
		{"Patient.multipleBirth", ranges, "", "multipleBirthInteger", `5`, 20.0},
		{"Patient.multipleBirth", ranges, "", "multipleBirthInteger", `20`, 40.0},
		{"Patient.multipleBirth", ranges, "", "multipleBirthInteger", `43`, 60.0},
		{"Patient.multipleBirth", ranges, "", "multipleBirthInteger", `78`, 80.0},
		{"Patient.multipleBirth", ranges, "redact", "multipleBirthInteger", `110`, nil},
		{"Patient.multipleBirth", ranges, "keep", "multipleBirthInteger", `110`, 110.0},
		{"Patient.multipleBirth", approx, "", "multipleBirthInteger", `5`, -10.0},
		{"Patient.multipleBirth", approx, "", "multipleBirthInteger", `20`, 10.0},
		{"Patient.multipleBirth", approx, "", "multipleBirthInteger", `43`, 30.0},
		{"Patient.multipleBirth", approx, "", "multipleBirthInteger", `78`, 60.0},
		{"Patient.gender", valueSet, "", "gender", `"en-AU"`, "en"},
		{"Patient.gender", valueSet, "", "gender", `"en-CA"`, "en"},
		{"Patient.gender", valueSet, "redact", "gender", `"en-CI"`, nil},
		{"Patient.gender", valueSet, "", "gender", `"es-AR"`, "es"},
		{"Patient.gender", valueSet, "", "gender", `"es-ES"`, "es"},
		{"Patient.gender", mask, "", "gender", `"1230005"`, "123****"},
		{"Patient.gender", mask, "", "gender", `"2345234"`, "234****"},
		{"Patient.gender", mask, "redact", "gender", `"1111111"`, nil},
		{"Patient.gender", mask, "keep", "gender", `"7654321"`, "7654321"},
		{"Patient.birthDate", dates, "", "birthDate", `"1990-01-01"`, "1990"},
		{"Patient.birthDate", dates, "redact", "birthDate", `"2000-01-01"`, nil},
		{"Patient.birthDate", dates, "", "birthDate", `"2010"`, "2010-01-01"},
		{"Patient.birthDate", dates, "keep", "birthDate", `"2021-05-20"`, "2021-05-20"},
		{"Patient.birthDate", omitDay, "", "birthDate", `"1990-11-01"`, "1990-11"},
		{"Patient.birthDate", omitDay, "", "birthDate", `"1990-11"`, "1990-11"},
	} {
		rule := `{"path":"` + c.path + `","method":"generalize","cases":` + c.cases
		if c.others != "" {
			rule += `,"otherValues":"` + c.others + `"`
		}
		a := anonymizer(t, config("", rule+"}"))
		got := anonymize(t, a, `{"resourceType":"Patient","`+c.field+`":`+c.in+`}`)
		if v := got[c.field]; v != c.want {
			t.Errorf("%s %s with %s (otherValues %q): got %v, want %v", c.field, c.in, c.cases, c.others, v, c.want)
		}
		if !reflect.DeepEqual(securityCodes(got), []string{"GENERALIZED"}) {
			t.Errorf("%s: labels %v", c.in, securityCodes(got))
		}
	}
}

func TestProcessingErrorsNameRuleNotValues(t *testing.T) {
	a := anonymizer(t, config("", `{"path":"Patient.active","method":"keep"}`, `{"path":"Patient.name","method":"generalize","cases":{"true":"'x'"}}`))
	_, err := a.Anonymize([]byte(`{"resourceType":"Patient","name":[{"family":"Verysecretname"}]}`))
	var pe *ProcessingError
	if !errors.As(err, &pe) {
		t.Fatalf("error %v (%T), want a *ProcessingError", err, err)
	}
	if pe.RuleIndex != 1 || pe.Path != "Patient.name" || pe.ResourceType != "Patient" {
		t.Errorf("error names rule %d %q on %q", pe.RuleIndex, pe.Path, pe.ResourceType)
	}
	if strings.Contains(err.Error(), "Verysecretname") {
		t.Errorf("error text carries a resource value: %s", err)
	}
	if a.SkipErrors() {
		t.Error("raise read as skip")
	}
	// A runtime evaluation error (GeneralizeProcessorTests: comparing an
	// integer with a string) is a processing error too.
	b := anonymizer(t, `{"processingErrors":"skip","fhirPathRules":[{"path":"Patient.multipleBirth","method":"generalize","cases":{"$this>='0' and $this<'20'":"20"}}],"parameters":{"cryptoHashKey":"k"}}`)
	_, err = b.Anonymize([]byte(`{"resourceType":"Patient","multipleBirthInteger":5}`))
	if !errors.As(err, &pe) || !b.SkipErrors() {
		t.Errorf("error %v, skip %v; want a processing error under skip", err, b.SkipErrors())
	}
	if _, err := b.Anonymize([]byte(`{"resourceType":"Patient",`)); !errors.As(err, &pe) || pe.RuleIndex != -1 {
		t.Errorf("unreadable resource: %v", err)
	}
}

func securityCodes(resource map[string]any) []string {
	meta, _ := resource["meta"].(map[string]any)
	sec, _ := meta["security"].([]any)
	var codes []string
	for _, s := range sec {
		codes = append(codes, s.(map[string]any)["code"].(string))
	}
	return codes
}
