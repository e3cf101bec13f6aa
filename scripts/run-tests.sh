#!/usr/bin/env bash
# Runs every test: unit tests, the storage adapters on Azurite, and the
# end-to-end tests (built binaries + sample FHIR server + Azurite) through the
# public HTTP API. Starts the pinned Azurite on test ports and stops it after.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

export AZURITE_BLOB_PORT=${AZURITE_BLOB_PORT:-10100}
export AZURITE_QUEUE_PORT=${AZURITE_QUEUE_PORT:-10101}
export AZURITE_TABLE_PORT=${AZURITE_TABLE_PORT:-10102}
export AZURITE_PIDFILE=${AZURITE_PIDFILE:-$root/.run/azurite-test.pid}
mkdir -p "$(dirname "$AZURITE_PIDFILE")"

stop_azurite() { bash scripts/azurite/azurite.sh stop || true; }
trap stop_azurite EXIT

AZURE_STORAGE_CONNECTION_STRING=$(bash scripts/azurite/azurite.sh start)
export AZURE_STORAGE_CONNECTION_STRING
export EXPORT_INTEGRATION=1
dist=${DIST:-dist}
[[ "$dist" = /* ]] || dist="$root/$dist"
export BULKEXPORT_DIST="$dist"

# make fault narrows the run with these; make test leaves them empty.
packages=${TEST_PACKAGES:-./...}
read -r -a extra <<<"${GO_TEST_FLAGS:-}"

echo "== go vet"
go vet ./...
echo "== bicep syntax (tree-sitter grammar; not the Bicep compiler)"
bash scripts/bicep-check/check.sh
echo "== go test (unit, Azurite integration, end-to-end)"
go test -count=1 -p 1 -timeout 15m "${extra[@]}" $packages 2>&1 | tee "$root/.run/test-output.txt"
