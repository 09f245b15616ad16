"""``python -m diagnostics validate MODULE:FUNCTION`` — check a user's orthogonaliser.

Runs :func:`matfun.testing.check_orthogonalizer` on the function named by
``package.module:function`` (dotted attributes allowed after the colon, e.g.
``mypkg.optim:Muon.orthogonalize``) and prints the report table.

The target is imported and called in a child process, never in this one: the
child only computes ``fn(X)`` for the inputs this process sends, and this process
builds the references and every verdict.  A target that calls ``sys.exit(0)`` or
``os._exit(0)`` (at import or in a call), raises ``SystemExit`` /
``KeyboardInterrupt``, closes stdout, monkeypatches matfun or forks can therefore
not make the command pass; a target that hangs is killed after ``--timeout``.

Exit codes: 0 every check passed; 1 a check failed, or the target process ended
before the battery completed; 2 bad arguments (malformed target, module not
importable or raising at import, attribute missing, not callable, bad option) or
the timeout expired — each reported as one line on stderr.

The current directory is put on ``sys.path`` (as ``python -m`` does), so a
module in the working tree imports from the ``matfun-diagnostics`` script too.
Nothing heavy is imported until the command runs (``--help`` stays fast).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

PROG = "matfun-diagnostics validate"
HELP = "validate an orthogonaliser (matrix -> matrix) against matfun's reference maps"
DESCRIPTION = (
    "Check an orthogonaliser (a function matrix -> matrix, e.g. your Newton-Schulz) against matfun's "
    "reference maps: shape/dtype/device, zero, finite, scale invariance, equivariances, alignment with the "
    "polar factor, the gain of every singular direction and the output's singular values, and with "
    "--schedule agreement with a published schedule. Shapes and matrices are drawn afresh per run (the "
    "seed is printed; --seed reproduces it). The target runs in a child process, so it cannot end, hang or "
    "fool the validation. Exit 0 pass, 1 a check failed, 2 bad arguments or timeout."
)
EXAMPLES = """
python -m diagnostics validate mypkg.ns:newton_schulz5 --schedule jordan --steps 5
python -m diagnostics validate mypkg.ns:ns_bf16 --tolerance-profile bf16 --schedule jordan
python -m diagnostics validate mypkg.ns:ns_numpy --backend numpy --timeout 120
python -m diagnostics validate mypkg.himuon:tiled_ns --tile 16 --schedule jordan
python -m diagnostics validate mypkg.ns:newton_schulz5 --shapes 768x3072 3072x768 --seed 1234
"""
#: Seconds the whole validation (child start, import, battery) may take: a sane
#: target finishes in seconds; 600 leaves room for torch.compile'd targets that
#: recompile per shape, yet fails a hung CI job in minutes, not hours.
DEFAULT_TIMEOUT = 600.0
CHECKS = (
    "shape",
    "dtype",
    "device",
    "input_unchanged",
    "zero",
    "finite",
    "scale_invariance",
    "orthogonal_equivariance",
    "transpose_equivariance",
    "alignment",
    "direction_gain",
    "output_spectrum",
    "schedule_agreement",
)


def _nonneg_int(value: str) -> int:
    try:
        steps = int(value)
    except ValueError:
        steps = -1
    if steps < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value!r}")
    return steps


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (seconds > 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value!r}")
    return seconds


def _tile(value: str) -> tuple[int, int]:
    parts = value.lower().replace("x", ",").split(",")
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        sizes = ()
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"must be T or THxTW with positive integers, got {value!r}")
    return sizes


def _shape(value: str) -> tuple[int, int]:
    parts = value.lower().split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 2 or min(shape) < 2:
        raise argparse.ArgumentTypeError(f"must be HxW with integers >= 2, got {value!r}")
    return shape


def _band(value: str) -> tuple[float, float]:
    try:
        lo, hi = (float(p) for p in value.split(","))
    except ValueError:
        lo = hi = math.nan
    if not (0 < lo < hi < math.inf):
        raise argparse.ArgumentTypeError(f"must be LO,HI with 0 < LO < HI, got {value!r}")
    return lo, hi


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``validate`` arguments to ``parser`` (used by :mod:`diagnostics.cli`)."""
    parser.add_argument(
        "target",
        metavar="MODULE:FUNCTION",
        help="the orthogonaliser to check, e.g. mypkg.optim:newton_schulz (matrix -> matrix)",
    )
    parser.add_argument(
        "--tolerance-profile",
        choices=("fp32", "bf16"),
        default=None,
        dest="profile",
        help="thresholds for code that COMPUTES in fp32 (default) or bf16; inputs stay --dtype (float32 "
        "unless you say otherwise); under bf16 the schedule reference runs in bf16 too",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=None,
        dest="profile_deprecated",
        help="deprecated alias of --tolerance-profile",
    )
    parser.add_argument(
        "--schedule",
        default=None,
        metavar="NAME",
        help="also check agreement with this schedule of matfun.SCHEDULES (cubic, jordan, you, polar_express)",
    )
    parser.add_argument("--steps", type=_nonneg_int, default=5, help="steps of the schedule reference (default 5)")
    parser.add_argument(
        "--backend",
        choices=("torch", "numpy"),
        default="torch",
        help="the function receives torch tensors (default) or numpy arrays",
    )
    parser.add_argument("--dtype", default="float32", help="input dtype: float32 (default), float64, bfloat16")
    parser.add_argument("--device", default="cpu", help="torch device of the inputs (default cpu)")
    parser.add_argument(
        "--seed",
        type=_nonneg_int,
        default=None,
        help="seed of the drawn shapes and test matrices (default: drawn afresh and printed in the "
        "table's header; pass it to reproduce a run)",
    )
    parser.add_argument(
        "--shapes",
        type=_shape,
        nargs="+",
        default=None,
        metavar="HxW",
        help="your own layer shapes (e.g. 768x3072 3072x768), checked in addition to three drawn ones",
    )
    parser.add_argument(
        "--gain-band",
        type=_band,
        default=None,
        metavar="LO,HI",
        help="band of every singular-direction gain (default: the --schedule's, else 0.5,1.5)",
    )
    parser.add_argument(
        "--tile",
        type=_tile,
        default=None,
        metavar="T|THxTW",
        help="the function is a tiled map (HiMuon) with this tile: tile-wise references",
    )
    parser.add_argument(
        "--skip",
        nargs="+",
        choices=CHECKS,
        default=(),
        metavar="CHECK",
        help=f"leave out these checks ({', '.join(CHECKS)})",
    )
    parser.add_argument("--min-alignment", type=float, default=None, help="override the alignment threshold")
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"fail (exit 2) when the validation takes longer (default {DEFAULT_TIMEOUT:g})",
    )


def _error(message: str) -> int:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Run the battery for parsed ``args``; returns the exit code (0, 1 or 2)."""
    import torch

    from matfun import testing

    profile = args.profile or args.profile_deprecated or "fp32"
    if args.profile_deprecated is not None:
        print(
            f"{PROG}: warning: --precision is deprecated, use --tolerance-profile (it picks thresholds "
            "and the reference's precision; inputs stay --dtype)",
            file=sys.stderr,
        )
    device = str(args.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        return _error(f"--device {device} requested but CUDA is not available")
    if not device.startswith("cuda"):
        # The battery's matrices are 48x32 at most: intra-op threads only add
        # synchronisation cost (seconds instead of ~0.1 s on a loaded CPU).
        torch.set_num_threads(1)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # the child process inherits sys.path
    try:
        report = testing.check_orthogonalizer(
            args.target,
            backend=args.backend,
            dtype=args.dtype,
            device=device,
            precision_profile=profile,
            schedule=args.schedule,
            steps=args.steps,
            seed=args.seed,
            min_alignment=args.min_alignment,
            tile=args.tile,
            skip=tuple(args.skip),
            timeout=args.timeout,
            shapes=args.shapes,
            gain_band=args.gain_band,
        )
    except testing.BatteryTimeout as exc:
        return _error(f"{args.target}: {exc} (raise it with --timeout SECONDS)")
    except testing.TargetProcessError as exc:
        print(f"{PROG}: FAILED: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:  # a bad target or option (errors of the target never get here)
        return _error(str(exc))
    print(report.table())
    return 0 if report.passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m diagnostics.validate``); returns the exit code."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
        return exc.code if isinstance(exc.code, int) else 2
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
