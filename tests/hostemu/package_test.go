package hostemu

import (
	"archive/zip"
	"bytes"
	"debug/elf"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// dist/app.zip is what the host can deploy (docs §2): host.json at the root,
// each function folder one level deep with its function.json, and the
// handler at defaultExecutablePath as a static linux/amd64 ELF with mode 0755.
func TestAppZipLayout(t *testing.T) {
	dist := os.Getenv("BULKEXPORT_DIST")
	if dist == "" {
		if os.Getenv("EXPORT_INTEGRATION") == "1" {
			t.Fatal("EXPORT_INTEGRATION=1 but BULKEXPORT_DIST is not set")
		}
		t.Skip("set BULKEXPORT_DIST (make test does) to check dist/app.zip")
	}
	zipPath := filepath.Join(dist, "app.zip")
	zr, err := zip.OpenReader(zipPath)
	if err != nil {
		t.Fatalf("%v (run `make package`)", err)
	}
	defer zr.Close()

	entries := map[string]*zip.File{}
	for _, f := range zr.File {
		entries[f.Name] = f
	}
	read := func(name string) []byte {
		t.Helper()
		f, ok := entries[name]
		if !ok {
			t.Fatalf("%s has no %s", zipPath, name)
		}
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	hostJSON := read("host.json")
	if repo, err := os.ReadFile("../../host.json"); err != nil || !bytes.Equal(repo, hostJSON) {
		t.Errorf("host.json in %s differs from the repository's (%v)", zipPath, err)
	}
	var host struct {
		CustomHandler struct {
			Description struct {
				DefaultExecutablePath string `json:"defaultExecutablePath"`
			} `json:"description"`
		} `json:"customHandler"`
	}
	if err := json.Unmarshal(hostJSON, &host); err != nil {
		t.Fatalf("host.json: %v", err)
	}
	exe := host.CustomHandler.Description.DefaultExecutablePath

	// Every other entry is a function folder's function.json, one level deep,
	// matching functions/<name>/function.json in the repository.
	repoFns, _ := filepath.Glob("../../functions/*/function.json")
	want := map[string]bool{}
	for _, p := range repoFns {
		want[filepath.Base(filepath.Dir(p))+"/function.json"] = true
	}
	for name, f := range entries {
		switch {
		case name == "host.json" || name == exe:
		case f.FileInfo().IsDir():
		case want[name]:
			repo, _ := os.ReadFile(filepath.Join("../../functions", name))
			if !bytes.Equal(repo, read(name)) {
				t.Errorf("%s in %s differs from functions/%s", name, zipPath, name)
			}
			delete(want, name)
		case strings.HasSuffix(name, "function.json"):
			t.Errorf("%s: function.json not exactly one level deep (the host would not find it)", name)
		default:
			t.Errorf("%s: unexpected entry in the package", name)
		}
	}
	for name := range want {
		t.Errorf("%s lacks %s", zipPath, name)
	}

	f, ok := entries[exe]
	if !ok {
		t.Fatalf("%s has no %q (host.json defaultExecutablePath)", zipPath, exe)
	}
	if m := f.Mode(); !m.IsRegular() || m.Perm() != 0o755 {
		t.Errorf("%s: %s has mode %v, want -rwxr-xr-x (0755)", zipPath, exe, m)
	}
	bin, err := elf.NewFile(bytes.NewReader(read(exe)))
	if err != nil {
		t.Fatalf("%s: %s is not an ELF binary: %v", zipPath, exe, err)
	}
	defer bin.Close()
	if bin.Class != elf.ELFCLASS64 || bin.Machine != elf.EM_X86_64 || bin.Type != elf.ET_EXEC ||
		(bin.OSABI != elf.ELFOSABI_NONE && bin.OSABI != elf.ELFOSABI_LINUX) {
		t.Errorf("%s: %s is %v %v %v %v, want a 64-bit x86-64 Linux executable", zipPath, exe, bin.Class, bin.Machine, bin.Type, bin.OSABI)
	}
	for _, p := range bin.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s: %s is dynamically linked; the Functions image may lack its libraries (build with CGO_ENABLED=0)", zipPath, exe)
		}
	}
}
