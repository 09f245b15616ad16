"""``python -m diagnostics validate MODULE:FUNCTION`` — check a user's orthogonaliser.

Runs :func:`matfun.testing.check_orthogonalizer` on a function imported from
``package.module:function`` (dotted attributes allowed after the colon, e.g.
``mypkg.optim:Muon.orthogonalize``) and prints the report table.

Exit codes: 0 every check passed; 1 a check failed; 2 bad arguments (malformed
target, module not importable, attribute missing, not callable, bad option),
reported as one line on stderr.

Examples::

    python -m diagnostics validate mypkg.ns:newton_schulz5 --schedule jordan
    python -m diagnostics validate mypkg.ns:ns_bf16 --precision bf16 --steps 5
    python -m diagnostics validate mypkg.ns:ns_numpy --backend numpy

The current directory is put on ``sys.path`` (as ``python -m`` does), so a
module in the working tree imports from the ``matfun-diagnostics`` script too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, Callable

PROG = "matfun-diagnostics validate"


class TargetError(Exception):
    """A bad ``MODULE:FUNCTION`` target (exit code 2)."""


def _steps(value: str) -> int:
    try:
        steps = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"steps must be a non-negative integer, got {value!r}") from None
    if steps < 0:
        raise argparse.ArgumentTypeError(f"steps must be a non-negative integer, got {value!r}")
    return steps


def _schedule_names() -> list[str]:
    from matfun import SCHEDULES

    return sorted(SCHEDULES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``validate`` arguments to ``parser`` (used by :mod:`diagnostics.cli`)."""
    parser.add_argument(
        "target", metavar="MODULE:FUNCTION",
        help="the orthogonaliser to check, e.g. mypkg.optim:newton_schulz (matrix -> matrix)",
    )
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32",
        help="threshold profile: fp32 (default) or bf16 for code that computes in bfloat16",
    )
    parser.add_argument(
        "--schedule", choices=_schedule_names(), default=None,
        help="also check agreement with this Newton-Schulz schedule of matfun.SCHEDULES",
    )
    parser.add_argument("--steps", type=_steps, default=5, help="steps of the schedule reference (default 5)")
    parser.add_argument(
        "--backend", choices=("torch", "numpy"), default="torch",
        help="the function receives torch tensors (default) or numpy arrays",
    )
    parser.add_argument("--dtype", default="float32", help="input dtype: float32 (default), float64, bfloat16")
    parser.add_argument("--device", default="cpu", help="torch device of the inputs (default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test matrices (default 0)")
    parser.add_argument("--min-alignment", type=float, default=None, help="override the alignment threshold")


def resolve_target(target: str) -> Callable[..., Any]:
    """Import ``module:attr[.attr...]`` and return the callable.

    Raises
    ------
    TargetError
        With a one-line explanation.
    """
    if not isinstance(target, str) or target.count(":") != 1:
        raise TargetError(f"target must look like 'package.module:function', got {target!r}")
    module_name, attr_path = target.split(":")
    parts = attr_path.split(".")
    if not module_name or not all(p.isidentifier() for p in module_name.split(".")):
        raise TargetError(f"bad module name {module_name!r} in target {target!r} (want 'package.module:function')")
    if not all(p.isidentifier() for p in parts):
        raise TargetError(f"bad attribute {attr_path!r} in target {target!r} (want 'package.module:function')")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise TargetError(f"cannot import module {module_name!r}: no module named {exc.name!r}") from None
        raise TargetError(f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a broken user module is a bad target
        raise TargetError(f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    for i, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            where = ".".join([module_name] + parts[:i])
            raise TargetError(f"{where!r} has no attribute {part!r}") from None
    if not callable(obj):
        raise TargetError(f"{target!r} is not callable (it is a {type(obj).__name__})")
    return obj


def run(args: argparse.Namespace) -> int:
    """Run the battery for parsed ``args``; returns the exit code (0, 1 or 2)."""
    from matfun.testing import check_orthogonalizer

    try:
        fn = resolve_target(args.target)
    except TargetError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    device = getattr(args, "device", "cpu")
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(f"{PROG}: error: --device {device} requested but CUDA is not available", file=sys.stderr)
            return 2
    if not str(device).startswith("cuda"):
        import torch

        # The battery's matrices are 48x32 at most: intra-op threads only add
        # synchronisation cost (seconds instead of ~0.1 s on a loaded CPU).
        torch.set_num_threads(1)
    try:
        report = check_orthogonalizer(
            fn,
            backend=args.backend,
            dtype=getattr(args, "dtype", "float32"),
            device=device,
            precision_profile=args.precision,
            schedule=args.schedule,
            steps=args.steps,
            seed=getattr(args, "seed", 0),
            min_alignment=getattr(args, "min_alignment", None),
        )
    except (ValueError, TypeError, RuntimeError) as exc:  # bad option combination (fn errors never get here)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    report.target = args.target
    print(report.table())
    return 0 if report.passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m diagnostics.validate``); returns the exit code."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Check an orthogonaliser (matrix -> matrix) against matfun's reference maps.",
    )
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
        return exc.code if isinstance(exc.code, int) else 2
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
