"""The runner: turns a validated spec into a run directory.

RUN_DIR/spec.yaml (resolved spec + versions), metrics.json, checkpoints/,
figures/, report.md, report.html, log.txt. All writes are atomic; every random
choice derives from the spec's seed, so a spec run twice on the CPU gives an
identical metrics.json, and `resume=True` continues a killed run to the same
results.
"""

from __future__ import annotations

import csv
import io
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from probekit import _checkpoint as ckpt
from probekit._adapter import ModelAdapter, check_probe_layers
from probekit._cache import FeatureCache, FeatureSet, cache_key, default_cache_dir
from probekit._data import SPLIT_VERSION, DataBundle, build_data, num_examples
from probekit._errors import RunError, SpecError
from probekit._logging import route_to_run, unroute
from probekit._metric import Metric
from probekit._plugins import get_plugin_manager
from probekit._probe import Probe
from probekit._shards import Shard, check_shard
from probekit._spec import LoadedSpec, load_spec


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError(f"device '{name}' asked for, but CUDA is not available here", path="device",
                        fix="Use `device: auto` or `device: cpu`.")
    return torch.device(name)


class Run:
    """What a probe sees of a run: the spec, the model, the data, and the run directory's helpers."""

    def __init__(self, loaded: LoadedSpec, run_dir: Path, *, quiet: bool = False, resume: bool = False):
        self.loaded = loaded
        self.spec = loaded.spec
        self.options = loaded.options
        self.run_dir = Path(run_dir)
        self.seed = self.spec.seed
        self.data_seed = self.spec.seed  # a seed run of `seeds:` keeps the spec's data split
        self.quiet = quiet
        self.resume = resume
        self.device = resolve_device(self.spec.device)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.figures_dir = self.run_dir / "figures"
        self.cache_dir = Path(self.spec.cache_dir) if self.spec.cache_dir else default_cache_dir()
        self.model: ModelAdapter | None = None
        self.data: DataBundle | None = None
        self.probe: Probe | None = None
        self.report_sections: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        self.model_training: dict[str, Any] = {}  # model.train's train/test accuracy, for metrics.json
        self.table_keys: dict[str, list[str]] = {}  # csv name -> key columns declared by write_csv
        self.timings: dict[str, float] = {}
        self._log_file: Any = None
        self._lock: Any = None  # the run directory's lock (rank 0), held until the run ends
        self.shard: Shard | None = None  # --shard I/N: this process runs only that part of `seeds:`
        self._heartbeat: Any = None  # progress lines on stderr when it is not a terminal (_progress)

    def require_model(self) -> ModelAdapter:
        """The model adapter; a RunError when the run has none (its spec has no `model:`)."""
        if self.model is None:
            raise RunError("this step needs the run's model, and the spec has no `model:` section (or it is "
                           "not built yet)")
        return self.model

    def require_data(self) -> DataBundle:
        """The data bundle; a RunError when the run has none (its spec has no `data:`)."""
        if self.data is None:
            raise RunError("this step needs the run's data, and the spec has no `data:` section (or it is not "
                           "loaded yet)")
        return self.data

    # -- logging and progress --------------------------------------------------------
    def log(self, message: str) -> None:
        """Append a line to log.txt (and print it on stderr unless quiet)."""
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        self.debug(message)
        if not self.quiet:
            print(line, file=sys.stderr)
            if self._heartbeat is not None:
                self._heartbeat.printed()

    def warn(self, message: str) -> None:
        """Log a warning (log.txt and stderr) and show it at the top of the report."""
        if message not in self.warnings:
            self.warnings.append(message)
        self.log(f"WARNING: {message}")

    def debug(self, message: str) -> None:
        """Append a line to log.txt only (per-epoch losses and other detail)."""
        if self._log_file is not None:
            self._log_file.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
            self._log_file.flush()

    def progress(self, iterable: Iterable[Any], *, total: int | None = None, desc: str = "") -> Iterable[Any]:
        """Wrap a loop with a progress bar; when stderr is not a terminal, count it for the progress
        lines written at most every 30 s (`probekit._progress`); nothing with --quiet."""
        if self.quiet:
            return iterable
        if not sys.stderr.isatty():
            return self._heartbeat.wrap(iterable, total=total, desc=desc) if self._heartbeat else iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)

    # -- randomness ------------------------------------------------------------------
    def generator(self, tag: str = "") -> torch.Generator:
        """A torch Generator seeded from the spec's seed and `tag`."""
        from probekit._training import epoch_seed

        return torch.Generator().manual_seed(epoch_seed(self.seed, 0, tag))

    # -- data ------------------------------------------------------------------------
    def loader(self, dataset: Dataset, *, batch_size: int | None = None, shuffle: bool = False,
               generator: torch.Generator | None = None) -> DataLoader:
        bs = batch_size or (self.spec.data.batch_size if self.spec.data else 64)
        return DataLoader(dataset, batch_size=bs, shuffle=shuffle, generator=generator, num_workers=0)

    # -- components ------------------------------------------------------------------
    def create_metric(self, name: str, **options: Any) -> Metric:
        from probekit._registry import create_metric

        return create_metric(name, **options)

    def metrics(self) -> dict[str, Metric]:
        """The spec's `metrics:` list, instantiated (fresh objects each call)."""
        from probekit._registry import create_metric

        out = {}
        for i, m in enumerate(self.spec.metric_specs()):
            out[m.type] = create_metric(m.type, **self.options.get(f"metrics.{i}", {}))
        return out

    def perturbation(self, name: str, **options: Any) -> Callable[..., torch.Tensor]:
        from probekit._registry import create_perturbation

        return create_perturbation(name, **options)

    # -- feature cache -------------------------------------------------------------------
    def features(self, layers: Sequence[str], split: str = "train", *, dtype: str | None = None,
                 include_input: bool = False,
                 transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
                 transform_id: str = "", model: ModelAdapter | None = None) -> FeatureSet:
        """Hidden states of the frozen model for `split`, computed once and cached on disk.

        The set also holds `labels` and, with `include_input`, `input` (the
        model-ready inputs after `preprocess`). `transform(layer, states)`
        reduces states before they are stored (e.g. pooling); give it a
        `transform_id` that changes whenever its result would. `model` reads
        another adapter than the run's own (e.g. one a probe builds itself).
        """
        from probekit import _distributed as distributed

        model = model if model is not None else self.model
        if model is None or self.data is None:
            raise RuntimeError("run.features needs a model adapter and a data section")
        dtype = dtype or self.spec.cache_dtype
        dataset = self.data.train if split == "train" else self.data.test
        base = {"model": model.fingerprint(), "data": self.data_fingerprint(), "split": split,
                "n": num_examples(dataset), "dtype": dtype, "transform": transform_id if transform else ""}
        names = list(layers) + (["input"] if include_input else []) + ["labels"]
        keys = {n: cache_key(layer=n, **(base if n in layers else {**base, "transform": ""})) for n in names}

        def compute(wanted: Sequence[str], rows: range | None = None) -> Iterator[dict[str, Any]]:
            real = [n for n in wanted if n not in ("input", "labels")]
            model.model.eval()
            part = dataset if rows is None else torch.utils.data.Subset(dataset, rows)
            loader = self.loader(part)
            self.log(f"feature cache: computing {', '.join(wanted)} for {num_examples(dataset)} {split} examples"
                     + (f" ({distributed.world_size()} processes)" if rows is not None else ""))
            from probekit._training import StopRequested, stop_requested

            with torch.no_grad():
                for images, labels in self.progress(loader, total=len(loader), desc=f"features {split}"):
                    if stop_requested():
                        raise StopRequested("stopped on request while computing features (nothing of the "
                                            "cache entry was kept); continue with --resume")
                    inputs = model.preprocess(images.to(self.device))
                    out: dict[str, Any] = {"labels": labels}
                    if real:
                        _, states = model.capture(inputs, real)
                        if transform is not None:
                            states = {n: transform(n, t) for n, t in states.items()}
                        out.update(states)
                    if "input" in wanted:
                        out["input"] = inputs
                    yield out

        cache = FeatureCache(self.cache_dir / "features", log=self.log)
        # in a distributed run every rank computes and writes its share of the rows
        return FeatureSet(cache.get(keys, compute, dtype=dtype, info={"split": split}, length=num_examples(dataset)))

    def data_fingerprint(self) -> dict[str, Any]:
        """What identifies the run's data (source, options, limits, seed): part of cache keys."""
        d = self.spec.data
        return {"type": d.type, "options": self.options.get("data", {}), "limit": d.limit,
                "test_limit": d.test_limit, "seed": self.data_seed, "split": SPLIT_VERSION} if d else {}

    # -- outputs ---------------------------------------------------------------------
    def path(self, relative: str) -> Path:
        """A path inside the run directory (refuses paths that would leave it)."""
        p = (self.run_dir / relative).resolve()
        if self.run_dir.resolve() not in (p, *p.parents):
            raise ValueError(f"path '{relative}' leaves the run directory")
        return p

    def write_csv(self, name: str, rows: Iterable[Mapping[str, Any]], columns: Sequence[str], *,
                  keys: Sequence[str] | None = None) -> Path:
        """Write a table atomically as RUN_DIR/name.

        `keys` names the columns that identify a row (e.g. `layer`, `metric`); with `seeds:` the
        other columns are combined over seeds into mean, std and 95% interval (see
        `probekit._seeds`). Without it the keys are inferred.
        """
        if keys is not None:
            unknown = [k for k in keys if k not in columns]
            if unknown:
                raise ValueError(f"write_csv({name!r}): keys {unknown} are not columns {list(columns)}")
            self.table_keys[name] = list(keys)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _fmt(row.get(c)) for c in columns})
        path = self.path(name)
        ckpt.write_text(path, buf.getvalue())
        return path

    def save_figure(self, fig: Any, name: str) -> Path:
        """Save a matplotlib figure as RUN_DIR/figures/name (PNG) and close it."""
        import matplotlib.pyplot as plt

        path = self.path(f"figures/{name}")
        with ckpt.atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return path

    def add_report(self, title: str, markdown: str) -> None:
        """Add a section to report.md / report.html."""
        self.report_sections.append((title, markdown))


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    return value


# -- the run itself -----------------------------------------------------------------------
def default_run_dir(spec_name: str) -> Path:
    return Path("runs") / spec_name


def _build_model(run: Run) -> ModelAdapter | None:
    spec = run.spec
    if spec.model is None:
        return None
    from probekit._registry import create_model

    adapter = create_model(spec.model.type, **run.options["model"])
    if getattr(adapter, "input_shape", None) is None and run.data is not None:
        adapter.input_shape = tuple(run.data.info.image_shape)
    check_probe_layers(adapter, spec.probe.type, run.options["probe"])  # before any training
    adapter.to(run.device)
    if spec.model.train is not None:
        from probekit._pretrain import train_classifier

        run.model_training = train_classifier(run, adapter)
    adapter.model.eval()
    for p in adapter.model.parameters():
        p.requires_grad_(False)
    return adapter


def resolved_spec_text(loaded: LoadedSpec) -> str:
    import yaml

    from probekit._version import __version__

    versions = {"probekit": __version__, "torch": str(torch.__version__)}
    for info in get_plugin_manager().plugin_infos():
        if not info.builtin and info.version:
            versions[info.name] = info.version
    doc = loaded.spec.model_dump(mode="json", exclude_none=True)
    header = "# resolved spec written by probekit; versions:\n" + "".join(
        f"#   {k}: {v}\n" for k, v in versions.items())
    return header + yaml.safe_dump({**doc, "versions": versions}, sort_keys=False)


def prepare(loaded: LoadedSpec, run_dir: Path | None, *, resume: bool = False, overwrite: bool = False,
            quiet: bool = False, shard: Shard | str | None = None) -> Run:
    """Check and claim the run directory: refuse what is not ours, lock it, write the marker.

    Rank 0 of a distributed run (or the only process) owns the directory; other ranks only read it.
    With `shard` (`"I/N"`), only that part of the spec's seeds runs, and it claims only its own part
    of the directory (see `probekit._shards`).
    """
    import os

    from probekit import _files as files

    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(loaded.spec.name)
    if run_dir.exists() and not run_dir.is_dir():
        raise SpecError(f"{run_dir} is a file, not a directory", path="-o",
                        fix="Give a directory for the run (it is created if it does not exist).")
    if shard is not None:
        shard = Shard.parse(shard) if isinstance(shard, str) else shard
        check_shard(shard, loaded.spec.seeds)
        if overwrite:
            raise SpecError("--overwrite cannot be used with --shard: the parts share the run directory",
                            path="--overwrite", fix="Delete the run directory once, before the parts start, or "
                                                    "use a new -o RUN_DIR; --resume continues a part.")
    if os.environ.get("RANK", "0") != "0":  # rank 0 checks and claims the directory
        prepared = Run(loaded, run_dir, quiet=quiet, resume=resume)
        prepared.shard = shard
        return prepared
    if shard is not None:
        return _prepare_shard(loaded, run_dir, shard, resume=resume, quiet=quiet)
    lock = files.RunLock(run_dir)
    if (run_dir / files.LOCK).is_file() and not (run_dir / files.LOCK).is_symlink():
        _claim(lock, run_dir)  # a live run is refused before anything else is said
    try:
        return _prepare_locked(loaded, run_dir, lock, resume=resume, overwrite=overwrite, quiet=quiet)
    except BaseException:
        lock.release()
        raise


def _prepare_shard(loaded: LoadedSpec, run_dir: Path, shard: Shard, *, resume: bool, quiet: bool) -> Run:
    """Claim part `shard` of a run directory the parts share: its own lock and seed folders only."""
    from probekit import _files as files
    from probekit._seeds import seed_dir

    kept = [p.name for p in run_dir.iterdir() if not p.name.startswith(".probekit-lock")] \
        if run_dir.is_dir() else []
    if kept and not files.is_run_dir(run_dir):
        raise SpecError(f"refusing to run a part in {run_dir}: it is not a probekit run directory (it holds "
                        f"{', '.join(sorted(kept)[:5])})", path="-o", fix="Use another -o RUN_DIR.")
    _create_run_dir(run_dir)
    whole = files.RunLock(run_dir)
    if (run_dir / files.LOCK).is_file():  # a whole run of the spec going on in the same directory
        _claim(whole, run_dir)
        whole.release()
    lock = files.RunLock(run_dir, shard.lock_name())
    try:
        holder = lock.acquire()
        if holder is not None:
            raise SpecError(f"part {shard} of {run_dir} is running already (process {holder})", path="--shard",
                            fix="Wait for it to finish or stop it; each part runs once at a time.")
        if (run_dir / "spec.yaml").exists():
            _check_same_spec(loaded, run_dir, "--shard")
        mine = shard.seeds(list(loaded.spec.seeds or []))
        started = [s for s in mine if seed_dir(run_dir, s).exists()]
        if started and not resume:
            raise SpecError(f"part {shard} ran before in {run_dir} (seeds/{started[0]} exists)", path="--shard",
                            fix="Pass --resume to continue it (its finished seeds are kept), or use a new "
                                "-o RUN_DIR.")
        for s in started:
            files.remove_stale_temporaries(seed_dir(run_dir, s))
        if not (run_dir / files.MARKER).is_file():
            files.write_marker(run_dir)
    except BaseException:
        lock.release()
        raise
    prepared = Run(loaded, run_dir, quiet=quiet, resume=resume)
    prepared._lock = lock
    prepared.shard = shard
    return prepared


def _create_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise SpecError(f"cannot create the run directory {run_dir}: a part of its path is a file", path="-o",
                        fix="Give a directory path.") from None


def _check_same_spec(loaded: LoadedSpec, run_dir: Path, option: str) -> None:
    """Refuse to continue `run_dir` with a spec other than the one it was started with."""
    try:
        old = _strip_versions((run_dir / "spec.yaml").read_text())
    except Exception as exc:  # damaged: not UTF-8, not YAML
        raise SpecError(f"{run_dir / 'spec.yaml'} is damaged ({type(exc).__name__}); this run cannot "
                        f"be resumed", path=option,
                        fix="Start again with --overwrite, or use another -o RUN_DIR.") from None
    if old != _strip_versions(resolved_spec_text(loaded)):
        raise SpecError(f"the spec differs from the one {run_dir} was started with", path=option,
                        fix=f"{option} continues only the same spec and --set options; to run a "
                            "changed spec, start again with --overwrite or use another -o RUN_DIR.")


def _claim(lock: Any, run_dir: Path) -> None:
    holder = lock.acquire()
    if holder is not None:
        who = f"process {holder}" if holder > 0 else "another process"
        raise SpecError(f"run directory {run_dir} is in use by {who} (a run still going)", path="-o",
                        fix="Wait for it to finish or stop it, or use another -o RUN_DIR.")


def _prepare_locked(loaded: LoadedSpec, run_dir: Path, lock: Any, *, resume: bool, overwrite: bool,
                    quiet: bool) -> Run:
    from probekit import _files as files

    fix_new = "Use another -o RUN_DIR."
    kept = [p.name for p in run_dir.iterdir() if p.name != files.LOCK] if run_dir.is_dir() else []
    if kept:
        if not resume and not overwrite:
            raise SpecError(f"run directory {run_dir} already exists", path="-o",
                            fix="Pass --resume to continue it (same spec and --set options), --overwrite "
                                "to start again, or -o NEW_DIR.")
        if overwrite and (why := files.protected(run_dir)):
            raise SpecError(f"refusing to delete {run_dir}: {why}", path="-o",
                            fix="Give the run its own directory, e.g. -o runs/NAME.")
        if not files.is_run_dir(run_dir):
            what = "delete" if overwrite else "resume"
            raise SpecError(f"refusing to {what} {run_dir}: it is not a probekit run directory (no "
                            f"{files.MARKER}; it holds {', '.join(sorted(kept)[:5])}"
                            f"{', ...' if len(kept) > 5 else ''})", path="-o", fix=fix_new)
    links = [p.name for p in run_dir.iterdir() if p.is_symlink()] if run_dir.is_dir() else []
    if links and not (overwrite and not resume):  # --overwrite removes links without following them
        raise SpecError(f"{run_dir} holds symbolic links ({', '.join(sorted(links)[:5])}); a run writes only "
                        f"its own files", path="-o", fix="Remove the links, or use another -o RUN_DIR.")
    _create_run_dir(run_dir)
    if not lock.held:
        _claim(lock, run_dir)
    if overwrite and not resume and kept:
        files.clear_run_dir(run_dir)
    elif resume and (run_dir / "spec.yaml").exists():
        _check_same_spec(loaded, run_dir, "--resume")
    files.remove_stale_temporaries(run_dir)
    if not (run_dir / files.MARKER).is_file():
        files.write_marker(run_dir)
    prepared = Run(loaded, run_dir, quiet=quiet, resume=resume)
    prepared._lock = lock
    return prepared


def _strip_versions(text: str) -> str:
    import yaml

    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError("not a mapping")
    data.pop("versions", None)
    return repr(data)


def execute(run: Run) -> dict[str, Any]:
    """Run a prepared `Run` to the end; return the content of metrics.json without its `provenance`."""
    from probekit import _distributed as distributed
    from probekit._provenance import provenance
    from probekit._registry import create_probe
    from probekit._report import write_reports

    if run.spec.seeds is not None:
        return _execute_seeds(run)
    # a process group this run joined is left at its end (exiting with DDP's threads alive can abort)
    owns_group = not distributed.is_initialized() and distributed.init_from_env(run.device)
    if distributed.is_main():
        run.run_dir.mkdir(parents=True, exist_ok=True)
        run.checkpoint_dir.mkdir(exist_ok=True)
        run.figures_dir.mkdir(exist_ok=True)
    distributed.barrier()
    if not distributed.is_main():  # only rank 0 writes the run directory
        ckpt.set_read_only(run.run_dir)
        run.quiet = True
    from probekit import _files as files
    from probekit._cache import default_cache_dir

    # every write of the run stays inside the run directory (no symbolic links) or the caches
    files.confine(run.run_dir, run.cache_dir, default_cache_dir())
    try:
        ckpt.write_text(run.run_dir / "spec.yaml", resolved_spec_text(run.loaded))
        run._log_file = files.open_append(run.run_dir / "log.txt") if distributed.is_main() else None
        log_route = route_to_run(run)
    except BaseException:
        files.confine(None)
        _release(run)
        raise
    pm = get_plugin_manager()
    start = time.time()
    restore = _install_sigterm_handler(run)
    _start_heartbeat(run)
    try:
        world = distributed.world_size()
        run.log(f"run '{run.spec.name}' in {run.run_dir} on {run.device}" + (" (resumed)" if run.resume else "")
                + (f", {world} processes" if world > 1 else ""))
        seed_everything(run.seed)
        if run.spec.threads:
            torch.set_num_threads(run.spec.threads)
        from probekit._training import set_default_precision

        set_default_precision(run.spec.precision)
        if run.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        t = time.time()
        _stage(run, "data")
        if run.spec.data is not None:
            run.data = build_data(run)
            run.log(f"data '{run.spec.data.type}': {num_examples(run.data.train)} train / "
                    f"{num_examples(run.data.test)} test, images {tuple(run.data.info.image_shape)}")
        _stage(run, "model")
        run.model = _build_model(run)
        run.timings["setup"] = time.time() - t
        run.probe = create_probe(run.spec.probe.type, **run.options["probe"])
        if distributed.is_main():
            pm.notify("probekit_run_started", run.log, run=run)
        t = time.time()
        _stage(run, "fit")
        run.probe.fit(run)
        run.timings["fit"] = time.time() - t
        t = time.time()
        _stage(run, "evaluate")
        results = run.probe.evaluate(run)
        if run.model_training:  # model.train's accuracies: metrics.json and the report state them
            results = {"model_train": dict(run.model_training), **results}
            run.report_sections.insert(0, ("Model training", _model_training_text(run.model_training)))
        run.timings["evaluate"] = time.time() - t
        run.timings["total"] = time.time() - start
        distributed.barrier()
        _stage(run, "report")
        if distributed.is_main():
            written = {**results, "provenance": provenance(run)}
            ckpt.write_json(run.run_dir / "metrics.json", written)
            write_reports(run, written)
            pm.notify("probekit_run_finished", run.log, run=run, results=results)
        run.log(f"finished in {run.timings['total']:.1f}s; results in {run.run_dir}")
        if owns_group:
            distributed.shutdown()
        return results
    except BaseException as exc:
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            run.log(f"run failed: {type(exc).__name__}: {exc}")
        pm.notify("probekit_run_failed", run.log, run=run, error=exc)
        raise
    finally:
        _stop_heartbeat(run)
        restore()
        unroute(log_route)
        ckpt.set_read_only(None)
        files.confine(None)
        if run._log_file is not None:
            run._log_file.close()
        run._log_file = None
        _release(run)
        if owns_group:
            distributed.shutdown(wait=False)  # after an error (a no-op after the shutdown on success)


def _model_training_text(scores: Mapping[str, Any]) -> str:
    """The report's words on model.train: the frozen model's train and test accuracy."""
    text = (f"The model was trained as a classifier (`model.train`, {scores.get('epochs')} epochs) before "
            f"probing: train accuracy {scores.get('train_accuracy', float('nan')):.4f}, test accuracy "
            f"{scores.get('test_accuracy', float('nan')):.4f}.")
    if "best_epoch" in scores:
        text += f" Its weights are those of epoch {scores['best_epoch']}, the lowest validation loss."
    return text


def seed_spec(loaded: LoadedSpec, seed: int) -> LoadedSpec:
    """The spec of one seed run of `seeds:`: `seed` set to it, no `seeds`."""
    spec = loaded.spec.model_copy(update={"seed": seed, "seeds": None})
    raw = {k: v for k, v in loaded.raw.items() if k != "seeds"}
    return LoadedSpec(spec, {**raw, "seed": seed}, loaded.path, loaded.options)


def _execute_seeds(run: Run) -> dict[str, Any]:
    """Run the spec once per seed in RUN_DIR/seeds/<seed>/, then combine them (see `probekit._seeds`).

    With `run.shard` only that part's seeds run; the part that finishes last combines them all.
    """
    from probekit import _distributed as distributed
    from probekit import _files as files
    from probekit._seeds import finished_seeds
    from probekit._shards import AGGREGATE_LOCK, missing_parts

    seeds = list(run.spec.seeds or [])
    mine = run.shard.seeds(seeds) if run.shard is not None else seeds
    owns_group = not distributed.is_initialized() and distributed.init_from_env(run.device)
    main = distributed.is_main()
    if main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        run.figures_dir.mkdir(exist_ok=True)
        ckpt.write_text(run.run_dir / "spec.yaml", resolved_spec_text(run.loaded))
        if run.shard is not None:  # each part its own log: parts on other machines write at the same time
            run._log_file = run.shard.open_log(run.run_dir)
        else:
            run._log_file = files.open_append(run.run_dir / "log.txt")
    else:
        run.quiet = True
    start = time.time()
    try:
        part = f"part {run.shard} of " if run.shard is not None else ""
        run.log(f"run '{run.spec.name}' in {run.run_dir}: {part}{len(seeds)} seeds {seeds}"
                + (f", this part's seeds {mine}" if run.shard is not None else "")
                + (" (resumed)" if run.resume else "") + f"; data split of seed {run.spec.seed}")
        processes = min(run.spec.seed_processes, len(mine))
        if processes > 1 and run.shard is None:
            if distributed.world_size() > 1:
                raise SpecError("seed_processes > 1 runs seeds side by side; with several processes per run "
                                "(--nproc, torchrun) each seed already uses them all", path="seed_processes",
                                fix="Set seed_processes: 1, or run without --nproc.")
            _run_seeds_in_processes(run, mine, processes)
        else:
            _run_seeds(run, mine)
        distributed.barrier()
        if run.shard is not None:
            missing = missing_parts(run.run_dir, seeds, finished_seeds(run.run_dir))
            lock = files.RunLock(run.run_dir, AGGREGATE_LOCK)
            if missing or not main or lock.acquire() is not None:  # another part combines them
                if missing:
                    run.log(f"part {run.shard} finished; still missing: {missing}. The part that finishes last "
                            f"combines the seeds (or: probekit aggregate {run.run_dir})")
                if owns_group:
                    distributed.shutdown()
                return {"shard": str(run.shard), "seeds": mine, "missing": missing}
            try:
                run.log(f"part {run.shard} finished last: combining the {len(seeds)} seeds")
                run.timings["total"] = time.time() - start
                return _combine_seeds(run, seeds, owns_group)
            finally:
                lock.release()
        run.timings["total"] = time.time() - start
        return _combine_seeds(run, seeds, owns_group)
    except BaseException as exc:
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            run.log(f"run failed: {type(exc).__name__}: {exc}")
        raise
    finally:
        if run._log_file is not None:
            run._log_file.close()
        run._log_file = None
        if owns_group:
            distributed.shutdown(wait=False)


def _run_seeds(run: Run, seeds: list[int]) -> None:
    """Run the seed runs of `seeds` one after the other (those finished before are kept with --resume)."""
    from probekit._seeds import seed_dir

    for i, seed in enumerate(seeds):
        folder = seed_dir(run.run_dir, seed)
        if run.resume and (folder / "metrics.json").exists():
            run.log(f"seed {seed} ({i + 1}/{len(seeds)}): finished before; kept ({folder})")
            continue
        run.log(f"seed {seed} ({i + 1}/{len(seeds)}): running in {folder}")
        sub = Run(seed_spec(run.loaded, seed), folder, quiet=run.quiet, resume=run.resume)
        sub.data_seed = run.spec.seed
        t = time.time()
        sub_results = execute(sub)
        run.timings[f"seed {seed}"] = time.time() - t
        head = ", ".join(f"{k}={v:.4g}" for k, v in sub_results.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool))
        run.log(f"seed {seed}: done" + (f" ({head})" if head else ""))


def _run_seeds_in_processes(run: Run, seeds: list[int], processes: int) -> None:
    """`seed_processes`: the seeds as parts (`--shard I/N`'s split), each part in a child process
    running `seed_part`; this process holds the run directory's lock, waits, and combines."""
    import os
    import subprocess
    import tempfile

    from probekit._shards import Shard

    parts = [Shard(i, processes) for i in range(processes)]
    run.log(f"seeds {seeds} in {processes} processes at once (their logs: "
            f"{', '.join(str(p.log_path(run.run_dir).relative_to(run.run_dir)) for p in parts)})")
    code = "import sys; from probekit._runner import seed_part; sys.exit(seed_part(*sys.argv[1:]))"
    t = time.time()
    stderr = [tempfile.TemporaryFile("w+") for _ in parts]  # files, not pipes: a full pipe would block a child
    children = [subprocess.Popen([sys.executable, "-c", code, str(run.run_dir), str(p.index), str(p.count),
                                  "resume" if run.resume else "new"], env=os.environ.copy(),
                                 stdout=subprocess.DEVNULL, stderr=err) for p, err in zip(parts, stderr)]
    try:
        for child in children:
            child.wait()
    finally:
        for child in children:  # an interrupted parent leaves no process behind (they checkpoint on SIGTERM)
            if child.poll() is None:
                child.terminate()
                child.wait()
    run.timings["seeds"] = time.time() - t
    failed = []
    for p, child, err in zip(parts, children, stderr):
        err.seek(0)
        text = err.read().strip()
        err.close()
        if child.returncode != 0:
            failed.append((p, text))
        run.log(f"seeds {p.seeds(seeds)}: " + ("done" if child.returncode == 0 else
                                                  f"failed (exit {child.returncode})"))
    if failed:
        p, text = failed[0]
        raise RunError(f"the process running seeds {p.seeds(seeds)} failed (see {p.log_path(run.run_dir)})"
                       + (f": {text.splitlines()[-1]}" if text else ""))


def seed_part(run_dir: str, index: str, count: str, mode: str) -> int:
    """A child process of `seed_processes`: run part `index` of `count` of the seeds of the run
    directory's spec (the parent holds the directory's lock and combines the parts)."""
    from probekit._shards import Shard, load_run_spec

    loaded = load_run_spec(Path(run_dir))
    run = Run(loaded, Path(run_dir), quiet=True, resume=mode == "resume")
    run.shard = Shard(int(index), int(count))
    run._log_file = run.shard.open_log(run.run_dir)
    try:
        _run_seeds(run, run.shard.seeds(list(loaded.spec.seeds or [])))
    finally:
        run._log_file.close()
    return 0


def _combine_seeds(run: Run, seeds: list[int], owns_group: bool = False) -> dict[str, Any]:
    """Combine the finished seed runs of `seeds` into the run directory's tables, metrics.json, figures
    and report (rank 0 writes)."""
    from probekit import _distributed as distributed
    from probekit._provenance import provenance
    from probekit._registry import create_probe
    from probekit._report import write_reports
    from probekit._seeds import aggregate

    start = time.time()
    main = distributed.is_main()
    combined = aggregate(run.run_dir, seeds, write=main)
    run.probe = create_probe(run.spec.probe.type, **run.options["probe"])
    summarize = getattr(run.probe, "summarize", None)
    if main and summarize is not None:
        summarize(run, combined)
    trained = combined.aggregate.get("model_train") if isinstance(combined.aggregate, dict) else None
    if isinstance(trained, dict) and all(hasattr(trained.get(k), "format") for k in
                                         ("train_accuracy", "test_accuracy")):
        run.report_sections.insert(0, ("Model training", (
            f"The model was trained as a classifier (`model.train`) once per seed before probing: train "
            f"accuracy {trained['train_accuracy'].format()}, test accuracy {trained['test_accuracy'].format()} "
            f"(mean ± half-width of the 95 % interval over seeds).")))
    results = combined.metrics_json()
    run.timings["total"] = run.timings.get("total", 0.0) + time.time() - start
    if main:
        written = {**results, "provenance": provenance(run)}
        ckpt.write_json(run.run_dir / "metrics.json", written)
        write_reports(run, written)
    run.log(f"{len(seeds)} seeds combined in {run.run_dir}")
    if owns_group:
        distributed.shutdown()
    return results


def aggregate_run(run_dir: str | Path, *, quiet: bool = True) -> dict[str, Any]:
    """Combine the parts (`--shard I/N`) of a run directory, as one run of its whole spec would.

    Refuses (exit 2) a directory whose parts have not all finished, naming the missing ones.
    """
    from probekit import _files as files
    from probekit._seeds import finished_seeds
    from probekit._shards import AGGREGATE_LOCK, load_run_spec, missing_parts

    run_dir = Path(run_dir)
    loaded = load_run_spec(run_dir)
    seeds = list(loaded.spec.seeds or [])
    if not seeds:
        raise SpecError(f"{run_dir} is a run of one part (its spec has no `seeds:`); there is nothing to "
                        f"combine", path="RUN_DIR", fix="Its results are written by the run itself "
                                                        "(probekit report RUN_DIR rewrites the report).")
    missing = missing_parts(run_dir, seeds, finished_seeds(run_dir))
    if missing:
        raise SpecError(f"{run_dir}: parts not finished: {missing}", path="RUN_DIR",
                        fix="Run them (probekit run SPEC -o RUN_DIR --shard I/N; add --resume to continue a "
                            "part that stopped), then aggregate again.")
    lock = files.RunLock(run_dir, AGGREGATE_LOCK)
    whole = files.RunLock(run_dir)
    for claimed in (lock, whole):
        holder = claimed.acquire()
        if holder is not None:
            lock.release()
            raise SpecError(f"{run_dir} is in use by process {holder}", path="RUN_DIR",
                            fix="Wait for it to finish, then aggregate again.")
    run = Run(loaded, run_dir, quiet=quiet, resume=True)
    files.confine(run_dir, run.cache_dir, default_cache_dir())
    try:
        run._log_file = files.open_append(run_dir / "log.txt")
        return _combine_seeds(run, seeds)
    finally:
        files.confine(None)
        if run._log_file is not None:
            run._log_file.close()
        whole.release()
        lock.release()


def _start_heartbeat(run: Run) -> None:
    """Progress lines on stderr for a run that prints there but not to a terminal (nohup, SLURM, CI)."""
    if run.quiet or sys.stderr.isatty():
        return
    from probekit._progress import Heartbeat

    run._heartbeat = Heartbeat().start()


def _stage(run: Run, name: str) -> None:
    if run._heartbeat is not None:
        run._heartbeat.stage(name)


def _stop_heartbeat(run: Run) -> None:
    if run._heartbeat is not None:
        run._heartbeat.stop()
        run._heartbeat = None


def _release(run: Run) -> None:
    """Release the run directory's lock (the kernel releases it too when the process dies)."""
    if run._lock is not None:
        run._lock.release()
        run._lock = None


def _install_sigterm_handler(run: Run) -> Callable[[], None]:
    """On SIGTERM, let training checkpoint after its current step, then stop (see Trainer)."""
    import signal
    import threading

    from probekit._training import clear_stop, request_stop

    clear_stop()
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        run.debug("SIGTERM received: checkpointing after the current step")
        request_stop()

    previous = signal.signal(signal.SIGTERM, handler)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)
        clear_stop()

    return restore


def run(spec: str | Path | Mapping[str, Any] | LoadedSpec, run_dir: str | Path | None = None, *,
        overrides: Iterable[str] = (), resume: bool = False, overwrite: bool = False,
        quiet: bool = True, shard: str | None = None) -> dict[str, Any]:
    """Run a spec (a path, a dict or a loaded spec) into `run_dir`; return the results.

    The results are metrics.json's content without its `provenance` (date, host, versions, device,
    seeds, git commit), so that two runs of a spec return equal results. `shard="I/N"` runs only that
    part of the spec's seeds (see `aggregate_run`); until the last part finishes, it returns
    `{"shard", "seeds", "missing"}`.
    """
    loaded = spec if isinstance(spec, LoadedSpec) else load_spec(spec, overrides)
    prepared = prepare(loaded, Path(run_dir) if run_dir is not None else None, resume=resume,
                       overwrite=overwrite, quiet=quiet, shard=shard)
    return execute(prepared)


__all__ = ["Run", "aggregate_run", "run", "prepare", "execute", "RunError", "seed_everything"]
