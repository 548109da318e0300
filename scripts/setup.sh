#!/usr/bin/env bash
# Creates .venv and installs probekit with every plugin under plugins/ (editable), plus test and docs tools.
# Usage: scripts/setup.sh            (idempotent; re-run after pulling)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
plugins=()
for d in plugins/probekit-*/; do
  case "$d" in
    *probekit-inversion/) plugins+=(-e "${d}[coco]") ;;   # COCO instance masks for the colour analysis
    *) plugins+=(-e "$d") ;;                               # (the mamba [cuda] extra needs a GPU: not here)
  esac
done
# torch and torchvision are resolved together by pip (no pins): the registry's pair always matches.
.venv/bin/python -m pip install --quiet torch torchvision -e ".[dev,docs]" "${plugins[@]}" -e plugins/_template
echo "probekit installed in .venv with: $(ls -d plugins/probekit-* | xargs -n1 basename | tr '\n' ' ')"
