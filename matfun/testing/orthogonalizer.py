"""Validate an orthogonaliser (a Muon-type ``matrix → matrix`` map) in CI.

:func:`check_orthogonalizer` runs a battery of checks on a user's function and
returns a :class:`Report`; :func:`assert_orthogonalizer` raises
``AssertionError`` with the report's table when a check fails (for pytest)::

    import matfun.testing as mt

    def test_my_newton_schulz():
        mt.assert_orthogonalizer(my_ns, schedule="jordan", steps=5)

The function under test receives one 2-D matrix — a torch tensor of ``dtype`` on
``device`` (``backend="torch"``) or a numpy array (``backend="numpy"``) — and must
return a matrix of the same shape, dtype, device and library.  An exception
raised by the function fails the check that called it (its message is the
check's detail); it never aborts the battery.

Checks (``Report.checks``, in this order; names are stable)
------------------------------------------------------------
``shape``, ``dtype``, ``device``
    the output follows the input on a square, a wide and a tall matrix
    (``device`` also checks the library: torch in → torch out, numpy in → numpy out).
``input_unchanged``
    the function does not modify its input in place.
``zero``
    a zero matrix maps to exactly zero (finite).
``finite``
    outputs are finite on ill-conditioned inputs: condition numbers 1e6 and 1e12,
    and an exactly rank-deficient matrix (rank r/2).
``scale_invariance``
    ``‖f(sG) − f(G)‖_F / ‖f(G)‖_F`` for ``s`` in ``scales`` (1e-4, 1e4) and a
    unit-variance Gaussian ``G`` (``‖G‖_F ≈ 40`` at 32×48).  A fixed additive
    ``eps`` in the normalisation costs about ``eps/(1e-4·‖G‖_F)``: Muon's
    ``1e-7`` passes, ``1e-5`` and larger fail.
``orthogonal_equivariance``
    ``‖f(Q₁GQ₂) − Q₁f(G)Q₂‖_F / ‖f(G)‖_F`` for Haar-random orthogonal ``Q₁, Q₂``
    (every spectral map — polar, full Newton–Schulz — satisfies it exactly).
``transpose_equivariance``
    ``‖f(Gᵀ) − f(G)ᵀ‖_F / ‖f(G)‖_F`` on a wide and a tall matrix (catches a
    missing transpose-back for tall matrices).
``alignment``
    the worst ``cos(f(G), polar(G)) = ⟨X,P⟩/(‖X‖‖P‖)`` over the standard set:
    a Gaussian of every shape, geometric spectra with κ = 10 and 1e3,
    rank-4 plus 5 % noise; the detail names the worst matrix.  An average:
    blind to the output's scale and to a few bad directions.
``direction_gain``
    on matrices built from a known SVD (every tile's, for a tiled map), the
    gain ``u_iᵀ f(G) v_i`` of every singular direction above the cut-off lies
    in the band — the declared schedule's, else [0.5, 1.5] — and the output
    does not leak off the input's singular pairs.
``output_spectrum``
    the output's singular values lie in the same band (catches any wrong
    scale), and an exactly rank-deficient input's null space stays empty
    (fp32 profile).  Bands, cut-offs and tolerances:
    :mod:`matfun.testing._spectral`.
``schedule_agreement`` (only with ``schedule=``)
    ``‖f(G) − NS(G)‖_F / ‖NS(G)‖_F`` against
    ``matfun.newton_schulz(G, steps, schedule, precision=...)`` in the matching
    precision (``"float32"`` for the fp32 profile; ``"bfloat16-emulated"`` on CPU
    and ``"bfloat16"`` on CUDA for the bf16 profile) on the Gaussian matrices and
    the κ = 10 one (well conditioned, so that bf16 rounding noise, which NS
    amplifies on tiny singular values, does not mask coefficient errors).  Catches a
    wrong coefficient, a wrong step count, a wrong normalisation.

``schedule_agreement`` also runs a *coefficient fit*: ``fn`` is applied to 8 (32×48)
matrices ``U diag(σ) Vᵀ`` sharing one known spectrum; ``d_i`` = mean of
``u_iᵀ f(G) v_i`` is ``fn``'s empirical transfer function, and the part of
``d − p_K(σ)`` that lies in the span of ``∂p_K/∂(a, b, c)`` (every step) and
``∂p_K/∂(scale)`` is compared with ``coefficient_tol``, relative to
``‖p_K(σ)‖``.  Rounding noise spreads over all output entries and mostly
averages out; a wrong coefficient lies in that span entirely.  This is what
lets the bf16 profile catch a coefficient typo that bf16 rounding hides from
the plain relative error.

Shapes and seeds
----------------
Every run draws a square, a wide and a tall shape (sides 17–112, at least one
above 64, odd sizes included; :func:`matfun.testing._matrices.draw_shapes`)
and every matrix from ``seed``; without ``seed=`` one is drawn afresh and the
report's header prints it, so a failure is reproduced with that seed.
``shapes=`` adds your layer shapes to the drawn ones.  A map tuned to a fixed
list of inputs (exact only on 32×32, 32×48, 48×32; NaN above 48) therefore
meets matrices it was not written for.  A black-box battery cannot stop a
target that detects it — through the call stack, the process name, or the
drawn sizes' range — and behaves only while watched: that needs a code review.

What passes and what fails
--------------------------
Each row is a test (``tests/test_testing_no_false_pass.py``, seeds 0–2; the
correct maps also passed seeds 0–14 when the thresholds were set):

=========================================================  ======================================
map                                                        verdict (failing checks)
=========================================================  ======================================
polar (SVD, QDWH); 5-step Jordan, You, Polar Express        pass
(declared or not); ``torch.optim.Muon``'s bf16 loop on
float32 and bf16 input; bf16-emulated NS; tiled NS at
T = 16 and 16×32, tiled polar (``tile=``); numpy backend
``1000·polar(G)``, ``1e-6·polar(G)``                        direction_gain, output_spectrum
negates the two smallest directions (alignment 0.875)       direction_gain
keeps the top 75 % of the directions                        direction_gain, output_spectrum
exact only on 32×32, 32×48, 48×32                           alignment, direction_gain, output_spectrum
NaN above 48                                                finite, direction_gain, …
``G / ‖G‖₂``; one Jordan step                               direction_gain, output_spectrum
``U @ Vh`` without a cut-off (fills the null space)         output_spectrum
``−polar(G)``                                               alignment, direction_gain
=========================================================  ======================================

Tiled maps (HiMuon)
-------------------
A map that orthogonalises each ``Th×Tw`` tile separately is *not* the polar
factor of the whole matrix: judged as a whole-matrix map it fails
``orthogonal_equivariance`` (≈ 0.7), ``alignment`` (≈ 0.59 for Jordan at
T = 16 on the 48×32 κ = 1e3 matrix) and ``schedule_agreement`` by design.
Declare the tile instead: ``check_orthogonalizer(fn, tile=16)`` (validate:
``--tile 16``) compares with the tile-wise polar factor and
``matfun.tiled_newton_schulz``, checks equivariance under block-diagonal
orthogonal ``Q₁, Q₂`` whose blocks follow the tile grid (the symmetry a tiled
map does have), runs ``transpose_equivariance`` only for square tiles, and
fits coefficients on one tile.  A correct tiled Jordan map then passes every
check (alignment ≈ 0.97), while one that normalises by the whole matrix's
norm or uses another tile size fails.  Element-wise preconditioned maps have
no such symmetry: ``skip=("orthogonal_equivariance",)`` and no ``schedule``.

Precision profiles: what each can and cannot catch
--------------------------------------------------
``precision_profile`` (validate: ``--tolerance-profile``) says in which
precision ``fn`` *computes*; it picks the thresholds and the precision of the
schedule reference.  It does not change the inputs: those are ``dtype``
(float32 unless you say otherwise; pass ``dtype="bfloat16"`` to feed bf16).
Smallest coefficient error of a 5-step schedule that ``schedule_agreement``
detects (default shapes, seeds 0–3, torch CPU; fp32: a float32 loop; bf16: a
plain torch bfloat16 loop):

=================  ===============================  =====================================
schedule           ``"fp32"``                       ``"bf16"``
=================  ===============================  =====================================
jordan             a, b, c: 4e-5                    a, b, c: 3e-3 on every seed (catches
                                                    2.0351 for 2.0315 and −4.7705 for
                                                    −4.7750; 2.0295 only on some seeds,
                                                    *not* 3.4454 for 3.4445)
you                last step 1e-4; first step a     last step 3e-3 – 4e-3; first step
                   2e-4, b 1e-3, c 6e-3             ≳ 1e-2 (a) or not at all (b, c)
polar_express      last step 3e-5 – 1e-4; first     last-step c ≳ 1e-2 only (a correct
                   step a 3e-5, b 2e-4, c 2e-3      bf16 loop deviates by 2e-2 itself)
=================  ===============================  =====================================

The first step acts on small singular values, where ``c x⁵`` hardly matters:
first-step errors of the multi-step schedules are the hardest to see.  Gross
errors (another schedule, a wrong step count, a missing transpose-back) give
relative errors of 0.25 and more and fail either profile.

Isolation and timeouts
----------------------
``fn`` may be a callable (called in this process) or a ``"module:function"``
string: the module is then imported and called in a child process that only
computes ``fn(X)`` for the inputs this process sends; references and verdicts
stay here.  Use the string form (or ``python -m diagnostics validate``) when
the target must not be trusted: a ``sys.exit()``/``os._exit()`` at import or in
a call, a monkeypatched matfun, a fork or a closed stdout cannot make it pass
(a dead child raises :class:`TargetProcessError`; an unimportable target
:class:`TargetError`).  A script that uses the string form needs Python's
``if __name__ == "__main__":`` guard (the child is started by
``multiprocessing``).  Any exception from a callable — ``SystemExit``
included, ``KeyboardInterrupt`` excepted — fails the check that called it.
The ``dtype`` and ``device`` checks read what the child reports about its
output, so they catch mistakes, not a target written to lie; every value
check uses the returned numbers themselves.

``timeout`` (default :data:`DEFAULT_TIMEOUT` = 600 s for the whole battery)
raises :class:`BatteryTimeout`.  In the child-process form the child (and all
it forked) is killed.  A callable runs in one worker thread so that the
battery can give up at the deadline, but a Python thread cannot be killed: the
hung call keeps running in the background (pass ``timeout=None`` to call
``fn`` in your own thread with no limit; the worker carries over the autograd
mode, torch thread count, numpy error state and CUDA device, not e.g. an
autocast context).  numpy warnings raised by the battery's own arithmetic on
wild outputs are silenced; ``fn``'s own warnings reach you unchanged.

Default thresholds (``PROFILES``)
---------------------------------
=========================  ===========  ===========
threshold                  ``"fp32"``   ``"bf16"``
=========================  ===========  ===========
``min_alignment``          0.85         0.85
``scale_tol``              1e-3         1e-1
``equivariance_tol``       1e-3         1e-1
``schedule_tol``           1e-3         1e-1
``coefficient_tol``        1e-4         per schedule (``BF16_COEFFICIENT_TOL``):
                                        cubic 5e-4, jordan 5e-3, you 3e-3,
                                        polar_express 3e-2
=========================  ===========  ===========

Calibration (the 0.2 fixed shapes 32×32, 32×48, 48×32, seeds 0–9, torch CPU,
on the toolkit's own maps; ``tests/test_testing.py`` re-checks them on those
shapes plus drawn ones):

* ``min_alignment``: 5-step Jordan Newton–Schulz is worst on the κ = 1e3
  geometric matrix at ≈ 0.96 (float32, bf16-emulated and native bf16 alike;
  ≈ 0.90 at 512×1024) — Jordan's quintic leaves singular values in
  ≈[0.5, 1.2], so it never reaches 0.999.  You ≥ 0.97, Polar Express ≥ 0.98,
  the exact polar factor 1.  ``0.85`` keeps a margin below Jordan and sits
  far above maps that do not orthogonalise: the identity map scores ≈ 0.4–0.55
  on the κ = 1e3 matrix, 3-step cubic NS ≈ 0.42.
* ``scale_tol``: float32 NS / polar change by ≲ 2e-6 (rounding of ``sG``);
  Muon's reference code with ``‖G‖ + 1e-7`` by ≈ 5e-5; ``eps = 1e-5`` by
  ≈ 5e-3 (fails fp32).  Native bf16 NS (input rounded to bf16 after
  scaling) ≈ 2e-2.  Broken normalisation gives O(1) errors (identity: 1e4).
* ``equivariance_tol``: float32 ≲ 2e-6; bf16 (emulated, native, plain torch
  bf16 ops) ≈ 5e-3 – 3e-2 — bf16's 2⁻⁸ rounding of each product, amplified
  by NS's slope (≤ 3.4445⁵ ≈ 490) on small singular values.
* ``schedule_tol``: two float32 implementations of Jordan's schedule with a
  different operation order agree to ≈ 3e-6; native / plain-torch bf16 against
  the bf16-emulated reference ≈ 2e-2; one wrong coefficient (a = 3.0 instead
  of 3.4445) gives ≈ 0.3 in any precision, another schedule ≥ 0.25.
* ``coefficient_tol``: the fit of a correct map is ≲ 2e-7 in float32
  (3.6e-6 for Polar Express, whose large coefficients amplify rounding); in
  bf16 the worst over seeds 0–9 of a plain torch bf16 loop, the bf16-emulated
  reference and native bf16 input is cubic 1.8e-4, jordan 3.2e-3, you 1.9e-3,
  polar_express 2.0e-2 (a plain bf16 loop has a systematic bias, 3× that of
  the emulated reference); the bf16 thresholds are ≈ 1.6× those.
* TF32 matmuls on CUDA (``torch.backends.cuda.matmul.allow_tf32``) have a
  10-bit mantissa: test such code under ``precision_profile="bf16"``.

Every threshold is an argument; pass your own for a different regime.

Speed: one battery is about 50 calls of ``fn`` on matrices with sides of at
most 112 (plus your ``shapes``), 0.1–0.8 s of CPU time.  With several torch intra-op threads on a busy CPU, tiny
matmuls can spend seconds spin-waiting; ``torch.set_num_threads(1)`` around the
check avoids that (the ``validate`` command and the project's tests do so).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..newton_schulz import newton_schulz
from ..polar import Polar, polar
from ..schedules import SCHEDULES, Schedule, check_steps, get_schedule, transfer_function
from ..tiling import Tiled, check_tile, tiled_newton_schulz
from . import _spectral
from ._env import _Env, _f64, _lib_dtype_device, _norm_device
from ._isolation import (
    DEFAULT_TIMEOUT,
    BatteryTimeout,
    DirectCaller,
    ProcessCaller,
    TargetProcessError,
    ThreadCaller,
    check_timeout,
    split_target,
)
from ._matrices import (
    _cos,
    _gaussian,
    _geometric,
    _haar,
    _haar_blocks,
    _low_rank_noise,
    _name,
    _rank_deficient,
    _relerr,
    _rng,
    draw_shapes,
)
from ._report import CheckResult, Report, _fmt, _Worst

__all__ = [
    "BF16_COEFFICIENT_TOL",
    "CHECK_NAMES",
    "PROFILES",
    "Thresholds",
    "assert_orthogonalizer",
    "check_orthogonalizer",
]


@dataclass(frozen=True)
class Thresholds:
    """Default thresholds of a precision profile (see the module docstring)."""

    min_alignment: float
    scale_tol: float
    equivariance_tol: float
    schedule_tol: float
    coefficient_tol: float | None = None  # None: per schedule, BF16_COEFFICIENT_TOL


PROFILES: dict[str, Thresholds] = {
    "fp32": Thresholds(
        min_alignment=0.85, scale_tol=1e-3, equivariance_tol=1e-3, schedule_tol=1e-3, coefficient_tol=1e-4
    ),
    "bf16": Thresholds(min_alignment=0.85, scale_tol=1e-1, equivariance_tol=1e-1, schedule_tol=1e-1),
}

#: bf16 profile: coefficient-fit threshold per schedule, about 1.6x the worst fit of
#: a correct bfloat16 implementation (plain torch bf16 loop, bf16-emulated, native
#: bf16 input; default shapes, seeds 0-9); other schedule names get the largest.
BF16_COEFFICIENT_TOL: dict[str, float] = {"cubic": 5e-4, "jordan": 5e-3, "you": 3e-3, "polar_express": 3e-2}

CHECK_NAMES = (
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


# ---------------------------------------------------------------------------
# The battery
# ---------------------------------------------------------------------------


def check_orthogonalizer(
    fn: Callable[[Any], Any],
    *,
    backend: str = "torch",
    dtype: str = "float32",
    device: str = "cpu",
    precision_profile: str = "fp32",
    min_alignment: float | None = None,
    scale_tol: float | None = None,
    equivariance_tol: float | None = None,
    schedule: str | None = None,
    steps: int = 5,
    schedule_tol: float | None = None,
    schedule_precision: str | None = None,
    coefficient_tol: float | None = None,
    gain_band: tuple[float, float] | None = None,
    seed: int | None = None,
    shapes: Sequence[tuple[int, int]] | None = None,
    scales: Sequence[float] = (1e-4, 1e4),
    skip: Sequence[str] = (),
    tile: int | tuple[int, int] | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Report:
    """Run the orthogonaliser battery on ``fn`` and return a :class:`Report`.

    Parameters
    ----------
    fn : callable or str
        ``matrix → matrix``; receives a 2-D torch tensor (``backend="torch"``) of
        ``dtype`` on ``device``, or a numpy array (``backend="numpy"``).  A
        ``"module:function"`` string is imported and called in a child
        process (see "Isolation and timeouts" above).
    backend : {"torch", "numpy"}
    dtype : str
        Input dtype: ``"float32"``, ``"float64"``, ``"bfloat16"`` (torch only).
    device : str
        Torch device (``"cpu"``, ``"cuda"``); must be ``"cpu"`` for numpy.
    precision_profile : {"fp32", "bf16"}
        The precision ``fn`` computes in: selects default thresholds
        (:data:`PROFILES`) and the precision of the schedule reference.  Use
        ``"bf16"`` for implementations that compute in bfloat16, whatever the
        input dtype; it does not change the inputs (that is ``dtype``).
    min_alignment, scale_tol, equivariance_tol, schedule_tol : float, optional
        Override the profile's thresholds (see the module docstring for the
        defaults and how they were calibrated).
    schedule : str, optional
        Name in :data:`matfun.SCHEDULES`: adds ``schedule_agreement`` against
        ``matfun.newton_schulz(G, steps, schedule, precision=...)``.
    steps : int
        Newton–Schulz steps of the schedule reference.
    schedule_precision : str, optional
        Precision of the schedule reference; default ``"float32"`` (fp32
        profile), ``"bfloat16"`` on CUDA or ``"bfloat16-emulated"`` elsewhere
        (bf16 profile).
    gain_band : (float, float), optional
        ``(lo, hi)``: the band every judged singular-direction gain and output
        singular value must lie in (``direction_gain``, ``output_spectrum``);
        default: the declared schedule's band, else ``[0.5, 1.5]`` (see
        :mod:`matfun.testing._spectral`).
    seed : int, optional
        Seed of the drawn shapes and of every random test matrix; the report's
        settings print it, and the same seed reproduces the run exactly.
        Default: drawn afresh per run, so that no fixed set of inputs can be
        learnt.
    shapes : sequence of (H, W), optional
        Your own layer shapes, run *in addition to* the three drawn ones (a
        square, a wide and a tall shape with sides in 17–112) by the
        per-shape checks (shape, dtype, device, input_unchanged, alignment,
        direction_gain, output_spectrum).  Structured matrices use the drawn
        wide and tall shapes.
    scales : sequence of float
        Factors of the scale-invariance check: finite, positive, not 1.
    skip : sequence of str (or one name)
        Check names to leave out; at least one check must remain.
    tile : int or (int, int), optional
        ``fn`` is a tiled map with this tile (see "Tiled maps" above).
    coefficient_tol : float, optional
        Override the coefficient-fit threshold of ``schedule_agreement``.
    timeout : float or None
        Seconds for the whole battery (default 600); ``None``: no limit.

    Returns
    -------
    Report

    Raises
    ------
    ValueError
        Bad arguments (unknown profile, schedule, backend, dtype, device, tile,
        timeout, steps, seed), and settings under which the report could not
        fail: ``min_alignment`` outside (0, 1], a tolerance that is negative or
        not finite, a scale of 1, or a ``skip`` that leaves no check.  Errors raised
        *by fn* never propagate: they fail the check.
    TargetError
        A ``"module:function"`` target that cannot be imported (or raises at
        import) or is not callable (a ``ValueError``).
    TargetProcessError
        The child process of a string target ended or misbehaved mid-battery.
    BatteryTimeout
        The battery did not finish within ``timeout`` seconds.
    """
    if precision_profile not in PROFILES:
        raise ValueError(f"unknown precision_profile {precision_profile!r}; choose one of {sorted(PROFILES)}")
    if backend not in ("torch", "numpy"):
        raise ValueError(f"backend must be 'torch' or 'numpy', got {backend!r}")
    if not (callable(fn) or isinstance(fn, str)):
        raise TypeError(f"fn must be callable or a 'module:function' string, got {type(fn).__name__}")
    skip = (skip,) if isinstance(skip, str) else tuple(skip)
    unknown = set(skip) - set(CHECK_NAMES)
    if unknown:
        raise ValueError(f"unknown check names in skip: {sorted(unknown)}; valid: {list(CHECK_NAMES)}")
    if all(c in skip or (c == "schedule_agreement" and schedule is None) for c in CHECK_NAMES):
        raise ValueError(f"skip={list(skip)} leaves no check to run: a report of no checks cannot pass")
    steps = check_steps(steps)
    if seed is None:
        seed = secrets.randbelow(2**31)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    seed = int(seed)
    scales = _checked_scales(scales)
    shapes = list(dict.fromkeys(draw_shapes(seed) + _checked_shapes(shapes)))
    if schedule is not None:
        get_schedule(schedule)  # raises ValueError on an unknown name
        if not isinstance(schedule, str) or schedule not in SCHEDULES:
            raise ValueError(f"schedule must be a name in matfun.SCHEDULES {sorted(SCHEDULES)}, got {schedule!r}")
    tile = None if tile is None else check_tile(tile)
    defaults = PROFILES[precision_profile]
    thr = Thresholds(
        min_alignment=defaults.min_alignment if min_alignment is None else _number("min_alignment", min_alignment),
        scale_tol=defaults.scale_tol if scale_tol is None else _number("scale_tol", scale_tol),
        equivariance_tol=(
            defaults.equivariance_tol if equivariance_tol is None else _number("equivariance_tol", equivariance_tol)
        ),
        schedule_tol=defaults.schedule_tol if schedule_tol is None else _number("schedule_tol", schedule_tol),
        coefficient_tol=_number("coefficient_tol", coefficient_tol)
        if coefficient_tol is not None
        else (
            defaults.coefficient_tol
            if defaults.coefficient_tol is not None
            else BF16_COEFFICIENT_TOL.get(schedule or "", max(BF16_COEFFICIENT_TOL.values()))
        ),
    )
    _check_thresholds(thr)
    band = _checked_band(gain_band, schedule, steps, precision_profile)
    env = _Env(fn, backend, dtype, device)
    timeout = check_timeout(timeout)
    if isinstance(fn, str):
        split_target(fn)  # TargetError before a process is started
        env.caller = ProcessCaller(fn, backend, dtype, device, timeout)
    else:
        env.caller = DirectCaller(fn) if timeout is None else ThreadCaller(fn, timeout)
    try:
        with np.errstate(all="ignore"):  # the battery's own sums of wild outputs; fn keeps the caller's state
            report = _battery(
                env,
                fn,
                thr,
                precision_profile=precision_profile,
                schedule=schedule,
                steps=steps,
                schedule_precision=schedule_precision,
                seed=seed,
                shapes=shapes,
                scales=scales,
                skip=skip,
                tile=tile,
                band=band,
            )
        if isinstance(env.caller, ProcessCaller):
            env.caller.finish()
    finally:
        env.caller.close()
    return report


def _checked_scales(scales: Any) -> tuple[float, ...]:
    """The scale-invariance factors: finite, positive and not 1 (``f(1·G) = f(G)`` proves nothing)."""
    try:
        values = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"scales must be a sequence of numbers, got {scales!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 and v != 1 for v in values):
        raise ValueError(f"scales must be finite positive factors other than 1, got {scales!r}")
    return values


def _checked_shapes(shapes: Any) -> list[tuple[int, int]]:
    """The caller's extra shapes: pairs of integers >= 2."""
    if shapes is None:
        return []

    def integer(d: Any) -> bool:
        return bool(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 2)

    try:
        ok = not isinstance(shapes, str) and all(len(s) == 2 and all(map(integer, s)) for s in shapes)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"shapes must be a list of (H, W) with integers H, W >= 2, got {shapes!r}")
    return [(int(h), int(w)) for h, w in shapes]


def _checked_band(band: Any, schedule: str | None, steps: int, profile: str) -> tuple[float, float, float]:
    """``(lo, hi, x_cut)`` of the per-direction checks: the caller's band or the schedule's."""
    lo, hi, cut = _spectral.gain_band(schedule, steps, profile)
    if band is None:
        return lo, hi, cut
    try:
        lo, hi = (_number("gain_band", b) for b in band)
    except (TypeError, ValueError):
        raise ValueError(f"gain_band must be a pair (lo, hi), got {band!r}") from None
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"gain_band must satisfy 0 < lo < hi < inf (a gain <= 0 is no orthogonaliser), got {band!r}")
    return lo, hi, cut


def _number(name: str, value: Any) -> float:
    if isinstance(value, (bool, str)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def _check_thresholds(thr: Thresholds) -> None:
    """Thresholds under which every check can still fail."""
    if not 0 < thr.min_alignment <= 1:
        raise ValueError(
            f"min_alignment must lie in (0, 1], got {thr.min_alignment!r} (leave the check out with "
            "skip=('alignment',) instead)"
        )
    for name in ("scale_tol", "equivariance_tol", "schedule_tol", "coefficient_tol"):
        value = getattr(thr, name)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _battery(
    env: _Env,
    fn: Any,
    thr: Thresholds,
    *,
    precision_profile: str,
    schedule: str | None,
    steps: int,
    schedule_precision: str | None,
    seed: int,
    shapes: list[tuple[int, int]],
    scales: Sequence[float],
    skip: Sequence[str],
    tile: tuple[int, int] | None,
    band: tuple[float, float, float],
) -> Report:
    backend, dtype, device = env.backend, env.dtype, env.device
    tiled = tile is not None
    if tile is None:  # a whole-matrix map: the tile is at least the largest shape
        side = max(max(s) for s in shapes)
        tile = (side, side)
    reference_polar = Tiled(Polar(), tile) if tiled else polar

    def reference_ns(G: Any) -> Any:
        assert schedule is not None  # only schedule_agreement calls it
        if tiled:
            return tiled_newton_schulz(G, tile, steps, schedule, precision=schedule_precision)
        return newton_schulz(G, steps, schedule, precision=schedule_precision)

    wide = next((s for s in shapes if s[0] < s[1]), shapes[0])
    tall = next((s for s in shapes if s[0] > s[1]), (wide[1], wide[0]))

    settings = {
        "backend": backend,
        "dtype": dtype,
        "device": device,
        "profile": precision_profile,
        "seed": seed,
        "shapes": " ".join(map(_name, shapes)),
    }
    if tiled:
        settings["tile"] = f"{tile[0]}x{tile[1]}"
    if schedule is not None:
        settings.update(schedule=schedule, steps=steps)
    report = Report(
        target=fn if isinstance(fn, str) else getattr(fn, "__qualname__", None) or repr(fn), settings=settings
    )

    def run(name: str, check: Callable[[], CheckResult]) -> None:
        if name in skip:
            return
        try:
            report.checks.append(check())
        except (BatteryTimeout, TargetProcessError):
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a weird output object
            report.checks.append(
                CheckResult(name, False, math.nan, None, f"check errored: {type(exc).__name__}: {exc}")
            )

    # ---- shape / dtype / device / input_unchanged -------------------------
    basic: dict[str, list[str]] = {"shape": [], "dtype": [], "device": [], "input_unchanged": []}
    raised: list[str] = []
    want_lib = "torch" if backend == "torch" else "numpy"
    for i, shape in enumerate(shapes):
        G = env.make(_gaussian(_rng(seed, 0, i), shape))
        before = _f64(G).copy()
        out, err = env.call(G)
        case = _name(shape)
        if err:
            raised.append(f"{case}: {err}")
            continue
        lib, odt, odev = _lib_dtype_device(out)
        oshape = tuple(getattr(out, "shape", ()))
        if oshape != shape:
            basic["shape"].append(f"{case} -> {'x'.join(map(str, oshape)) or type(out).__name__}")
        if odt != dtype:
            basic["dtype"].append(f"{case}: {odt} (want {dtype})")
        if lib != want_lib or (lib == "torch" and torch.device(odev) != _norm_device(env.tdevice)):
            basic["device"].append(f"{case}: {lib} on {odev} (want {want_lib} on {device})")
        if not np.array_equal(env.input_after(G), before):
            basic["input_unchanged"].append(f"{case}: input modified in place")
    what = {
        "shape": "shape follows input",
        "dtype": f"dtype {dtype}",
        "device": f"{want_lib} on {device}",
        "input_unchanged": "input left unchanged",
    }
    for name, bad in basic.items():

        def make(name=name, bad=bad) -> CheckResult:
            if raised:
                return CheckResult(
                    name, False, len(raised), 0, raised[0] + (f" (+{len(raised) - 1} more)" if len(raised) > 1 else "")
                )
            detail = "; ".join(bad) if bad else f"{what[name]} on {', '.join(map(_name, shapes))}"
            return CheckResult(name, not bad, len(bad), 0, detail)

        run(name, make)

    # ---- zero --------------------------------------------------------------
    def zero() -> CheckResult:
        bad, worst = [], 0.0
        for shape in (wide, tall):
            out, err = env.call(env.make(np.zeros(shape)))
            if err:
                return CheckResult("zero", False, math.nan, 0, f"{_name(shape)}: {err}")
            X = _f64(out)
            if not np.all(np.isfinite(X)):
                worst = math.inf
                bad.append(f"{_name(shape)}: f(0) has {int(np.sum(~np.isfinite(X)))} non-finite entries")
                continue
            m = float(np.max(np.abs(X))) if X.size else 0.0
            worst = max(worst, m)
            if m != 0.0:
                bad.append(f"{_name(shape)}: max |f(0)| = {_fmt(m)}")
        return CheckResult("zero", not bad, worst, 0, "; ".join(bad) or "f(0) = 0 exactly", "<=")

    run("zero", zero)

    # ---- finite on ill-conditioned inputs ----------------------------------
    def finite() -> CheckResult:
        cases = [
            (f"kappa=1e6 {_name(wide)}", _geometric(1e6), wide),
            (f"kappa=1e12 {_name(tall)}", _geometric(1e12), tall),
            (f"rank-deficient {_name(wide)}", _rank_deficient, wide),
        ]
        bad = []
        for i, (case, gen, shape) in enumerate(cases):
            out, err = env.call(env.make(gen(_rng(seed, 1, i), shape)))
            if err:
                bad.append(f"{case}: {err}")
                continue
            X = _f64(out)
            if not np.all(np.isfinite(X)):
                bad.append(f"{case}: {int(np.sum(~np.isfinite(X)))} non-finite entries")
        detail = "; ".join(bad) or "finite on " + ", ".join(c[0] for c in cases)
        return CheckResult("finite", not bad, len(bad), 0, detail)

    run("finite", finite)

    # ---- scale invariance --------------------------------------------------
    def scale_invariance() -> CheckResult:
        w = _Worst("scale_invariance", thr.scale_tol)
        A = _gaussian(_rng(seed, 2, 0), wide)
        ref, err = env.call(env.make(A))
        if err:
            return CheckResult("scale_invariance", False, math.nan, thr.scale_tol, f"reference: {err}")
        R = _f64(ref)
        if not np.all(np.isfinite(R)):
            return CheckResult("scale_invariance", False, math.inf, thr.scale_tol, "non-finite output on the reference")
        for s in scales:
            case = f"scale {s:g}"
            out, err = env.call(env.make(A * s))
            if err:
                w.error(case, err)
                continue
            try:
                w.add(case, _relerr(_f64(out), R))
            except ValueError as exc:
                w.error(case, str(exc))
        return w.result("relative change")

    run("scale_invariance", scale_invariance)

    # ---- orthogonal equivariance -------------------------------------------
    def orthogonal() -> CheckResult:
        w = _Worst("orthogonal_equivariance", thr.equivariance_tol)
        for i, shape in enumerate((wide, tall)):
            rng = _rng(seed, 3, i)
            A = env.make(_gaussian(rng, shape))
            A64 = _f64(A)
            Q1, Q2 = _haar_blocks(rng, shape[0], tile[0]), _haar_blocks(rng, shape[1], tile[1])
            case = _name(shape)
            out1, err1 = env.call(A)
            out2, err2 = env.call(env.make(Q1 @ A64 @ Q2))
            if err1 or err2:
                w.error(case, str(err1 or err2))
                continue
            try:
                X = _f64(out1)
                if X.shape != shape:
                    raise ValueError(f"output shape {X.shape} != input shape {shape}")
                w.add(case, _relerr(_f64(out2), Q1 @ X @ Q2))
            except ValueError as exc:
                w.error(case, str(exc))
        return w.result("relative error")

    run("orthogonal_equivariance", orthogonal)

    # ---- transpose equivariance --------------------------------------------
    def transpose() -> CheckResult:
        w = _Worst("transpose_equivariance", thr.equivariance_tol)
        for i, shape in enumerate((wide, tall)):
            A = env.make(_gaussian(_rng(seed, 4, i), shape))
            A64 = _f64(A)
            case = f"{_name(shape)} vs its transpose"
            out1, err1 = env.call(A)
            out2, err2 = env.call(env.make(A64.T))
            if err1 or err2:
                w.error(case, str(err1 or err2))
                continue
            try:
                w.add(case, _relerr(_f64(out2), _f64(out1).T))
            except ValueError as exc:
                w.error(case, f"f(G^T) {exc.args[0].removeprefix('shape ')}")
        return w.result("relative error")

    if tile[0] == tile[1]:  # a THxTW tiling of G is a TWxTH tiling of G^T: no equivariance
        run("transpose_equivariance", transpose)

    # ---- alignment with the exact polar factor -----------------------------
    standard: list[tuple[str, Callable, tuple[int, int]]] = [
        (f"gaussian {'square' if h == w else 'wide' if h < w else 'tall'} {_name((h, w))}", _gaussian, (h, w))
        for h, w in shapes
    ]
    standard += [
        (f"geometric kappa=10 {_name(wide)}", _geometric(10.0), wide),
        (f"geometric kappa=1e3 {_name(tall)}", _geometric(1e3), tall),
        (f"low-rank(4)+noise {_name(wide)}", _low_rank_noise, wide),
    ]

    def alignment() -> CheckResult:
        w = _Worst("alignment", thr.min_alignment, ">=")
        for i, (case, gen, shape) in enumerate(standard):
            G = env.make(gen(_rng(seed, 5, i), shape))
            P = reference_polar(_f64(G))  # before the call, in case fn modifies its input
            out, err = env.call(G)
            if err:
                w.error(case, err)
                continue
            X = _f64(out)
            if X.shape != shape:
                w.error(case, f"output shape {X.shape} != input shape {shape}")
                continue
            w.add(case, _cos(X, P) if np.all(np.isfinite(X)) else math.nan)
        return w.result("alignment")

    run("alignment", alignment)

    # ---- every singular direction, and the output's spectrum ----------------
    leakage_tol = _spectral.LEAKAGE_TOL[precision_profile]
    null_tol = _spectral.NULL_TOL if precision_profile == "fp32" else None
    run("direction_gain", lambda: _spectral.direction_gain(env, shapes, tile, seed, band, leakage_tol))
    run("output_spectrum", lambda: _spectral.output_spectrum(env, shapes, tile, seed, band, null_tol))

    # ---- agreement with a named schedule -----------------------------------
    if schedule is not None:
        if schedule_precision is None:
            if precision_profile == "fp32":
                schedule_precision = "float64" if dtype == "float64" else "float32"
            else:
                schedule_precision = (
                    "bfloat16" if (backend == "torch" and env.tdevice.type == "cuda") else "bfloat16-emulated"
                )

        def agreement() -> CheckResult:
            w = _Worst("schedule_agreement", thr.schedule_tol)
            cases = [c for c in standard if c[0].startswith("gaussian")]
            cases.append((f"geometric kappa=10 {_name(wide)}", _geometric(10.0), wide))
            for i, (case, gen, shape) in enumerate(cases):
                G = env.make(gen(_rng(seed, 6, i), shape))
                ref = _f64(reference_ns(G))
                out, err = env.call(G)
                if err:
                    w.error(case, err)
                    continue
                try:
                    w.add(case, _relerr(_f64(out), ref))
                except ValueError as exc:
                    w.error(case, str(exc))
            result = w.result(f"relative error vs {schedule} K={steps} ({schedule_precision})")
            if not result.passed:
                return result
            fit_shape = (min(_FIT_SHAPE[0], tile[0]), min(_FIT_SHAPE[1], tile[1]))
            fit = _coefficient_fit(env, schedule, steps, fit_shape, seed)
            if isinstance(fit, str):
                return CheckResult("schedule_agreement", False, math.nan, thr.coefficient_tol, fit)
            detail = f"{result.detail}; coefficient fit {_fmt(fit)} (<= {_fmt(thr.coefficient_tol)})"
            if thr.coefficient_tol is not None and fit > thr.coefficient_tol:
                return CheckResult(
                    "schedule_agreement",
                    False,
                    fit,
                    thr.coefficient_tol,
                    f"transfer function deviates from {schedule}'s like a coefficient error: "
                    f"fit {_fmt(fit)} on {_PROBES} probes {_name(fit_shape)}",
                )
            return CheckResult("schedule_agreement", True, result.value, result.threshold, detail)

        run("schedule_agreement", agreement)
    return report


_PROBES = 8  # matrices averaged by the coefficient fit (bf16 rounding noise falls as 1/sqrt(n))
#: shape of the coefficient fit's probes: fixed (not drawn), because its thresholds were
#: calibrated on it and its noise depends on the size; the drawn shapes guard the rest
_FIT_SHAPE = (32, 48)


def _sensitivities(sigma: np.ndarray, steps: int, schedule: str) -> tuple[np.ndarray, np.ndarray]:
    """``p_K(σ)`` of ``schedule`` and its derivatives with respect to every
    coefficient and the normalisation (central differences in float64)."""
    sched = get_schedule(schedule)
    base = transfer_function(sigma, steps, sched)
    columns = []

    def variant(k: int, j: int, h: float) -> Any:
        coeffs = [list(c) for c in sched.coefficients]
        coeffs[k][j] += h
        return Schedule(sched.name, tuple((c[0], c[1], c[2]) for c in coeffs), sched.normalization)

    h = 1e-6
    for k in range(len(sched.coefficients)):
        for j in range(3):
            plus, minus = variant(k, j, h), variant(k, j, -h)
            columns.append((transfer_function(sigma, steps, plus) - transfer_function(sigma, steps, minus)) / (2 * h))
    columns.append(
        (transfer_function(sigma * (1 + h), steps, sched) - transfer_function(sigma * (1 - h), steps, sched)) / (2 * h)
    )
    return base, np.stack(columns, axis=1)


def _coefficient_fit(env: _Env, schedule: str, steps: int, shape: tuple[int, int], seed: int) -> float | str:
    """How much of ``fn``'s transfer function looks like a coefficient error.

    ``fn`` runs on :data:`_PROBES` matrices ``U diag(σ) Vᵀ`` sharing one known
    geometric spectrum (κ = 1/0.03, ‖σ‖ = 1); ``d_i`` = mean of ``u_iᵀ f(G) v_i``
    is its empirical transfer function.  The deviation ``d − p_K(σ)`` from the
    float64 transfer function of ``schedule`` is projected on the span of
    ``∂p_K/∂(a, b, c)`` of every step and ``∂p_K/∂(scale)``; the result is
    ``‖projection‖ / ‖p_K(σ)‖``.  Rounding noise is spread over all ``H·W``
    output entries and mostly averages out of ``d``; a wrong coefficient lies in
    the projected span entirely.  Returns a string when ``fn`` failed.
    """
    H, W = shape
    r = min(H, W)
    sigma = np.geomspace(1.0, 0.03, r)
    sigma /= np.linalg.norm(sigma)
    diagonals = []
    for j in range(_PROBES):
        rng = _rng(seed, 7, j)
        U, V = _haar(rng, H, r), _haar(rng, W, r)
        out, err = env.call(env.make((U * sigma) @ V.T))
        if err:
            return f"coefficient probe {j}: {err}"
        X = _f64(out)
        if X.shape != (H, W) or not np.all(np.isfinite(X)):
            return f"coefficient probe {j}: output shape {X.shape} or non-finite values"
        diagonals.append(np.einsum("ij,jk,ki->i", U.T, X, V))
    target, sensitivity = _sensitivities(sigma, steps, schedule)
    basis, _ = np.linalg.qr(sensitivity)
    deviation = np.mean(diagonals, axis=0) - target
    return float(np.linalg.norm(basis.T @ deviation) / np.linalg.norm(target))


def assert_orthogonalizer(fn: Callable[[Any], Any], **kwargs: Any) -> Report:
    """Run :func:`check_orthogonalizer` and raise ``AssertionError`` with the table on failure.

    Accepts the same arguments (``fn`` may be a ``"module:function"`` string,
    ``timeout=`` bounds the battery, default 600 s); returns the (passing)
    report.  :class:`BatteryTimeout` and :class:`TargetProcessError` propagate.
    """
    report = check_orthogonalizer(fn, **kwargs)
    if not report.passed:
        raise AssertionError("orthogonaliser failed " + ", ".join(report.failed_names) + "\n" + report.table())
    return report
