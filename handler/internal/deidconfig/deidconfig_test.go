package deidconfig_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"github.com/azfhir/bulkexport/handler/internal/deidconfig"
	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fault"
	"github.com/azfhir/bulkexport/handler/internal/memstore"
)

const container = "anonymization"

// good hashes ids and references with a fixed key, the setting every
// de-identified export with links between files needs.
const good = `{
  "fhirVersion": "R4",
  "processingErrors": "skip",
  "fhirPathRules": [
    {"path": "Resource.id", "method": "cryptoHash"},
    {"path": "nodesByType('Reference').reference", "method": "cryptoHash"},
    {"path": "nodesByType('HumanName')", "method": "redact"},
    {"path": "nodesByType('date')", "method": "dateShift"}
  ],
  "parameters": {"cryptoHashKey": "123", "dateShiftKey": "dummy", "encryptKey": "0123456789abcdef"}
}`

// put commits content as the blob name and returns its ETag.
func put(t *testing.T, b *memstore.Blobs, name, content string) string {
	t.Helper()
	ctx := t.Context()
	if err := b.EnsureContainer(ctx, container); err != nil {
		t.Fatal(err)
	}
	if err := b.StageBlock(ctx, container, name, 0, []byte(content)); err != nil {
		t.Fatal(err)
	}
	etag, err := b.CommitBlocks(ctx, container, name, 1, export.Condition{})
	if err != nil {
		t.Fatal(err)
	}
	return etag
}

func hmacHex(key, s string) string {
	m := hmac.New(sha256.New, []byte(key))
	m.Write([]byte(s))
	return hex.EncodeToString(m.Sum(nil))
}

func TestCheckThenLoadUsesTheValidatedVersion(t *testing.T) {
	blobs := memstore.NewBlobs()
	etag := put(t, blobs, "configs/good.json", good)
	configs := deidconfig.New(blobs, container)
	got, warnings, err := configs.Check(t.Context(), "configs/good.json", "")
	if err != nil {
		t.Fatalf("Check of a valid configuration: %v", err)
	}
	if got != etag {
		t.Fatalf("Check returned ETag %s, want the blob's %s", got, etag)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings for a configuration that sets every key: %q", warnings)
	}

	// A worker in another process reads the blob again, If-Match that ETag.
	a, _, err := deidconfig.New(blobs, container).Load(t.Context(), "configs/good.json", got)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	out, err := a.Anonymize([]byte(`{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}`))
	if err != nil {
		t.Fatalf("Anonymize: %v", err)
	}
	var res struct {
		ID      string `json:"id"`
		Subject struct {
			Reference string `json:"reference"`
		} `json:"subject"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("anonymized resource %s: %v", out, err)
	}
	if res.ID != hmacHex("123", "o1") || res.Subject.Reference != "Patient/"+hmacHex("123", "p1") {
		t.Errorf("anonymized id %q, reference %q: want HMAC-SHA256 with key 123 of o1 and p1", res.ID, res.Subject.Reference)
	}
	if !a.SkipErrors() {
		t.Error("SkipErrors is false for processingErrors skip")
	}

	// The blob changes after the kick-off: a process that has not cached the
	// validated version refuses to use the new one.
	put(t, blobs, "configs/good.json", strings.Replace(good, `"123"`, `"456"`, 1))
	_, _, err = deidconfig.New(blobs, container).Load(t.Context(), "configs/good.json", got)
	if !fault.Is(err, fault.Permanent) || !strings.Contains(err.Error(), `"configs/good.json"`) {
		t.Fatalf("Load after the blob changed: %v; want a permanent error naming the configuration", err)
	}
	// The process that validated it keeps using exactly that version.
	a, _, err = configs.Load(t.Context(), "configs/good.json", got)
	if err != nil {
		t.Fatalf("Load of the cached version: %v", err)
	}
	out, err = a.Anonymize([]byte(`{"resourceType":"Patient","id":"p1"}`))
	if err != nil || !strings.Contains(string(out), hmacHex("123", "p1")) {
		t.Fatalf("cached anonymizer gave %s, %v; want the id hashed with key 123", out, err)
	}
}

func TestCheckPinsTheETagGiven(t *testing.T) {
	blobs := memstore.NewBlobs()
	etag := put(t, blobs, "good.json", good)
	configs := deidconfig.New(blobs, container)
	if got, _, err := configs.Check(t.Context(), "good.json", etag); err != nil || got != etag {
		t.Fatalf("Check If-Match the current ETag = %s, %v; want %s", got, err, etag)
	}
	newer := put(t, blobs, "good.json", good)
	_, _, err := configs.Check(t.Context(), "good.json", etag)
	if !fault.Is(err, fault.Invalid) || !strings.Contains(err.Error(), etag) {
		t.Fatalf("Check If-Match an old ETag: %v; want fault.Invalid naming the ETag", err)
	}
	if got, _, err := configs.Check(t.Context(), "good.json", newer); err != nil || got != newer {
		t.Fatalf("Check If-Match the new ETag = %s, %v; want %s", got, err, newer)
	}
}

func TestCheckWarnsAboutTheMisspeltKey(t *testing.T) {
	blobs := memstore.NewBlobs()
	put(t, blobs, "sample.json", strings.Replace(good, `"processingErrors"`, `"processingError"`, 1))
	_, warnings, err := deidconfig.New(blobs, container).Check(t.Context(), "sample.json", "")
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "processingError") {
		t.Errorf("warnings %q; want one about the key processingError", warnings)
	}
}

// TestCheckNamesEachProblem: every bad configuration is the client's 400,
// with a message that says what is wrong.
func TestCheckNamesEachProblem(t *testing.T) {
	rules := func(r string) string {
		return `{"fhirVersion":"R4","fhirPathRules":[` + r + `],"parameters":{"cryptoHashKey":"k","dateShiftKey":"k","encryptKey":"0123456789abcdef"}}`
	}
	cases := []struct {
		name, blob, content, etag string
		noContainer               bool
		want                      []string // substrings of the error
	}{
		{name: "missing container", noContainer: true, blob: "x.json", want: []string{`"x.json"`, `container "anonymization" does not exist`}},
		{name: "missing blob", blob: "absent.json", want: []string{`"absent.json"`, "does not exist"}},
		{name: "ETag mismatch", blob: "c.json", content: good, etag: `"0xSTALE"`, want: []string{`"c.json"`, `"0xSTALE"`}},
		{name: "invalid JSON", blob: "c.json", content: `{"fhirVersion":"R4",`, want: []string{`"c.json"`, "invalid JSON"}},
		{name: "duplicate key", blob: "c.json", content: `{"fhirVersion":"R4","fhirVersion":"R4","fhirPathRules":[]}`, want: []string{"fhirVersion", "duplicate"}},
		{name: "unknown method", blob: "c.json", content: rules(`{"path":"Patient.name","method":"scramble"}`), want: []string{"fhirPathRules[0]", "scramble"}},
		{name: "invalid FHIRPath", blob: "c.json", content: rules(`{"path":"Patient.name.where(","method":"redact"}`), want: []string{"fhirPathRules[0]", "Patient.name.where("}},
		{name: "encrypt key size", blob: "c.json", content: strings.Replace(good, `"0123456789abcdef"`, `"short"`, 1), want: []string{"encryptKey", "40 bits"}},
		{name: "fhirVersion", blob: "c.json", content: strings.Replace(good, `"R4"`, `"Stu3"`, 1), want: []string{"fhirVersion", "Stu3"}},
		{name: "empty cryptoHashKey", blob: "c.json", content: strings.Replace(good, `"cryptoHashKey": "123"`, `"cryptoHashKey": ""`, 1), want: []string{"fhirPathRules[0]", "uses cryptoHash", "cryptoHashKey is empty", "references"}},
		{name: "missing dateShiftKey", blob: "c.json", content: strings.Replace(good, `"dateShiftKey": "dummy", `, ``, 1), want: []string{"fhirPathRules[3]", "dateShiftKey is empty"}},
		{name: "empty encryptKey", blob: "c.json", content: strings.Replace(rules(`{"path":"nodesByType('Identifier').value","method":"encrypt"}`), `"0123456789abcdef"`, `""`, 1), want: []string{"encryptKey is empty"}},
		{name: "too large", blob: "c.json", content: good + strings.Repeat(" ", deidconfig.MaxBytes), want: []string{`"c.json"`, "too large"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			blobs := memstore.NewBlobs()
			switch {
			case c.noContainer:
			case c.content == "":
				put(t, blobs, "other.json", good)
			default:
				put(t, blobs, c.blob, c.content)
			}
			_, _, err := deidconfig.New(blobs, container).Check(t.Context(), c.blob, c.etag)
			if !fault.Is(err, fault.Invalid) {
				t.Fatalf("Check: %v (kind %v); want fault.Invalid", err, fault.KindOf(err))
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Check: %q does not say %q", err, w)
				}
			}
		})
	}
}
