#!/usr/bin/env bash
# For each plugin: a clean venv, `pip install --find-links dist <plugin>` (core + plugin from the built
# wheels, everything else from the index), then `probekit plugins` must list it and its tests must pass
# against the installed wheel (run from a copy of its tests, outside the source tree).
# Usage: scripts/build_dists.sh && scripts/check_wheels.sh [plugin ...]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
plugins=("$@")
[ ${#plugins[@]} -gt 0 ] || plugins=(vit detr mamba inversion tradeoff perturb)
for name in "${plugins[@]}"; do
  work=$(mktemp -d)
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install --quiet --upgrade pip
  # torch and torchvision resolved together; the plugin and the core come from dist/ only.
  "$work/venv/bin/pip" install --quiet --find-links dist torch torchvision "probekit-$name" pytest mlxtend
  "$work/venv/bin/probekit" plugins | grep -q "^$name " || { echo "FAIL $name: not listed"; exit 1; }
  cp -r "plugins/probekit-$name/tests" "$work/tests"
  (cd "$work" && HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PROBEKIT_REPO="$root" \
     venv/bin/python -m pytest -q -p no:cacheprovider tests) || { echo "FAIL $name: tests"; exit 1; }
  echo "OK $name: installed from wheels, listed by probekit plugins, tests pass"
  rm -rf "$work"
done
