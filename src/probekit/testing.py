"""Tiny real models for tests and offline examples (like captum's test models), and test helpers.

The models are ordinary `nn.Module` factories, usable with the `module` adapter:
`model: {type: module, factory: "probekit.testing:small_cnn"}`.

This module is also a pytest plugin (entry point `pytest11: probekit`), so every test session
with probekit installed, a plugin's tests among them, gets without copying: the `slow` marker,
the Agg matplotlib backend, and feature and model caches kept in the session's temporary
directory instead of the user's home (the autouse fixture `probekit_cache`). The module imports
torch only when a model is built and pytest only when pytest loads it, so that the plugin costs
nothing and the models work without pytest installed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

try:
    import pytest
except ImportError:  # the models work without pytest
    pytest = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from torch import nn

    from probekit._context import RunContext


def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 16) -> nn.Sequential:
    """A 3-conv CNN classifier for small images (8x8 digits to 28x28 MNIST and up).

    Module paths: `0` conv, `1` batch norm, `2` ReLU, `3`-`5` the same again,
    `6` 2x2 max pool, `7` conv, `8` ReLU, `9` global pool, `10` flatten, `11` linear head.
    """
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes),
    )


def mnist_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 16, image_size: int = 28) -> nn.Sequential:
    """The convolutions of `small_cnn`, each with batch norm, then max pooling, flatten and a linear head:
    a classifier that keeps the digit's layout (the quickstart's model: trained as the quickstart does,
    10 epochs of Adam at 3e-3 with a cosine schedule, it reaches 0.977 to 0.980 test accuracy on
    mnist5k's 1,000 test digits over seeds 0, 1 and 2).

    Module paths: `0` conv, `1` batch norm, `2` ReLU, `3`-`5` the same again, `6` 2x2 max pool, `7`-`9`
    conv, batch norm, ReLU, `10` 2x2 max pool, `11` flatten, `12` linear head. `image_size` is the
    input's side (the head's width depends on it).
    """
    from torch import nn

    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * width * side * side, num_classes),
    )


def mlp(in_features: int = 64, hidden: int = 64, num_classes: int = 10, depth: int = 2) -> nn.Sequential:
    """An MLP classifier on flattened images: Flatten, (Linear, ReLU) x depth, Linear."""
    from torch import nn

    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def small_cnn_section(width: int = 4, in_channels: int = 1, num_classes: int = 10) -> dict[str, Any]:
    """A spec's `model:` section with `small_cnn` (frozen, untrained) for 8x8 digits in tests."""
    return {"type": "module", "factory": "probekit.testing:small_cnn",
            "kwargs": {"in_channels": in_channels, "num_classes": num_classes, "width": width}}


def reset_plugin_manager() -> None:
    """Forget the process's plugin manager, so that the next use loads the plugins anew."""
    from probekit._plugins import reset_plugin_manager as reset

    reset()


def prepare_run(loaded: Any, run_dir: Any, **options: Any) -> Any:
    """Prepare a run without executing it (`probekit.run` does both); returns the `RunContext`."""
    from probekit._runner import prepare

    return prepare(loaded, run_dir, **options)


def execute_run(run: RunContext) -> dict[str, Any]:
    """Execute a run made by `prepare_run`; returns the content of metrics.json."""
    from probekit._runner import Run, execute

    if not isinstance(run, Run):
        raise TypeError(f"execute_run takes the run that prepare_run returned, got {type(run).__name__}")
    return execute(run)


def read_metrics(run_dir: Any) -> dict[str, Any]:
    """A run directory's metrics.json without its `provenance` (date, host, ...: it differs between runs,
    so compare these to check that two runs gave the same results)."""
    import json
    from pathlib import Path

    results = json.loads((Path(run_dir) / "metrics.json").read_text())
    results.pop("provenance", None)
    return results


def limit_memory(monkeypatch: Any, nbytes: int) -> None:
    """Make `batch_size: auto` on the CPU see only `nbytes` of available memory (a pytest monkeypatch)."""
    monkeypatch.setattr("probekit._batchsize.available_memory", lambda: nbytes)


def flip_byte(path: Any, where: float = 0.5) -> None:
    """Flip one bit (0x40) of the byte at the fraction `where` of the file `path`, as a bad disk or a
    bad copy does (a digit becomes a letter, a letter changes case or becomes punctuation)."""
    from pathlib import Path

    data = bytearray(Path(path).read_bytes())
    data[min(int(len(data) * where), len(data) - 1)] ^= 0x40
    Path(path).write_bytes(bytes(data))


def finished_run(spec: Any, root: Any, *, memory: int | None = None) -> tuple[Any, Any]:
    """Run `spec` into `root/run` with a cache of its own, `root/cache` (and, given `memory`, with
    `batch_size: auto` seeing that many bytes available); returns both folders."""
    from pathlib import Path

    from probekit._runner import run

    root = Path(root)
    if pytest is None:
        raise RuntimeError("finished_run needs pytest")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROBEKIT_CACHE", str(root / "cache"))
        if memory is not None:
            limit_memory(mp, memory)
        run(spec, root / "run")
    return root / "run", root / "cache"


def damage_and_resume(spec: Any, finished: Any, work: Any, damage: Sequence[str], *, expect: str,
                      remove: Sequence[str] = (), where: float = 0.5, cache: Any = None,
                      memory: int | None = None) -> str:
    """Damage a copy of a finished run, resume it, and check that the damage was found and repaired.

    Copies the run directory `finished` to `work`, flips one byte (`flip_byte`) in every file that
    matches a glob pattern of `damage`, deletes every file that matches one of `remove` (so that the
    run reads the damaged ones: a finished part is not read again on resume), and resumes the run
    there with the cache `cache` (and `memory`, as `finished_run`). Patterns are relative to the run
    directory, or absolute (e.g. into a copy of the cache). Asserts that the resumed run's metrics.json
    (less its provenance) and results.csv equal the finished run's, and that the lines it added to
    log.txt name every damaged file and contain `expect`; returns those lines.
    """
    import shutil
    from pathlib import Path

    from probekit._runner import run

    if pytest is None:
        raise RuntimeError("damage_and_resume needs pytest")
    finished, work = Path(finished), Path(work)
    shutil.copytree(finished, work, symlinks=True)

    def matches(pattern: str) -> list[Path]:
        if Path(pattern).is_absolute():
            return sorted(Path(Path(pattern).anchor).glob(str(Path(pattern).relative_to(Path(pattern).anchor))))
        return sorted(work.glob(pattern))

    damaged = []
    for pattern in damage:
        found = [p for p in matches(pattern) if p.is_file()]
        assert found, f"no file matches {pattern!r} to damage"
        for path in found:
            flip_byte(path, where)
        damaged += found
    for pattern in remove:
        for path in matches(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    before = (work / "log.txt").read_text()
    with pytest.MonkeyPatch.context() as mp:
        if cache is not None:
            mp.setenv("PROBEKIT_CACHE", str(cache))
        if memory is not None:
            limit_memory(mp, memory)
        run(spec, work, resume=True)
    log = (work / "log.txt").read_text()[len(before):]
    assert read_metrics(work) == read_metrics(finished)
    if (finished / "results.csv").exists():
        assert (work / "results.csv").read_text() == (finished / "results.csv").read_text()
    for path in damaged:
        assert path.name in log, (path.name, log)
    assert expect in log, (expect, log)
    return log


def unmatched_files(run_dir: Any, patterns: Sequence[str], below: str = "checkpoints") -> list[str]:
    """The files below `run_dir/below` that match none of the glob `patterns` (relative to `run_dir`):
    what a test that damages every kind of checkpoint file would leave untested."""
    from pathlib import Path

    run_dir = Path(run_dir)
    covered = {p for pattern in patterns for p in run_dir.glob(pattern)}
    return sorted(str(p.relative_to(run_dir)) for p in (run_dir / below).rglob("*") if p.is_file() and p not in covered)


def stop_when(spec: Any, run_dir: Any, pattern: str, timeout: float = 600) -> list[Any]:
    """Run `spec` into `run_dir` and ask it to stop, as SIGTERM does, as soon as a file matching the glob
    `pattern` (relative to the run directory) appears: the trainers checkpoint after their current step
    and the run ends. Returns the matching files; fails if the run finished first."""
    import threading
    import time
    from pathlib import Path

    from probekit._runner import run
    from probekit._training import StopRequested, request_stop

    run_dir = Path(run_dir)
    finished = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not finished.is_set() and time.monotonic() < deadline:
            if any(run_dir.glob(pattern)):
                request_stop()
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run(spec, run_dir)
    except StopRequested:
        pass
    else:
        raise AssertionError(f"the run finished before a file matching {pattern!r} appeared")
    finally:
        finished.set()
        watcher.join()
    return sorted(run_dir.glob(pattern))


def isolated_plugins(monkeypatch: Any, plugins: dict[str, Any]) -> Any:
    """Use a plugin manager with only the core's built-ins and `plugins` (name -> module or object)."""
    import probekit._plugins as _plugins

    pm = _plugins.PluginManager(load_entry_points=False)
    for name, plugin in plugins.items():
        pm.register(plugin, name=name)
    monkeypatch.setattr(_plugins, "_manager", pm)
    return pm


def heavy_modules_after_loading_plugins(heavy: Sequence[str] = ("torch", "timm", "transformers")) -> list[str]:
    """Which of `heavy` a fresh interpreter has imported after loading every plugin (should be none).

    `probekit --help`, `plugins` and `list` must stay fast: a plugin imports its libraries only when
    one of its types is used.
    """
    import subprocess
    import sys

    code = ("import sys; from probekit import get_plugin_manager; get_plugin_manager(); "
            f"print(','.join(m for m in {tuple(heavy)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return [m for m in out.strip().split(",") if m]


def listed_types(kind: str) -> dict[str, str]:
    """`probekit list KIND` run as a command: name -> the rest of its line."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "probekit", "list", kind], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[0]: line for line in out.splitlines() if line.strip() and not line.startswith(" ")}


# -- the pytest plugin ------------------------------------------------------------------------------
def pytest_configure(config: Any) -> None:
    """Register the `slow` marker (longer end-to-end tests); figures render without a display."""
    config.addinivalue_line("markers", "slow: longer end-to-end tests")
    os.environ.setdefault("MPLBACKEND", "Agg")


if pytest is not None:

    @pytest.fixture(autouse=True)
    def probekit_cache(tmp_path_factory: Any, monkeypatch: Any) -> Iterator[Any]:
        """Feature and model caches in the test session's temporary directory, not the user's home."""
        path = tmp_path_factory.getbasetemp() / "probekit-cache"
        monkeypatch.setenv("PROBEKIT_CACHE", str(path))
        yield path

    @pytest.fixture
    def one_torch_thread() -> Iterator[None]:
        """One torch thread for the test (tiny models: more threads only spin-wait on a shared machine).

        Use it in a test module with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
        """
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(before)
