"""The `probekit` command line.

Exit codes: 0 success; 2 bad usage or invalid spec (a message, no traceback);
1 a run that failed. `--help` and `plugins` import neither torch nor any
model library.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # exit 2 with a one-line hint, as argparse does, but consistently
        self.print_usage(sys.stderr)
        print(f"probekit: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _version() -> str:
    from probekit._version import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="probekit", description="Probe what a neural network represents, layer by layer.")
    p.add_argument("--version", action="version", version=f"probekit {_version()}")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    r = sub.add_parser("run", help="run a spec.yaml into a run directory")
    r.add_argument("spec", help="path of the spec.yaml, or the name of an installed example (probekit examples)")
    r.add_argument("-o", "--output", metavar="RUN_DIR", help="run directory (default: runs/<name>)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key, e.g. --set probe.epochs=3 (repeatable)")
    r.add_argument("--resume", action="store_true", help="continue a run directory where it stopped")
    r.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    r.add_argument("--dry-run", action="store_true", help="show what the spec would do, without running")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log lines on stderr")
    r.add_argument("--shard", metavar="I/N",
                   help="run only part I of N of the spec's seeds (a job array; I from 0); the last part to "
                        "finish combines them, or run probekit aggregate RUN_DIR")
    r.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train with N data-parallel processes (torchrun; gloo on CPU, NCCL on GPUs)")

    v = sub.add_parser("validate", help="check a spec, and that everything it names can be loaded here")
    v.add_argument("spec", help="path of the spec.yaml, or the name of an installed example")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    v.add_argument("--deep", action="store_true",
                   help="also build the model (untrained) and check the probe's layers against it")

    pl = sub.add_parser("plugins", help="list installed plugins, their hooks and what they provide")
    pl.add_argument("--json", action="store_true", help="machine-readable output")

    ls = sub.add_parser("list", help="list registered models, probes, metrics, datasets or perturbations")
    ls.add_argument("kind", choices=[*_KINDS, *(k[:-1] for k in _KINDS), "all"], metavar="KIND",
                    help=f"{', '.join(_KINDS)} (or the singular), or all")
    ls.add_argument("--json", action="store_true")

    ex = sub.add_parser("examples", help="list the example specs shipped with the installed packages; copy one")
    ex.add_argument("--json", action="store_true", help="machine-readable list")
    ex_sub = ex.add_subparsers(dest="examples_command", metavar="ACTION", parser_class=_Parser)
    cp = ex_sub.add_parser("copy", help="write an example's spec into a folder, to run or edit it")
    cp.add_argument("name", help="the example's name (from probekit examples)")
    cp.add_argument("dir", nargs="?", default=".", help="target folder (default: the current one)")
    cp.add_argument("--force", action="store_true", help="overwrite an existing file")

    sub.add_parser("schema", help="print the JSON Schema of spec.yaml (for editor completion)")

    agg = sub.add_parser("aggregate", help="combine the parts (run --shard I/N) of a run directory into its "
                                            "results, as one run of the whole spec; names missing parts")
    agg.add_argument("run_dir", metavar="RUN_DIR")
    rep = sub.add_parser("report", help="regenerate report.md and report.html of a run directory")
    rep.add_argument("run_dir")

    cmp_ = sub.add_parser("compare", help="put the results of several runs side by side, with their "
                                          "differences from the first and the differences of their specs")
    cmp_.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories; the first is "
                                                                     "the reference of the differences")
    cmp_.add_argument("-o", "--output", metavar="STEM",
                      help="also write STEM.csv, STEM.md, STEM.html and a figure of the main curves, STEM.png")
    cmp_.add_argument("--format", choices=["text", "md", "html"], default="text",
                      help="what to print: aligned text (default), Markdown or HTML")
    return p


_KINDS = ["models", "probes", "metrics", "datasets", "perturbations"]


def _print_error(exc: BaseException) -> None:
    print(f"error: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from probekit._errors import PluginError, SpecError

    try:
        return _COMMANDS[args.command](args)
    except SpecError as exc:
        _print_error(exc)
        return EXIT_USAGE
    except PluginError as exc:
        _print_error(exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `probekit schema | head`: the reader has gone; stop quietly, as cat does
        _discard_stdout()
        return 128 + 13  # as if killed by SIGPIPE
    except OSError as exc:
        if not _environmental(exc):
            _print_bug(exc, debug=args.debug)
        return EXIT_FAILED
    except Exception as exc:  # not a SpecError or RunError: a bug in probekit or a plugin
        _print_bug(exc, debug=args.debug)
        return EXIT_FAILED


def _environmental(exc: BaseException) -> bool:
    """Print an error of the machine, not of probekit or the spec (a read-only folder, a refused write,
    a full disk), without a traceback; return whether it was one."""
    import errno

    from probekit._files import UnsafeWriteError

    if isinstance(exc, UnsafeWriteError):
        print(f"error: {exc.strerror}", file=sys.stderr)
        return True
    if not isinstance(exc, OSError) or exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC,
                                                         errno.EDQUOT, errno.EFBIG, errno.ELOOP, errno.EIO):
        return False
    where = f" {exc.filename}" if exc.filename else ""
    print(f"error: cannot write{where}: {exc.strerror}. Check that the folder is writable (run directory, "
          f"cache: $PROBEKIT_CACHE or ~/.cache/probekit) and has free space.", file=sys.stderr)
    return True


def _next_steps(args: argparse.Namespace, run_dir: Path) -> str:
    """The commands that continue a stopped run: the same spec resumes, a changed one starts again."""
    import shlex

    from probekit._errors import display_path

    base = ["probekit", "run", args.spec, "-o", display_path(run_dir)]
    for item in args.overrides:
        base += ["--set", item]
    same = shlex.join([*base, "--resume"])
    again = shlex.join([*base, "--overwrite"])
    return (f"its directory {display_path(run_dir)} is kept. If the cause is outside the spec (files, disk, "
            f"machine), fix it and continue with:\n  {same}\nIf you change the spec or its --set options, --resume "
            f"refuses it: start again with:\n  {again}\n(or give a new -o RUN_DIR)")


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit cannot fail again on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (an embedding program's)
        pass


def _print_bug(exc: BaseException, *, debug: bool) -> None:
    """A traceback (its last frames; all of them with --debug) behind a line saying it is a bug."""
    import traceback

    limit = None if debug else -6
    traceback.print_exception(type(exc), exc, exc.__traceback__, limit=limit, file=sys.stderr)
    print(f"error: {type(exc).__name__}: {exc}\nThis is a bug in probekit or a plugin, not in your spec: please "
          f"report it with the traceback above" + ("" if debug else " (run with --debug for all of it)") + ".",
          file=sys.stderr)


def _launch(args: argparse.Namespace) -> int:
    """Re-run this command under torch.distributed.run with N processes on this machine."""
    import subprocess

    argv = [a for a in sys.argv[1:] if not a.startswith("--nproc")]
    if "--nproc" in sys.argv[1:]:
        i = sys.argv.index("--nproc")
        argv = sys.argv[1:i] + sys.argv[i + 2:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "probekit", *argv]
    import signal

    child = subprocess.Popen(cmd)

    forwarded: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        # a scheduler's SIGTERM reaches the launcher: pass it on (torchrun passes it to the ranks, which
        # checkpoint and stop together) instead of leaving the processes running without us
        forwarded.append(signum)
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code and signal.SIGTERM in forwarded:  # torchrun itself exits 1 (with its own traceback)
        print("stopped on SIGTERM after a checkpoint; continue with --resume", file=sys.stderr)
        return 143
    return code


def _spec_source(arg: str) -> Path:
    """The spec file `arg` names: a path, or the name of an installed example (`probekit examples`)."""
    path = Path(arg)
    if path.exists() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    from probekit._examples import find_example

    example = find_example(arg, missing_ok=True)
    return example.path if example is not None else path


def _cmd_validate(args: argparse.Namespace) -> int:
    from probekit._preflight import check_environment
    from probekit._spec import load_spec

    loaded = load_spec(_spec_source(args.spec), args.overrides)
    checked = check_environment(loaded)  # every type, its dependencies and import strings load here
    deep = ""
    if args.deep:  # build data and model (untrained) as --dry-run does: unknown layers are exit 2
        from probekit._dryrun import dry_run

        deep = dry_run(loaded)
    print(f"{args.spec}: valid; everything it names can be loaded here:")
    for line in checked:
        print(f"  {line}")
    if deep:
        print("built here (the model untrained), the probe's layers checked against it:")
        for line in deep.splitlines():
            print(f"  {line}")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from probekit._preflight import check_environment
    from probekit._spec import load_spec

    loaded = load_spec(_spec_source(args.spec), args.overrides)
    check_environment(loaded)  # a missing package is exit 2 now, not an error minutes into the run
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ and not args.dry_run:
        return _launch(args)
    if args.dry_run:
        from probekit._dryrun import dry_run

        print(dry_run(loaded))
        return EXIT_OK
    from probekit import _runner as runner
    from probekit._errors import ProbekitError, display_path

    prepared = runner.prepare(loaded, Path(args.output) if args.output else None, resume=args.resume,
                              overwrite=args.overwrite, quiet=args.quiet, shard=args.shard)
    from probekit._training import StopRequested

    try:
        results = runner.execute(prepared)
    except StopRequested as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 143
    except ProbekitError as exc:
        from probekit._errors import SpecError

        _print_error(exc)
        print(f"the run stopped; {_next_steps(args, prepared.run_dir)}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, SpecError) else EXIT_FAILED
    except Exception as exc:
        import errno
        import shlex

        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            again = shlex.join(["probekit", "run", args.spec, "-o", display_path(prepared.run_dir),
                                *[a for item in args.overrides for a in ("--set", item)], "--resume"])
            print(f"error: the disk is full ({exc.strerror}: {exc.filename or 'a file of the run'}); nothing "
                  f"written so far is damaged. Free space, then continue with: {again}", file=sys.stderr)
            return EXIT_FAILED
        if _environmental(exc):
            print(f"the run stopped; {_next_steps(args, prepared.run_dir)}", file=sys.stderr)
            return EXIT_FAILED
        _print_bug(exc, debug=args.debug)
        print(f"the run failed; see {display_path(prepared.run_dir / 'log.txt')}", file=sys.stderr)
        return EXIT_FAILED
    from probekit._report import layer_order, summary_line

    if os.environ.get("RANK", "0") != "0":  # only rank 0 reports (the process group is gone by now)
        return EXIT_OK
    if prepared.shard is not None and results.get("missing"):
        print(f"part {prepared.shard} done (seeds {results['seeds']}); still missing: {results['missing']}. The "
              f"part that finishes last combines them, or: probekit aggregate {display_path(prepared.run_dir)}")
        return EXIT_OK
    if prepared.shard is not None and "missing" in results:  # another part combined them meanwhile
        print(f"part {prepared.shard} done (seeds {results['seeds']}); all parts finished; results in "
              f"{display_path(prepared.run_dir)}")
        return EXIT_OK
    print("done: " + summary_line(results, layers=layer_order(prepared), more=" in metrics.json"))
    print(f"report: {display_path(prepared.run_dir / 'report.html')}")
    return EXIT_OK


def _cmd_plugins(args: argparse.Namespace) -> int:
    from probekit._plugins import get_plugin_manager

    infos = get_plugin_manager().plugin_infos()
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return EXIT_OK
    for info in infos:
        version = f" {info.version}" if info.version else ""
        print(f"{info.name}{version}" + ("  (built in)" if info.builtin else ""))
        if info.error:
            print(f"  broken: {info.error}")
            continue
        print(f"  hooks: {', '.join(info.hooks)}")
        for kind, names in info.provides.items():
            print(f"  {kind}: {', '.join(names)}")
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    from probekit._plugins import get_plugin_manager

    pm = get_plugin_manager()
    kinds = _KINDS if args.kind == "all" else [args.kind if args.kind in _KINDS else args.kind + "s"]
    found = {kind: [pm.get(kind, n) for n in pm.names(kind)] for kind in kinds}
    if args.json:
        listed = {kind: [{"name": e.name, "provider": e.provider, "description": e.description}
                         for e in entries] for kind, entries in found.items()}
        print(json.dumps(listed if args.kind == "all" else listed[kinds[0]], indent=2))
        return EXIT_OK
    for i, (kind, entries) in enumerate(found.items()):
        if args.kind == "all":
            print(("\n" if i else "") + f"{kind}:")
        _print_entries(kind, entries, indent="  " if args.kind == "all" else "")
    return EXIT_OK


def _print_entries(kind: str, entries: list[Any], *, indent: str = "") -> None:
    """One line per registered name: name, description (cut to the terminal's width), provider."""
    if not entries:
        print(f"{indent}no {kind} installed")
        return
    width = max(len(e.name) for e in entries)
    try:
        cols = os.get_terminal_size().columns
    except OSError:
        cols = 100
    for e in entries:
        provider = e.provider.replace("probekit.builtin.", "builtin:")
        text = f"{indent}{e.name:<{width}}  {e.description}"
        room = max(cols - len(provider) - 4, 40)
        if len(text) > room:
            text = text[: room - 1] + "…"
        print(f"{text}  [{provider}]")


def _cmd_examples(args: argparse.Namespace) -> int:
    from probekit import _examples

    if args.examples_command == "copy":
        example = _examples.find_example(args.name)
        assert example is not None
        target = _examples.copy_example(args.name, Path(args.dir), force=args.force)
        print(f"wrote {target} (example '{example.name}' from {example.plugin})")
        if example.missing:
            print(f"it needs: pip install {' '.join(repr(m) for m in example.missing)}")
        print(f"run it: probekit run {target}")
        return EXIT_OK
    examples = _examples.list_examples()
    if args.json:
        print(json.dumps([e.as_dict() for e in examples], indent=2))
        return EXIT_OK
    if not examples:
        print("no examples installed")
        return EXIT_OK
    name_w = max(len("NAME"), *(len(e.name) for e in examples))
    plugin_w = max(len("PLUGIN"), *(len(e.plugin) for e in examples))
    print(f"{'NAME':<{name_w}}  {'PLUGIN':<{plugin_w}}  MINUTES  SHOWS")
    for e in examples:
        minutes = f"{e.minutes:g}" if e.minutes is not None else "?"
        needs = f"  [needs: pip install {' '.join(e.missing)}]" if e.missing else ""
        print(f"{e.name:<{name_w}}  {e.plugin:<{plugin_w}}  {minutes:>7}  {e.shows}{needs}")
    print("\nminutes: on 2 CPU cores. Copy one: probekit examples copy NAME [DIR]; or run it as it is: "
          "probekit run NAME")
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace) -> int:
    from probekit._spec import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from probekit._errors import SpecError, display_path
    from probekit._report import render

    run_dir = Path(args.run_dir)
    if not (run_dir / "metrics.json").exists():
        raise SpecError(f"{run_dir} has no metrics.json", path="RUN_DIR",
                        fix="Give the directory of a finished run (or finish it with probekit run --resume).")
    md, html_path = render(run_dir)
    print(f"wrote {display_path(md)} and {display_path(html_path)}")
    return EXIT_OK


def _cmd_aggregate(args: argparse.Namespace) -> int:
    from probekit._errors import display_path
    from probekit._report import summary_line
    from probekit._runner import aggregate_run

    results = aggregate_run(Path(args.run_dir))
    print("done: " + summary_line(results, more=" in metrics.json"))
    print(f"report: {display_path(Path(args.run_dir) / 'report.html')}")
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace) -> int:
    from probekit._compare import compare

    print(compare([Path(d) for d in args.run_dirs], args.output, format=args.format))
    return EXIT_OK


_COMMANDS: dict[str, Any] = {
    "run": _cmd_run, "validate": _cmd_validate, "plugins": _cmd_plugins, "list": _cmd_list,
    "examples": _cmd_examples,
    "schema": _cmd_schema, "report": _cmd_report, "compare": _cmd_compare, "aggregate": _cmd_aggregate,
}

if __name__ == "__main__":
    sys.exit(main())
