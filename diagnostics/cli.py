"""Command line of the diagnostics: ``matfun-diagnostics`` / ``python -m diagnostics``.

Subcommands::

    list                                   experiments, one line each
    run NAME [--quick] [--device D] [--seed N] [--optimizer NAME=MODULE:FACTORY ...]
             [--out DIR | --results DIR --figures DIR]
             [--force | --replot] [--no-progress]
    figures  [--quick] [--device D] [--seed N] [--out DIR | --results DIR --figures DIR]
             [--only NAME ...] [--force | --replot] [--no-progress] [--gallery]
    run/figures also take  [--map NAME=MODULE:ATTR ...] [--set KEY=VALUE ...] [--seeds S1,S2,...]
                           (your maps: diagnostics.plugins; Config overrides: diagnostics.overrides;
                           several seeds, drawn as mean and spread: diagnostics.runner)
    validate ...                           delegated to diagnostics.validate
    validate-optimizer MODULE:FACTORY ...  delegated to diagnostics.validate_optimizer
    design-schedule --lower L [--steps K ...]  delegated to diagnostics.design_cli
    report MODULE:ATTR [--quick] [--out DIR]   delegated to diagnostics.report
    monitor-report LOG [--out DIR]             delegated to diagnostics.monitor_report

Output directories: results (cell cache + ``results.csv``) go to
``RESULTS/NAME/``, figures to ``FIGURES/NAME/``.  Defaults ``results/`` and
``figures/``; ``--out DIR`` means ``--results DIR/results --figures DIR/figures``.
With ``--quick`` the defaults become ``results/quick`` and ``figures/quick`` so a
smoke run never overwrites full-size figures (explicit directories are used as given).
Both are ignored by git; ``figures --quick --gallery`` also copies the PNGs into the
committed gallery ``figures/gallery/`` (:mod:`diagnostics.gallery`).

Exit codes: 0 success; 2 bad arguments or environment (unknown experiment, bad
device, CUDA requested without a GPU, an output directory that cannot be written
or whose ``NAME`` sub-directory is a file, ``--replot`` without a valid cache,
any other ``OSError`` such as a full disk or a permission denied, missing
``diagnostics.validate``, unusable input such as a missing corpus or a broken
``--optimizer`` plug-in: :class:`diagnostics.errors.BadInput`; a ``--map`` plug-in
that is missing or breaks its contract; a bad ``--set`` or ``--seeds``), always as ONE line
on stderr; 130 interrupted (finished cells stay cached).  Any other exception inside an experiment is a bug and
propagates with its traceback.

Adding a command: implement it in a module of its own (``HELP``,
``add_arguments(parser)``, ``run(args) -> int``, no heavy imports at module level)
and add one line to :data:`MODULE_COMMANDS`.  Raise :class:`UsageError` for a bad
argument; ``OSError`` is reported for you.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import BadInput

PROG = "matfun-diagnostics"
DEVICES = ("cpu", "cuda")


class UsageError(Exception):
    """A bad command line: reported as one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _epilog(text: str) -> str:
    return "examples:\n" + textwrap.indent(textwrap.dedent(text).strip("\n"), "  ")


def _add_output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="DIR", help="shorthand for --results DIR/results --figures DIR/figures")
    g.add_argument(
        "--results",
        metavar="DIR",
        help="results root (cell cache, results.csv); default results/ (results/quick with --quick)",
    )
    g.add_argument("--figures", metavar="DIR", help="figures root; default figures/ (figures/quick with --quick)")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds on a CPU; what the tests run)")
    p.add_argument("--device", default="cpu", metavar="DEV", help="torch device: cpu (default), cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="base random seed (default 0)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--force", action="store_true", help="recompute every cell even if cached")
    mode.add_argument("--replot", action="store_true", help="compute nothing: redraw figures from the cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--optimizer",
        action="append",
        metavar="NAME=MODULE:FACTORY",
        help="plug-in optimizer for experiments that train (lm): FACTORY(hidden_matrices, lr) returns "
        "a torch optimizer; repeatable",
    )
    par = p.add_mutually_exclusive_group()
    par.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="compute uncached cells on N local worker processes (Dask; default 1: in order, here); "
        "--map plug-ins run there too",
    )
    par.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="compute uncached cells on the Dask cluster at ADDRESS (workers must share the results dir "
        "and the modules of your --map plug-ins)",
    )
    _add_plugin_options(p)
    _add_output_options(p)


def _add_plugin_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("your maps, config and seeds (diagnostics.plugins, diagnostics.overrides)")
    g.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="NAME=MODULE:ATTR",
        help="add your map beside the built-ins (repeatable)",
    )
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a Config field, e.g. max_steps=10 or tiles=16,32 (repeatable; "
        "EXPERIMENT.KEY=VALUE for one experiment)",
    )
    g.add_argument(
        "--seeds", metavar="S1,S2,...", help="run every seed (instead of --seed); figures show mean and spread"
    )


def build_parser() -> argparse.ArgumentParser:
    from . import experiments

    parser = _Parser(
        prog=PROG,
        formatter_class=_formatter,
        description="Diagnostics for Muon-type orthogonalisation maps: run experiments, "
        "regenerate paper figures, validate optimizer math.",
        epilog=_epilog(
            f"""
            {PROG} list
            {PROG} run transfer --quick
            {PROG} figures --out paper/
            python -m diagnostics run transfer --device cuda --seed 1
            """
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    sub.add_parser(
        "list",
        help="list the experiments",
        formatter_class=_formatter,
        description="List the registered experiments, one line each: name and description.",
        epilog=_epilog(f"{PROG} list"),
    )

    p = sub.add_parser(
        "run",
        help="run one experiment and draw its figures",
        formatter_class=_formatter,
        description="Run one experiment (resuming from its cell cache), write RESULTS/NAME/results.csv "
        "and draw its figures into FIGURES/NAME/.",
        epilog=_epilog(
            f"""
            {PROG} run transfer --quick                 # seconds, results/quick + figures/quick
            {PROG} run transfer --device cuda --seed 3
            {PROG} run transfer --out /tmp/paper --force  # recompute everything
            {PROG} run transfer --replot                # redraw from cache only
            """
        ),
    )
    p.add_argument(
        "name", metavar="NAME", help=f"experiment name: {', '.join(experiments.names())} ('{PROG} list' describes them)"
    )
    _add_run_options(p)

    p = sub.add_parser(
        "figures",
        help="run every experiment and draw all figures",
        formatter_class=_formatter,
        description="Run every registered experiment (or those given with --only), resuming from "
        "the cache, and draw all figures.",
        epilog=_epilog(
            f"""
            {PROG} figures --quick
            {PROG} figures --device cuda --out paper/
            {PROG} figures --only transfer --replot
            {PROG} figures --quick --gallery         # maintainers: refresh figures/gallery/
            """
        ),
    )
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these experiments")
    p.add_argument(
        "--gallery",
        action="store_true",
        help="then copy the PNGs into the committed gallery figures/gallery/ (needs --quick)",
    )
    _add_run_options(p)

    for name, load in MODULE_COMMANDS.items():
        module = load()
        p = sub.add_parser(
            name,
            help=getattr(module, "HELP", "(unavailable: its module is missing)"),
            formatter_class=_formatter,
            description=textwrap.fill(getattr(module, "DESCRIPTION", "") or "", 100),
            epilog=_epilog(module.EXAMPLES) if getattr(module, "EXAMPLES", None) else None,
        )
        if module is not None:
            module.add_arguments(p)
        else:
            p.add_argument("command_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _import_optional(name: str) -> Any:
    """Module ``name`` or ``None`` if it does not exist (other errors propagate)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def _import_validate() -> Any:
    """``diagnostics.validate`` or ``None`` if it does not exist."""
    return _import_optional(f"{__package__ or 'diagnostics'}.validate")


#: Commands implemented in a module of their own: name -> loader returning the
#: module (``None`` when it is missing).  The module defines ``HELP`` (one line),
#: ``add_arguments(parser)``, ``run(args) -> int`` and optionally ``DESCRIPTION``
#: and ``EXAMPLES``; ``--help`` imports it, so it must not import torch,
#: matplotlib or scipy at module level.  One line per command.
MODULE_COMMANDS: dict[str, Any] = {
    "validate": lambda: _import_validate(),
    "validate-optimizer": lambda: _import_optional(f"{__package__ or 'diagnostics'}.validate_optimizer"),
    "design-schedule": lambda: _import_optional(f"{__package__ or 'diagnostics'}.design_cli"),
    "report": lambda: _import_optional(f"{__package__ or 'diagnostics'}.report"),
    "monitor-report": lambda: _import_optional(f"{__package__ or 'diagnostics'}.monitor_report"),
}


# ------------------------------------------------------------------------ checks


def check_device(device: str) -> str:
    """``device`` if usable here, else :class:`UsageError` with a clear message."""
    base, _, index = device.partition(":")
    if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
        raise UsageError(f"bad device {device!r}: choose cpu, cuda or cuda:N")
    if base == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {device} requested but no CUDA GPU is available "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); use --device cpu"
            )
        if index and int(index) >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def _no_file_in_the_way(directory: Path, what: str, verb: str) -> None:
    blocker = next((p for p in (directory, *directory.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UsageError(f"cannot {verb} {what} directory '{directory}': '{blocker}' is a file, not a directory")


def check_writable(directory: Path, what: str) -> Path:
    """Create ``directory`` if needed and prove it is writable, else :class:`UsageError`."""
    try:
        _no_file_in_the_way(directory, what, "write to")
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(f"cannot write to {what} directory '{directory}': {reason}") from None
    return directory


def check_readable(directory: Path, what: str) -> Path:
    """``directory`` if it is a directory that can be listed, else :class:`UsageError`."""
    try:
        _no_file_in_the_way(directory, what, "read")
        if directory.exists():
            next(directory.iterdir(), None)
    except OSError as exc:
        raise UsageError(f"cannot read {what} directory '{directory}': {exc.strerror or exc}") from None
    return directory


def _check_output_dirs(names: Sequence[str], results_dir: Path, figures_dir: Path, replot: bool) -> None:
    """Every experiment's output directories, before anything is computed."""
    for name in names:
        if replot:  # reads the cache; results.csv is rewritten only if it changed
            check_readable(results_dir / name / "cells", "results")
        else:
            check_writable(results_dir / name / "cells", "results")
        check_writable(figures_dir / name, "figures")


def _output_dirs(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.out is not None and (args.results is not None or args.figures is not None):
        raise UsageError("--out cannot be combined with --results/--figures")
    if args.out is not None:
        return Path(args.out) / "results", Path(args.out) / "figures"
    suffix = "quick" if args.quick else ""
    results = Path(args.results) if args.results is not None else Path("results") / suffix
    figures = Path(args.figures) if args.figures is not None else Path("figures") / suffix
    return results, figures


def _resolve_names(names: Sequence[str]) -> list[Any]:
    from . import experiments

    unknown = [n for n in names if n not in experiments.REGISTRY]
    if unknown:
        raise UsageError(
            f"unknown experiment {', '.join(repr(n) for n in unknown)}; valid: {', '.join(experiments.names())}"
        )
    return [experiments.get(n) for n in names]


# ---------------------------------------------------------------------- commands


def _cmd_list(args: argparse.Namespace) -> int:
    from . import experiments

    width = max((len(n) for n in experiments.names()), default=0)
    for name in experiments.names():
        print(f"{name:<{width}}  {experiments.describe(name)}")
    return 0


def _run_many(modules: list[Any], args: argparse.Namespace) -> int:
    from . import overrides, plugins, runner, store
    from .parallel import ParallelError

    if args.seed < 0:
        raise UsageError(f"--seed must be non-negative, got {args.seed}")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    device = check_device(args.device)
    results_dir, figures_dir = _output_dirs(args)
    try:
        seeds = runner.parse_seeds(args.seeds) if args.seeds is not None else (args.seed,)
        per_experiment = overrides.overrides_for(overrides.parse(args.set), modules)
        configs = {  # every --set (and --optimizer) checked before anything runs
            module.NAME: _config(module, args, per_experiment[module.NAME], len(modules) == 1) for module in modules
        }
        maps = plugins.collect(options=args.map)
    except (ValueError, plugins.PluginError) as exc:
        raise UsageError(str(exc)) from None
    for p in maps:
        if p.cache_note:
            print(p.cache_note, file=sys.stderr)
    if not args.replot:
        check_writable(results_dir, "results")
    check_writable(figures_dir, "figures")
    _check_output_dirs([m.NAME for m in modules], results_dir, figures_dir, args.replot)
    progress = False if args.no_progress else None
    total_computed = total_cached = total_figures = 0
    seconds: list[tuple[str, float]] = []
    start = time.perf_counter()
    for module in modules:
        try:
            result = runner.run_module(
                module,
                plugins=maps,
                overrides=[],
                seeds=seeds,
                config=configs[module.NAME],
                results_dir=results_dir,
                figures_dir=figures_dir,
                device=device,
                force=args.force,
                replot=args.replot,
                quick=args.quick,
                progress=progress,
                jobs=args.jobs,
                scheduler=args.scheduler,
            )
        except (store.CacheMissingError, plugins.PluginError, overrides.OverrideError, BadInput) as exc:
            raise UsageError(str(exc)) from None
        except ParallelError as exc:  # cluster unreachable, or a cell failed on a worker
            raise UsageError(str(exc)) from None
        except SystemExit as exc:  # user code (a plug-in, a corpus hook) ended the run: a failure, not success
            raise UsageError(
                f"{module.NAME}: user code called sys.exit({exc.code!r}) during the run; "
                "the run did not finish (finished cells are cached)"
            ) from None
        print(result.summary(), flush=True)
        seconds.append((module.NAME, result.seconds))
        total_computed += result.computed
        total_cached += result.cached
        total_figures += len(result.figures)
    for p in maps:
        for note in sorted(p.notes):
            print(f"note: plug-in {p.name!r}: {note}")
    if len(modules) > 1:
        print("time per experiment: " + ", ".join(f"{name} {s:.1f} s" for name, s in seconds))
        print(
            f"all: {len(modules)} experiment(s), {total_computed} cell(s) computed, {total_cached} cached; "
            f"results in {results_dir}, {total_figures} figure file(s) in {figures_dir} "
            f"({time.perf_counter() - start:.0f} s)"
        )
    return 0


def _config(module: Any, args: argparse.Namespace, items: list[tuple[str, str]], explicit: bool) -> Any:
    """The module's quick/full config with its ``--set`` items and the ``--optimizer`` entries applied.

    ``--optimizer`` entries are appended to the optimizers the config ends up with, so
    ``--set optimizers=adamw --optimizer x=mod:f`` trains both (and ``--set lrs=x:0.01``
    may give the plug-in's rate).  Only experiments with ``PLUGIN_OPTIMIZERS = True`` take
    them: ``run`` of another one is an error, ``figures`` runs the others without them.

    Raises
    ------
    OverrideError
        A bad ``--set`` or ``--optimizer`` (one line).
    """
    from . import overrides
    from .store import config_for

    base = config_for(module, args.quick)
    takes = getattr(module, "PLUGIN_OPTIMIZERS", False)
    if args.optimizer and not takes and explicit:
        raise UsageError(f"--optimizer: experiment {module.NAME!r} takes no plug-in optimizers")
    if not args.optimizer or not takes:
        return overrides.apply(base, items, module.NAME)
    chosen = overrides.changes(base, items, module.NAME).get("optimizers", base.optimizers)
    try:
        return overrides.apply(base, items, module.NAME, optimizers=tuple(chosen) + tuple(args.optimizer))
    except overrides.OverrideError as exc:
        raise overrides.OverrideError(f"--optimizer: {exc}") from None


def _cmd_run(args: argparse.Namespace) -> int:
    return _run_many(_resolve_names([args.name]), args)


def _cmd_figures(args: argparse.Namespace) -> int:
    from . import experiments

    names = experiments.names() if not args.only else list(dict.fromkeys(args.only))
    if args.gallery and not args.quick:
        raise UsageError("--gallery needs --quick (the gallery shows the quick figures)")
    status = _run_many(_resolve_names(names), args)
    if args.gallery:
        from . import gallery

        try:
            written = gallery.refresh(_output_dirs(args)[1], names)
        except FileNotFoundError as exc:
            raise UsageError(f"cannot refresh the gallery: {exc}") from None
        print(f"gallery: {len(written)} file(s) copied into {gallery.DEFAULT_DIR}")
    return status


def _cmd_module(args: argparse.Namespace) -> int:
    module = MODULE_COMMANDS[args.command]()
    if module is None:
        name = "diagnostics.validate" if args.command == "validate" else f"of the {args.command} command"
        raise UsageError(f"the {args.command} command is not available: module {name} is missing")
    return int(module.run(args) or 0)


_COMMANDS = {"list": _cmd_list, "run": _cmd_run, "figures": _cmd_figures}


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _os_error(exc: OSError) -> str:
    """An OSError as one line naming the path(s), without the errno prefix."""
    reason = exc.strerror or _one_line(exc) or type(exc).__name__
    paths = " -> ".join(f"'{p}'" for p in (exc.filename, exc.filename2) if p is not None)
    return f"{reason}: {paths}" if paths else reason


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"{PROG}: warning: {_one_line(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 success, 2 bad arguments)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    try:
        with warnings.catch_warnings():
            if args.command in ("run", "figures"):  # list, --help and validate do not import the store
                from .store import CorruptCacheWarning

                warnings.simplefilter("always", CorruptCacheWarning)
            previous = warnings.showwarning
            warnings.showwarning = _show_warning
            try:
                return _COMMANDS.get(args.command, _cmd_module)(args)
            finally:
                warnings.showwarning = previous
    except UsageError as exc:
        print(f"{PROG} {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # the environment (disk, permissions), not a bug: one line
        print(f"{PROG} {args.command}: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = " (finished cells are cached; rerun to resume)" if args.command in ("run", "figures") else ""
        print(f"{PROG} {args.command}: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
