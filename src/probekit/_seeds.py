"""Repeated seeds: combine the seed runs of `RUN_DIR/seeds/<seed>/` into tables and metrics with intervals.

`aggregate(run_dir)` is callable on its own (e.g. after the seeds ran as separate jobs). It reads
every seed run's CSV tables and metrics.json and writes, for each table `NAME.csv`, the combined
`RUN_DIR/NAME.csv`:

- the per-seed rows, with a first column `seed` holding the seed;
- one aggregate row per key (its `seed` cell is `all`), where every value column `x` holds the mean
  over seeds, `x_std` the sample standard deviation, `x_ci95` the half-width of the 95 % Student-t
  interval of the mean (empty with one seed), and `n` the number of seeds.

Key columns identify a row (e.g. `layer`, `metric`); every other column is a value column. A probe
names them with `run.write_csv(..., keys=[...])` (recorded in the seed's report.json); otherwise a
column is a key when one of its cells is not a number, or when every seed's table has the same cell
in it row by row (e.g. an `epoch` or `length` column).

metrics.json of the combined run: `seeds` (the list), `aggregate` (the seed runs' metrics.json with
every number replaced by `{mean, std, ci95, n}`; other values are kept when all seeds agree and
become the list over seeds otherwise) and `per_seed` (`{"<seed>": metrics.json of that seed}`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probekit._stats import Interval

SEEDS_DIR = "seeds"
ALL = "all"  # the `seed` cell of aggregate rows
_META_FILES = {"metrics.json", "report.json"}


def seed_dir(run_dir: str | Path, seed: int) -> Path:
    """Where the run of one seed lives: `RUN_DIR/seeds/<seed>`."""
    return Path(run_dir) / SEEDS_DIR / str(seed)


def finished_seeds(run_dir: str | Path) -> list[int]:
    """The seeds whose runs under `RUN_DIR/seeds/` have finished (have a metrics.json), sorted."""
    root = Path(run_dir) / SEEDS_DIR
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir()
                  if p.name.isdigit() and (p / "metrics.json").exists())


def _number(cell: Any) -> float | None:
    """The number in a CSV cell, or None when it is not one (empty cells count as missing numbers)."""
    if isinstance(cell, bool):
        return None
    if isinstance(cell, (int, float)):
        return float(cell)
    try:
        return float(cell)
    except (TypeError, ValueError):
        return None


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


@dataclass
class Table:
    """One table over seeds: the per-seed rows and the aggregate rows (see the module docstring).

    Attributes:
        name: the file name relative to the run directory (e.g. `results.csv`).
        keys: the key columns.
        values: the value columns (aggregated).
        rows: per-seed rows, each with its `seed` (int), keys as written, values as floats (None if empty).
        summary: aggregate rows: keys, then for every value column `x`: `x` (mean), `x_std`, `x_ci95`,
            and `n`; plus `intervals`, a dict of value column -> `Interval`.
    """

    name: str
    keys: list[str]
    values: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        """The columns of the combined CSV file."""
        out = ["seed", *self.keys]
        for v in self.values:
            out += [v, f"{v}_std", f"{v}_ci95"]
        return [*out, "n"]

    def interval(self, column: str = "value", **keys: Any) -> Interval:
        """The interval of value `column` in the aggregate row whose keys equal `keys` (as strings)."""
        want = {k: str(v) for k, v in keys.items()}
        for row in self.summary:
            if all(str(row.get(k)) == v for k, v in want.items()):
                return row["intervals"][column]
        raise KeyError(f"{self.name}: no aggregate row with {want}")

    def select(self, **keys: Any) -> list[dict[str, Any]]:
        """The aggregate rows whose keys equal `keys` (compared as strings), in table order."""
        want = {k: str(v) for k, v in keys.items()}
        return [r for r in self.summary if all(str(r.get(k)) == v for k, v in want.items())]


@dataclass
class SeedResults:
    """Everything the seed runs produced, as a probe's `summarize` receives it.

    Attributes:
        run_dir: the combined run directory.
        seeds: the seeds, in order.
        metrics: `{seed: metrics.json of that seed's run}`.
        aggregate: the seed runs' metrics with every number an `Interval` (see `aggregate_metrics`).
        tables: `{file name: Table}` for every CSV the seed runs wrote.
    """

    run_dir: Path
    seeds: list[int]
    metrics: dict[int, dict[str, Any]]
    aggregate: dict[str, Any]
    tables: dict[str, Table]

    def table(self, name: str = "results.csv") -> Table:
        """The combined table `name`."""
        try:
            return self.tables[name]
        except KeyError:
            raise KeyError(f"no table '{name}' in the seed runs; tables: {', '.join(self.tables)}") from None

    def interval(self, *path: str) -> Interval:
        """The interval of one number of metrics.json, by its key path (`interval("accuracy", "block.3")`)."""
        node: Any = self.aggregate
        for key in path:
            node = node[key]
        if not isinstance(node, Interval):
            raise TypeError(f"metrics {'.'.join(path)} is not a number")
        return node

    def values(self, *path: str) -> list[Any]:
        """The per-seed values of one entry of metrics.json, in seed order."""
        out = []
        for s in self.seeds:
            node: Any = self.metrics[s]
            for key in path:
                node = node[key]
            out.append(node)
        return out

    def metrics_json(self) -> dict[str, Any]:
        """The content of the combined metrics.json."""
        return {"seeds": list(self.seeds), "aggregate": _jsonable(self.aggregate),
                "per_seed": {str(s): self.metrics[s] for s in self.seeds}}


def _jsonable(node: Any) -> Any:
    if isinstance(node, Interval):
        return node.as_dict()
    if isinstance(node, dict):
        return {k: _jsonable(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_jsonable(v) for v in node]
    return node


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def aggregate_metrics(per_seed: Sequence[Any]) -> Any:
    """Combine the same entry of several seeds' metrics.json: numbers become an `Interval`.

    Dicts are combined key by key (keys missing in some seeds are combined over the seeds that have
    them), lists of equal length element by element, and any other value is kept when all seeds
    agree and becomes the list of the seeds' values otherwise.
    """
    present = [v for v in per_seed if v is not None]
    if present and all(_is_number(v) for v in present):
        return Interval.of(float(v) for v in present)
    if present and all(isinstance(v, dict) for v in present):
        keys: list[str] = []
        for v in present:
            keys += [k for k in v if k not in keys]
        return {k: aggregate_metrics([v.get(k) for v in present]) for k in keys}
    if present and all(isinstance(v, list) for v in present) and len({len(v) for v in present}) == 1 \
            and any(_is_number(x) or isinstance(x, (dict, list)) for v in present for x in v):
        return [aggregate_metrics([v[i] for v in present]) for i in range(len(present[0]))]
    if all(v == present[0] for v in present[1:]):
        return present[0] if present else None
    return list(per_seed)


def _table_keys(seed_runs: Mapping[int, Path], name: str) -> list[str] | None:
    """The key columns a probe declared for table `name` (in the seed runs' report.json), if any."""
    for folder in seed_runs.values():
        meta = folder / "report.json"
        if meta.exists():
            declared = json.loads(meta.read_text()).get("tables", {}).get(name)
            if declared is not None:
                return list(declared)
    return None


def combine_table(name: str, tables: Mapping[int, tuple[list[str], list[dict[str, str]]]],
                  keys: Sequence[str] | None = None) -> Table:
    """Combine one table written by every seed run (`{seed: (columns, rows)}`) into a `Table`."""
    seeds = list(tables)
    columns: list[str] = []
    for cols, _ in tables.values():
        columns += [c for c in cols if c not in columns and c != "seed"]
    if keys is None:
        lengths = {len(rows) for _, rows in tables.values()}
        aligned = len(lengths) == 1 and len(seeds) > 1
        keys = []
        for c in columns:
            cells = [r.get(c) for _, rows in tables.values() for r in rows]
            if any(cell not in (None, "") and _number(cell) is None for cell in cells):
                keys.append(c)  # text: a key
            elif aligned and all(len({tables[s][1][i].get(c) for s in seeds}) == 1
                                 for i in range(len(tables[seeds[0]][1]))):
                keys.append(c)  # the same number in every seed's table, row by row: a key
    keys = [k for k in keys if k in columns]
    values = [c for c in columns if c not in keys]
    table = Table(name, list(keys), values)
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for s in seeds:
        for raw in tables[s][1]:
            row: dict[str, Any] = {"seed": s}
            row.update({k: raw.get(k, "") for k in keys})
            row.update({v: _number(raw.get(v)) for v in values})
            table.rows.append(row)
            groups.setdefault(tuple(str(row[k]) for k in keys), []).append(row)
    for key, rows in groups.items():
        out: dict[str, Any] = {"seed": ALL, **dict(zip(keys, key))}
        intervals = {}
        for v in values:
            iv = Interval.of(r[v] for r in rows if r[v] is not None)
            intervals[v] = iv
            out[v], out[f"{v}_std"], out[f"{v}_ci95"] = iv.mean, iv.std, iv.ci95
        out["n"] = len({r["seed"] for r in rows})
        out["intervals"] = intervals
        table.summary.append(out)
    return table


def write_table(path: Path, table: Table) -> None:
    """Write the combined table: per-seed rows, then aggregate rows (atomically)."""
    from probekit._checkpoint import write_text

    def cell(x: Any) -> Any:
        if isinstance(x, float):
            return "" if math.isnan(x) else repr(x)
        return "" if x is None else x

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=table.columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in table.rows:
        writer.writerow({c: cell(row.get(c)) for c in table.columns})
    for row in table.summary:
        writer.writerow({c: cell(row.get(c)) for c in table.columns})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, buf.getvalue())


def aggregate(run_dir: str | Path, seeds: Sequence[int] | None = None, *, write: bool = True) -> SeedResults:
    """Combine the seed runs under `RUN_DIR/seeds/` into `SeedResults`; with `write`, write the tables.

    Args:
        run_dir: the run directory holding `seeds/<seed>/`.
        seeds: the seeds to combine (default: every finished one); each must have finished.
        write: write every combined table as `RUN_DIR/<name>.csv` (metrics.json and the report are the
            runner's: see `probekit.run`).
    """
    run_dir = Path(run_dir)
    seeds = list(seeds) if seeds is not None else finished_seeds(run_dir)
    if not seeds:
        raise FileNotFoundError(f"no finished seed runs under {run_dir / SEEDS_DIR}")
    folders = {s: seed_dir(run_dir, s) for s in seeds}
    missing = [s for s, f in folders.items() if not (f / "metrics.json").exists()]
    if missing:
        raise FileNotFoundError(f"seed runs not finished (no metrics.json): "
                                f"{', '.join(str(folders[s]) for s in missing)}")
    metrics = {s: json.loads((f / "metrics.json").read_text()) for s, f in folders.items()}
    for m in metrics.values():
        m.pop("provenance", None)
    names: list[str] = []
    for f in folders.values():
        names += [p.relative_to(f).as_posix() for p in sorted(f.rglob("*.csv"))
                  if p.relative_to(f).parts[0] not in ("checkpoints", SEEDS_DIR)
                  and p.relative_to(f).as_posix() not in names]
    tables: dict[str, Table] = {}
    for name in names:
        present = {s: _read_csv(f / name) for s, f in folders.items() if (f / name).exists()}
        tables[name] = combine_table(name, present, _table_keys(folders, name))
        if write:
            write_table(run_dir / name, tables[name])
    agg = aggregate_metrics([metrics[s] for s in seeds])
    return SeedResults(run_dir, seeds, metrics, agg, tables)


__all__ = ["ALL", "SEEDS_DIR", "SeedResults", "Table", "aggregate", "aggregate_metrics", "combine_table",
           "finished_seeds", "seed_dir", "write_table"]
