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
    """

    #: whether a spec needs a ``model:`` section for this probe
    needs_model: bool = True

    def fit(self, run: RunContext) -> None:
        """Train whatever the probe trains (resuming from its checkpoints)."""

    def evaluate(self, run: RunContext) -> dict[str, Any]:
        """Compute results; the returned dict goes into `metrics.json`."""
        raise NotImplementedError

    def dry_run(self, run: RunContext) -> dict[str, Any]:
        """What `fit` would do, without doing it (for `--dry-run`)."""
        return {}
