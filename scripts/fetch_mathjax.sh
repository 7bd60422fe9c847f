#!/usr/bin/env bash
# Put a pruned MathJax 3 into build-assets/mathjax, from which the book serves it (no CDN).
# The npm package is installed into .cache/npm-mathjax; both folders are gitignored. nbgrader's pages
# (feedback, formgrader) inline tex-svg-full.js from that package (grading/mathjax.py).
# Nothing happens when the assets are already there (delete build-assets/mathjax to refresh).
set -euo pipefail
cd "$(dirname "$0")/.."
MATHJAX_VERSION=3.2.2
dest=build-assets/mathjax
stamp="$dest/.version"
prefix=.cache/npm-mathjax
src="$prefix/node_modules/mathjax/es5"
# One fetch at a time (CI builds the book while tests that need MathJax run): the others wait here.
mkdir -p .cache
if command -v flock >/dev/null; then exec 9>.cache/fetch_mathjax.lock; flock 9; fi
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$MATHJAX_VERSION" ] && [ -f "$dest/tex-mml-chtml.js" ] &&
   [ -f "$src/tex-svg-full.js" ]; then
  exit 0
fi
if [ ! -f "$src/tex-mml-chtml.js" ] || ! grep -q "\"version\": \"$MATHJAX_VERSION\"" "$prefix/node_modules/mathjax/package.json"; then
  command -v npm >/dev/null || { echo "fetch_mathjax: npm is needed once to fetch mathjax@$MATHJAX_VERSION" >&2; exit 1; }
  mkdir -p "$prefix"
  npm install --prefix "$prefix" --no-save --no-audit --no-fund --loglevel=error "mathjax@$MATHJAX_VERSION"
fi
rm -rf "$dest"
mkdir -p "$dest/output/chtml/fonts" "$dest/input/tex"
# The combined component the pages load, the CHTML fonts it asks for, and the TeX extensions it
# may autoload (\require, \boldsymbol, \cancel, ...).
cp "$src/tex-mml-chtml.js" "$dest/"
cp -r "$src/output/chtml/fonts/woff-v2" "$dest/output/chtml/fonts/"
cp -r "$src/input/tex/extensions" "$dest/input/tex/"
cp "$prefix/node_modules/mathjax/LICENSE" "$dest/"
echo "$MATHJAX_VERSION" > "$stamp"
echo "fetch_mathjax: mathjax@$MATHJAX_VERSION in $dest ($(du -sh "$dest" | cut -f1))"
