"""The probe protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from probekit.runner import Run


class Probe:
    """Base class of probes.

    A probe is built from its validated spec options (``probe:`` minus ``type``),
    then the runner calls :meth:`fit` and :meth:`evaluate` with the :class:`Run`.
    Probes checkpoint their own state under ``run.checkpoint_dir`` so that a
    killed run resumes (``probekit run --resume``), and write their tables and
    figures into the run directory.
    """

    #: whether a spec needs a ``model:`` section for this probe
    needs_model: bool = True

    def fit(self, run: Run) -> None:
        """Train whatever the probe trains (resuming from its checkpoints)."""

    def evaluate(self, run: Run) -> dict[str, Any]:
        """Compute results; the returned dict goes into ``metrics.json``."""
        raise NotImplementedError

    def dry_run(self, run: Run) -> dict[str, Any]:
        """What :meth:`fit` would do, without doing it (for ``--dry-run``)."""
        return {}
