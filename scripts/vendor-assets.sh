#!/usr/bin/env bash
# Refreshes the browser assets shipped inside the package (worklist_mpps/web/static/vendor):
# the page and /docs load nothing from the internet (issue 15). Nothing is built: the
# files are the packages' own prebuilt distribution files, taken from the npm registry
# and committed with their licences; web/static/vendor/SHA256SUMS pins them and
# tests/test_ui_assets.py checks the committed files against it.
#   scripts/vendor-assets.sh            fetch the pinned versions below
#   HTMX=2.0.11 SWAGGER=5.35.0 scripts/vendor-assets.sh   other versions (then commit)
set -euo pipefail
HTMX=${HTMX:-2.0.11}
SWAGGER=${SWAGGER:-5.35.0}
dest=$(cd "$(dirname "$0")/.." && pwd)/worklist_mpps/web/static/vendor
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "htmx.org@$HTMX" "swagger-ui-dist@$SWAGGER" >/dev/null
mkdir htmx swagger
tar xzf "htmx.org-$HTMX.tgz" -C htmx
tar xzf "swagger-ui-dist-$SWAGGER.tgz" -C swagger
cp htmx/package/dist/htmx.min.js htmx/package/LICENSE "$dest/htmx/"
for f in swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css favicon-32x32.png LICENSE NOTICE; do
    cp "swagger/package/$f" "$dest/swagger-ui/"
done
printf 'htmx.org %s\nswagger-ui-dist %s\n' "$HTMX" "$SWAGGER" > "$dest/VERSIONS"
(cd "$dest" && find htmx swagger-ui -type f | sort | xargs sha256sum > SHA256SUMS)
echo "vendored htmx $HTMX and swagger-ui-dist $SWAGGER into $dest"
