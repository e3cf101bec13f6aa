#!/usr/bin/env bash
# Syntax-checks every .bicep file under infra/ (installs the pinned grammar on
# first use, like scripts/azurite). Used by `make test`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
if [[ ! -d "$here/node_modules/tree-sitter-bicep" ]]; then
	(cd "$here" && npm ci --no-audit --no-fund --ignore-scripts) >&2
fi
mapfile -t files < <(find "$root/infra" -name '*.bicep' | sort)
node "$here/check.mjs" "${files[@]}"
