#!/usr/bin/env bash
# azd postprovision hook (azure.yaml): build dist/app.zip with scripts/package.sh and publish it to the
# Flex Consumption app with `az functionapp deploy --type zip` (Flex's "one deploy"; the older
# `config-zip` is not supported on Flex). azd has no built-in packaging for a Go custom handler, so
# azure.yaml declares no azd service and this hook does the deploy step of `azd up`.
#
# azd runs hooks with the azd environment's values in the environment: AZURE_SUBSCRIPTION_ID,
# AZURE_RESOURCE_GROUP and AZURE_FUNCTION_APP_NAME are outputs of infra/azd.bicep. The Azure CLI has its
# own sign-in (az login), separate from azd's. Run it again by hand after a code change:
#   azd hooks run postprovision     (or: azd env get-values > .env.azd && set -a && . ./.env.azd && bash scripts/azd-publish.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${AZURE_RESOURCE_GROUP:?not set: run through azd (azd up / azd hooks run postprovision)}"
: "${AZURE_FUNCTION_APP_NAME:?not set: run through azd (azd up / azd hooks run postprovision)}"
dist=${DIST:-dist}

bash scripts/package.sh
sub=()
if [[ -n "${AZURE_SUBSCRIPTION_ID:-}" ]]; then
	sub=(--subscription "$AZURE_SUBSCRIPTION_ID")
fi
az functionapp deploy "${sub[@]}" -g "$AZURE_RESOURCE_GROUP" -n "$AZURE_FUNCTION_APP_NAME" \
	--src-path "$dist/app.zip" --type zip
echo "published $dist/app.zip to $AZURE_FUNCTION_APP_NAME; try: curl -s \"${EXPORT_BASE_URL:-https://<app>}/metadata\" | head -c 200"
