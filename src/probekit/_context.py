"""RunContext: what a probe (and anything a probe calls) sees of a run.

A `typing.Protocol`, so that plugins type their `run` parameter against it and a
type checker verifies their use of the context; the runner's `Run` is the one
implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader, Dataset

    from probekit._adapter import ModelAdapter
    from probekit._cache import FeatureSet
    from probekit._data import DataBundle
    from probekit._metric import Metric
    from probekit._probe import Probe
    from probekit._spec import LoadedSpec, Spec


class RunContext(Protocol):
    """The run a probe works in: spec, device, seeds, data, model, logging and outputs.

    Attributes:
        loaded: the validated spec with every section's options.
        spec: the validated spec (`loaded.spec`).
        options: validated options of each section, by key path (`"probe"`, `"data"`, `"metrics.0"`).
        run_dir: the run directory; `checkpoint_dir` and `figures_dir` lie inside it.
        seed: the seed of this run (every random choice derives from it); in a run with `seeds:`, the
            seed of the seed run.
        data_seed: the seed of the data split: the spec's `seed:`, the same for every seed run.
        device: the torch device the run computes on.
        resume: whether the run continues an earlier one (`--resume`).
        quiet: whether messages stay out of stderr (`--quiet`).
        model: the frozen model's adapter, or None when the probe needs none (`require_model()` narrows it).
        data: the data bundle (train and test splits), or None without a `data:` section (`require_data()`).
        probe: the probe being run.
    """

    loaded: LoadedSpec
    spec: Spec
    options: dict[str, Any]
    run_dir: Path
    checkpoint_dir: Path
    figures_dir: Path
    cache_dir: Path
    seed: int
    data_seed: int
    device: torch.device
    resume: bool
    quiet: bool
    model: ModelAdapter | None
    data: DataBundle | None
    probe: Probe | None

    def require_model(self) -> ModelAdapter:
        """The frozen model's adapter; a `RunError` when the run has none (its spec has no `model:`)."""

    def require_data(self) -> DataBundle:
        """The data bundle; a `RunError` when the run has none (its spec has no `data:`)."""

    def log(self, message: str) -> None:
        """Write a line to log.txt and, unless quiet, to stderr."""

    def debug(self, message: str) -> None:
        """Write a line to log.txt only."""

    def warn(self, message: str) -> None:
        """Log a warning and show it at the top of the report (e.g. a result at its trivial baseline)."""

    def progress(self, iterable: Iterable[Any], *, total: int | None = None, desc: str = "") -> Iterable[Any]:
        """Wrap a loop so that its progress is shown."""

    def generator(self, tag: str = "") -> torch.Generator:
        """A torch Generator seeded from the run's seed and `tag`."""

    def loader(self, dataset: Dataset, *, batch_size: int | None = None, shuffle: bool = False,
               generator: torch.Generator | None = None) -> DataLoader:
        """A DataLoader over `dataset` (the spec's data batch size by default)."""

    def create_metric(self, name: str, **options: Any) -> Metric:
        """A metric from the registry."""

    def metrics(self) -> dict[str, Metric]:
        """The spec's `metrics:` list, instantiated afresh."""

    def perturbation(self, name: str, **options: Any) -> Callable[..., torch.Tensor]:
        """A perturbation from the registry."""

    def features(self, layers: Sequence[str], split: str = "train", *, dtype: str | None = None,
                 include_input: bool = False,
                 transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
                 transform_id: str = "", model: ModelAdapter | None = None) -> FeatureSet:
        """Hidden states of the frozen model for `split`, computed once and cached on disk."""

    def data_fingerprint(self) -> dict[str, Any]:
        """What identifies the run's data: part of cache keys."""

    def path(self, relative: str) -> Path:
        """A path inside the run directory (refuses paths that would leave it)."""

    def write_csv(self, name: str, rows: Iterable[Mapping[str, Any]], columns: Sequence[str], *,
                  keys: Sequence[str] | None = None) -> Path:
        """Write a table atomically as RUN_DIR/name; `keys`: the columns that identify a row.

        With `seeds:` the other (value) columns are combined over seeds into mean, std, ci95 and n;
        without `keys` they are inferred (text columns, and numbers equal in every seed's table).
        """

    def save_figure(self, fig: Any, name: str) -> Path:
        """Save a matplotlib figure as RUN_DIR/figures/name and close it."""

    def add_report(self, title: str, markdown: str) -> None:
        """Add a section to report.md and report.html."""
