package httpapi

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/azfhir/bulkexport/handler/internal/fault"
)

// Canonical URLs of the Bulk Data IG.
const (
	bulkDataCapability = "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
	opExport           = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
	opPatientExport    = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
	opGroupExport      = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"
)

// The R4 CapabilityStatement elements we fill, in wire order.
type (
	capabilityStatement struct {
		ResourceType   string         `json:"resourceType"`
		Status         string         `json:"status"`
		Date           string         `json:"date"`
		Kind           string         `json:"kind"`
		Instantiates   []string       `json:"instantiates"`
		Software       software       `json:"software"`
		Implementation implementation `json:"implementation"`
		FHIRVersion    string         `json:"fhirVersion"`
		Format         []string       `json:"format"`
		Rest           []rest         `json:"rest"`
	}
	software struct {
		Name    string `json:"name"`
		Version string `json:"version,omitempty"`
	}
	implementation struct {
		Description string `json:"description"`
		URL         string `json:"url"`
	}
	rest struct {
		Mode      string      `json:"mode"`
		Resource  []resource  `json:"resource"`
		Operation []operation `json:"operation"`
	}
	resource struct {
		Type      string      `json:"type"`
		Operation []operation `json:"operation"`
	}
	operation struct {
		Name       string `json:"name"`
		Definition string `json:"definition"`
	}
)

// metadata answers GET /metadata with the CapabilityStatement: the three
// export levels, each under the operation name "export" (what Inferno
// expects), and the IG's bulk-data CapabilityStatement in instantiates.
func (s *server) metadata(w http.ResponseWriter, r *http.Request) error {
	cs := capabilityStatement{
		ResourceType: "CapabilityStatement",
		Status:       "active",
		Date:         s.started.UTC().Format("2006-01-02T15:04:05Z07:00"),
		Kind:         "instance",
		Instantiates: []string{bulkDataCapability},
		Software:     software{Name: "azfhir-bulkexport", Version: s.version},
		Implementation: implementation{
			Description: "FHIR Bulk Data Access (IG v2.0.0) $export server: system, Patient and Group level; NDJSON output",
			URL:         s.baseURL(r),
		},
		FHIRVersion: "4.0.1",
		Format:      []string{"json"},
		Rest: []rest{{
			Mode: "server",
			Resource: []resource{
				{Type: "Patient", Operation: []operation{{Name: "export", Definition: opPatientExport}}},
				{Type: "Group", Operation: []operation{{Name: "export", Definition: opGroupExport}}},
			},
			Operation: []operation{{Name: "export", Definition: opExport}},
		}},
	}
	body, err := json.Marshal(cs)
	if err != nil {
		return fault.Wrap(fault.Internal, err, "encoding the CapabilityStatement")
	}
	h := w.Header()
	h.Set("Content-Type", "application/fhir+json; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
	return nil
}
