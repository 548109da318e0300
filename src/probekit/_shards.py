"""Job arrays: `probekit run SPEC --shard I/N` runs the I-th of N independent parts of a spec.

The parts are the seeds of `seeds:` (part `I` of `N` runs every N-th seed, from the I-th on). Each
part writes only its own folders, `RUN_DIR/seeds/<seed>/`, and its log, `RUN_DIR/shards/I-of-N.log`,
so parts may run at the same time on different machines sharing the run directory, without a lock
between them. Each part holds its own lock (`.probekit-lock-shard-I-of-N`), so the same part cannot
run twice at once. The last part to finish combines all seeds into the run directory's results.csv,
metrics.json, figures and report, exactly as one run of the whole spec would (`probekit aggregate
RUN_DIR` does the same by hand, and names the parts still missing). `--resume` continues a part
that stopped; the seeds it finished before are kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probekit._errors import SpecError

SHARDS_DIR = "shards"
AGGREGATE_LOCK = ".probekit-lock-aggregate"


@dataclass(frozen=True)
class Shard:
    """Part `index` (0-based) of `count` independent parts of a spec."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`"I/N"` (as SLURM gives it: `$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`, I from 0)."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not m or int(m[2]) < 1 or int(m[1]) >= int(m[2]):
            raise SpecError(f"'{text}' is not a part of a job array", path="--shard",
                            fix="Give I/N with 0 <= I < N, e.g. --shard 0/3 for the first of three parts "
                                "(SLURM: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-2).")
        return cls(int(m[1]), int(m[2]))

    @property
    def name(self) -> str:
        return f"{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def seeds(self, seeds: list[int]) -> list[int]:
        """This part's seeds: every `count`-th, from the `index`-th on."""
        return seeds[self.index::self.count]

    def lock_name(self) -> str:
        return f".probekit-lock-shard-{self.name}"

    def log_path(self, run_dir: Path) -> Path:
        return run_dir / SHARDS_DIR / f"{self.name}.log"

    def open_log(self, run_dir: Path) -> Any:
        """This part's log, opened for appending (its folder made first)."""
        from probekit._files import open_append

        path = self.log_path(run_dir)
        path.parent.mkdir(exist_ok=True)
        return open_append(path)


def check_shard(shard: Shard, seeds: list[int] | None) -> None:
    """Refuse a shard of a spec that has fewer parts than `shard.count` (exit 2)."""
    if not seeds:
        raise SpecError("the spec has one part only (no `seeds:`), so there is nothing to spread over a job "
                        "array", path="--shard",
                        fix="Add `seeds: [0, 1, 2]` (or --set 'seeds=[0,1,2]') to run the seeds as parts, or "
                            "drop --shard (one job with --nproc N processes trains one run in parallel).")
    if shard.count > len(seeds):
        raise SpecError(f"--shard {shard}: the spec has {len(seeds)} independent parts (seeds {seeds}), fewer "
                        f"than {shard.count}", path="--shard",
                        fix=f"Use at most {len(seeds)} parts (e.g. --shard I/{len(seeds)} with "
                            f"--array=0-{len(seeds) - 1}).")


def shard_counts(run_dir: Path) -> list[int]:
    """The part counts N of the parts that ran in `run_dir` (from their logs), sorted."""
    folder = run_dir / SHARDS_DIR
    found = {int(m[2]) for p in folder.glob("*-of-*.log") if (m := re.fullmatch(r"(\d+)-of-(\d+)\.log", p.name))}
    return sorted(found)


def missing_parts(run_dir: Path, seeds: list[int], finished: list[int]) -> str:
    """Words naming the seeds that have not finished and, when known, the parts (`--shard I/N`) that hold them."""
    missing = [s for s in seeds if s not in finished]
    if not missing:
        return ""
    counts = shard_counts(run_dir)
    words = f"seed{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}"
    if len(counts) == 1:
        shard_of = {s: i % counts[0] for i, s in enumerate(seeds)}
        parts = sorted({shard_of[s] for s in missing})
        words += f" (--shard {', '.join(f'{p}/{counts[0]}' for p in parts)})"
    return words


def load_run_spec(run_dir: Path) -> Any:
    """The spec a run directory was started with (its resolved spec.yaml), loaded and validated."""
    import yaml

    from probekit._files import is_run_dir
    from probekit._spec import load_spec

    spec_file = run_dir / "spec.yaml"
    if not run_dir.is_dir() or not is_run_dir(run_dir) or not spec_file.is_file():
        raise SpecError(f"{run_dir} is not a probekit run directory (no spec.yaml written by probekit)",
                        path="RUN_DIR", fix="Give the -o directory that the parts (--shard I/N) ran into.")
    try:
        raw = yaml.safe_load(spec_file.read_text())
        raw.pop("versions", None)
    except Exception as exc:
        raise SpecError(f"{spec_file} is damaged ({type(exc).__name__})", path="RUN_DIR",
                        fix="Run the parts again into a new -o directory.") from None
    return load_spec(raw)


__all__ = ["AGGREGATE_LOCK", "SHARDS_DIR", "Shard", "check_shard", "load_run_spec", "missing_parts",
           "shard_counts"]
