"""The probe protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from probekit._context import RunContext


class Probe:
    """Base class of probes.

    A probe is built from its validated spec options (`probe:` minus `type`),
    then the runner calls `fit` and `evaluate` with the `RunContext`.
    Probes checkpoint their own state under `run.checkpoint_dir` so that a
    killed run resumes (`probekit run --resume`), and write their tables and
    figures into the run directory.

    With `seeds: [0, 1, 2]` in the spec the runner does this once per seed, in
    `RUN_DIR/seeds/<seed>/`, then calls the optional
    `summarize(run, results: SeedResults) -> None` once, if the probe defines it,
    to draw figures with error bars and write findings from the combined tables.
    """

    needs_model: bool = True
    """Whether a spec needs a `model:` section for this probe."""

    def fit(self, run: RunContext) -> None:
        """Train whatever the probe trains (resuming from its checkpoints)."""

    def evaluate(self, run: RunContext) -> dict[str, Any]:
        """Compute results; the returned dict goes into `metrics.json`."""
        raise NotImplementedError

    # Optional: define ``summarize(self, run, results)`` to draw figures and write findings from the
    # tables combined over seeds. With ``seeds:`` in the spec the runner calls it once, after every
    # seed's fit and evaluate, with ``run`` the combined run (its ``run_dir`` is RUN_DIR; no model or
    # data is loaded) and ``results`` a `SeedResults`: ``results.table("results.csv")`` holds the
    # per-seed and aggregate rows, ``results.interval("accuracy", "block.3")`` one number's `Interval`.
    # It is not called for a run of one seed, where ``evaluate`` draws the figures.

    def dry_run(self, run: RunContext) -> dict[str, Any]:
        """What `fit` would do, without doing it (for `--dry-run`)."""
        return {}
