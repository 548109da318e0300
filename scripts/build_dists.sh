#!/usr/bin/env bash
# Builds a wheel and an sdist of the core and of every plugin into dist/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -rf dist && mkdir -p dist
for project in . plugins/probekit-*/; do
  "$PY" -m build --no-isolation --outdir dist "$project" >/dev/null
done
ls -1 dist
