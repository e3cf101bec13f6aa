// Package devstorage is the storage emulator's well-known account (Azurite,
// "development storage"): the connection string that the Functions setting
// UseDevelopmentStorage=true stands for. The Go SDKs reject the short form,
// so whoever reads AzureWebJobsStorage expands it with Expand.
//
// It lives outside handler/internal so that the emulated Functions host
// (tests/hostemu) uses this very definition; scripts/azurite/azurite.sh spells
// the same account for its own ports, and a test keeps the two equal.
package devstorage

import "strings"

// ConnectionString is Azurite's documented account on its default ports
// (blob 10000, queue 10001, table 10002).
const ConnectionString = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;" +
	"AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;" +
	"BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;" +
	"QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;" +
	"TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"

// Expand returns ConnectionString for the short form UseDevelopmentStorage=true
// (in any case, with or without spaces and other parts), and cs otherwise.
func Expand(cs string) string {
	for part := range strings.SplitSeq(cs, ";") {
		k, v, _ := strings.Cut(part, "=")
		if strings.EqualFold(strings.TrimSpace(k), "UseDevelopmentStorage") && strings.EqualFold(strings.TrimSpace(v), "true") {
			return ConnectionString
		}
	}
	return cs
}
