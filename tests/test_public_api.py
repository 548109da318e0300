"""The core's boundary: plugins use only the package root, the root is the documented API, no import cycles."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import probekit

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "src" / "probekit"
PUBLIC_MODULES = {"probekit", "probekit.testing", "probekit.hookspecs"}


def _imports(path: Path, *, skip_type_checking: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every import in a file; `from probekit import _x` counts as `probekit._x`."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    if skip_type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if a.name.startswith("_")]
    return out


def _outside_files() -> list[Path]:
    files = [p for p in (REPO / "plugins").rglob("*.py")]
    files += list((REPO / "benchmarks").glob("*.py")) + list((REPO / "docs").glob("*.py"))
    return sorted(files)


def test_plugins_templates_and_benchmarks_use_only_the_root_api():
    bad = []
    for path in _outside_files():
        for line, module in _imports(path):
            if (module == "probekit" or module.startswith("probekit.")) and module not in PUBLIC_MODULES:
                bad.append(f"{path.relative_to(REPO)}:{line}: {module}")
    assert len(_outside_files()) > 40  # the scan saw the plugins
    assert not bad, "imports past the probekit root API:\n" + "\n".join(bad)


def test_every_core_module_but_the_public_ones_is_private():
    public = {"__init__", "__main__", "hookspecs", "testing"}
    for path in CORE.glob("*.py"):
        assert path.stem in public or path.stem.startswith("_"), f"{path.name}: make it _{path.stem}.py or export it"


@pytest.mark.parametrize("name", probekit.__all__)
def test_every_root_name_resolves_and_is_documented(name):
    value = getattr(probekit, name)
    assert name in dir(probekit)
    if inspect.isfunction(value) or inspect.isclass(value):
        assert (getattr(value, "__doc__", None) or "").strip(), f"probekit.{name} has no docstring"


def test_unknown_root_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        probekit.nope  # noqa: B018


def test_the_core_has_no_import_cycle():
    """Every import between core modules, function-level ones included (they hide cycles, not remove them)."""
    modules = {p: "probekit." + ".".join(p.relative_to(CORE).with_suffix("").parts) for p in CORE.rglob("*.py")}
    modules = {p: m.removesuffix(".__init__") for p, m in modules.items()}
    names = set(modules.values())
    graph: dict[str, set[str]] = {}
    for path, mod in modules.items():
        if mod == "probekit":  # the root only re-exports lazily
            continue
        deps = set()
        for _, imported in _imports(path, skip_type_checking=True):
            while imported and imported not in names:
                imported = imported.rpartition(".")[0]
            if imported and imported not in (mod, "probekit"):
                deps.add(imported)
        graph[mod] = deps

    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles in the core:\n" + "\n".join(cycles)


#: the methods of `Probe` the runner calls with the run
PROBE_METHODS = ("fit", "evaluate", "summarize", "dry_run")


def _plugin_and_builtin_files() -> list[Path]:
    files = [p for src in (REPO / "plugins").glob("*/src") for p in src.rglob("*.py")]
    return sorted(files + list((CORE / "builtin").rglob("*.py")))


def _run_annotation(arg: ast.arg) -> str | None:
    return ast.unparse(arg.annotation) if arg.annotation is not None else None


def test_every_run_parameter_is_a_run_context():
    """Probes and the functions they call see the run as `RunContext` (never `Any`, never untyped), so that
    mypy checks every plugin's use of the context; the probe methods take it as their `run` parameter."""
    bad: list[str] = []
    typed = probe_methods = 0
    for path in _plugin_and_builtin_files():
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(REPO)
        for node in ast.walk(tree):
            if isinstance(node, ast.Lambda):
                if any(a.arg == "run" for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]):
                    bad.append(f"{where}:{node.lineno}: a lambda takes `run` (untyped): make it a def")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
                    if arg.arg == "run":
                        typed += 1
                        if _run_annotation(arg) not in ("RunContext", "probekit.RunContext"):
                            bad.append(f"{where}:{node.lineno}: {node.name}(run: {_run_annotation(arg)})")
            elif isinstance(node, ast.ClassDef) and any(ast.unparse(b).endswith("Probe") for b in node.bases):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name in PROBE_METHODS:
                        probe_methods += 1
                        params = [a.arg for a in item.args.args]
                        if params[:2] != ["self", "run"]:
                            bad.append(f"{where}:{item.lineno}: {node.name}.{item.name}{tuple(params)}: the run "
                                       "comes first, as `run: RunContext`")
    assert typed > 30 and probe_methods > 10  # the scan saw the plugins' probes and helpers
    assert not bad, "run parameters not typed as RunContext:\n" + "\n".join(bad)
