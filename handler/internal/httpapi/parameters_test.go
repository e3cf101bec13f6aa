package httpapi

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestREADMEListsExactlyTheKickOffParameters: the README's table of kick-off
// parameters names the parameters of kickOffParams, the list the parser
// accepts and /metadata states, and no other.
func TestREADMEListsExactlyTheKickOffParameters(t *testing.T) {
	readme, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(readme), "\nKick-off parameters (")
	parts := strings.SplitN(after, "\n\n", 3) // the paragraph, the table, the rest
	if !ok || len(parts) < 2 || !strings.HasPrefix(parts[1], "| parameter |") {
		t.Fatal("README.md has no table after the paragraph starting \"Kick-off parameters (\"")
	}
	row := regexp.MustCompile("(?m)^\\| `([^`]+)` \\|")
	var documented []string
	for _, m := range row.FindAllStringSubmatch(parts[1], -1) {
		documented = append(documented, m[1])
	}
	var accepted []string
	for _, p := range kickOffParams {
		accepted = append(accepted, p.name)
	}
	slices.Sort(documented)
	slices.Sort(accepted)
	if !slices.Equal(documented, accepted) {
		t.Errorf("README.md's parameter table lists %q; the kick-off accepts %q", documented, accepted)
	}
}
