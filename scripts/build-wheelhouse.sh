#!/usr/bin/env bash
# A wheelhouse for an air-gapped site: every runtime dependency exactly as locked
# (requirements.lock, each file checked against its hash) plus worklist-mpps itself,
# as wheels for CPython 3.11 on x86_64 Linux. Run it on a connected machine, carry the
# folder across, then install with no package index:
#   pip install --no-index --find-links DIR --require-hashes -r DIR/requirements.lock
#   pip install --no-index --no-deps DIR/worklist_mpps-*.whl
# The Docker image (docker build --build-arg WHEELHOUSE=...) and scripts/install-system.sh
# (WHEELHOUSE=DIR) install from it that way.
#   usage: scripts/build-wheelhouse.sh [DIR]      (default build/wheelhouse)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/wheelhouse}
python=${PYTHON:-python3}
mkdir -p "$out"
# binary wheels for the target, whatever the machine that builds the folder
"$python" -m pip download --quiet --require-hashes -r requirements.lock \
    --only-binary=:all: --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --python-version 3.11 --implementation cp --dest "$out"
rm -f "$out"/worklist_mpps-*.whl
"$python" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$out" .
cp requirements.lock "$out/requirements.lock"
echo "wheelhouse: $(ls "$out"/*.whl | wc -l) wheels in $out"
