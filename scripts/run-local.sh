#!/usr/bin/env bash
# `make run`: Azurite (pinned, installed on first use), the sample FHIR server
# with the bundled Synthea data, and `handler serve` on 127.0.0.1:7071, ready
# for an export. Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mkdir -p .run

export AZURITE_PIDFILE="$root/.run/azurite.pid"
fhir_addr=${FHIR_SAMPLE_ADDR:-127.0.0.1:8080}
api_addr=${HANDLER_ADDR:-127.0.0.1:7071}

pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	bash scripts/azurite/azurite.sh stop || true
}
trap cleanup EXIT INT TERM

export AzureWebJobsStorage
AzureWebJobsStorage=$(bash scripts/azurite/azurite.sh start)

dist/fhir-sample -data tests/data/synthea-r4-10 -addr "$fhir_addr" >.run/fhir-sample.log 2>&1 &
pids+=($!)

export FHIR_SERVER_URL="http://$fhir_addr/fhir"
export EXPORT_MAX_FILE_BYTES=${EXPORT_MAX_FILE_BYTES:-67108864}
dist/handler serve -addr "$api_addr" > >(tee .run/handler.log) 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
	if curl -fsS "http://$api_addr/metadata" >/dev/null 2>&1; then break; fi
	sleep 0.1
done
curl -fsS "http://$api_addr/metadata" >/dev/null || { echo "handler did not start; see .run/handler.log"; exit 1; }

group_id=$(grep -o '"id":"[^"]*"' tests/data/synthea-r4-10/Group.ndjson | head -1 | cut -d'"' -f4)
cat <<TXT

Ready. FHIR Bulk Data \$export at http://$api_addr (source: $FHIR_SERVER_URL, storage: Azurite).

  # kick off a system export; the Content-Location header is the status URL
  curl -si 'http://$api_addr/\$export' -H 'Accept: application/fhir+json' -H 'Prefer: respond-async' | grep -i content-location
  # poll it: 202 with X-Progress and Retry-After, then 200 with the manifest
  curl -si <status URL>
  # download a file listed in the manifest's output
  curl -s <output url> | head -c 300
  # or run the whole flow as an IG client would:
  dist/bulk-client -base http://$api_addr -path '/\$export' -out .run/export
  dist/bulk-client -base http://$api_addr -path '/Group/$group_id/\$export?_type=Patient,Observation'

Logs: .run/handler.log, .run/fhir-sample.log. Ctrl-C stops everything.
TXT
wait "${pids[@]}"
