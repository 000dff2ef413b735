#!/usr/bin/env bash
# Vendor the JavaScript that renders saved ipywidgets state in the static HTML book, so the book
# builds and works offline (no CDN at build time or when a reader opens a page).
#
#   @jupyter-widgets/html-manager  dist/embed-amd.js  (widget manager + base/controls/output widgets)
#                                  + its icon fonts (dist/*.woff2, *.woff -> book/widget_fonts/)
#   requirejs                      require.js         (AMD loader that embed-amd.js needs)
#   mathjax (3.x)                  es5/tex-chtml.js + its CHTML woff-v2 fonts + a11y/assistive-mml.js
#                                  (the book's formulas; Sphinx would otherwise load MathJax from a CDN)
#
# Output: book/vendor/jupyter-widgets/ and book/vendor/mathjax/ (committed; re-run this script only to
# change versions).
# _config.yml copies book/vendor/ into _build/html/_static/ (html_static_path) and points
# myst-nb's nb_ipywidgets_js at the copies. Deliberately NOT a folder named `_static` in the book
# root: Jupyter Book 1 adds every .js found there to every page, so the scripts would load twice.
#
# Versions: html-manager 1.0.x is the one that speaks ipywidgets 8's protocol
# (@jupyter-widgets/controls 2.0.0, base 2.0.0, output 1.0.0).
set -euo pipefail
cd "$(dirname "$0")/.."
HTML_MANAGER_VERSION=${HTML_MANAGER_VERSION:-1.0.15}
REQUIREJS_VERSION=${REQUIREJS_VERSION:-2.3.8}
MATHJAX_VERSION=${MATHJAX_VERSION:-3.2.2}
DEST=book/vendor/jupyter-widgets

command -v npm >/dev/null || { echo "npm not found: install Node.js (Debian: apt-get install npm)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(
    cd "$tmp"
    npm init -y >/dev/null
    npm install --no-audit --no-fund --ignore-scripts --silent \
        "@jupyter-widgets/html-manager@${HTML_MANAGER_VERSION}" "requirejs@${REQUIREJS_VERSION}" \
        "mathjax@${MATHJAX_VERSION}"
)
hm="$tmp/node_modules/@jupyter-widgets/html-manager"
rq="$tmp/node_modules/requirejs"
mkdir -p "$DEST"
cp "$hm/dist/embed-amd.js" "$DEST/embed-amd.js"
# the widget CSS's icon fonts (webpack assets the manager fetches relative to the page, from
# <page folder>/@jupyter-widgets/ and <page folder>/@jupyter-widgets/html-manager/dist/, depending on the
# stylesheet; without them every widget page logs 404s): woff2 for current browsers, woff as their
# fallback. _config.yml copies book/widget_fonts/ into the HTML root (html_extra_path).
for FONTS in book/widget_fonts/book/generated/@jupyter-widgets book/widget_fonts/book/generated/@jupyter-widgets/html-manager/dist; do
    mkdir -p "$FONTS"
    cp "$hm"/dist/*.woff2 "$hm"/dist/*.woff "$FONTS/"
done
cp "$rq/require.js" "$DEST/require.js"
installed_hm=$(node -p "require('$hm/package.json').version")
installed_rq=$(node -p "require('$rq/package.json').version")
cat > "$DEST/VERSIONS.txt" <<TXT
Vendored by scripts/vendor_widgets_js.sh from the npm registry.
embed-amd.js  @jupyter-widgets/html-manager ${installed_hm}  (dist/embed-amd.js)  BSD-3-Clause, Project Jupyter Contributors
require.js    requirejs ${installed_rq}  (require.js)  MIT, jQuery Foundation and other contributors
sha256:
$(cd "$DEST" && sha256sum embed-amd.js require.js)
TXT
echo "[vendor] wrote $DEST:"; ls -la "$DEST"

mj="$tmp/node_modules/mathjax/es5"
MJ_DEST=book/vendor/mathjax
rm -rf "$MJ_DEST"
mkdir -p "$MJ_DEST/output/chtml/fonts" "$MJ_DEST/a11y"
cp "$mj/tex-chtml.js" "$MJ_DEST/tex-chtml.js"
cp -r "$mj/output/chtml/fonts/woff-v2" "$MJ_DEST/output/chtml/fonts/woff-v2"
cp "$mj/a11y/assistive-mml.js" "$MJ_DEST/a11y/assistive-mml.js"
installed_mj=$(node -p "require('$tmp/node_modules/mathjax/package.json').version")
printf 'Vendored by scripts/vendor_widgets_js.sh from the npm registry.\nmathjax %s (es5/tex-chtml.js, output/chtml/fonts/woff-v2, a11y/assistive-mml.js)  Apache-2.0, The MathJax Consortium\n' \
    "$installed_mj" > "$MJ_DEST/VERSIONS.txt"
echo "[vendor] wrote $MJ_DEST ($(du -sh "$MJ_DEST" | cut -f1))"
