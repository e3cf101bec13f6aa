package fhirsample

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// resource is one stored FHIR resource: its bytes exactly as read from the NDJSON line,
// plus what search needs, extracted once at load time.
type resource struct {
	id          string
	versionID   string
	lastUpdated time.Time
	raw         []byte // the line; a part of entry
	// entry is the resource's searchset entry after the fullUrl's base:
	// `/Type/id","resource":<raw>,"search":{"mode":"match"}}`, so that a page is
	// assembled by concatenation.
	entry    []byte
	seq      int // position in file order
	elements searchElements
}

// resourceType holds every loaded resource of one type.
type resourceType struct {
	name      string
	resources []*resource // file order
	byID      map[string]*resource
	params    map[string]elementParam // element parameters that exist for this type
	// Indexes (index.go), rebuilt by index whenever resources changes:
	sorted    []*resource                       // by _lastUpdated, then id
	referrers map[string]map[string][]*resource // reference element -> referenced id -> resources, file order
}

// store is the read-only data set: resource types by name.
type store struct {
	types map[string]*resourceType
}

// sortedTypeNames returns the loaded type names in alphabetical order.
func (s *store) sortedTypeNames() []string {
	names := make([]string, 0, len(s.types))
	for name := range s.types {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// loadStore reads every *.ndjson file in dir, one resource type per file.
func loadStore(dir string) (*store, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.ndjson"))
	if err != nil {
		return nil, fmt.Errorf("list NDJSON files in %s: %w", dir, err)
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("no *.ndjson files in %s", dir)
	}
	s := &store{types: map[string]*resourceType{}}
	for _, path := range paths {
		rt, err := loadFile(path)
		if err != nil {
			return nil, err
		}
		s.types[rt.name] = rt
	}
	return s, nil
}

// loadFile reads one <Type>.ndjson file. Blank lines are skipped; every other line must be
// a JSON resource of that type with a unique id and a meta.lastUpdated.
func loadFile(path string) (*resourceType, error) {
	name := strings.TrimSuffix(filepath.Base(path), ".ndjson")
	if !isValidResourceType(name) {
		return nil, fmt.Errorf("load %s: file name is not a resource type", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	defer f.Close()

	rt := &resourceType{name: name, byID: map[string]*resource{}}
	reader := bufio.NewReader(f)
	for lineNo := 1; ; lineNo++ {
		line, readErr := reader.ReadBytes('\n')
		if err := rt.addLine(line); err != nil {
			return nil, fmt.Errorf("load %s:%d: %w", path, lineNo, err)
		}
		if errors.Is(readErr, io.EOF) {
			break
		}
		if readErr != nil {
			return nil, fmt.Errorf("load %s:%d: %w", path, lineNo, readErr)
		}
	}
	rt.params = existingParams(rt)
	rt.index()
	return rt, nil
}

// addLine parses one NDJSON line and appends the resource; blank lines are ignored.
func (rt *resourceType) addLine(line []byte) error {
	line = bytes.TrimRight(line, "\r\n")
	if len(bytes.TrimSpace(line)) == 0 {
		return nil
	}
	res, err := parseResource(line, rt.name)
	if err != nil {
		return err
	}
	if _, dup := rt.byID[res.id]; dup {
		return fmt.Errorf("duplicate id %q", res.id)
	}
	rt.byID[res.id] = res
	rt.resources = append(rt.resources, res)
	return nil
}

// parseResource validates one resource line and extracts what search needs.
func parseResource(line []byte, wantType string) (*resource, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(line, &fields); err != nil {
		return nil, fmt.Errorf("parse resource: %w", err)
	}
	// The head is decoded from its three fields, not from the line again:
	// loading a 540 MB benchmark set is one pass over it.
	var head struct {
		ResourceType string
		ID           string
		Meta         struct {
			VersionID   string `json:"versionId"`
			LastUpdated string `json:"lastUpdated"`
		}
	}
	for name, dst := range map[string]any{"resourceType": &head.ResourceType, "id": &head.ID, "meta": &head.Meta} {
		if raw, ok := fields[name]; ok {
			if err := json.Unmarshal(raw, dst); err != nil {
				return nil, fmt.Errorf("parse resource header: %s: %w", name, err)
			}
		}
	}
	if head.ResourceType != wantType {
		return nil, fmt.Errorf("resourceType %q in the file for %s", head.ResourceType, wantType)
	}
	if !isValidID(head.ID) {
		return nil, fmt.Errorf("invalid id %q", head.ID)
	}
	lastUpdated, err := time.Parse(time.RFC3339Nano, head.Meta.LastUpdated)
	if err != nil {
		return nil, fmt.Errorf("resource %s/%s: meta.lastUpdated: %w", wantType, head.ID, err)
	}
	prefix := "/" + wantType + "/" + head.ID + `","resource":`
	entry := make([]byte, 0, len(prefix)+len(line)+len(entrySuffix))
	entry = append(append(append(entry, prefix...), line...), entrySuffix...)
	return &resource{
		id:          head.ID,
		versionID:   head.Meta.VersionID,
		lastUpdated: lastUpdated,
		raw:         entry[len(prefix) : len(prefix)+len(line) : len(prefix)+len(line)],
		entry:       entry,
		elements:    extractSearchElements(fields),
	}, nil
}

// entrySuffix ends every match entry.
const entrySuffix = `,"search":{"mode":"match"}}`

// existingParams returns the element parameters that exist for the type: those whose
// element is present in at least one loaded resource of the type.
func existingParams(rt *resourceType) map[string]elementParam {
	params := map[string]elementParam{}
	for _, p := range elementParams() {
		if p.absentOn == rt.name {
			continue
		}
		for _, res := range rt.resources {
			if res.elements.has(p) {
				params[p.name] = p
				break
			}
		}
	}
	return params
}
