package httpapi

import (
	"slices"
	"strings"

	"github.com/azfhir/bulkexport/handler/internal/export"
)

// kickOffParam is a kick-off parameter this server implements.
type kickOffParam struct {
	name   string
	levels []export.Level // the export levels that take it; nil: every level
}

// kickOffParams are the kick-off parameters this server implements, in the
// IG's order. It is the one list: the kick-off parser accepts these names
// (every other is refused in strict mode and ignored with a warning under
// handling=lenient), and /metadata states them for each operation, so the
// CapabilityStatement cannot claim a parameter the parser refuses or miss
// one it accepts. README.md's parameter table lists the same names.
var kickOffParams = []kickOffParam{
	{name: paramOutputFormat},
	{name: paramSince},
	{name: paramUntil},
	{name: paramType},
	{name: paramElements},
	{name: paramPatient, levels: []export.Level{export.LevelPatient, export.LevelGroup}},
	{name: paramTypeFilter},
	{name: paramIncludeAssociatedData},
	{name: paramAllowPartialManifests},
	{name: paramContainer},
	{name: paramAnonymizationConfig},
	{name: paramAnonymizationConfigEtag},
}

// knownParam reports whether name is one of kickOffParams. The parser takes
// a known name at any level, so that one given at a level that has no use
// for it is refused with a reason (patient at system level) rather than as
// unknown.
func knownParam(name string) bool {
	return slices.ContainsFunc(kickOffParams, func(p kickOffParam) bool { return p.name == name })
}

// paramsAt lists the parameters an export at level takes.
func paramsAt(level export.Level) []string {
	var out []string
	for _, p := range kickOffParams {
		if p.levels == nil || slices.Contains(p.levels, level) {
			out = append(out, p.name)
		}
	}
	return out
}

// paramsDoc is the documentation (markdown) of the export operation at
// level in the CapabilityStatement: the parameters it takes, each in
// backquotes, and what becomes of the others.
func paramsDoc(level export.Level) string {
	names := paramsAt(level)
	for i, n := range names {
		names[i] = "`" + n + "`"
	}
	return "Supported parameters: " + strings.Join(names, ", ") + ". Any other parameter is refused with 400 " +
		"(ignored, with a warning OperationOutcome in the manifest's error files, under Prefer: handling=lenient)."
}
