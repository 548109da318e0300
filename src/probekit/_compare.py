"""`probekit compare`: the metrics of several runs side by side."""

from __future__ import annotations

import json
from pathlib import Path

from probekit._errors import SpecError
from probekit._report import flatten, fmt


def compare(run_dirs: list[Path], output: str | None = None) -> str:
    """A text table of every numeric result of `run_dirs`; with `output`, also CSV and PNG files."""
    columns: list[dict[str, object]] = []
    for d in run_dirs:
        path = Path(d) / "metrics.json"
        if not path.exists():
            raise SpecError(f"{d} has no metrics.json", path="RUN_DIR", fix="Give directories of finished runs.")
        columns.append(dict(flatten(json.loads(path.read_text()))))
    keys: list[str] = []
    for col in columns:
        keys += [k for k in col if k not in keys]
    names = [Path(d).name or str(d) for d in run_dirs]
    header = ["result", *names]
    rows = [[k, *[fmt(c.get(k, "")) for c in columns]] for k in keys]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
    if output:
        import csv

        with open(f"{output}.csv", "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
        numeric = [k for k in keys if all(isinstance(c.get(k), (int, float)) for c in columns)][:30]
        if numeric:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            import numpy as np

            fig, ax = plt.subplots(figsize=(max(5, len(numeric) * 0.6 + 2), 3.5))
            x = np.arange(len(numeric))
            w = 0.8 / len(columns)
            for i, (name, col) in enumerate(zip(names, columns)):
                ax.bar(x + i * w, [float(col[k]) for k in numeric], w, label=name)  # type: ignore[arg-type]
            ax.set_xticks(x + 0.4 - w / 2, numeric, rotation=45, ha="right", fontsize=7)
            ax.legend(fontsize=8)
            fig.savefig(f"{output}.png", dpi=110, bbox_inches="tight")
            plt.close(fig)
        lines.append(f"\nwrote {output}.csv" + (f" and {output}.png" if numeric else ""))
    return "\n".join(lines)
