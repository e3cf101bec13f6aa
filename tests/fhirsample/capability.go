package fhirsample

import (
	"sort"
	"time"
)

// softwareName and softwareVersion identify the server in its CapabilityStatement.
const (
	softwareName    = "fhir-sample"
	softwareVersion = "0.1.0"
)

type capabilityStatement struct {
	ResourceType   string                   `json:"resourceType"`
	Status         string                   `json:"status"`
	Date           string                   `json:"date"`
	Kind           string                   `json:"kind"`
	Software       capabilitySoftware       `json:"software"`
	Implementation capabilityImplementation `json:"implementation"`
	FHIRVersion    string                   `json:"fhirVersion"`
	Format         []string                 `json:"format"`
	Rest           []capabilityRest         `json:"rest"`
}

type capabilitySoftware struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

type capabilityImplementation struct {
	Description string `json:"description"`
	URL         string `json:"url"`
}

type capabilityRest struct {
	Mode     string               `json:"mode"`
	Resource []capabilityResource `json:"resource"`
}

type capabilityResource struct {
	Type        string                  `json:"type"`
	Interaction []capabilityInteraction `json:"interaction"`
	SearchParam []capabilitySearchParam `json:"searchParam"`
}

type capabilityInteraction struct {
	Code string `json:"code"`
}

type capabilitySearchParam struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// capabilityStatement describes the server at baseURL: one resource entry per loaded type
// with the read and search-type interactions and the search parameters that exist for it.
func (s *Server) capabilityStatement(baseURL string) capabilityStatement {
	rest := capabilityRest{Mode: "server"}
	for _, name := range s.store.sortedTypeNames() {
		rest.Resource = append(rest.Resource, capabilityResourceFor(s.store.types[name]))
	}
	s.declareHistory(&rest)
	return capabilityStatement{
		ResourceType: "CapabilityStatement",
		Status:       "active",
		Date:         s.startedAt.UTC().Format(time.RFC3339),
		Kind:         "instance",
		Software:     capabilitySoftware{Name: softwareName, Version: softwareVersion},
		Implementation: capabilityImplementation{
			Description: "Read-only sample FHIR R4 server for tests",
			URL:         baseURL,
		},
		FHIRVersion: "4.0.1",
		Format:      []string{"json"},
		Rest:        []capabilityRest{rest},
	}
}

func capabilityResourceFor(rt *resourceType) capabilityResource {
	params := []capabilitySearchParam{
		{Name: "_id", Type: "token"},
		{Name: "_lastUpdated", Type: "date"},
	}
	for _, p := range rt.params {
		params = append(params, capabilitySearchParam{Name: p.name, Type: p.kind.String()})
	}
	sort.Slice(params, func(i, j int) bool { return params[i].Name < params[j].Name })
	return capabilityResource{
		Type:        rt.name,
		Interaction: []capabilityInteraction{{Code: "read"}, {Code: "search-type"}},
		SearchParam: params,
	}
}
