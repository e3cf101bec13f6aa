#!/usr/bin/env bash
# `make package`: dist/app.zip, deployable to Azure Functions as it is:
# host.json at the root, each function folder next to it (the host finds
# functions only one level deep), and the linux/amd64 static handler binary
# at host.json's defaultExecutablePath with its exec bit kept.
set -euo pipefail
cd "$(dirname "$0")/.."
dist=${DIST:-dist}
stage=$dist/app
rm -rf "$stage" "$dist/app.zip"
mkdir -p "$stage"
GOOS=linux GOARCH=amd64 CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$(git describe --always --dirty 2>/dev/null || echo dev)" -o "$stage/handler" ./handler
chmod 0755 "$stage/handler"
cp host.json "$stage/"
cp -R functions/* "$stage/"
python3 - "$stage" "$dist/app.zip" <<'PY'
import os, sys, zipfile
stage, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for root, _, files in os.walk(stage):
        for f in sorted(files):
            path = os.path.join(root, f)
            info = zipfile.ZipInfo.from_file(path, os.path.relpath(path, stage))
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as fh:
                z.writestr(info, fh.read())  # ZipInfo.from_file keeps the Unix mode (0755 for handler)
PY
echo "$dist/app.zip:"
python3 -c "import sys, zipfile; [print(f'  {oct(i.external_attr>>16)} {i.file_size:>10} {i.filename}') for i in zipfile.ZipFile(sys.argv[1]).infolist()]" "$dist/app.zip"
