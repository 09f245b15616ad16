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
    Gaussian square / wide / tall, geometric spectra with κ = 10 and 1e3,
    rank-4 plus 5 % noise; the detail names the worst matrix.
``schedule_agreement`` (only with ``schedule=``)
    ``‖f(G) − NS(G)‖_F / ‖NS(G)‖_F`` against
    ``matfun.newton_schulz(G, steps, schedule, precision=...)`` in the matching
    precision (``"float32"`` for the fp32 profile; ``"bfloat16-emulated"`` on CPU
    and ``"bfloat16"`` on CUDA for the bf16 profile) on the Gaussian matrices and
    the κ = 10 one (well conditioned, so that bf16 rounding noise, which NS
    amplifies on tiny singular values, does not mask coefficient errors).  Catches a wrong coefficient, a wrong step count, a wrong
    normalisation.

``schedule_agreement`` also runs a *coefficient fit*: ``fn`` is applied to 8
matrices ``U diag(σ) Vᵀ`` sharing one known spectrum; ``d_i`` = mean of
``u_iᵀ f(G) v_i`` is ``fn``'s empirical transfer function, and the part of
``d − p_K(σ)`` that lies in the span of ``∂p_K/∂(a, b, c)`` (every step) and
``∂p_K/∂(scale)`` is compared with ``coefficient_tol``, relative to
``‖p_K(σ)‖``.  Rounding noise spreads over all output entries and mostly
averages out; a wrong coefficient lies in that span entirely.  This is what
lets the bf16 profile catch a coefficient typo that bf16 rounding hides from
the plain relative error.

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
jordan             a, b, c: 4e-5                    a, b, c: 2e-3 (catches 2.0351 for
                                                    2.0315 and −4.7705 for −4.7750, *not*
                                                    3.4454 for 3.4445)
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

Calibration (default shapes, seeds 0–9, torch CPU, on the toolkit's own maps;
``tests/test_testing.py`` re-checks them):

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

Speed: one battery is about 40 calls of ``fn`` on matrices of at most 48×32,
≈ 30 ms of CPU time.  With several torch intra-op threads on a busy CPU, tiny
matmuls can spend seconds spin-waiting; ``torch.set_num_threads(1)`` around the
check avoids that (the ``validate`` command and the project's tests do so).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ._isolation import (
    DEFAULT_TIMEOUT,
    BatteryTimeout,
    DirectCaller,
    ProcessCaller,
    RemoteOutput,
    TargetError,
    TargetProcessError,
    ThreadCaller,
    check_timeout,
    split_target,
)
from .newton_schulz import newton_schulz
from .polar import Polar, polar
from .schedules import SCHEDULES, Schedule, check_steps, get_schedule, transfer_function
from .tiling import Tiled, check_tile, tiled_newton_schulz

__all__ = [
    "BatteryTimeout",
    "BF16_COEFFICIENT_TOL",
    "CHECK_NAMES",
    "DEFAULT_TIMEOUT",
    "TargetError",
    "TargetProcessError",
    "CheckResult",
    "PROFILES",
    "Report",
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
    "fp32": Thresholds(min_alignment=0.85, scale_tol=1e-3, equivariance_tol=1e-3, schedule_tol=1e-3,
                       coefficient_tol=1e-4),
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
    "schedule_agreement",
)

DEFAULT_SHAPES: tuple[tuple[int, int], ...] = ((32, 32), (32, 48), (48, 32))


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check.

    Attributes
    ----------
    name : str
        One of :data:`CHECK_NAMES`.
    passed : bool
    value : float or int or None
        The measured worst case (a count of failing cases for the yes/no
        checks, ``nan`` when nothing could be measured).
    threshold : float or int or None
        The bound ``value`` is compared with (see ``comparison``).
    detail : str
        Human-readable explanation: the worst case's name, an exception message.
    comparison : str
        ``"<="`` (value must not exceed threshold) or ``">="``.
    """

    name: str
    passed: bool
    value: float | int | None
    threshold: float | int | None
    detail: str = ""
    comparison: str = "<="


@dataclass
class Report:
    """Result of :func:`check_orthogonalizer`.

    ``report.passed`` is true when every check passed; ``report.failures`` lists
    the failed :class:`CheckResult` objects; ``report.table()`` (and ``str``)
    renders a fixed-width text table.
    """

    checks: list[CheckResult] = field(default_factory=list)
    target: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    @property
    def failed_names(self) -> list[str]:
        return [c.name for c in self.failures]

    def __getitem__(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}; checks run: {[c.name for c in self.checks]}")

    def table(self) -> str:
        """A fixed-width text table, one row per check, and a summary line."""
        head = f"orthogonaliser check: {self.target}" if self.target else "orthogonaliser check"
        if self.settings:
            head += "  (" + ", ".join(f"{k}={v}" for k, v in self.settings.items()) + ")"
        rows = [("check", "result", "value", "threshold", "detail")]
        for c in self.checks:
            thr = "-" if c.threshold is None else f"{c.comparison} {_fmt(c.threshold)}"
            rows.append((c.name, "PASS" if c.passed else "FAIL", _fmt(c.value), thr, c.detail))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [head]
        for i, r in enumerate(rows):
            lines.append("  ".join(r[j].ljust(widths[j]) for j in range(4)) + "  " + r[4])
            if i == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
        n_fail = len(self.failures)
        if n_fail:
            lines.append(f"FAILED: {n_fail} of {len(self.checks)} checks ({', '.join(self.failed_names)})")
        else:
            lines.append(f"PASSED: all {len(self.checks)} checks")
        return "\n".join(line.rstrip() for line in lines)

    def __str__(self) -> str:
        return self.table()


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4g}"


# ---------------------------------------------------------------------------
# Test matrices (float64 numpy; matfun must not import diagnostics)
# ---------------------------------------------------------------------------


def _haar(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``n×k`` matrix with Haar-distributed orthonormal columns."""
    Q, R = np.linalg.qr(rng.standard_normal((n, k)))
    return Q * np.sign(np.diag(R))


def _haar_blocks(rng: np.random.Generator, n: int, block: int) -> np.ndarray:
    """``n×n`` block-diagonal orthogonal matrix, Haar blocks of ``block`` (last one ragged)."""
    Q = np.zeros((n, n))
    for start in range(0, n, block):
        k = min(block, n - start)
        Q[start:start + k, start:start + k] = _haar(rng, k, k)
    return Q


def _with_spectrum(rng: np.random.Generator, shape: tuple[int, int], sigma: np.ndarray) -> np.ndarray:
    H, W = shape
    r = min(H, W)
    return (_haar(rng, H, r) * sigma) @ _haar(rng, W, r).T


def _gaussian(rng, shape):
    return rng.standard_normal(shape)


def _geometric(kappa: float):
    def make(rng, shape):
        r = min(shape)
        return _with_spectrum(rng, shape, np.geomspace(1.0, 1.0 / kappa, r))

    return make


def _rank_deficient(rng, shape):
    r = min(shape)
    sigma = np.zeros(r)
    sigma[: max(r // 2, 1)] = np.geomspace(1.0, 0.1, max(r // 2, 1))
    return _with_spectrum(rng, shape, sigma)


def _low_rank_noise(rng, shape, rank: int = 4, noise: float = 0.05):
    r = min(shape)
    k = min(rank, r)
    L = _haar(rng, shape[0], k) @ _haar(rng, shape[1], k).T
    N = rng.standard_normal(shape)
    return L + N * (noise * math.sqrt(k) / np.linalg.norm(N))


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


# ---------------------------------------------------------------------------
# Backend plumbing
# ---------------------------------------------------------------------------


class _Env:
    """Converts float64 numpy matrices to the function's input type and calls it."""

    def __init__(self, fn, backend, dtype, device):
        self.fn = fn
        self.backend = backend
        self.dtype = dtype
        self.device = device
        if backend == "torch":
            try:
                self.tdtype = getattr(torch, dtype)
                assert isinstance(self.tdtype, torch.dtype) and self.tdtype.is_floating_point
            except (AttributeError, AssertionError):
                raise ValueError(f"dtype must name a torch floating dtype, got {dtype!r}") from None
            self.tdevice = torch.device(device)
            if self.tdevice.type == "meta":
                raise ValueError("device 'meta' holds no values; the battery needs a device with data (cpu, cuda)")
        else:
            if dtype == "bfloat16":
                raise ValueError("numpy has no bfloat16; use backend='torch' or dtype='float32'")
            try:
                self.ndtype = np.dtype(dtype)
            except TypeError:
                raise ValueError(f"dtype must name a numpy floating dtype, got {dtype!r}") from None
            if not np.issubdtype(self.ndtype, np.floating):
                raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")
            if str(device) != "cpu":
                raise ValueError(f"backend='numpy' runs on device 'cpu', got device={device!r}")

        self.caller: Any = None
        self._after: np.ndarray | None = None

    def make(self, A: np.ndarray) -> Any:
        if self.backend == "torch":
            return torch.as_tensor(A, dtype=torch.float64).to(device=self.tdevice, dtype=self.tdtype)
        return np.asarray(A, dtype=np.float64).astype(self.ndtype)

    def call(self, X: Any) -> tuple[Any, str | None]:
        """``(fn(X), None)`` or ``(None, "fn raised ...")``; a timeout or a dead target raises."""
        if isinstance(self.caller, ProcessCaller):
            out, err, self._after = self.caller(_f64(X))
            return out, err
        self._after = None
        return self.caller(X)

    def input_after(self, X: Any) -> np.ndarray:
        """The input of the last call as the function left it (float64)."""
        return self._after if self._after is not None else _f64(X)


def _f64(X: Any) -> np.ndarray:
    """float64 numpy copy of an input or output (raises TypeError if not an array)."""
    if isinstance(X, RemoteOutput):
        if X.values is None:
            raise TypeError(X.values_error or f"output is a {X.library}, not an array")
        return X.values
    if isinstance(X, torch.Tensor):
        return X.detach().to(device="cpu", dtype=torch.float64).numpy()
    if isinstance(X, np.ndarray):
        if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
            raise TypeError(f"output has dtype {X.dtype}")
        return X.astype(np.float64)
    raise TypeError(f"output is a {type(X).__name__}, not an array")


def _lib_dtype_device(X: Any) -> tuple[str, str, str]:
    if isinstance(X, RemoteOutput):
        return X.library, X.dtype, X.device
    if isinstance(X, torch.Tensor):
        return "torch", str(X.dtype).removeprefix("torch."), str(X.device)
    if isinstance(X, np.ndarray):
        return "numpy", str(X.dtype), "cpu"
    return type(X).__name__, "?", "?"


def _cos(X: np.ndarray, P: np.ndarray) -> float:
    nx, npp = np.linalg.norm(X), np.linalg.norm(P)
    if not (nx > 0 and npp > 0):
        return 0.0
    return float(np.sum(X * P) / (nx * npp))


def _relerr(X: np.ndarray, R: np.ndarray) -> float:
    if X.shape != R.shape:
        raise ValueError(f"shape {X.shape} != expected {R.shape}")
    if not np.all(np.isfinite(X)):
        return math.inf
    d = np.linalg.norm(X - R)
    n = np.linalg.norm(R)
    return float(d / n) if n > 0 else (0.0 if d == 0 else math.inf)


class _Worst:
    """Track the worst value of an error (``<=``) or score (``>=``) over cases."""

    def __init__(self, name: str, threshold: float, comparison: str = "<="):
        self.name, self.threshold, self.comparison = name, threshold, comparison
        self.value: float | None = None
        self.where = ""
        self.errors: list[str] = []
        self.n = 0

    def add(self, case: str, value: float) -> None:
        self.n += 1
        value = float(value)
        bad = (lambda v: -v) if self.comparison == ">=" else (lambda v: v)
        if math.isnan(value):
            value = -math.inf if self.comparison == ">=" else math.inf
        if self.value is None or bad(value) > bad(self.value):
            self.value, self.where = value, case

    def error(self, case: str, msg: str) -> None:
        self.errors.append(f"{case}: {msg}")

    def result(self, what: str) -> CheckResult:
        if self.errors:
            more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            return CheckResult(self.name, False, math.nan, self.threshold, self.errors[0] + more, self.comparison)
        v = self.value
        ok = v is not None and (v >= self.threshold if self.comparison == ">=" else v <= self.threshold)
        if v is not None and math.isinf(v):
            detail = f"non-finite output on {self.where}"
            v = math.nan if self.comparison == ">=" else v  # no alignment of a NaN matrix
        else:
            detail = f"worst {what} on {self.where}" if self.n > 1 else f"{what} on {self.where}"
        return CheckResult(self.name, bool(ok), v, self.threshold, detail, self.comparison)


def _name(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


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
    seed: int = 0,
    shapes: Sequence[tuple[int, int]] = DEFAULT_SHAPES,
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
    seed : int
        Seed of every random test matrix (the battery is deterministic).
    shapes : sequence of (H, W)
        Matrix shapes; the default square 32×32, wide 32×48, tall 48×32 keeps
        the battery at a few hundred milliseconds.  Structured matrices use
        the wide shape (the first with ``H < W``) and the tall one.
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
        not finite, a scale of 1, or a ``skip`` that leaves no check.  Errors raised *by fn* never propagate: they fail the check.
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
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    scales = _checked_scales(scales)
    shapes = [tuple(int(d) for d in s) for s in shapes]
    if not shapes or any(len(s) != 2 or min(s) < 2 for s in shapes):
        raise ValueError(f"shapes must be a non-empty list of (H, W) with H, W >= 2, got {shapes}")
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
        coefficient_tol=_number("coefficient_tol", coefficient_tol) if coefficient_tol is not None else (
            defaults.coefficient_tol if defaults.coefficient_tol is not None
            else BF16_COEFFICIENT_TOL.get(schedule, max(BF16_COEFFICIENT_TOL.values()))),
    )
    _check_thresholds(thr)
    env = _Env(fn, backend, dtype, device)
    timeout = check_timeout(timeout)
    if isinstance(fn, str):
        split_target(fn)  # TargetError before a process is started
        env.caller = ProcessCaller(fn, backend, dtype, device, timeout)
    else:
        env.caller = DirectCaller(fn) if timeout is None else ThreadCaller(fn, timeout)
    try:
        with np.errstate(all="ignore"):  # the battery's own sums of wild outputs; fn keeps the caller's state
            report = _battery(env, fn, thr, precision_profile=precision_profile, schedule=schedule, steps=steps,
                              schedule_precision=schedule_precision, seed=seed, shapes=shapes, scales=scales,
                              skip=skip, tile=tile)
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


def _battery(env: _Env, fn: Any, thr: Thresholds, *, precision_profile: str, schedule: str | None, steps: int,
             schedule_precision: str | None, seed: int, shapes: list[tuple[int, int]], scales: Sequence[float],
             skip: Sequence[str], tile: tuple[int, int] | None) -> Report:
    backend, dtype, device = env.backend, env.dtype, env.device
    tiled = tile is not None
    if tile is None:  # a whole-matrix map: the tile is at least the largest shape
        tile = (max(s[0] for s in shapes), max(s[1] for s in shapes))
    reference_polar = Tiled(Polar(), tile) if tiled else polar

    def reference_ns(G: Any) -> Any:
        if tiled:
            return tiled_newton_schulz(G, tile, steps, schedule, precision=schedule_precision)
        return newton_schulz(G, steps, schedule, precision=schedule_precision)
    wide = next((s for s in shapes if s[0] < s[1]), shapes[0])
    tall = next((s for s in shapes if s[0] > s[1]), (wide[1], wide[0]))

    settings = {"backend": backend, "dtype": dtype, "device": device, "profile": precision_profile}
    if tiled:
        settings["tile"] = f"{tile[0]}x{tile[1]}"
    if schedule is not None:
        settings.update(schedule=schedule, steps=steps)
    report = Report(target=fn if isinstance(fn, str) else getattr(fn, "__qualname__", None) or repr(fn),
                    settings=settings)

    def run(name: str, check: Callable[[], CheckResult]) -> None:
        if name in skip:
            return
        try:
            report.checks.append(check())
        except (BatteryTimeout, TargetProcessError):
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a weird output object
            report.checks.append(CheckResult(name, False, math.nan, None, f"check errored: {type(exc).__name__}: {exc}"))

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
    what = {"shape": "shape follows input", "dtype": f"dtype {dtype}", "device": f"{want_lib} on {device}",
            "input_unchanged": "input left unchanged"}
    for name, bad in basic.items():
        def make(name=name, bad=bad) -> CheckResult:
            if raised:
                return CheckResult(name, False, len(raised), 0, raised[0] + (f" (+{len(raised) - 1} more)" if len(raised) > 1 else ""))
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
                w.error(case, err1 or err2)
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
                w.error(case, err1 or err2)
                continue
            try:
                w.add(case, _relerr(_f64(out2), _f64(out1).T))
            except ValueError as exc:
                w.error(case, f"f(G^T) {exc.args[0].removeprefix('shape ')}")
        return w.result("relative error")

    if tile[0] == tile[1]:  # a THxTW tiling of G is a TWxTH tiling of G^T: no equivariance
        run("transpose_equivariance", transpose)

    # ---- alignment with the exact polar factor -----------------------------
    square = next((s for s in shapes if s[0] == s[1]), None)
    standard: list[tuple[str, Callable, tuple[int, int]]] = []
    for label, shape in (("square", square), ("wide", wide), ("tall", tall)):
        if shape is not None:
            standard.append((f"gaussian {label} {_name(shape)}", _gaussian, shape))
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

    # ---- agreement with a named schedule -----------------------------------
    if schedule is not None:
        if schedule_precision is None:
            if precision_profile == "fp32":
                schedule_precision = "float64" if dtype == "float64" else "float32"
            else:
                schedule_precision = "bfloat16" if (backend == "torch" and env.tdevice.type == "cuda") else "bfloat16-emulated"

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
            fit = _coefficient_fit(env, schedule, steps, (min(wide[0], tile[0]), min(wide[1], tile[1])), seed)
            if isinstance(fit, str):
                return CheckResult("schedule_agreement", False, math.nan, thr.coefficient_tol, fit)
            detail = f"{result.detail}; coefficient fit {_fmt(fit)} (<= {_fmt(thr.coefficient_tol)})"
            if fit > thr.coefficient_tol:
                return CheckResult("schedule_agreement", False, fit, thr.coefficient_tol,
                                   f"transfer function deviates from {schedule}'s like a coefficient error: "
                                   f"fit {_fmt(fit)} on {_PROBES} probes {_name(wide)}")
            return CheckResult("schedule_agreement", True, result.value, result.threshold, detail)

        run("schedule_agreement", agreement)
    return report


_PROBES = 8  # matrices averaged by the coefficient fit (bf16 rounding noise falls as 1/sqrt(n))


def _sensitivities(sigma: np.ndarray, steps: int, schedule: str) -> tuple[np.ndarray, np.ndarray]:
    """``p_K(σ)`` of ``schedule`` and its derivatives with respect to every
    coefficient and the normalisation (central differences in float64)."""
    sched = get_schedule(schedule)
    base = transfer_function(sigma, steps, sched)
    columns = []

    def variant(k: int, j: int, h: float) -> Any:
        coeffs = [list(c) for c in sched.coefficients]
        coeffs[k][j] += h
        return Schedule(sched.name, tuple(map(tuple, coeffs)), sched.normalization)

    h = 1e-6
    for k in range(len(sched.coefficients)):
        for j in range(3):
            plus, minus = variant(k, j, h), variant(k, j, -h)
            columns.append((transfer_function(sigma, steps, plus) - transfer_function(sigma, steps, minus)) / (2 * h))
    columns.append((transfer_function(sigma * (1 + h), steps, sched) - transfer_function(sigma * (1 - h), steps, sched)) / (2 * h))
    return base, np.stack(columns, axis=1)


def _coefficient_fit(env: "_Env", schedule: str, steps: int, shape: tuple[int, int], seed: int) -> float | str:
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


def _norm_device(d: torch.device) -> torch.device:
    """``cuda`` → ``cuda:<current>`` so that ``cuda`` and ``cuda:0`` compare equal."""
    if d.type == "cuda" and d.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return d


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


def __getattr__(name: str) -> Any:
    # the sharded check imports torch.distributed: load it on first use only
    if name in ("check_sharded_optimizer", "assert_sharded_optimizer", "ShardedReport"):
        from . import sharded_check

        return getattr(sharded_check, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
