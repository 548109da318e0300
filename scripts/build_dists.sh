#!/usr/bin/env bash
# Builds a wheel and an sdist of the core (probekit-core) and of every plugin into dist/ (seven of each),
# then checks them with `twine check --strict` (what the index would reject: metadata, README rendering).
# The examples each package ships are links into examples/ (scripts/sync_examples.py --check): the build
# copies their content into the sdist and the wheel.
# Usage: scripts/build_dists.sh            (PYTHON=... to use another interpreter than .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" scripts/sync_examples.py --check
rm -rf dist && mkdir -p dist
for project in . plugins/probekit-*/; do
  "$PY" -m build --no-isolation --outdir dist "$project" >/dev/null
done
ls -1 dist
wheels=$(ls dist/*.whl | wc -l); sdists=$(ls dist/*.tar.gz | wc -l)
[ "$wheels" -eq 7 ] && [ "$sdists" -eq 7 ] || { echo "expected 7 wheels and 7 sdists, got $wheels and $sdists"; exit 1; }
"$PY" -m twine check --strict dist/*
