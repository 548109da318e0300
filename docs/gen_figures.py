"""Run the offline examples and copy their figures into docs/img/, so the docs show what the code makes.

Usage: .venv/bin/python docs/gen_figures.py [example-name ...]   (default: all below)
Runs go to runs/docs/<example>; figures are copied to docs/img/<folder>/.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# example spec -> (docs/img folder, prefix added to figure names, {figure: new name})
EXAMPLES: dict[str, tuple[str, str, dict[str, str]]] = {
    "quickstart": ("quickstart", "", {}),
    "vit-linear-probe": ("vit", "", {"accuracy_vs_depth.png": "linear-probe-accuracy.png"}),
    "alexnet-inversion": ("inversion", "alexnet_", {}),
    "vit-inversion": ("inversion", "", {}),
    "detr-inversion": ("inversion", "detr_", {}),
    "tradeoff-mnist": ("tradeoff", "", {}),
    "mamba-length": ("mamba", "lengthgen_", {}),
    "vit-robustness": ("perturb", "", {}),
}


# example -> --set overrides: the docs are made offline, so AlexNet's ImageNet weights come from the shared
# data folder beside the repository (see examples/alexnet-inversion.yaml)
OVERRIDES: dict[str, list[str]] = {
    "alexnet-inversion": [f"model.weights={ROOT.parent / 'shared' / 'data' / 'lpips' / 'alexnet_features.pth'}",
                          "model.weights_strict=false"],
}


# runs of an example with other settings: name -> (example, --set overrides); figures as for the name
VARIANTS: dict[str, tuple[str, list[str]]] = {
    # the concepts page's figure with 95% intervals over seeds
    "quickstart-seeds": ("quickstart", ["seeds=[0,1,2]", "data.limit=1000"]),  # 1,000 training digits, for time
}
EXAMPLES["quickstart-seeds"] = ("quickstart", "", {"accuracy_vs_depth.png": "accuracy_vs_depth_seeds.png"})


def main(names: list[str]) -> None:
    for name in names or list(EXAMPLES):
        example, extra = VARIANTS.get(name, (name, []))
        spec = ROOT / "examples" / f"{example}.yaml"
        run_dir = ROOT / "runs" / "docs" / name
        print(f"== {name}", flush=True)
        sets = [arg for value in [*OVERRIDES.get(name, []), *extra] for arg in ("--set", value)]
        subprocess.run([sys.executable, "-m", "probekit", "run", str(spec), "-o", str(run_dir), "--overwrite", "-q",
                        *sets], check=True)
        folder, prefix, renames = EXAMPLES[name]
        dest = ROOT / "docs" / "img" / folder
        dest.mkdir(parents=True, exist_ok=True)
        for fig in sorted((run_dir / "figures").glob("*.png")):
            target = dest / renames.get(fig.name, prefix + fig.name)
            shutil.copy2(fig, target)
            print(f"   {fig.name} -> {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
