#!/usr/bin/env bash
# Installs each plugin alone from the built wheels into a clean venv, as a user would, and uses it:
#   1. pip install --find-links dist probekit-<name> pytest   (nothing else: what the plugin needs, it brings;
#      pytest only runs its tests. The core and the plugin come from dist/, everything else from the index)
#   2. probekit plugins lists it; probekit examples lists what it ships
#   3. probekit examples copy <first example that needs only this plugin> into a scratch folder, and
#      probekit run it with the example's own quick overrides (`# quick: --set ...`: reduced epochs and data)
#   4. the plugin's tests pass against the installed wheel (run from a copy of its tests, outside the tree)
# torch is resolved by pip like any dependency (no pin). One plugin at a time; each takes minutes.
# Usage: scripts/build_dists.sh && scripts/check_wheels.sh [plugin ...]     (default: all six)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PY=${PYTHON:-python3}
plugins=("$@")
[ ${#plugins[@]} -gt 0 ] || plugins=(vit detr mamba inversion tradeoff perturb)
ls dist/probekit_core-*.whl >/dev/null 2>&1 || { echo "no wheels in dist/: run scripts/build_dists.sh first"; exit 1; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for name in "${plugins[@]}"; do
  work=$(mktemp -d)
  start=$(date +%s)
  "$PY" -m venv "$work/venv"
  bin="$work/venv/bin"
  "$bin/python" -m pip install --quiet --find-links dist "probekit-$name" pytest
  echo "== probekit-$name: installed $("$bin/python" -m pip list 2>/dev/null | grep -ci '^probekit') probekit distributions," \
       "$("$bin/python" -m pip list 2>/dev/null | tail -n +3 | wc -l) packages in all"
  "$bin/probekit" plugins | grep -q "^$name " || { echo "FAIL $name: not listed by probekit plugins"; exit 1; }
  "$bin/probekit" examples
  # the first example of this plugin that needs nothing more, and its quick overrides
  read -r example quick < <("$bin/probekit" examples --json | "$bin/python" -c "
import json, sys
shipped = [e for e in json.load(sys.stdin) if e['plugin'] == 'probekit-$name' and not e['missing']]
if not shipped:
    sys.exit('probekit-$name ships no example that runs with it alone')
print(shipped[0]['name'], ' '.join('--set ' + q for q in shipped[0]['quick']))")
  mkdir -p "$work/try"
  (cd "$work/try" && "$bin/probekit" examples copy "$example" . && \
     "$bin/probekit" run "$example.yaml" -o "runs/$example" -q $quick) || { echo "FAIL $name: example $example"; exit 1; }
  [ -s "$work/try/runs/$example/metrics.json" ] || { echo "FAIL $name: no metrics.json"; exit 1; }
  cp -r "plugins/probekit-$name/tests" "$work/tests"
  (cd "$work" && PROBEKIT_REPO="$root" "$bin/python" -m pytest -q -p no:cacheprovider tests) \
    || { echo "FAIL $name: tests"; exit 1; }
  echo "OK probekit-$name: installed alone from wheels, listed, example $example ran ($quick)," \
       "tests pass; $(( $(date +%s) - start )) s"
  rm -rf "$work"
done
