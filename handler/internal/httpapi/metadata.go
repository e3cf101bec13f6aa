package httpapi

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/azfhir/bulkexport/handler/internal/auth"
	"github.com/azfhir/bulkexport/handler/internal/export"
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
		Security  security    `json:"security"`
		Resource  []resource  `json:"resource"`
		Operation []operation `json:"operation"`
	}
	security struct {
		Extension   []extension       `json:"extension,omitempty"`
		Service     []codeableConcept `json:"service,omitempty"`
		Description string            `json:"description"`
	}
	extension struct {
		URL       string      `json:"url"`
		ValueURI  string      `json:"valueUri,omitempty"`
		Extension []extension `json:"extension,omitempty"`
	}
	codeableConcept struct {
		Coding []coding `json:"coding"`
		Text   string   `json:"text,omitempty"`
	}
	coding struct {
		System string `json:"system"`
		Code   string `json:"code"`
	}
	resource struct {
		Type      string      `json:"type"`
		Operation []operation `json:"operation"`
	}
	operation struct {
		Name       string `json:"name"`
		Definition string `json:"definition"`
		// Documentation names the kick-off parameters the operation takes
		// (paramsDoc), since the IG's OperationDefinitions list more.
		Documentation string `json:"documentation,omitempty"`
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
			Mode:     "server",
			Security: s.security(),
			Resource: []resource{
				{Type: "Patient", Operation: []operation{{Name: "export", Definition: opPatientExport, Documentation: paramsDoc(export.LevelPatient)}}},
				{Type: "Group", Operation: []operation{{Name: "export", Definition: opGroupExport, Documentation: paramsDoc(export.LevelGroup)}}},
			},
			Operation: []operation{{Name: "export", Definition: opExport, Documentation: paramsDoc(export.LevelSystem)}},
		}},
	}
	return writeDocument(w, r, "application/fhir+json; charset=utf-8", cs, "the CapabilityStatement")
}

// security states how callers authenticate (AUTH_MODE), so that a client and
// an operator can both see from /metadata whether the API is open.
func (s *server) security() security {
	mode := auth.ModeNone
	if s.auth != nil {
		mode = s.auth.Mode()
	}
	if mode == auth.ModeNone {
		return security{Description: "AUTH_MODE=none: no authentication; every caller is one anonymous client " +
			"that may export everything. For local use only."}
	}
	sec := security{
		Service: []codeableConcept{{
			Coding: []coding{{System: "http://terminology.hl7.org/CodeSystem/restful-security-service", Code: "SMART-on-FHIR"}},
			Text:   "OAuth2 bearer tokens (SMART Backend Services)",
		}},
		Description: "AUTH_MODE=" + string(mode) + ": every request except /metadata and /.well-known/smart-configuration " +
			"needs a bearer token (client credentials) with the app role or SMART system scopes (system/*.rs, " +
			"system/<Type>.rs, or the v1 .read forms). Jobs and their files belong to the client that started them.",
	}
	if s.tokenURL != "" {
		// The SMART oauth-uris extension names the token endpoint here too:
		// the SMART bulk-data-client races this document against
		// .well-known/smart-configuration and takes the first answer, so
		// without it a fast /metadata left the client with no token URL.
		sec.Extension = []extension{{URL: oauthURIs, Extension: []extension{{URL: "token", ValueURI: s.tokenURL}}}}
	}
	return sec
}

// oauthURIs is the SMART extension that names a server's OAuth endpoints in
// its CapabilityStatement (rest.security).
const oauthURIs = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"

// smartConfig is the SMART App Launch discovery document
// (.well-known/smart-configuration) for backend services.
type smartConfig struct {
	TokenEndpoint            string   `json:"token_endpoint,omitempty"`
	GrantTypes               []string `json:"grant_types_supported"`
	TokenEndpointAuthMethods []string `json:"token_endpoint_auth_methods_supported,omitempty"`
	TokenEndpointSigningAlgs []string `json:"token_endpoint_auth_signing_alg_values_supported,omitempty"`
	ScopesSupported          []string `json:"scopes_supported"`
	Capabilities             []string `json:"capabilities"`
}

// smartConfiguration answers GET /.well-known/smart-configuration, without
// a token: it tells a backend client where to get one (AUTH_TOKEN_ENDPOINT,
// when set) and which scopes this API honours.
func (s *server) smartConfiguration(w http.ResponseWriter, r *http.Request) error {
	c := smartConfig{
		TokenEndpoint:   s.tokenURL,
		GrantTypes:      []string{"client_credentials"},
		ScopesSupported: []string{"system/*.read", "system/*.rs"},
		Capabilities:    []string{"client-confidential-asymmetric", "permission-v1", "permission-v2"},
	}
	if s.tokenURL != "" {
		c.TokenEndpointAuthMethods = []string{"private_key_jwt"}
		c.TokenEndpointSigningAlgs = []string{"RS384", "ES384"}
	}
	if s.auth == nil || s.auth.Mode() == auth.ModeNone {
		c.GrantTypes, c.ScopesSupported, c.Capabilities = []string{}, []string{}, []string{}
	}
	return writeDocument(w, r, "application/json", c, "the SMART configuration")
}

// writeDocument answers GET or HEAD with v as JSON of the given content type.
func writeDocument(w http.ResponseWriter, r *http.Request, contentType string, v any, what string) error {
	body, err := json.Marshal(v)
	if err != nil {
		return fault.Wrap(fault.Internal, err, "encoding %s", what)
	}
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
	return nil
}
