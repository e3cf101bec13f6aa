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
# No tokens locally by default (the handler logs a warning). AUTH=oidc starts
# dist/dev-issuer, a throwaway OIDC issuer on loopback with one client that
# holds the export role, and makes the handler require its tokens. With
# DEV_CLIENT_JWKS (a JWKS file of public keys, such as the public.jwks.json
# that `dist/dev-issuer -new-client-key DIR` writes) that client may also sign
# in with a SMART client assertion, as the SMART bulk-data-client does. Or set
# AUTH_MODE and its settings yourself (see README.md, Authentication).
issuer_addr=${DEV_ISSUER_ADDR:-127.0.0.1:8081}
if [[ "${AUTH:-}" == oidc && -z "${AUTH_ISSUER:-}" ]]; then
	issuer_args=(-addr "$issuer_addr")
	if [[ -n "${DEV_CLIENT_JWKS:-}" ]]; then
		issuer_args+=(-client-jwks "$DEV_CLIENT_JWKS")
	fi
	dist/dev-issuer "${issuer_args[@]}" >.run/dev-issuer.log 2>&1 &
	pids+=($!)
	export AUTH_MODE=oidc AUTH_ISSUER="http://$issuer_addr" AUTH_AUDIENCE=api://bulkexport
	export AUTH_TOKEN_ENDPOINT="http://$issuer_addr/token"
	for _ in $(seq 1 100); do
		curl -fsS "$AUTH_ISSUER/.well-known/openid-configuration" >/dev/null 2>&1 && break
		sleep 0.1
	done
	curl -fsS "$AUTH_ISSUER/.well-known/openid-configuration" >/dev/null || { echo "dev-issuer did not start; see .run/dev-issuer.log"; exit 1; }
fi
export AUTH_MODE=${AUTH_MODE:-none}
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
if [[ "$AUTH_MODE" == oidc && -n "${AUTH_TOKEN_ENDPOINT:-}" ]]; then
	cat <<TXT
Tokens are required (AUTH_MODE=oidc, issuer $AUTH_ISSUER). Get one from the dev issuer and send it:

  export BULK_TOKEN=\$(curl -s $AUTH_TOKEN_ENDPOINT -d grant_type=client_credentials -d client_id=local-client -d client_secret=local-secret | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -si 'http://$api_addr/\$export' -H "Authorization: Bearer \$BULK_TOKEN" -H 'Accept: application/fhir+json' -H 'Prefer: respond-async'
  dist/bulk-client -base http://$api_addr -path '/\$export' -token "\$BULK_TOKEN"

TXT
	if [[ -n "${DEV_CLIENT_JWKS:-}" ]]; then
		private_jwk="$(dirname "$DEV_CLIENT_JWKS")/private.jwk.json"
		[[ -f "$private_jwk" ]] || private_jwk="<the private JWK of a key in $DEV_CLIENT_JWKS>"
		cat <<TXT
The client local-client may also sign in with a client assertion (private_key_jwt, keys from
$DEV_CLIENT_JWKS). SMART bulk-data-client config (JSON or a .js module):

  { "fhirUrl": "http://$api_addr", "tokenUrl": "$AUTH_TOKEN_ENDPOINT", "clientId": "local-client",
    "privateKey": <contents of $private_jwk>, "scope": "system/*.rs" }

TXT
	fi
fi
wait "${pids[@]}"
