"""``python -m diagnostics validate-optimizer MODULE:FACTORY`` — check a Muon-type optimizer.

Runs :func:`matfun.testing.check_optimizer` on the factory named by
``package.module:function`` (``factory(params) -> torch.optim.Optimizer``) and
prints the report table.  The battery runs in a child process
(:mod:`matfun.testing._optimizer_process`): a factory that calls ``os._exit()``,
crashes or hangs cannot end or stall the command.

Exit codes: 0 every check passed; 1 a check failed, or the target process ended
before the battery completed; 2 bad arguments, a target that cannot be imported,
a factory that raises on a plain matrix parameter or returns no optimizer, or
the timeout — each reported as one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .validate import DEFAULT_TIMEOUT, _nonneg_int, _seconds, _tile

PROG = "matfun-diagnostics validate-optimizer"
HELP = "validate a Muon-type torch optimizer's update rule (orthogonalised momentum, lr rule, weight decay, ...)"
DESCRIPTION = (
    "Check a torch optimizer built by MODULE:FACTORY (factory(params) -> torch.optim.Optimizer) from the outside: "
    "the update is orthogonalised, follows the momentum (form identified), has a known per-shape step size, "
    "decoupled weight decay, works on square/wide/tall/row/column/conv parameters, survives non-finite gradients "
    "without half-applied steps, is deterministic, resumes from a checkpoint, accepts a tensor lr, and runs in "
    "bfloat16. With --reference, also compares with another optimizer and says where they differ. The battery "
    "runs in a child process. Exit 0 pass, 1 a check failed, 2 bad arguments, bad target or timeout."
)
EXAMPLES = """
python -m diagnostics validate-optimizer mypkg.optim:make_muon --lr-rule original
python -m diagnostics validate-optimizer mypkg.optim:make_himuon --tile 128
python -m diagnostics validate-optimizer mypkg.optim:make_muon --reference mypkg.ref:torch_muon --compute-precision bfloat16
"""
RULES = ("original", "match_rms_adamw", "spectral_norm", "none")
CHECKS = (
    "shapes",
    "orthogonalised",
    "momentum",
    "step_scale",
    "weight_decay",
    "gradient_unchanged",
    "grad_none",
    "nonfinite_gradient",
    "deterministic",
    "checkpoint_resume",
    "tensor_lr",
    "bfloat16",
    "reference_params",
    "reference_scale",
    "reference_direction",
    "reference_weight_decay",
    "reference_momentum",
    "reference_state",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``validate-optimizer`` arguments to ``parser`` (used by :mod:`diagnostics.cli`)."""
    parser.add_argument(
        "target", metavar="MODULE:FACTORY", help="factory(params) -> torch.optim.Optimizer, e.g. mypkg.optim:make_muon"
    )
    parser.add_argument(
        "--reference",
        metavar="MODULE:FACTORY",
        default=None,
        help="another optimizer factory to compare with (same probes and gradient stream)",
    )
    parser.add_argument(
        "--lr-rule",
        choices=RULES,
        default=None,
        help="the declared learning-rate rule (default: identify it among these)",
    )
    parser.add_argument(
        "--tile",
        type=_tile,
        default=None,
        metavar="T|THxTW",
        help="the optimizer orthogonalises each tile separately (HiMuon)",
    )
    parser.add_argument(
        "--preconditioned",
        action="store_true",
        help="the map's input is preconditioned (Muon^2): judge the update's singular values only",
    )
    parser.add_argument("--no-bf16", action="store_true", help="leave out the bfloat16 check")
    parser.add_argument(
        "--compute-precision",
        choices=("float32", "bfloat16"),
        default="float32",
        help="precision the optimizers compute in: the --reference tolerance (default float32)",
    )
    parser.add_argument(
        "--seed",
        type=_nonneg_int,
        default=None,
        help="seed of the probes (default: drawn afresh and printed in the table's header)",
    )
    parser.add_argument(
        "--skip",
        nargs="+",
        choices=CHECKS,
        default=(),
        metavar="CHECK",
        help=f"leave out these checks ({', '.join(CHECKS)})",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"fail (exit 2) when the battery takes longer (default {DEFAULT_TIMEOUT:g})",
    )


def run(args: argparse.Namespace) -> int:
    """Run the battery for parsed ``args``; returns the exit code (0, 1 or 2)."""
    from matfun import testing
    from matfun.testing._optimizer_process import check_optimizer_isolated

    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # the child process inherits sys.path
    options = {
        "reference": args.reference,
        "lr_rule": args.lr_rule,
        "tile": args.tile,
        "preconditioned": args.preconditioned,
        "dtypes": ("float32",) if args.no_bf16 else ("float32", "bfloat16"),
        "compute_precision": args.compute_precision,
        "seed": args.seed,
        "skip": tuple(args.skip),
    }
    try:
        report = check_optimizer_isolated(args.target, timeout=args.timeout, **options)
    except testing.BatteryTimeout as exc:
        return _one(f"{args.target}: {exc} (raise it with --timeout SECONDS)")
    except testing.TargetProcessError as exc:
        print(f"{PROG}: FAILED: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:  # TargetError is a ValueError
        return _one(exc)
    print(report.table())
    return 0 if report.passed else 1


def _one(exc: object) -> int:
    print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m diagnostics.validate_optimizer``); returns the exit code."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
