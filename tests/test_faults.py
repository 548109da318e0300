"""Bad inputs and faults: every user error is exit 2 with a message, every fault of the machine is
exit 1 without a traceback, and nothing is lost, written elsewhere or silently altered.

Most cases need only `probekit validate` or a tiny run (an MLP on 300 digits, a linear probe on
one layer); they run in this process through `probekit._cli.main`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import probekit
from probekit import _checkpoint as ckpt
from probekit import _files as files
from probekit._cli import main
from probekit._errors import SpecError
from probekit.testing import read_metrics

SPEC = {
    "name": "tiny", "seed": 0, "device": "cpu",
    "model": {"type": "module", "factory": "probekit.testing:mlp", "kwargs": {"in_features": 64, "hidden": 32}},
    "data": {"type": "digits", "limit": 300, "test_limit": 100},
    "probe": {"type": "linear", "layers": ["2"], "C": 1.0, "max_iter": 200},
    "metrics": ["accuracy"],
}


@pytest.fixture
def spec(tmp_path):
    """A tiny valid spec file (edit the dict given to `write` for variants)."""
    def write(data=None, name="spec.yaml"):
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data if data is not None else SPEC, sort_keys=False))
        return path
    return write


def cli(capsys, *argv):
    """Exit code, stdout and stderr of `probekit ARGV` run in this process."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def user_error(capsys, *argv, expect=()):
    """Assert exit 2 with a message naming `expect`, without a traceback; return the message."""
    code, out, err = cli(capsys, *argv)
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and err.startswith("error: "), err
    for fragment in expect:
        assert fragment in err, (fragment, err)
    return err


def tree(path: Path) -> dict[str, bytes]:
    """Every file below `path` with its content (to show that nothing changed)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# -- 1. the spec file itself ----------------------------------------------------------------------
SPEC_FILES = {
    "directory": (lambda p: p.mkdir(), ["this is a directory"]),
    "binary": (lambda p: p.write_bytes(bytes(range(256)) * 4), ["not a text file"]),
    "nul bytes": (lambda p: p.write_bytes(b"name: x\x00\x00\nprobe: {type: linear}\n"), ["not a text file"]),
    "latin-1": (lambda p: p.write_bytes("name: caf\xe9\n".encode("latin-1")), ["not a text file"]),
    "too large": (lambda p: p.write_text("# padding\n" * 200_000), ["larger than"]),
    "missing": (lambda p: None, ["spec file not found"]),
    "a list": (lambda p: p.write_text("- a\n- b\n"), ["must be a mapping"]),
    "a number": (lambda p: p.write_text("3\n"), ["must be a mapping"]),
    "bad yaml": (lambda p: p.write_text("probe: {type: linear\n"), ["invalid YAML", "line"]),
    "tabs": (lambda p: p.write_text("probe:\n\ttype: linear\n"), ["invalid YAML"]),
    "empty": (lambda p: p.write_text(""), ["empty"]),
    "unknown key": (lambda p: p.write_text(yaml.safe_dump({**SPEC, "colour": "red"})), ["colour", "unknown key"]),
}


@pytest.mark.parametrize("case", sorted(SPEC_FILES))
@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_bad_spec_file_is_exit_2(tmp_path, capsys, case, command):
    make, expect = SPEC_FILES[case]
    path = tmp_path / "bad.yaml"
    make(path)
    user_error(capsys, command, path, *(["-o", tmp_path / "r"] if command == "run" else []), expect=expect)
    assert not (tmp_path / "r").exists()


# -- 2. bounded input: aliases and numbers ----------------------------------------------------
def _bomb(depth: int, width: int = 9) -> str:
    lines = ["name: bomb", "probe: {type: linear, layers: ['2']}", "data: {type: digits}",
             "model:", "  type: module", "  factory: 'probekit.testing:mlp'", "  kwargs:",
             f"    l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, depth):
        lines.append(f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("depth", [5, 7, 9, 12])
def test_an_alias_bomb_is_refused_in_under_a_second(tmp_path, capsys, depth):
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb(depth))
    assert path.stat().st_size < 1100  # the 9-level bomb is ~1 KB and would expand to 9**9 strings
    start = time.perf_counter()
    with pytest.raises(SpecError, match="expands to more than"):
        probekit.load_spec(path)
    assert time.perf_counter() - start < 1.0
    user_error(capsys, "validate", path, expect=["YAML aliases", "bomb.yaml"])


def test_a_recursive_alias_and_a_bomb_in_set_are_refused(tmp_path, capsys, spec):
    path = tmp_path / "rec.yaml"
    path.write_text("name: r\nprobe: &p {type: linear, again: *p}\n")
    user_error(capsys, "validate", path, expect=["recursive"])
    tens = lambda ref: "[" + ", ".join([ref] * 10) + "]"  # noqa: E731
    value = f"[&a {tens('x')}, &b {tens('*a')}, &c {tens('*b')}, &d {tens('*c')}, {tens('*d')}]"
    user_error(capsys, "validate", spec(), "--set", f"model.kwargs.x={value}",
               expect=["model.kwargs.x", "aliases"])


def test_small_aliases_still_work(tmp_path, capsys):
    path = tmp_path / "alias.yaml"
    text = yaml.safe_dump(SPEC, sort_keys=False).replace("test_limit: 100", "test_limit: &n 100")
    path.write_text(text + "threads: 1\n")
    code, out, err = cli(capsys, "validate", path)
    assert code == 0, err


HUGE = 10**30
NUMBERS = [
    ("seed", HUGE, "too large"), ("seed", -HUGE, "too large"), ("seed", -1, "greater than or equal"),
    ("probe.epochs", HUGE, "too large"), ("data.limit", HUGE, "too large"), ("data.limit", 1, "greater than"),
    ("data.limit", 0, "greater than"), ("data.test_limit", HUGE, "too large"), ("data.test_limit", 0, "greater"),
    ("data.batch_size", HUGE, "too large"), ("data.batch_size", 0, "greater"), ("data.size", HUGE, "too large"),
    ("data.size", 100_000, "less than or equal"), ("data.size", 2, "greater"), ("data.test_fraction", 1.5, "less"),
    ("data.test_fraction", 0, "greater"), ("data.test_fraction", ".nan", "finite"), ("threads", HUGE, "too large"),
    ("threads", 0, "greater"), ("model.kwargs.hidden", HUGE, "too large"), ("model.train.epochs", HUGE, "too large"),
    ("model.train.epochs", 0, "greater"), ("model.train.lr", ".inf", "finite"), ("model.train.lr", "-.inf", "finite"),
    ("model.train.lr", ".nan", "finite"), ("model.train.lr", 0, "greater"), ("model.train.weight_decay", -1, "greater"),
    ("model.train.batch_size", HUGE, "too large"), ("model.train.batch_size", 0, "positive"),
    ("probe.layers.0", HUGE, "too large"), ("metrics.0", ".inf", "finite"),
]


@pytest.mark.parametrize("key,value,expect", NUMBERS, ids=[f"{k}={str(v)[:8]}" for k, v, _ in NUMBERS])
def test_numbers_out_of_range_name_their_key(capsys, spec, key, value, expect):
    err = user_error(capsys, "validate", spec(), "--set", f"{key}={value}", expect=[expect])
    assert key.split(".")[-1] in err or key in err


def test_a_huge_image_size_is_refused_before_allocating(tmp_path, capsys, spec):
    user_error(capsys, "run", spec(), "-o", tmp_path / "r", "-q", "--set", "data.size=8000",
               expect=["data.size", "would need", "GiB"])


# -- 3. the model section: factories and weights ---------------------------------------------------
FACTORIES = {
    "unknown kwarg": ({"factory": "probekit.testing:mlp", "kwargs": {"in_features": 64, "colour": 1}},
                      ["model.kwargs", "does not take", "colour"]),
    "missing module": ({"factory": "no_such_module_xyz:f"}, ["model.factory", "cannot import"]),
    "missing attribute": ({"factory": "probekit.testing:no_such_factory"}, ["model.factory", "cannot import"]),
    "not callable": ({"factory": "probekit.testing:TYPE_CHECKING"}, ["model.factory", "not a callable"]),
    "raises": ({"factory": "faulty_factories:raises"}, ["model.kwargs", "raised RuntimeError", "broken factory"]),
    "returns a list": ({"factory": "faulty_factories:returns_list"}, ["model.factory", "not an nn.Module"]),
    "returns None": ({"factory": "faulty_factories:returns_none"}, ["model.factory", "not an nn.Module"]),
    "bad value": ({"factory": "probekit.testing:mlp", "kwargs": {"in_features": "many"}},
                  ["model.kwargs", "raised TypeError"]),
    "module fails at import": ({"factory": "faulty_import_module:f"}, ["model.factory", "ZeroDivisionError"]),
}


@pytest.fixture
def faulty_modules(tmp_path, monkeypatch):
    (tmp_path / "faulty_factories.py").write_text(textwrap.dedent("""
        def raises(**kwargs):
            raise RuntimeError("broken factory")
        def returns_list(**kwargs):
            return [1, 2]
        def returns_none(**kwargs):
            return None
    """))
    (tmp_path / "faulty_import_module.py").write_text("1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize("case", sorted(FACTORIES))
def test_a_faulty_factory_is_exit_2_before_training(tmp_path, capsys, spec, faulty_modules, case):
    model, expect = FACTORIES[case]
    user_error(capsys, "run", spec({**SPEC, "model": {"type": "module", **model}}), "-o", tmp_path / "r", "-q",
               expect=expect)
    assert not (tmp_path / "r" / "checkpoints").exists() or not any((tmp_path / "r" / "checkpoints").iterdir())


def _weights(tmp_path: Path, case: str) -> Path:
    from safetensors.torch import save_file

    model = probekit.testing.mlp(in_features=64, hidden=32)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if case.endswith("safetensors"):
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "w.pt"
        torch.save(state, path)
    data = bytearray(path.read_bytes())
    if case.startswith("truncated"):
        data = data[: len(data) // 3]
    elif case.startswith("header damaged"):
        data[:16] = b"\xff" * 16
    elif case == "text file.pt":
        data = bytearray(b"these are not weights\n")
    elif case == "a pickle with code.pt":
        import pickle

        class Evil:
            def __reduce__(self):
                return (os.system, ("true",))

        data = bytearray(pickle.dumps(Evil()))
    elif case == "a list.pt":
        buf = __import__("io").BytesIO()
        torch.save([1, 2, 3], buf)
        data = bytearray(buf.getvalue())
    elif case == "wrong shapes.safetensors":
        save_file({k: torch.zeros(3) for k in state}, str(path))
        return path
    path.write_bytes(bytes(data))
    return path


WEIGHTS = {
    "truncated.safetensors": ["model.weights", "cannot read weights"],
    "header damaged.safetensors": ["model.weights", "cannot read weights"],
    "truncated.pt": ["model.weights", "cannot read weights"],
    "text file.pt": ["model.weights", "cannot read weights"],
    "a pickle with code.pt": ["model.weights", "safely"],
    "a list.pt": ["model.weights", "not a state dict"],
    "wrong shapes.safetensors": ["model.weights"],
}


@pytest.mark.parametrize("case", sorted(WEIGHTS))
def test_damaged_weights_are_exit_2_naming_the_key(tmp_path, capsys, spec, case):
    path = _weights(tmp_path, case)
    model = {**SPEC["model"], "weights": str(path)}
    user_error(capsys, "run", spec({**SPEC, "model": model}), "-o", tmp_path / "r", "-q", expect=WEIGHTS[case])


# -- 4. the run directory: ownership, lock, --overwrite, --resume -----------------------------------
def test_overwrite_deletes_nothing_that_is_not_a_run_directory(tmp_path, capsys, spec, monkeypatch):
    thesis = tmp_path / "thesis"
    (thesis / "chapters").mkdir(parents=True)
    (thesis / "thesis.tex").write_text("years of work")
    (thesis / "chapters" / "1.tex").write_text("more")
    before = tree(thesis)
    user_error(capsys, "run", spec(), "-o", thesis, "--overwrite", "-q", expect=["not a probekit run directory"])
    user_error(capsys, "run", spec(), "-o", thesis, "--resume", "-q", expect=["not a probekit run directory"])
    user_error(capsys, "run", spec(), "-o", thesis, "-q", expect=["already exists"])
    assert tree(thesis) == before and not (thesis / files.LOCK).exists()


@pytest.mark.parametrize("where", ["cwd", "parent of cwd", "home", "parent of home"])
def test_overwrite_refuses_the_current_and_home_directories(tmp_path, capsys, spec, monkeypatch, where):
    run_dir = tmp_path / "work"
    assert main(["run", str(spec()), "-o", str(run_dir), "-q"]) == 0  # a real run directory
    inner = run_dir / "sub"
    inner.mkdir()
    capsys.readouterr()
    if where.endswith("cwd"):
        monkeypatch.chdir(inner if where.startswith("parent") else run_dir)
    else:
        monkeypatch.setenv("HOME", str(inner if where.startswith("parent") else run_dir))
    before = tree(run_dir)
    user_error(capsys, "run", spec(), "-o", run_dir, "--overwrite", "-q", expect=["refusing to delete"])
    assert tree(run_dir) == before


def test_overwrite_refuses_the_dot_directory(tmp_path, capsys, spec, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("keep")
    path = spec()
    user_error(capsys, "run", path, "-o", ".", "--overwrite", "-q", expect=["refusing to delete ."])
    assert (tmp_path / "notes.txt").read_text() == "keep" and path.exists()


OUTPUTS = {
    "a file": (lambda d: (d / "f.txt").write_text("x") and d / "f.txt", ["is a file"]),
    "/dev/null": (lambda d: Path(os.devnull), ["is a file"]),
    "below a file": (lambda d: (d / "g.txt").write_text("x") and d / "g.txt" / "run", ["a part of its path is a file"]),
}


@pytest.mark.parametrize("case", sorted(OUTPUTS))
@pytest.mark.parametrize("flag", [[], ["--overwrite"], ["--resume"]])
def test_output_that_is_not_a_directory_is_exit_2(tmp_path, capsys, spec, case, flag):
    make, expect = OUTPUTS[case]
    target = make(tmp_path)
    user_error(capsys, "run", spec(), "-o", target, "-q", *flag, expect=["-o", *expect])
    assert Path(os.devnull).exists() and not Path(os.devnull).is_file()


def test_a_live_run_directory_is_refused_with_the_holders_pid(tmp_path, capsys, spec):
    from probekit.testing import prepare_run

    run_dir = tmp_path / "r"
    assert main(["run", str(spec()), "-o", str(run_dir), "-q"]) == 0
    first = read_metrics(run_dir)
    live = prepare_run(probekit.load_spec(spec()), run_dir, resume=True)  # holds the lock, as a live run
    before = tree(run_dir)
    for flag in ([], ["--resume"], ["--overwrite"]):
        user_error(capsys, "run", spec(), "-o", run_dir, "-q", *flag, expect=[f"in use by process {os.getpid()}"])
    assert tree(run_dir) == before  # --overwrite deleted nothing of the live run
    live._lock.release()
    assert main(["run", str(spec()), "-o", str(run_dir), "-q", "--overwrite"]) == 0
    assert read_metrics(run_dir) == first


def test_the_lock_is_released_after_a_failed_run_and_a_killed_process(tmp_path, capsys, spec):
    run_dir = tmp_path / "r"
    bad = {**SPEC, "model": {**SPEC["model"], "layers": ["9"]}}
    code, _, _ = cli(capsys, "run", spec(bad), "-o", run_dir, "-q")
    assert code == 2
    assert files.RunLock(run_dir).acquire() is None  # free again
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from probekit._files import RunLock
        from pathlib import Path
        lock = RunLock(Path({str(run_dir)!r}))
        assert lock.acquire() is None
        print('locked', flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        user_error(capsys, "run", spec(), "-o", run_dir, "-q", "--overwrite", expect=[f"process {holder.pid}"])
    finally:
        holder.kill()
        holder.wait()
    assert main(["run", str(spec()), "-o", str(run_dir), "-q", "--overwrite"]) == 0  # kill -9 released it


DAMAGED_SPECS = {
    "binary": b"\x00\xff\xfe" * 50, "invalid yaml": b"name: [unclosed\n", "a list": b"- 1\n- 2\n",
    "not utf-8": "name: caf\xe9\n".encode("latin-1"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_SPECS))
def test_a_damaged_spec_yaml_in_the_run_dir_on_resume_is_exit_2(tmp_path, capsys, spec, case):
    run_dir = tmp_path / "r"
    assert main(["run", str(spec()), "-o", str(run_dir), "-q"]) == 0
    (run_dir / "spec.yaml").write_bytes(DAMAGED_SPECS[case])
    user_error(capsys, "run", spec(), "-o", run_dir, "-q", "--resume", expect=["spec.yaml is damaged", "--overwrite"])


def test_resume_with_a_changed_spec_says_what_works(tmp_path, capsys, spec):
    run_dir = tmp_path / "r"
    assert main(["run", str(spec()), "-o", str(run_dir), "-q"]) == 0
    err = user_error(capsys, "run", spec(), "-o", run_dir, "-q", "--resume", "--set", "seed=3",
                     expect=["differs", "--overwrite"])
    assert "another -o" in err
    assert main(["run", str(spec()), "-o", str(run_dir), "-q", "--overwrite", "--set", "seed=3"]) == 0


def test_a_run_directory_from_before_the_marker_can_be_resumed_and_overwritten(tmp_path, capsys, spec):
    run_dir = tmp_path / "r"
    assert main(["run", str(spec()), "-o", str(run_dir), "-q"]) == 0
    first = read_metrics(run_dir)
    (run_dir / files.MARKER).unlink()
    (run_dir / files.LOCK).unlink()
    assert main(["run", str(spec()), "-o", str(run_dir), "-q", "--resume"]) == 0
    (run_dir / files.MARKER).unlink()
    assert main(["run", str(spec()), "-o", str(run_dir), "-q", "--overwrite"]) == 0
    assert read_metrics(run_dir) == first and (run_dir / files.MARKER).is_file()


def test_stale_temporary_files_are_removed_under_the_lock(tmp_path, capsys, spec):
    run_dir = tmp_path / "r"
    assert main(["run", str(spec()), "-o", str(run_dir), "-q"]) == 0
    for stale in (run_dir / ".metrics.json.abc.tmp", run_dir / "checkpoints" / ".linear-2.pt.x.tmp"):
        stale.write_text("half")
    assert main(["run", str(spec()), "-o", str(run_dir), "-q", "--resume"]) == 0
    assert not list(run_dir.rglob("*.tmp"))


@contextlib.contextmanager
def read_only_dir(path: Path):
    """A read-only folder (a read-only tmpfs when running as root, who ignores permission bits)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)])


def test_a_read_only_run_directory_is_exit_1_without_traceback(tmp_path, capsys, spec):
    with read_only_dir(tmp_path / "ro") as ro:
        code, out, err = cli(capsys, "run", spec(), "-o", ro / "r", "-q")
    assert code == 1 and "Traceback" not in err and "cannot write" in err, err


def test_a_read_only_cache_is_exit_1_without_traceback(tmp_path, capsys, spec, monkeypatch):
    with read_only_dir(tmp_path / "cache") as ro:
        monkeypatch.setenv("PROBEKIT_CACHE", str(ro))
        code, out, err = cli(capsys, "run", spec(), "-o", tmp_path / "r", "-q")
    assert code == 1 and "Traceback" not in err and "cannot write" in err, err


# -- 5. writes confined: symbolic links in the run directory ----------------------------------------
LINKED = ["log.txt", "checkpoints", "figures", "metrics.json", "spec.yaml", "report.md", "results.csv"]


@pytest.mark.parametrize("name", LINKED)
def test_a_run_directory_with_a_symlink_is_refused_before_anything_is_written(tmp_path, capsys, spec, name):
    run_dir = tmp_path / "r"
    assert main(["run", str(spec()), "-o", str(run_dir), "-q"]) == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    target = outside if name in ("checkpoints", "figures") else outside / "precious"
    entry = run_dir / name
    if entry.is_dir():
        import shutil

        shutil.rmtree(entry)
    else:
        entry.unlink()
    entry.symlink_to(target)
    user_error(capsys, "run", spec(), "-o", run_dir, "-q", "--resume", expect=["symbolic link", name])
    assert tree(outside) == {"precious": b"keep"}


@pytest.fixture
def confined(tmp_path):
    """A run directory with writes confined to it, and a folder outside with a file that must survive."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    files.confine(run_dir)
    yield run_dir, outside
    files.confine(None)
    assert (outside / "precious").read_text() == "keep"


def _writers():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def figure(path):
        fig = plt.figure()
        with ckpt.atomic_open(path, "wb") as f:
            fig.savefig(f, format="png")
        plt.close(fig)

    return {
        "log": lambda p: files.open_append(p).close(),
        "checkpoint": lambda p: ckpt.save({"w": torch.zeros(2)}, p),
        "json": lambda p: ckpt.write_json(p, {"accuracy": 1.0}),
        "text": lambda p: ckpt.write_text(p, "report"),
        "figure": figure,
        "bytes": _write_bytes,
    }


def _write_bytes(path):
    with ckpt.atomic_open(path, "wb") as f:
        f.write(b"x")


WRITERS = ["log", "checkpoint", "json", "text", "figure", "bytes"]


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("how", ["file link", "folder link", "outside", "dot-dot"])
def test_every_writer_refuses_links_and_paths_outside_the_run_directory(confined, writer, how):
    run_dir, outside = confined
    if how == "file link":
        (run_dir / "out").symlink_to(outside / "precious")
        path = run_dir / "out"
    elif how == "folder link":
        (run_dir / "checkpoints" / "sub").symlink_to(outside)
        path = run_dir / "checkpoints" / "sub" / "precious"
    elif how == "outside":
        path = outside / "precious"
    else:
        path = run_dir / ".." / "outside" / "precious"
    with pytest.raises(files.UnsafeWriteError):
        _writers()[writer](path)


@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_writes_inside_the_run_directory(confined, writer):
    run_dir, _ = confined
    path = run_dir / "checkpoints" / f"x-{writer}"
    _writers()[writer](path)
    assert path.exists() and not path.is_symlink()


def test_run_helpers_refuse_a_linked_folder(tmp_path, spec):
    from probekit.testing import execute_run, prepare_run

    run = prepare_run(probekit.load_spec(spec()), tmp_path / "r")
    execute_run(run)
    outside = tmp_path / "outside"
    outside.mkdir()
    import shutil

    shutil.rmtree(tmp_path / "r" / "figures")
    (tmp_path / "r" / "figures").symlink_to(outside)
    files.confine(run.run_dir)
    try:
        import matplotlib.pyplot as plt

        with pytest.raises((ValueError, files.UnsafeWriteError)):
            run.save_figure(plt.figure(), "x.png")
        with pytest.raises((ValueError, files.UnsafeWriteError)):
            run.write_csv("figures/t.csv", [{"a": 1}], ["a"])
        from probekit._report import render

        (tmp_path / "r" / "report.md").unlink()
        (tmp_path / "r" / "report.md").symlink_to(outside / "report.md")
        with pytest.raises(files.UnsafeWriteError):
            render(tmp_path / "r")
    finally:
        files.confine(None)
    assert list(outside.iterdir()) == []


# -- 6. integrity: checkpoints, cached weights, the feature cache -----------------------------------
def _flip(path: Path, where: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_a_flipped_byte_in_a_checkpoint_is_detected(tmp_path, where):
    path = tmp_path / "c.pt"
    ckpt.save({"w": torch.arange(1000.0), "epoch": 3}, path)
    assert ckpt.load(path)["epoch"] == 3
    _flip(path, where)
    with pytest.raises(ckpt.CorruptCheckpointError, match="c.pt"):
        ckpt.load(path)


def test_a_trainer_recomputes_from_a_damaged_checkpoint_to_the_same_weights(tmp_path):
    from probekit import Trainer

    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    y = x @ torch.randn(8, 1, generator=torch.Generator().manual_seed(1))

    def train(epochs, log=None):
        torch.manual_seed(0)
        net = torch.nn.Linear(8, 1)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        t = Trainer({"net": net}, opt, epochs=epochs, checkpoint=tmp_path / "t.pt", log=log)
        t.fit(lambda g: [torch.randperm(64, generator=g)[i:i + 16] for i in range(0, 64, 16)],
              lambda idx: torch.nn.functional.mse_loss(net(x[idx]), y[idx]))
        return net.weight.detach().clone()

    reference = train(3)
    (tmp_path / "t.pt").unlink()
    train(2)
    _flip(tmp_path / "t.pt")
    lines = []
    assert torch.equal(train(3, log=lines.append), reference)
    assert any("checksum" in line and "training again" in line for line in lines)


def test_a_damaged_cached_model_is_trained_again_to_the_same_results(tmp_path, capsys, spec):
    trained = {**SPEC, "model": {**SPEC["model"], "train": {"epochs": 1, "batch_size": 64}}}
    path = spec(trained)
    assert main(["run", str(path), "-o", str(tmp_path / "a"), "-q"]) == 0
    weights = list(Path(os.environ["PROBEKIT_CACHE"]).glob("models/*.safetensors"))
    record = sorted(weights, key=lambda p: p.stat().st_mtime)[-1]
    _flip(record, 0.8)
    assert main(["run", str(path), "-o", str(tmp_path / "b"), "-q"]) == 0
    assert "not usable" in (tmp_path / "b" / "log.txt").read_text()
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")


def _cache_entries(cache: Path) -> list[Path]:
    return [p for p in (cache / "features").iterdir() if p.is_dir() and not p.name.startswith(".")]


@pytest.mark.parametrize("damage", ["manifest byte", "manifest deleted", "shard byte", "entry is a file",
                                    "shard deleted", "manifest not json"])
def test_a_damaged_feature_cache_entry_is_rebuilt(tmp_path, capsys, spec, monkeypatch, damage):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PROBEKIT_CACHE", str(cache))
    assert main(["run", str(spec()), "-o", str(tmp_path / "a"), "-q"]) == 0
    entry = sorted(_cache_entries(cache))[0]
    manifest = entry / "manifest.json"
    if damage == "manifest byte":
        text = manifest.read_text()
        manifest.write_text(text.replace('"length": ', '"length": 1', 1))
    elif damage == "manifest deleted":
        manifest.unlink()
    elif damage == "shard byte":
        _flip(next(entry.glob("*.bin")))
    elif damage == "entry is a file":
        import shutil

        shutil.rmtree(entry)
        entry.write_text("not a folder")
    elif damage == "shard deleted":
        next(entry.glob("*.bin")).unlink()
    else:
        manifest.write_text("{not json")
    assert main(["run", str(spec()), "-o", str(tmp_path / "b"), "-q"]) == 0
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")
    assert entry.is_dir() and (entry / "manifest.json").is_file()


def test_stale_cache_temporaries_are_removed(tmp_path, capsys, spec, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PROBEKIT_CACHE", str(cache))
    assert main(["run", str(spec()), "-o", str(tmp_path / "a"), "-q"]) == 0
    entry = sorted(_cache_entries(cache))[0]
    import shutil

    shutil.rmtree(entry)
    for stale in (cache / "features" / f".{entry.name}.dead.tmp", cache / "features" / f".{entry.name}.d.parts"):
        (stale / "sub").mkdir(parents=True)
        (stale / "sub" / "shard.bin").write_bytes(b"x" * 100)
    assert main(["run", str(spec()), "-o", str(tmp_path / "b"), "-q"]) == 0
    assert not list((cache / "features").glob(f".{entry.name}.*"))


# -- 7. images as they are, and image folders ------------------------------------------------------
def test_a_16_bit_png_round_trips_within_one_step(tmp_path):
    from probekit.builtin._datasets import read_image

    values = np.random.default_rng(0).integers(0, 65536, (32, 48), dtype=np.uint16)
    values[0, :3] = [0, 65535, 1]
    Image.fromarray(values).save(tmp_path / "a.png")
    x = read_image(tmp_path / "a.png", None, 1)
    assert x.shape == (1, 32, 48)
    assert float((x[0].double() - torch.from_numpy(values.astype(np.float64) / 65535)).abs().max()) <= 1 / 65535
    assert float((x >= 1.0).double().mean()) < 0.01  # not saturated (the bug: 99 % of pixels at 1.0)


@pytest.mark.parametrize("kind", ["float in [0, 1]", "float wide", "int32 wide"])
def test_float_and_wide_images_keep_their_range(tmp_path, kind):
    from probekit.builtin._datasets import read_image

    rng = np.random.default_rng(1)
    if kind == "float in [0, 1]":
        arr = rng.random((16, 16)).astype(np.float32)
        expect = arr
    elif kind == "float wide":
        arr = (rng.random((16, 16)) * 500 - 100).astype(np.float32)
        expect = (arr - arr.min()) / (arr.max() - arr.min())
    else:
        arr = rng.integers(-70000, 200000, (16, 16)).astype(np.int32)
        expect = (arr - arr.min()) / (arr.max() - arr.min())
    Image.fromarray(arr).save(tmp_path / "a.tif")
    x = read_image(tmp_path / "a.tif", None, 1)[0].numpy()
    np.testing.assert_allclose(x, expect, atol=1e-6)


def test_palette_and_alpha_are_composited_over_black(tmp_path):
    from probekit.builtin._datasets import read_image

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0      # transparent
    rgba[1, 1, 3] = 128    # half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    x = read_image(tmp_path / "a.png", None, 3)
    assert float(x[0, 0, 0]) == 0.0 and abs(float(x[0, 1, 1]) - 200 / 255 * 128 / 255) < 1e-6
    assert abs(float(x[0, 2, 2]) - 200 / 255) < 1e-6
    pal = Image.fromarray(rgba[..., :3]).convert("P")
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    y = read_image(tmp_path / "p.png", None, 3)
    assert y.shape == (3, 4, 4) and 0 <= float(y.min()) and float(y.max()) <= 1


def _photo_folder(root: Path, n: int = 12, size: tuple[int, int] = (16, 12)) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n // 2):
            Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def _bad_file(root: Path, case: str) -> Path:
    target = root / "b" / f"zz-{case.replace(' ', '-')}.png"
    good = (root / "a" / "0.png").read_bytes()
    if case == "corrupt":
        target.write_bytes(good[:40] + b"\x00" * 50 + good[90:])
    elif case == "truncated":
        target.write_bytes(good[: len(good) // 2])
    elif case == "not an image":
        target.write_text("hello, I am a text file")
    elif case == "empty":
        target.write_bytes(b"")
    elif case == "dangling link":
        target.symlink_to(root / "nowhere.png")
    elif case == "link loop":
        target.symlink_to(target)
    elif case == "jpeg truncated":
        target = target.with_suffix(".jpg")
        buf = __import__("io").BytesIO()
        Image.open(root / "a" / "0.png").save(buf, format="JPEG")
        target.write_bytes(buf.getvalue()[:200])
    return target


BAD_FILES = ["corrupt", "truncated", "not an image", "empty", "dangling link", "link loop", "jpeg truncated"]


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_image_file_stops_before_training_listing_it(tmp_path, capsys, spec, case):
    root = _photo_folder(tmp_path / "imgs")
    bad = _bad_file(root, case)
    data = {"type": "folder", "root": str(root), "size": 8, "channels": 1}
    err = user_error(capsys, "run", spec({**SPEC, "data": data}), "-o", tmp_path / "r", "-q",
                     expect=["data.root", "1 of 13 files", bad.name, "on_bad_file: skip"])
    assert "--resume" in err  # the advice: fix the files and continue the same spec
    assert not list((tmp_path / "r" / "checkpoints").glob("*"))


@pytest.mark.parametrize("case", BAD_FILES)
def test_on_bad_file_skip_leaves_it_out_with_a_count(tmp_path, capsys, spec, case):
    root = _photo_folder(tmp_path / "imgs")
    _bad_file(root, case)
    data = {"type": "folder", "root": str(root), "size": 8, "channels": 1, "on_bad_file": "skip"}
    bundle = probekit.create_dataset("folder", root=root, size=8, channels=1, on_bad_file="skip")
    assert len(bundle.train) + len(bundle.test) == 12 and bundle.info.meta["skipped_files"] == 1
    assert main(["run", str(spec({**SPEC, "data": data})), "-o", str(tmp_path / "r"), "-q"]) == 0
    assert "skipped 1 of 13 files" in (tmp_path / "r" / "log.txt").read_text()


def test_a_decompression_bomb_is_a_bad_file(tmp_path, monkeypatch):
    root = _photo_folder(tmp_path / "imgs")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)  # Pillow's own guard, made small: 16x12 > 150
    with pytest.raises(SpecError, match="decompression") as err:
        probekit.create_dataset("folder", root=root, size=8)
    assert "12 of 12 files" in str(err.value)


def test_an_odd_sized_late_file_is_found_before_training(tmp_path, capsys, spec):
    root = _photo_folder(tmp_path / "imgs", n=120)
    Image.fromarray(np.zeros((1, 1, 3), dtype=np.uint8)).save(root / "b" / "zzz.png")  # file 121, a 1x1
    data = {"type": "folder", "root": str(root)}
    user_error(capsys, "run", spec({**SPEC, "data": data}), "-o", tmp_path / "r", "-q",
               expect=["data.size", "different sizes", "1x1 (1 files, e.g. zzz.png)"])


@pytest.mark.parametrize("n", [1, 2])
def test_too_few_images_for_a_split_is_exit_2(tmp_path, capsys, spec, n):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(n):
        Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(root / f"{i}.png")
    data = {"type": "folder", "root": str(root), "channels": 1}
    user_error(capsys, "run", spec({**SPEC, "data": data}), "-o", tmp_path / "r", "-q",
               expect=["data", "training example", "at least 2"])


def test_image_checks_are_cached_by_path_mtime_and_size(tmp_path, monkeypatch):
    from probekit.builtin import _datasets

    root = _photo_folder(tmp_path / "imgs")
    calls = []
    real = _datasets._check_one
    monkeypatch.setattr(_datasets, "_check_one", lambda p: calls.append(p) or real(p))
    probekit.create_dataset("folder", root=root, size=8)
    assert len(calls) == 12
    probekit.create_dataset("folder", root=root, size=8)
    assert len(calls) == 12  # nothing checked again
    (root / "a" / "0.png").write_bytes((root / "a" / "1.png").read_bytes() + b"\x00")
    probekit.create_dataset("folder", root=root, size=8)
    assert len(calls) == 13  # the changed file only


def test_following_the_advice_after_a_bad_file_works(tmp_path, capsys, spec):
    root = _photo_folder(tmp_path / "imgs")
    bad = _bad_file(root, "truncated")
    path = spec({**SPEC, "data": {"type": "folder", "root": str(root), "size": 8, "channels": 1}})
    code, _, err = cli(capsys, "run", path, "-o", tmp_path / "r", "-q", "--set", "seed=1")
    assert code == 2
    command = next(line.strip() for line in err.splitlines() if line.strip().endswith("--resume"))
    bad.unlink()  # fix the cause, outside the spec
    argv = command.split()[1:]
    assert argv[:2] == ["run", str(path)] and "--set" in argv
    assert main(argv) == 0


# -- 8. plugins isolated -------------------------------------------------------------------------
PLUGINS = {
    "exits": ("import sys\nsys.exit(3)\n", "SystemExit(3)"),
    "import error": ("import no_such_dependency_xyz\n", "ModuleNotFoundError"),
    "raises at import": ("raise RuntimeError('boom at import')\n", "boom at import"),
    "keyboard-free base exception": ("raise GeneratorExit('odd')\n", "GeneratorExit"),
    "registration raises": ("from probekit import hookimpl\n@hookimpl\ndef probekit_register_models(register):\n"
                            "    register('fancy', 'x:y')\n    raise ValueError('boom in registration')\n",
                            "boom in registration"),
    "duplicate name": ("from probekit import hookimpl\n@hookimpl\ndef probekit_register_datasets(register):\n"
                       "    register('digits', 'x:y')\n", "provided by two plugins"),
}


@pytest.fixture
def plugin_env(tmp_path, monkeypatch):
    """Install a plugin (a module and its dist-info entry point) on sys.path, loaded alone with a good one."""
    def install(name: str, source: str) -> None:
        for plugin, code in ((name, source), ("goodplug", GOOD_PLUGIN)):
            (tmp_path / f"{plugin}.py").write_text(code)
            info = tmp_path / f"{plugin}-0.1.dist-info"
            info.mkdir(exist_ok=True)
            (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {plugin}\nVersion: 0.1\n")
            (info / "entry_points.txt").write_text(f"[probekit]\n{plugin} = {plugin}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setenv("PROBEKIT_LOAD_PLUGINS", f"{name},goodplug")
        probekit.testing.reset_plugin_manager()
    yield install
    for mod in [m for m in sys.modules if m.startswith(("brokenplug", "goodplug"))]:
        del sys.modules[mod]
    probekit.testing.reset_plugin_manager()


GOOD_PLUGIN = """
from probekit import hookimpl
@hookimpl
def probekit_register_metrics(register):
    register("goodmetric", "probekit.builtin._metrics:Accuracy", description="a working plugin's metric")
"""


@pytest.mark.parametrize("case", sorted(PLUGINS))
def test_a_broken_plugin_is_listed_and_the_rest_works(tmp_path, capsys, spec, plugin_env, case):
    source, error = PLUGINS[case]
    plugin_env("brokenplug", source)
    code, out, err = cli(capsys, "plugins")
    assert code == 0 and "Traceback" not in err
    block = out[out.index("brokenplug"):]
    assert "broken:" in block and error in block, out
    assert "goodmetric" in out
    code, out, err = cli(capsys, "list", "metrics")
    assert code == 0 and "goodmetric" in out
    code, out, err = cli(capsys, "validate", spec())
    assert code == 0, err
    assert main(["run", str(spec()), "-o", str(tmp_path / "r"), "-q"]) == 0


def test_a_spec_needing_a_broken_plugins_type_names_its_error(tmp_path, capsys, spec, plugin_env):
    plugin_env("brokenplug", PLUGINS["registration raises"][0])
    user_error(capsys, "validate", spec({**SPEC, "model": {"type": "fancy"}}),
               expect=["model.type", "brokenplug", "boom in registration"])


def test_an_unknown_type_mentions_plugins_that_failed_to_import(tmp_path, capsys, spec, plugin_env):
    plugin_env("brokenplug", PLUGINS["import error"][0])
    user_error(capsys, "validate", spec({**SPEC, "model": {"type": "fancy"}}),
               expect=["model.type", "failed to import", "brokenplug"])


class _StartObserver:
    @probekit.hookimpl
    def probekit_run_started(self, run):
        raise RuntimeError("observer bug")


class _FinishObserver:
    @probekit.hookimpl
    def probekit_run_finished(self, run, results):
        raise RuntimeError("observer bug")


class _FailObserver:
    @probekit.hookimpl
    def probekit_run_failed(self, run, error):
        raise RuntimeError("observer bug")


@pytest.mark.parametrize("observer", [_StartObserver, _FinishObserver, _FailObserver])
def test_a_raising_lifecycle_hook_is_a_warning(tmp_path, capsys, spec, observer):
    pm = probekit.get_plugin_manager()
    obs = observer()
    pm.register(obs, name="observer")
    fails = observer is _FailObserver
    try:
        path = spec({**SPEC, "probe": {**SPEC["probe"], "layers": ["9"]}}) if fails else spec()
        code = main(["run", str(path), "-o", str(tmp_path / "r"), "-q"])
    finally:
        pm.unregister(obs)
    if fails:
        assert code == 2
    else:
        assert code == 0 and (tmp_path / "r" / "metrics.json").exists()
    assert "observer bug" in (tmp_path / "r" / "log.txt").read_text()


# -- 9. the advice after a failure is a command that works ------------------------------------------
def test_the_nan_message_does_not_claim_a_checkpoint_that_does_not_exist(tmp_path):
    from probekit import Trainer
    from probekit._errors import RunError

    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    t = Trainer({"net": net}, opt, epochs=1, checkpoint=tmp_path / "t.pt")
    with pytest.raises(RunError) as err:
        t.fit(lambda g: [0], lambda b: net(torch.tensor([[float("nan"), 0.0]])).sum())
    assert "no checkpoint was written yet" in str(err.value) and not (tmp_path / "t.pt").exists()
    assert "--overwrite" in str(err.value)


def test_disk_full_advice_keeps_the_set_options(tmp_path, capsys, spec, monkeypatch):
    import errno

    from probekit import _runner

    real = _runner.execute

    def full(run):
        raise OSError(errno.ENOSPC, "No space left on device", str(run.run_dir / "metrics.json"))

    monkeypatch.setattr(_runner, "execute", full)
    code, _, err = cli(capsys, "run", spec(), "-o", tmp_path / "r", "-q", "--set", "seed=2")
    assert code == 1 and "Traceback" not in err
    command = err[err.index("continue with: ") + len("continue with: "):].strip()
    monkeypatch.setattr(_runner, "execute", real)
    assert command.endswith("--set seed=2 --resume")
    assert main(command.split()[1:]) == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())


def test_remote_code_is_refused_naming_the_spec_key(tmp_path):
    pytest.importorskip("transformers")
    from probekit import load_hf_config

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "xmodel", "architectures": ["X"],
                                                      "auto_map": {"AutoConfig": "configuration_x.XConfig"}}))
    (tmp_path / "configuration_x.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(SpecError, match="trust_remote_code") as err:
        load_hf_config(str(tmp_path), model_type="vit", fix="")
    assert err.value.path == "model.trust_remote_code"
