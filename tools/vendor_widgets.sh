#!/usr/bin/env bash
# Fetch the widget manager that renders embedded ipywidgets state in the built HTML, from the npm
# registry, into _vendor/ (so pages never load it from a CDN). Versions are pinned.
set -euo pipefail
OUT=${1:-_vendor}
mkdir -p "$OUT"
if [ -s "$OUT/embed-amd.js" ] && [ -s "$OUT/require.js" ]; then exit 0; fi
command -v npm >/dev/null || { echo "vendor: npm is needed once to fetch the widget manager (Node.js)"; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && npm pack --silent @jupyter-widgets/html-manager@1.0.6 requirejs@2.3.4 >/dev/null)
tar -xzf "$TMP"/jupyter-widgets-html-manager-1.0.6.tgz -C "$TMP" package/dist/embed-amd.js
cp "$TMP/package/dist/embed-amd.js" "$OUT/embed-amd.js"
tar -xzf "$TMP"/requirejs-2.3.4.tgz -C "$TMP" package/require.js
cp "$TMP/package/require.js" "$OUT/require.js"
echo "vendor: widget manager in $OUT/"
