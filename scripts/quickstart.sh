#!/usr/bin/env bash
# Sets up .venv (core + every plugin) and runs the offline quickstart spec.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/probekit run examples/quickstart.yaml -o runs/quickstart --overwrite
echo
echo "Results are in runs/quickstart/: metrics.json, results.csv, figures/accuracy_vs_depth.png, report.html"
