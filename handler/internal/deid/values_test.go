package deid

import (
	"bytes"
	"crypto/aes"
	"encoding/base64"
	"strings"
	"testing"
	"time"
)

// Expected values in this file are the ones Microsoft publishes in
// Tools-for-Health-Data-Anonymization @ a2d90ba,
// FHIR/src/Microsoft.Health.Fhir.Anonymizer.Shared.Core.UnitTests/ (file
// named per test), and in microsoft/fhir-server
// src/Microsoft.Health.Fhir.Shared.Core.UnitTests/Features/Operations/Export/ExportAnonymizerTests.cs.
// Our code computes each one from the algorithm.

func TestHashValueMatchesMicrosoftVectors(t *testing.T) {
	key := []byte("123")
	for in, want := range map[string]string{
		// Utility/CryptoHashUtilityTests.cs
		"abc":          "8f16771f9f8851b26f4d460fa17de93e2711c7e51337cb8a608a0f81e1c1b6ae",
		"&*^%$@()=-,/": "33f6f7d6b3602bf5354dcb4b8d988982602349355f50f86798d8ce1ffd61521b",
		"ÆŊŋßſ♫∅":      "1a94823f0a0f00a4b1ca771c3446dc5e17958f4dae3588ace2bca8a843eb63d9",
		"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ1234567890!@#$%^&*()=-": "352b5a4af5adb81fa616c2a5b5c492d0b0b544c188a9aa003767a2b5efbd1478",
		// Processors/CryptoHashProcessorTests.cs: ids, oids, uuids and dates hash whole
		"a":                                    "69e99e82127c1f146f50653e02b92c4bb0c3bc182a6165a5bbce5f4f94e1ccb7",
		"bb6f4872-e456-42d5-a9da-a0d82cb7ea29": "73defcb8fcaf4c0c3d5c77f05b479cadbe502db2ef6e9b1523d2bfee31f3b999",
		"urn:oid:1.2.3.4.5":                    "6aa8e3e9af18cae990adc9c26dc006ebf633dd1332886867a691ee2d5247dd15",
		"urn:uuid:c757873d-ec9a-4326-a141-556f43239520": "23a940be8f03522b52a393c7194407796bb5ea3c02b926b0e42fdab94ca30bad",
		"2020-04-12":               "1e99c6a8b99d3c8b4906c2e80911ad3b5961fd7498d3bc2b96fb128bc7148f90",
		"2017-01-01T00:00:00.000Z": "4c765fc04a6f9967d493ff39238d47993c709d3392a72060efeff285cf7b2501",
		// fhir-server ExportAnonymizerTests: Resource.id "123"
		"123": "3cafe40f92be6ac77d2792b4b267c2da11e3f3087b93bb19c6c5133786984b44",
	} {
		if got := hashValue(key, in); got != want {
			t.Errorf("hash(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestTransformReferenceHashesOnlyTheID(t *testing.T) {
	hash := func(s string) string { return hashValue([]byte("123"), s) }
	// Processors/CryptoHashProcessorTests.cs, reference cases.
	for in, want := range map[string]string{
		"#":               "#",
		"#p1":             "#a10e6bee4fbeb6a7804153c25688dd4dd7b9c2a005417136026350fc33ac609f",
		"Patient/example": "Patient/698d54f0494528a759f19c8e87a9f99e75a5881b9267ee3926bcf62c992d84ba",
		"http://fhir.hl7.org/svc/StructureDefinition/c8973a22-2b5b-4e76-9c66-00639c99e61b": "http://fhir.hl7.org/svc/StructureDefinition/b0ff9c939b3507a79e2ae3d2d3b595d62819b9b8f6ef10d4099b3058d902642f",
		"http://example.org/fhir/Observation/apo89654/_history/2":                          "http://example.org/fhir/Observation/b1e85ca33baf76575ad28588af85b8f10c0dd40e9ed8cd57cdb7ae94ccd75695/_history/2",
		"urn:uuid:c757873d-ec9a-4326-a141-556f43239520":                                    "urn:uuid:24970eb3f915e516a2b5241c0d6979097a6357a13b89612c6a54b8ab5479df34",
		"urn:oid:1.2.3.4.5": "urn:oid:0543fb50485f58a47073f51aad1677607aec031c2c83c25ee7b040ade95cfbcc",
	} {
		if got := transformReference(in, hash); got != want {
			t.Errorf("reference %q → %s, want %s", in, got, want)
		}
	}
	// Utility/ReferenceUtilityTests.cs: shapes transformed whole.
	for _, in := range []string{
		"034AB16",
		"Patient/AbcŴΉЙ",
		"http://fhir.hl7.org/svc/StructureDefinitionTest/c8973a22-2b5b-4e76-9c66-00639c99e61b",
		"ftp://fhir.hl7.org/svc/StructureDefinition/c8973a22-2b5b-4e76-9c66-00639c99e61b",
		"wwurn:uuid:c757873d-ec9a-4326-a141-556f43239520",
		"urn:oid:1.2.3=4.5",
	} {
		if got := transformReference(in, hash); got != hash(in) {
			t.Errorf("reference %q → %s, want the whole value hashed", in, got)
		}
	}
}

// Microsoft hashes a reference on a base URL with a hyphen whole, so it no
// longer matches the hashed id of its target; we keep the link.
func TestTransformReferenceKeepsLinksOnHyphenatedHosts(t *testing.T) {
	hash := func(s string) string { return hashValue([]byte("123"), s) }
	in := "https://ws-svc.fhir.azurehealthcareapis.com/Patient/example"
	want := "https://ws-svc.fhir.azurehealthcareapis.com/Patient/" + hash("example")
	if got := transformReference(in, hash); got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func TestEncryptDecryptsMicrosoftCiphertexts(t *testing.T) {
	block, err := aes.NewCipher([]byte("704ab12c8e3e46d4bea600ef62a6bec7"))
	if err != nil {
		t.Fatal(err)
	}
	// Utility/EncryptUtilityTests.cs
	pairs := map[string]string{
		"qpxGp6T9DP7wB0EYPQwOYVrScQ/pq3c0D+JQ+hjnfkY=":                     "abc",
		"GI99peR2SpPfcqEgzr7/z7gxYym6qyVPPzvmGc8o8SSwqMpCsW0CRj3v6ZsxFCef": "This is for test",
		"JxNRbbxL6pYYpbrtHWZ+1gPTPcIVrLWmrugPiUR9d6k=":                     "!@)(*&%^!@#$%@",
		"nQTtB/efLGpEqzOh/Pt4ZRlqZynO7gjePdu7LbLxH2LoqYJXAq6SQWkFeQ1SiqRM": "ͶΆΈΞξτϡϿῧῄᾴѶѾ",
		"zrFYnZ2cIwcfmjCVybP1ZC+LaD7gwGXBHR2bZjuutzA=":                     "测试",
	}
	for cipherText, plain := range pairs {
		got, err := decryptValue(block, cipherText)
		if err != nil || got != plain {
			t.Errorf("decrypt(%s) = %q, %v; want %q", cipherText, got, err, plain)
		}
		// With the same IV our encryption gives Microsoft's exact bytes:
		// same mode, padding and layout.
		raw, _ := base64.StdEncoding.DecodeString(cipherText)
		again, err := encryptValue(block, bytes.NewReader(raw[:16]), plain)
		if err != nil || again != cipherText {
			t.Errorf("encrypt(%q) with Microsoft's IV = %s, %v; want %s", plain, again, err, cipherText)
		}
	}
	for _, bad := range []string{"YWJj", "QXMgdGhlIG51bWJlciBvZiBwb3NzaWJsZSB0ZXN0cyBmb3IgZXZlbiBzaW1wbGUgc29m**&&^^"} {
		if _, err := decryptValue(block, bad); err == nil {
			t.Errorf("decrypt(%s) succeeded; want an error", bad)
		}
	}
}

func TestEncryptRoundTripsWithFreshIVs(t *testing.T) {
	block, _ := aes.NewCipher([]byte("704ab12c8e3e46d4bea600ef62a6bec7"))
	for _, plain := range []string{"abc", "This is for test", "exactly sixteen!", "ͶΆΈΞξτϡϿῧῄᾴѶѾ", "测试"} {
		a, err := encryptValue(block, randReader(), plain)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := encryptValue(block, randReader(), plain)
		if a == b {
			t.Errorf("two encryptions of %q are equal; the IV must be fresh", plain)
		}
		if got, err := decryptValue(block, a); err != nil || got != plain {
			t.Errorf("round trip of %q gave %q, %v", plain, got, err)
		}
	}
}

func TestShiftOffsetMatchesPublishedShifts(t *testing.T) {
	for _, c := range []struct {
		prefix, key string
		want        int
	}{
		{"", "dummy", -21},     // DateTimeUtilityTests: 2015-02-07 → 2015-01-17
		{"example", "123", 41}, // FunctionalTests patient-basic: 2000-01-01 → 2000-02-11
		{"", "123", 50},        // fhir-server: Patient without id, 2001-01-01 → 2001-02-20
	} {
		if got := shiftOffset(c.prefix, c.key); got != c.want {
			t.Errorf("offset(%q, %q) = %d, want %d", c.prefix, c.key, got, c.want)
		}
	}
}

func TestShiftDateKeepsLayoutAndZeroesTime(t *testing.T) {
	// Utility/DateTimeUtilityTests.cs, key "dummy" (−21 days), plus the two
	// functional vectors.
	for _, c := range []struct {
		in     string
		offset int
		want   string
	}{
		{"2015-02-07", -21, "2015-01-17"},
		{"2015-02-07T13:28:17-05:00", -21, "2015-01-17T00:00:00-05:00"},
		{"2015-02-07T13:28:17+05:00", -21, "2015-01-17T00:00:00+05:00"},
		{"2015-02-07T13:28:17Z", -21, "2015-01-17T00:00:00Z"},
		{"2015-02-07T13:28:17.12345-05:00", -21, "2015-01-17T00:00:00.00000-05:00"},
		{"2000-01-01", 41, "2000-02-11"},
		{"2001-01-01", 50, "2001-02-20"},
	} {
		d, ok := parseDate(c.in, strings.Contains(c.in, "T"))
		if !ok {
			t.Fatalf("%s did not parse", c.in)
		}
		if got := shiftDate(d, c.offset); got != c.want {
			t.Errorf("shift(%s, %d) = %s, want %s", c.in, c.offset, got, c.want)
		}
	}
}

func TestRedactDateKeepsYearUnlessOver89(t *testing.T) {
	now := time.Date(2026, 6, 15, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		in       string
		dateTime bool
		partial  bool
		want     string // "" = removed
	}{
		{"2015", false, true, "2015"},
		{"2015-02", false, true, "2015"},
		{"2015-02-07", false, true, "2015"},
		{"2015-02-07T13:28:17-05:00", true, true, "2015"},
		{"1925-02-07", false, true, ""},
		{"1925-02-07T13:28:17-05:00", true, true, ""},
		{"1936-06-16", false, true, "1936"}, // 89 until tomorrow
		{"1936-06-15", false, true, ""},     // 90 today
		{"1936", false, true, ""},           // a bare year counts from 1 January
		{"2015-02-07", false, false, ""},
		{"not a date", false, true, ""},
	} {
		got, ok := redactDate(c.in, c.dateTime, c.partial, now)
		if !ok {
			got = ""
		}
		if got != c.want {
			t.Errorf("redact(%s, partial=%v) = %q, want %q", c.in, c.partial, got, c.want)
		}
	}
}

func TestRedactPostalCode(t *testing.T) {
	// Utility/PostalCodeUtilityTests.cs, restricted [203, 556].
	restricted := []string{"203", "556"}
	for in, want := range map[string]string{
		"98052":      "98000",
		"10104":      "10100",
		"20301":      "00000",
		"55602":      "00000",
		"98028-1830": "98000-0000",
		"20301-1830": "00000-0000",
		"12":         "12",
	} {
		if got := redactPostalCode(in, restricted); got != want {
			t.Errorf("zip %s → %s, want %s", in, got, want)
		}
	}
}

func TestKeepAge(t *testing.T) {
	for in, want := range map[string]bool{"57": true, "35": true, "89": true, "92": false, "101": false, "89.5": false, "88.9": true} {
		if got := keepAge(in); got != want {
			t.Errorf("keepAge(%s) = %v, want %v", in, got, want)
		}
	}
}

func TestPerturbValueRangeAndRounding(t *testing.T) {
	for _, c := range []struct {
		value, typ   string
		span         float64
		proportional bool
		roundTo      int
		u            float64
		want         string
	}{
		{"100", "decimal", 10, false, 2, 0, "95.00"},     // lowest noise: −span/2
		{"100", "decimal", 10, false, 2, 0.5, "100.00"},  // no noise
		{"100", "decimal", 0.1, true, 0, 0.99999, "105"}, // ±10% of 100 /2 = ±5
		{"100", "integer", 10, false, 2, 0.75, "102"},    // integers round to 0 decimals
		{"1", "positiveInt", 10, false, 0, 0, "1"},       // positiveInt stays ≥ 1
		{"1", "unsignedInt", 10, false, 0, 0, "0"},       // unsignedInt stays ≥ 0
		{"2.5", "decimal", 1, false, 0, 0.5, "2"},        // half to even, like .NET decimal.Round
		{"3.5", "decimal", 1, false, 0, 0.5, "4"},
		{"12.345", "decimal", 0, false, 1, 0.3, "12.3"},
	} {
		got, err := perturbValue(c.value, c.typ, c.span, c.proportional, c.roundTo, c.u)
		if err != nil || got != c.want {
			t.Errorf("perturb(%s %s span=%v prop=%v round=%d u=%v) = %s, %v; want %s", c.typ, c.value, c.span, c.proportional, c.roundTo, c.u, got, err, c.want)
		}
	}
	if _, err := perturbValue("abc", "decimal", 1, false, 2, 0.5); err == nil {
		t.Error("perturb of a non-number succeeded")
	}
}

// The hand-written parser must agree with Microsoft's patterns wherever it
// accepts a value, and shifting must give the same text either way.
func TestStrictDateParserAgreesWithPattern(t *testing.T) {
	accepted := 0
	for _, v := range []string{
		"2015", "2015-02", "2015-02-07", "0001-01-01", "2015-02-07T13:28:17Z", "2015-02-07T13:28:17.12345-05:00",
		"2015-02-07T23:59:60+14:00", "2015-02-07T13:28:17+13:59", "1998-10-02T08:47:25+08:00",
		"0000", "2015-13", "2015-02-32", "2015-02-07T24:00:00Z", "2015-02-07T13:28:17", "2015-02-07T13:28:17+14:01",
		"2015-02-07T13:28:17.Z", "2015-02-07x", "15-02-07", "2015-2-7", "2015-02-07T13:28:17.5+15:00",
	} {
		for _, dateTime := range []bool{false, true} {
			strict, ok := parseDateStrict(v, dateTime)
			if !ok {
				continue
			}
			accepted++
			pattern, ok := parseDatePattern(v, dateTime)
			end := strict.timeEnd
			strict.timeEnd = 0
			if !ok || strict != pattern {
				t.Errorf("%q (dateTime %v): strict %+v, pattern %+v", v, dateTime, strict, pattern)
			}
			if strict.day > 0 {
				strict.timeEnd = end
				if a, b := shiftDate(strict, -21), shiftDate(pattern, -21); a != b {
					t.Errorf("%q: shift %s by hand, %s by pattern", v, a, b)
				}
			}
		}
	}
	if accepted != 13 {
		t.Errorf("premise: only %d values accepted by the strict parser", accepted)
	}
}
