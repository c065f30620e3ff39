#!/usr/bin/env bash
# Fetch the page scripts the built book needs from the npm registry into _vendor/, so that no page
# loads anything from a CDN: the widget manager that renders embedded ipywidgets state, RequireJS
# that loads it, and MathJax for the equations. Versions are pinned.
set -euo pipefail
OUT=${1:-_vendor}
mkdir -p "$OUT"
if [ -s "$OUT/embed-amd.js" ] && [ -s "$OUT/require.js" ] && [ -s "$OUT/mathjax/tex-chtml.js" ]; then exit 0; fi
command -v npm >/dev/null || { echo "vendor: npm (Node.js) is needed once to fetch the page scripts"; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && npm pack --silent @jupyter-widgets/html-manager@1.0.6 requirejs@2.3.4 mathjax@3.2.2 >/dev/null)
tar -xzf "$TMP"/jupyter-widgets-html-manager-1.0.6.tgz -C "$TMP" package/dist/embed-amd.js
cp "$TMP/package/dist/embed-amd.js" "$OUT/embed-amd.js"
tar -xzf "$TMP"/requirejs-2.3.4.tgz -C "$TMP" package/require.js
cp "$TMP/package/require.js" "$OUT/require.js"
tar -xzf "$TMP"/mathjax-3.2.2.tgz -C "$TMP" package/es5/tex-chtml.js package/es5/output/chtml/fonts/woff-v2
mkdir -p "$OUT/mathjax/output/chtml/fonts"
cp "$TMP/package/es5/tex-chtml.js" "$OUT/mathjax/tex-chtml.js"
cp -r "$TMP/package/es5/output/chtml/fonts/woff-v2" "$OUT/mathjax/output/chtml/fonts/"
echo "vendor: widget manager, RequireJS and MathJax in $OUT/"
