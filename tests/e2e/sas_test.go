package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	blobservice "github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/service"

	"github.com/azfhir/bulkexport/tests/testproc"
)

// exportAccount is the Azurite account under another host name (localhost
// for 127.0.0.1), given as EXPORT_STORAGE: the manifest's URLs then show
// that the files went through the export account's client, not the host's.
func exportAccount(t *testing.T) (connectionString, blobHost string) {
	t.Helper()
	cs := strings.ReplaceAll(os.Getenv("AZURE_STORAGE_CONNECTION_STRING"), "http://127.0.0.1:", "http://localhost:")
	for part := range strings.SplitSeq(cs, ";") {
		if k, v, ok := strings.Cut(part, "="); ok && k == "BlobEndpoint" {
			u, err := url.Parse(v)
			if err != nil || !strings.HasPrefix(u.Host, "localhost:") {
				t.Fatalf("the Azurite connection string has no 127.0.0.1 blob endpoint to rename: %q", v)
			}
			return cs, u.Host
		}
	}
	t.Fatal("the Azurite connection string has no BlobEndpoint")
	return "", ""
}

// TestSASDownloadsFromTheExportAccount runs an export with
// EXPORT_DOWNLOADS=sas into a second listed container of a separate export
// account: the client downloads every file from storage without a token, a
// write with a URL is refused, and a URL past its EXPORT_SAS_TTL is refused.
func TestSASDownloadsFromTheExportAccount(t *testing.T) {
	exportCS, blobHost := exportAccount(t)
	first, second := "e2e-first-"+testproc.RandomSuffix(), "e2e-second-"+testproc.RandomSuffix()
	settings := []string{"EXPORT_STORAGE=" + exportCS, "EXPORT_DOWNLOADS=sas",
		"EXPORT_CONTAINER=" + first, "EXPORT_CONTAINERS=" + first + "," + second}
	svc := startService(t, append(settings, "EXPORT_SAS_TTL=10m")...)
	t.Cleanup(func() { deleteAzuriteContainer(first); deleteAzuriteContainer(second) })

	res, err := svc.client.Export(ctx(t), "/$export?_type=Patient,Condition&_container="+second)
	if err != nil {
		t.Fatal(err) // the client downloads every file without a token
	}
	sameResources(t, res.Resources, fixture(t, func(typ string, _ map[string]any) bool { return typ == "Patient" || typ == "Condition" }))
	m := res.Manifest
	if m.RequiresAccessToken {
		t.Error("requiresAccessToken is true in sas mode")
	}
	if len(m.Output) < 2 {
		t.Fatalf("manifest has %d files, want Patient and Condition files", len(m.Output))
	}
	jobID := res.StatusURL[strings.LastIndex(res.StatusURL, "/")+1:]
	for _, f := range m.Output {
		u, err := url.Parse(f.URL)
		if err != nil {
			t.Fatal(err)
		}
		q := u.Query()
		if u.Host != blobHost || !strings.HasPrefix(u.Path, "/devstoreaccount1/"+second+"/"+jobID+"/") || q.Get("sp") != "r" || q.Get("sig") == "" {
			t.Errorf("file URL %s is not a read-only SAS on the export account (%s) for container %s", f.URL, blobHost, second)
		}
	}

	target := m.Output[0].URL
	before := sasGet(t, target, http.StatusOK)
	// The SAS is what lets the client in: the same blob URL without it is refused.
	bare, _, _ := strings.Cut(target, "?")
	req, _ := http.NewRequestWithContext(ctx(t), http.MethodGet, bare, nil)
	if code := sasDo(t, req); code == http.StatusOK {
		t.Errorf("GET %s without the SAS: %d, want a refusal (the container is not public)", bare, code)
	}
	req, _ = http.NewRequestWithContext(ctx(t), http.MethodPut, target, strings.NewReader("{\"resourceType\":\"Patient\",\"id\":\"forged\"}\n"))
	req.Header.Set("x-ms-blob-type", "BlockBlob")
	if code := sasDo(t, req); code != http.StatusForbidden {
		t.Errorf("PUT with a download URL: %d, want 403", code)
	}
	req, _ = http.NewRequestWithContext(ctx(t), http.MethodDelete, target, nil)
	if code := sasDo(t, req); code != http.StatusForbidden {
		t.Errorf("DELETE with a download URL: %d, want 403", code)
	}
	if after := sasGet(t, target, http.StatusOK); after != before {
		t.Error("the file changed after the refused writes")
	}

	// The same job through a service whose URLs live one second: a manifest
	// fetched now has fresh URLs, which storage refuses once they expire.
	short := startService(t, append(settings, "EXPORT_SAS_TTL=1s",
		"EXPORT_TABLE="+serviceSetting(svc.env, "EXPORT_TABLE"), "EXPORT_QUEUE="+serviceSetting(svc.env, "EXPORT_QUEUE"))...)
	var fresh struct{ Output []struct{ URL string } }
	if err := json.Unmarshal([]byte(sasGet(t, short.base+"/jobs/"+jobID, http.StatusOK)), &fresh); err != nil || len(fresh.Output) == 0 {
		t.Fatalf("manifest from the second service: %v %+v", err, fresh)
	}
	expiring := fresh.Output[0].URL
	if expiring == target {
		t.Fatal("a second manifest request returned the same URL; URLs must be minted per request")
	}
	u, _ := url.Parse(expiring)
	se, err := time.Parse(time.RFC3339, u.Query().Get("se"))
	if err != nil || time.Until(se) > 5*time.Second {
		t.Fatalf("URL %s: expiry %q is not about a second away", expiring, u.Query().Get("se"))
	}
	time.Sleep(time.Until(se) + 1100*time.Millisecond)
	sasGet(t, expiring, http.StatusForbidden)
}

// TestContainerOutsideTheListCreatesNothing: a kick-off naming a container
// that is not in EXPORT_CONTAINERS is refused with 400, and neither the
// container nor a job exists afterwards.
func TestContainerOutsideTheListCreatesNothing(t *testing.T) {
	svc := startService(t)
	for _, name := range []string{"e2e-outside-" + testproc.RandomSuffix(), "azure-webjobs-secrets"} {
		existed := azuriteContainerExists(t, name)
		body := sasGet(t, svc.base+"/$export?_type=Patient&_container="+name, http.StatusBadRequest)
		if !strings.Contains(body, `"OperationOutcome"`) || !strings.Contains(body, "_container") {
			t.Errorf("400 body does not explain the refused _container: %s", body)
		}
		if !existed && azuriteContainerExists(t, name) {
			t.Errorf("container %s was created by a refused kick-off", name)
			deleteAzuriteContainer(name)
		}
	}
	if rows := tableRows(t, svc); rows != 0 {
		t.Errorf("the job table holds %d rows after refused kick-offs", rows)
	}
}

func azuriteBlobs(t *testing.T) *blobservice.Client {
	t.Helper()
	c, err := blobservice.NewClientFromConnectionString(os.Getenv("AZURE_STORAGE_CONNECTION_STRING"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func azuriteContainerExists(t *testing.T, name string) bool {
	t.Helper()
	_, err := azuriteBlobs(t).NewContainerClient(name).GetProperties(ctx(t), nil)
	var re *azcore.ResponseError
	switch {
	case err == nil:
		return true
	case bloberror.HasCode(err, bloberror.ContainerNotFound), errors.As(err, &re) && re.StatusCode == http.StatusNotFound:
		return false
	}
	t.Fatalf("container %s: %v", name, err)
	return false
}

func deleteAzuriteContainer(name string) {
	if c, err := blobservice.NewClientFromConnectionString(os.Getenv("AZURE_STORAGE_CONNECTION_STRING"), nil); err == nil {
		_, _ = c.NewContainerClient(name).Delete(context.Background(), nil)
	}
}

// serviceSetting returns the value a service's environment gives key (the
// last one, as exec does).
func serviceSetting(env []string, key string) string {
	v := ""
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == key {
			v = val
		}
	}
	return v
}

func sasGet(t *testing.T, u string, want int) string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx(t), http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("GET %s: %d, want %d; %s", u, resp.StatusCode, want, b)
	}
	return string(b)
}

func sasDo(t *testing.T, req *http.Request) int {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
