// Package export is the Bulk Data $export engine: it accepts validated
// kick-off requests, plans per-resource-type work items, pages the source FHIR
// server and writes NDJSON files that roll over at a byte limit, and derives a
// job's status and manifest from its work items.
//
// It imports no Azure SDK and no Functions code. It talks to the small
// interfaces declared in ports.go (Store, Queue, Blobs, Source); the azstore
// package implements them on Azure Table, Queue and Blob storage, and memstore
// implements them in memory for unit tests.
package export
