package e2e

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"

	"github.com/azfhir/bulkexport/tests/bulkclient"
	"github.com/azfhir/bulkexport/tests/testproc"
)

// The keys the test gives Microsoft's R4 HIPAA sample configuration, whose
// own keys are empty.
const deidHashKey = "123"

// uploadHIPAASample uploads Microsoft's R4 sample configuration with fixed
// keys as blob name of a new container, and returns the blob's ETag.
func uploadHIPAASample(t *testing.T, container, name string) string {
	t.Helper()
	raw, err := os.ReadFile("../../handler/internal/deid/testdata/configuration-sample.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	params := doc["parameters"].(map[string]any)
	params["cryptoHashKey"] = deidHashKey
	params["dateShiftKey"] = "123"
	params["encryptKey"] = "704ab12c8e3e46d4bea600ef62a6bec7"
	data, _ := json.Marshal(doc)
	c, err := azblob.NewClientFromConnectionString(os.Getenv("AZURE_STORAGE_CONNECTION_STRING"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateContainer(context.Background(), container, nil); err != nil {
		t.Fatal(err)
	}
	resp, err := c.UploadBuffer(context.Background(), container, name, data, nil)
	if err != nil {
		t.Fatal(err)
	}
	return string(*resp.ETag)
}

// hashedID is the HMAC-SHA256 of an id under the test's key, lowercase hex:
// Microsoft's cryptoHash, computed here independently of the service.
func hashedID(id string) string {
	m := hmac.New(sha256.New, []byte(deidHashKey))
	m.Write([]byte(id))
	return hex.EncodeToString(m.Sum(nil))
}

var literalRef = regexp.MustCompile(`"reference":"([A-Za-z]+)/([^"/]+)"`)

// TestDeidentifiedExportAtEveryLevel exports the sample data with Microsoft's
// HIPAA sample configuration at system, Patient and Group level, with small
// files, and checks what a research user relies on.
func TestDeidentifiedExportAtEveryLevel(t *testing.T) {
	const limit = 150000
	anonContainer := "anon-" + testproc.RandomSuffix()
	etag := uploadHIPAASample(t, anonContainer, "hipaa.json")
	svc := startService(t, "EXPORT_ANONYMIZATION_CONTAINER="+anonContainer,
		"EXPORT_MAX_FILE_BYTES="+strconv.Itoa(limit), "EXPORT_BLOCK_BYTES=40000", "EXPORT_PAGE_SIZE=100", "EXPORT_MEMBER_BATCH=4")
	source := fixture(t, nil)
	secrets := sourceSecrets(t, source)
	var g struct{ ID string }
	json.Unmarshal([]byte(source["Group"][0]), &g)

	for _, tc := range []struct{ name, path string }{
		{"system", "/$export?_anonymizationConfig=hipaa.json&_anonymizationConfigEtag=" + url.QueryEscape(etag)},
		{"Patient", "/Patient/$export?_anonymizationConfig=hipaa.json"},
		{"Group", "/Group/" + g.ID + "/$export?_type=Patient,Observation,Encounter&_anonymizationConfig=hipaa.json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := svc.client.Export(ctx(t), tc.path) // checks that counts equal lines
			if err != nil {
				t.Fatal(err)
			}
			checkSizes(t, res.Manifest, limit)
			files := map[string]int{}
			for _, f := range res.Manifest.Output {
				files[f.Type]++
			}
			if files["Observation"] < 2 {
				t.Errorf("files per type %v: the Observations must roll over at %d bytes", files, limit)
			}
			checkDeidentified(t, source, secrets, res.Resources, tc.name == "system")
			for _, e := range res.Errors { // warnings about the sample server's search parameters are expected
				if !bytes.Contains(e, []byte(`"severity":"warning"`)) {
					t.Errorf("error line in a clean export: %s", e)
				}
			}
		})
	}

	// A configuration that is not there is refused at kick-off.
	if _, err := svc.client.KickOff(ctx(t), "/$export?_anonymizationConfig=missing.json"); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("kick-off with a missing configuration: %v; want 400", err)
	}
}

// sourceSecrets collects the values of names, address lines, telecoms and
// identifiers of the source, leaving out the Organization fields that the
// sample keeps on purpose.
func sourceSecrets(t *testing.T, source map[string][]string) map[string]bool {
	secrets, kept := map[string]bool{}, map[string]bool{}
	for typ, lines := range source {
		for _, l := range lines {
			var doc map[string]any
			if err := json.Unmarshal([]byte(l), &doc); err != nil {
				t.Fatal(err)
			}
			identifying(doc, "", secrets)
			if typ == "Organization" || typ == "OrganizationAffiliation" {
				collectStrings(doc["identifier"], kept, "value")
				collectStrings(doc["telecom"], kept, "value")
				collectStrings(doc["address"], kept, "line", "city", "text")
			}
		}
	}
	for k := range kept {
		delete(secrets, k)
	}
	if len(secrets) < 100 {
		t.Fatalf("premise: only %d identifying values in the source", len(secrets))
	}
	return secrets
}

// checkDeidentified checks an export made with the HIPAA sample: every
// resource's id is the source id hashed with the key, no identifying value is
// left, dates are shifted by one offset per resource within ±50 days, and in
// a system export every reference that resolved in the source still does.
func checkDeidentified(t *testing.T, source map[string][]string, secrets map[string]bool, got map[string][][]byte, system bool) {
	t.Helper()
	byHash := map[string]map[string]any{} // Type/hashed id -> source resource
	for typ, lines := range source {
		for _, l := range lines {
			var doc map[string]any
			json.Unmarshal([]byte(l), &doc)
			byHash[typ+"/"+hashedID(doc["id"].(string))] = doc
		}
	}
	var all bytes.Buffer
	outIDs := map[string]bool{}
	shifted, total := 0, 0
	for typ, lines := range got {
		for _, l := range lines {
			all.Write(l)
			all.WriteByte('\n')
			var doc map[string]any
			if err := json.Unmarshal(l, &doc); err != nil {
				t.Fatal(err)
			}
			id, _ := doc["id"].(string)
			src, ok := byHash[typ+"/"+id]
			if !ok {
				t.Fatalf("%s %.60s: its id is not the hash of a source id", typ, id)
			}
			outIDs[typ+"/"+id] = true
			total++
			offsets := map[int]bool{}
			dateOffsets(src, doc, offsets)
			if len(offsets) > 1 {
				t.Errorf("%s/%s: dates shifted by different offsets %v in one resource", typ, id, offsets)
			}
			for d := range offsets {
				if d < -50 || d > 50 {
					t.Errorf("%s/%s: dates shifted by %d days, outside ±50", typ, id, d)
				}
				if d != 0 {
					shifted++
				}
			}
		}
	}
	if total == 0 || shifted < total/2 {
		t.Errorf("%d of %d resources have dates shifted by a non-zero offset; want most", shifted, total)
	}

	var outStrings = map[string]bool{}
	for l := range strings.Lines(all.String()) {
		var o any
		json.Unmarshal([]byte(l), &o)
		checkedStrings(o, "", outStrings)
	}
	for s := range secrets {
		if outStrings[s] {
			t.Errorf("source value %q appears in the output", s)
			continue
		}
		if len(s) < 6 {
			continue
		}
		for o := range outStrings {
			if strings.Contains(o, s) {
				t.Errorf("source value %q appears in the output inside %q", s, o)
				break
			}
		}
	}
	if !system {
		return
	}

	// Every reference that resolved in the source resolves in the output,
	// except those the sample redacts on purpose (Claim and
	// ExplanationOfBenefit supportingInfo.valueReference).
	sourceIDs := map[string]bool{}
	for _, doc := range byHash {
		sourceIDs[doc["resourceType"].(string)+"/"+doc["id"].(string)] = true
	}
	resolved, redacted := 0, 0
	for typ, lines := range source {
		claim := typ == "Claim" || typ == "ExplanationOfBenefit"
		for _, l := range lines {
			for _, m := range literalRef.FindAllStringSubmatchIndex(l, -1) {
				if !sourceIDs[l[m[2]:m[3]]+"/"+l[m[4]:m[5]]] {
					continue
				}
				resolved++
				if claim && strings.HasSuffix(l[:m[0]], `"valueReference":{`) {
					redacted++
				}
			}
		}
	}
	outResolved, outBroken := 0, 0
	for _, m := range literalRef.FindAllStringSubmatch(all.String(), -1) {
		if outIDs[m[1]+"/"+m[2]] {
			outResolved++
		} else {
			outBroken++
		}
	}
	if resolved == 0 || outResolved != resolved-redacted || outBroken != 0 {
		t.Errorf("%d references resolve in the source (%d redacted by the sample); %d resolve in the output, %d do not", resolved, redacted, outResolved, outBroken)
	}
}

var fullDate = regexp.MustCompile(`^(\d{4}-\d{2}-\d{2})`)

// dateOffsets walks a source resource and its de-identified form side by
// side and adds, for every element that is a full date in both, the shift in
// days. Arrays are walked by index only when both have the same length, so a
// redacted element cannot pair two different dates.
func dateOffsets(src, out any, offsets map[int]bool) {
	switch s := src.(type) {
	case map[string]any:
		o, ok := out.(map[string]any)
		if !ok {
			return
		}
		for k, v := range s {
			if k == "meta" { // meta.security is added; lastUpdated is shifted like any instant
				if om, ok := o[k].(map[string]any); ok {
					dateOffsets(v.(map[string]any)["lastUpdated"], om["lastUpdated"], offsets)
				}
				continue
			}
			if ov, ok := o[k]; ok {
				dateOffsets(v, ov, offsets)
			}
		}
	case []any:
		o, ok := out.([]any)
		if !ok || len(o) != len(s) {
			return
		}
		for i := range s {
			dateOffsets(s[i], o[i], offsets)
		}
	case string:
		o, ok := out.(string)
		ms, mo := fullDate.FindString(s), fullDate.FindString(o)
		if !ok || ms == "" || mo == "" {
			return
		}
		a, err1 := time.Parse(time.DateOnly, ms)
		b, err2 := time.Parse(time.DateOnly, mo)
		if err1 == nil && err2 == nil {
			offsets[int(b.Sub(a).Hours()/24)] = true
		}
	}
}

// identifying collects, from the resources the sample does not exempt (it
// keeps Organization and OrganizationAffiliation identifiers, telecoms and
// addresses), the values of names, address lines, telecoms and identifiers.
func identifying(v any, inResource string, out map[string]bool) {
	switch v := v.(type) {
	case map[string]any:
		if rt, ok := v["resourceType"].(string); ok {
			inResource = rt
		}
		exempt := inResource == "Organization" || inResource == "OrganizationAffiliation"
		for k, c := range v {
			switch k {
			case "name":
				if !exempt {
					collectStrings(c, out, "family", "given", "text", "prefix", "suffix")
				}
			case "address":
				if !exempt {
					collectStrings(c, out, "line", "city", "text")
				}
			case "telecom", "identifier":
				if !exempt {
					collectStrings(c, out, "value")
				}
			}
			identifying(c, inResource, out)
		}
	case []any:
		for _, c := range v {
			identifying(c, inResource, out)
		}
	}
}

// collectStrings adds the string values of the given keys of objects in v.
func collectStrings(v any, out map[string]bool, keys ...string) {
	switch v := v.(type) {
	case []any:
		for _, c := range v {
			collectStrings(c, out, keys...)
		}
	case map[string]any:
		for _, k := range keys {
			switch s := v[k].(type) {
			case string:
				out[s] = true
			case []any:
				for _, x := range s {
					if str, ok := x.(string); ok {
						out[str] = true
					}
				}
			}
		}
	}
}

// checkedStrings collects the string values of v, leaving out the
// Organization fields the sample keeps on purpose.
func checkedStrings(v any, resource string, out map[string]bool) {
	switch v := v.(type) {
	case string:
		out[v] = true
	case []any:
		for _, c := range v {
			checkedStrings(c, resource, out)
		}
	case map[string]any:
		if rt, ok := v["resourceType"].(string); ok {
			resource = rt
		}
		for k, c := range v {
			if resource == "Organization" || resource == "OrganizationAffiliation" {
				switch k {
				case "name", "identifier", "telecom", "address", "alias":
					continue
				}
			}
			checkedStrings(c, resource, out)
		}
	}
}

// TestDeidentifiedExportSurvivesSIGKILL kills the handler at random moments
// during a de-identified system export, as sigkillTest does for a plain one,
// and checks that the output is line for line the output of an export that
// was never interrupted: anonymization is a function of the resource and the
// pinned configuration, so a page written again after a crash is the same.
func TestDeidentifiedExportSurvivesSIGKILL(t *testing.T) {
	kills := 10
	if v, err := strconv.Atoi(os.Getenv("FAULT_KILLS")); err == nil && v > 0 {
		kills = v
	}
	const limit = 120000
	anonContainer := "anon-" + testproc.RandomSuffix()
	uploadHIPAASample(t, anonContainer, "hipaa.json")
	src, fhirURL := faultySource(t)
	p := newProcess(t, fhirURL, "EXPORT_ANONYMIZATION_CONTAINER="+anonContainer,
		"EXPORT_PAGE_SIZE=10", "EXPORT_MAX_FILE_BYTES="+strconv.Itoa(limit), "EXPORT_BLOCK_BYTES=20000",
		"EXPORT_LEASE=3s", "EXPORT_VISIBILITY=4s", "EXPORT_RETRY_DELAY=1s", "EXPORT_STALL_AFTER=30s",
		"EXPORT_WORKERS=4", "EXPORT_MAX_DEQUEUE_COUNT=50",
		// Windows on: the larger types are split into windows, each a work
		// item of its own, so de-identification is checked with them too.
		"EXPORT_WINDOW_RESOURCES=300")
	client := &bulkclient.Client{Base: p.base(), MaxWait: 5 * time.Minute}
	const path = "/$export?_anonymizationConfig=hipaa.json"

	clean, err := client.Export(ctx(t), path)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{}
	for typ, lines := range clean.Resources {
		for _, l := range lines {
			want[typ] = append(want[typ], string(l))
		}
	}
	if len(want["Patient"]) == 0 || strings.Contains(strings.Join(want["Patient"], ""), `"family"`) {
		t.Fatalf("premise: the uninterrupted export has %d Patients, with names redacted", len(want["Patient"]))
	}

	src.SetSearchDelay(15 * time.Millisecond) // long enough to be killed many times mid-export
	done, _ := exportsWithKills(t, p, client, path, kills, func(m bulkclient.Manifest, got map[string][][]byte, errs [][]byte) {
		sameResources(t, got, want)
		checkSizes(t, m, limit)
		if len(errs) != 0 {
			t.Errorf("%d error lines; want none", len(errs))
		}
	})
	if !slices.ContainsFunc(clean.Manifest.Output, func(f bulkclient.ManifestFile) bool { return strings.HasSuffix(f.URL, "-2.ndjson") }) {
		t.Errorf("no type rolled over into a second file at %d bytes", limit)
	}
	if !slices.ContainsFunc(clean.Manifest.Output, func(f bulkclient.ManifestFile) bool { return strings.Contains(f.URL, "Observation-w0002-") }) {
		t.Errorf("Observation was not split into windows at EXPORT_WINDOW_RESOURCES=300")
	}
	t.Logf("killed the handler %d times", done)
}
