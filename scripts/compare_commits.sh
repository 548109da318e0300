#!/usr/bin/env bash
# Runs reduced versions of the shipped examples at two commits and compares their metrics.json, number by
# number (exactly; the provenance block is left out). Used to show that a refactor changed no result.
# Usage: scripts/compare_commits.sh OLD NEW [example ...]     (worktrees and runs under $TMPDIR/probekit-cmp)
set -u
cd "$(dirname "$0")/.."
repo=$PWD
old=$1 new=$2; shift 2
examples=("$@")
[ ${#examples[@]} -gt 0 ] || examples=(quickstart tradeoff-mnist vit-linear-probe mamba-length vit-robustness detr-inversion)
declare -A SETS=(
  [quickstart]="--set model.train.epochs=1 --set data.limit=600 --set data.test_limit=200"
  [tradeoff-mnist]="--set probe.epochs=1 --set probe.latents=[2] --set probe.lambdas=[0.0,1.0] --set data.limit=600 --set data.test_limit=200"
  [vit-linear-probe]="--set model.train.epochs=1 --set data.limit=300 --set data.test_limit=100"
  [mamba-length]="--set probe.epochs=1 --set probe.steps_per_epoch=5 --set probe.eval_images=16 --set probe.variants=[mamba,transformer]"
  [vit-robustness]="--set data.limit=64 --set data.test_limit=32 --set probe.limit=16"
  [detr-inversion]="--set probe.epochs=1 --set data.limit=16 --set data.test_limit=8"
)
work=${TMPDIR:-/tmp}/probekit-cmp
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1
for c in "$old" "$new"; do
  wt=$work/wt-$c
  [ -d "$wt" ] || git worktree add -f "$wt" "$c" -q
  pp="$wt/src"; for p in "$wt"/plugins/probekit-*/src; do pp="$pp:$p"; done
  for ex in "${examples[@]}"; do
    out=$work/$c/$ex; rm -rf "$out"; mkdir -p "$(dirname "$out")"
    # the commit's own code first on the path; the same venv, cache per commit
    PROBEKIT_CACHE=$work/cache-$c PYTHONPATH=$pp "$repo/.venv/bin/python" -m probekit run "$wt/examples/$ex.yaml" \
      -o "$out" -q ${SETS[$ex]:-} > "$work/$c-$ex.log" 2>&1 || echo "$c $ex: failed, see $work/$c-$ex.log"
  done
done
"$repo/.venv/bin/python" - "$work" "$old" "$new" "${examples[@]}" <<'PY'
import json, sys
work, old, new, *examples = sys.argv[1:]
def flat(d, p=""):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from flat(v, f"{p}.{k}" if p else k)
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from flat(v, f"{p}[{i}]")
    else:
        yield p, d
same = True
for ex in examples:
    try:
        a, b = ({k: v for k, v in flat(json.load(open(f"{work}/{c}/{ex}/metrics.json"))) if not k.startswith("provenance")}
                for c in (old, new))
    except OSError as exc:
        print(f"{ex}: missing ({exc})"); same = False; continue
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    same &= not diff
    print(f"{ex}: {len(a)} numbers at {old}, {len(b)} at {new}, {len(diff)} differ {diff[:5]}")
sys.exit(0 if same else 1)
PY
