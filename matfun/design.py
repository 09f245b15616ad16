"""Design Newton–Schulz coefficient schedules: per-step minimax odd polynomials.

The Polar Express construction (Amsel, Persson, Musco, Gower 2025) chooses each
step's odd polynomial ``p_k(x) = a x + b x³ (+ c x⁵)`` as the best uniform
approximation of the constant 1 on the interval ``[ℓ_k, u_k]`` that currently
holds the singular values, then maps the interval forward,
``[ℓ_{k+1}, u_{k+1}] = p_k([ℓ_k, u_k])``.  The greedy choice is optimal for the
composition (their Theorem 4.1).  Each step's minimax problem is solved with the
Remez exchange algorithm: ``m`` coefficients and the level ``E`` solve the
equioscillation system ``p(x_j) = 1 ∓ E`` on ``m + 1`` alternation points
(``ℓ``, the interior critical points of ``p``, ``u``), and the interior points
are replaced by the critical points of the new ``p`` until they stop moving.

Two finite-precision devices of the reference construction are kept, with the
same meaning:

``cushion``
    The minimax problem is solved on ``[max(ℓ, cushion·u), u]`` instead of
    ``[ℓ, u]`` (a polynomial fitted to a nearly-zero ``ℓ`` has huge
    coefficients and amplifies rounding), then rescaled so that its range on
    ``[ℓ, u]`` is centred on 1.
``safety``
    Every step but the last is applied as ``p(x/(1 + safety))`` and the input
    is normalised by ``(1 + safety)·‖G‖_F`` (:attr:`Schedule.normalization`), so
    singular values pushed slightly above the design interval by rounding are
    still mapped back inside it.  The upper end of the next interval is
    ``u_{k+1} = 2 − ℓ_{k+1}``.

Beyond the worst-case design (:func:`design_schedule`) this module offers
:func:`safety_for_precision` (the rounding margin a compute precision needs) and
``objective="mean_alignment"``: coefficients that maximise the mean alignment
``E[p_K(σ)] / √E[p_K(σ)²]`` over a prior sample of singular values (what Muon²
reports as directional alignment), started from the best minimax design on the
prior and kept within the minimax design's overshoot bound.

References
----------
N. Amsel, D. Persson, C. Musco, R. M. Gower, *The Polar Express: Optimal Matrix
Sign Methods and Their Application to the Muon Algorithm*, arXiv:2505.16932
(2025), Algorithm 2 and Appendix (reference implementation).
L. N. Trefethen, *Approximation Theory and Approximation Practice*, ch. 10
(equioscillation, Remez).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from .schedules import Schedule

#: Safety margin per compute precision: the relative rounding growth of the
#: singular values in one step is about ``n_products · unit roundoff``; bfloat16's
#: unit roundoff (2⁻⁸ ≈ 3.9e-3) times the ~5 fused products of a quintic step
#: sits just under 2e-2 (the margin modded-nanogpt and dion run bf16 Polar
#: Express with), float32's (6e-8) and float64's are negligible.
PRECISION_SAFETY = {"float64": 1e-6, "float32": 1e-3, "bfloat16": 2e-2, "bfloat16-emulated": 2e-2}

OBJECTIVES = ("worst_case", "mean_alignment")
DEGREES = (3, 5)
# Above this ℓ/u the equioscillating polynomial is numerically the degree's
# Newton–Schulz limit (critical point at u), and Remez is ill-conditioned.
_LIMIT_RATIO = 1 - 5e-6
_LIMIT = {3: (1.5, -0.5), 5: (15 / 8, -10 / 8, 3 / 8)}
# Within this ratio the limit's error is below ~1e-9 (1 − p ~ (1 − x)³): used if Remez degenerates.
_NARROW_RATIO = 1 - 1e-3


@dataclasses.dataclass(frozen=True)
class DesignedSchedule(Schedule):
    """A :class:`Schedule` built by :func:`design_schedule`, with its guarantees.

    The attributes below are in addition to :class:`Schedule`'s.

    Attributes
    ----------
    lower, upper : float
        The design interval ``[ℓ, u]`` of the normalised singular values
        ``x₀ = σ / (normalization·‖G‖_F)``.
    degree : int
        3 or 5.
    safety, cushion : float
        As in :func:`design_schedule`.
    objective : str
        ``"worst_case"`` or ``"mean_alignment"``.
    bounds : tuple of (float, float)
        ``bounds[k] = (ℓ_k, u_k)``: every ``x₀ ∈ [lower, upper]`` is mapped by the
        first ``k`` steps into ``[ℓ_k, u_k]`` (``bounds[0] = (lower, upper)``).
    """

    lower: float = 0.0
    upper: float = 1.0
    degree: int = 5
    safety: float = 0.0
    cushion: float = 0.0
    objective: str = "worst_case"
    bounds: tuple[tuple[float, float], ...] = ()

    def python_tuples(self) -> str:
        """The coefficients as Python source, one ``(a, b, c),`` line per step (full precision)."""
        return "\n".join(f"({a!r}, {b!r}, {c!r})," for a, b, c in self.coefficients)


# ---------------------------------------------------------------- one step


def _odd_eval(coef: np.ndarray, x: Any) -> Any:
    """``Σ_j coef[j] x^{2j+1}`` (Horner in ``x²``)."""
    x = np.asarray(x, dtype=np.float64)
    x2 = x * x
    acc = np.zeros_like(x)
    for c in coef[::-1]:
        acc = acc * x2 + c
    return acc * x


def _critical_points(coef: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Sorted critical points of the odd polynomial inside ``(lo, hi)``."""
    # p'(x) = Σ (2j+1) coef[j] y^j with y = x²; roots in y.
    dcoef = np.array([(2 * j + 1) * c for j, c in enumerate(coef)])
    if len(dcoef) < 2 or dcoef[-1] == 0:
        return np.empty(0)
    y = np.roots(dcoef[::-1])
    y = np.real(y[(np.abs(np.imag(y)) <= 1e-12 * np.abs(y)) & (np.real(y) > 0)])
    x = np.sqrt(y)
    return np.sort(x[(x > lo) & (x < hi)])


def _range_on(coef: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """``(min, max)`` of the odd polynomial on ``[lo, hi]``."""
    values = _odd_eval(coef, np.concatenate([[lo, hi], _critical_points(coef, lo, hi)]))
    return float(values.min()), float(values.max())


def _limit_polynomial(lower: float, upper: float, degree: int) -> tuple[np.ndarray, float]:
    """The Newton–Schulz limit scaled to ``upper`` (``p(u) = 1``, ``p'(u) = 0``) and its error on the interval."""
    coef = np.array(_LIMIT[degree]) / upper ** np.arange(1, degree + 1, 2)
    lo, hi = _range_on(coef, lower, upper)
    return coef, max(1 - lo, hi - 1)


def minimax_odd(lower: float, upper: float, degree: int = 5, *, max_iter: int = 100) -> tuple[np.ndarray, float]:
    """Best uniform approximation of 1 on ``[lower, upper]`` by an odd polynomial (Remez).

    Parameters
    ----------
    lower, upper : float
        ``0 < lower ≤ upper``.
    degree : {3, 5}
        Polynomial degree.
    max_iter : int
        Exchange iterations (convergence is quadratic; ~5–10 are typical).

    Returns
    -------
    coef : ndarray
        Coefficients of ``x, x³ (, x⁵)``.
    error : float
        The equioscillation level ``E = max |1 − p|`` on ``[lower, upper]``.
    """
    if degree not in DEGREES or not 0 < lower <= upper:
        raise ValueError(f"need degree 3 or 5 and 0 < lower <= upper, got {degree!r}, [{lower!r}, {upper!r}]")
    m = (degree + 1) // 2
    if lower / upper >= _LIMIT_RATIO:
        return _limit_polynomial(lower, upper, degree)
    # Initial alternation points: spread between the ends (exact as lower → upper).
    nodes = lower + (upper - lower) * np.arange(m + 1) / m
    signs = (-1.0) ** np.arange(m + 1)  # p(x_j) = 1 − (−1)^j E: ℓ sits below 1
    powers = np.arange(1, degree + 1, 2)
    for _ in range(max_iter):
        system = np.column_stack([nodes[:, None] ** powers, signs])
        coef = np.linalg.solve(system, np.ones(m + 1))[:m]
        interior = _critical_points(coef, lower, upper)
        if len(interior) != m - 1:
            if lower / upper >= _NARROW_RATIO:  # rounding-level oscillation: the limit is as good
                return _limit_polynomial(lower, upper, degree)
            raise RuntimeError(f"Remez exchange lost an alternation point on [{lower!r}, {upper!r}] (degree {degree})")
        new_nodes = np.concatenate([[lower], interior, [upper]])
        moved = np.max(np.abs(new_nodes - nodes))
        nodes = new_nodes
        if moved <= 1e-15 * upper:
            break
    system = np.column_stack([nodes[:, None] ** powers, signs])
    solution = np.linalg.solve(system, np.ones(m + 1))
    return solution[:m], abs(float(solution[m]))


# ---------------------------------------------------------------- schedule


def _check_positive_finite(name: str, value: Any, *, allow_zero: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        accepted = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{name} must be {accepted}, got {value!r}")
    return value


def safety_for_precision(precision: str) -> float:
    """The safety margin :func:`design_schedule` uses for a compute precision.

    See :data:`PRECISION_SAFETY` for the values and their reasoning.
    """
    try:
        return PRECISION_SAFETY[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}; choose one of {tuple(PRECISION_SAFETY)}") from None


def _triple(c: np.ndarray) -> tuple[float, float, float]:
    """Odd-polynomial coefficients ``(a, b[, c])`` as an ``(a, b, c)`` triple of floats (``c = 0`` for degree 3)."""
    a, b, c5 = (float(v) for v in np.pad(c, (0, 3 - len(c))))
    return a, b, c5


def design_schedule(
    lower: float,
    upper: float = 1.0,
    steps: int = 5,
    *,
    degree: int = 5,
    safety: float | None = None,
    cushion: float = 0.02,
    precision: str | None = None,
    objective: str = "worst_case",
    prior: Any = None,
    name: str | None = None,
) -> DesignedSchedule:
    """Minimax-optimal composition of odd polynomials for singular values in ``[lower, upper]``.

    Step ``k`` uses the best uniform approximation of 1 on the current interval
    ``[ℓ_k, u_k]`` (Remez), cushioned and made safe as in the Polar Express
    reference construction (module docstring); the interval then moves to
    ``[ℓ_{k+1}, 2 − ℓ_{k+1}]`` with ``ℓ_{k+1} = min p_k`` over ``[ℓ_k, u_k]``.
    With ``lower=1e-3, steps=5, safety=2e-2, cushion=0.02`` this reproduces the
    published 5-step Polar Express constants.

    Parameters
    ----------
    lower, upper : float
        ``0 < lower < upper``: the interval of ``σ / (normalization·‖G‖_F)``
        the schedule is designed for.  ``upper = 1`` covers every matrix; a
        smaller ``upper`` fits inputs whose ``σ_max`` is known to be a smaller
        share of ``‖G‖_F`` (e.g. tiles of realistic momenta).
    steps : int
        Number of steps ``K ≥ 1``.
    degree : {3, 5}
        Degree of each step's odd polynomial (``c = 0`` for 3).
    safety : float, optional
        Relative rounding margin ``≥ 0`` (applied to all steps but the last and
        to the normalisation ``1 + safety``).  Default: from ``precision``
        (:func:`safety_for_precision`), else ``2e-2`` (the published bf16 value).
    cushion : float
        ``0 ≤ cushion < 1``; each step is fitted on ``[max(ℓ_k, cushion·u_k), u_k]``.
    precision : str, optional
        Compute precision the schedule will run in (``"float64"``, ``"float32"``,
        ``"bfloat16"``); sets the default ``safety``.
    objective : {"worst_case", "mean_alignment"}
        ``"worst_case"``: the minimax composition.  ``"mean_alignment"``:
        maximise ``mean(p_K(σ)) / √mean(p_K(σ)²)`` over ``prior`` (the alignment
        ``cos(NS_K(G), polar(G))`` of a matrix with those singular values),
        starting from the best worst-case design for ``[ℓ', upper]`` over a grid
        of ``ℓ' ≥ lower``, and keeping every step within the worst-case design's
        range ``[0, max u_k]`` on ``[0, upper]`` (so it stays as safe).  Its
        ``bounds`` are exact range enclosures of each step on ``[lower, upper]``.
    prior : array_like, optional
        Sample of normalised singular values for ``"mean_alignment"`` (values
        outside ``[lower, upper]`` are clipped into it).
    name : str, optional
        Display name (default describes the design).

    Returns
    -------
    DesignedSchedule
        A :class:`Schedule` (usable wherever a schedule is) with ``bounds``.

    Raises
    ------
    ValueError, TypeError
        ``lower ≥ upper``, ``lower ≤ 0``, non-finite values, ``steps < 1``,
        ``degree`` not 3 or 5, ``cushion`` outside ``[0, 1)``, unknown
        ``objective``/``precision``, ``mean_alignment`` without a ``prior``, an
        interval whose coefficients would not be finite in float64 (e.g.
        ``upper = 1e300``).

    Examples
    --------
    >>> import matfun
    >>> pe = matfun.design_schedule(1e-3, steps=5, safety=2e-2, cushion=0.02)
    >>> round(pe.coefficients[0][0], 6)
    8.156555
    """
    lower = _check_positive_finite("lower", lower)
    upper = _check_positive_finite("upper", upper)
    if lower >= upper:
        raise ValueError(f"lower must be < upper, got lower={lower!r} >= upper={upper!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(degree, bool) or degree not in DEGREES:
        raise ValueError(f"degree must be 3 or 5, got {degree!r}")
    cushion = _check_positive_finite("cushion", cushion, allow_zero=True)
    if cushion >= 1:
        raise ValueError(f"cushion must lie in [0, 1), got {cushion!r}")
    if safety is None:
        safety = safety_for_precision(precision) if precision is not None else 2e-2
    elif precision is not None:
        safety_for_precision(precision)  # validate the name even when safety is explicit
    safety = _check_positive_finite("safety", safety, allow_zero=True)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if objective == "mean_alignment" and prior is None:
        raise ValueError("objective='mean_alignment' needs prior= (a sample of normalised singular values)")

    try:
        with np.errstate(over="ignore", invalid="ignore"):  # checked below: one error instead of warnings
            if objective == "mean_alignment":
                coefficients, bounds = _optimise_mean_alignment(
                    prior, lower, upper, int(steps), degree, safety, cushion
                )
            else:
                coefficients, bounds = _minimax_composition(lower, upper, int(steps), degree, safety, cushion)
        finite = all(np.all(np.isfinite(c)) for c in coefficients) and np.all(np.isfinite(bounds))
    except (np.linalg.LinAlgError, RuntimeError, FloatingPointError, OverflowError) as exc:
        finite, reason = False, f"{type(exc).__name__}: {exc}"
    else:
        reason = "non-finite coefficients"
    if not finite:
        raise ValueError(
            f"cannot design a degree-{degree} schedule for [{lower!r}, {upper!r}]: the coefficients (of order "
            f"upper**-{degree}) are outside float64's range ({reason}); design for the normalised interval "
            f"[{lower / upper!r}, 1] and scale the input instead"
        )
    label = name or f"designed (l={lower:g}, K={steps}, deg {degree}{', mean' if objective != 'worst_case' else ''})"
    return DesignedSchedule(
        name=label,
        coefficients=tuple(_triple(c) for c in coefficients),
        normalization=1.0 + safety,
        lower=lower,
        upper=upper,
        degree=int(degree),
        safety=safety,
        cushion=cushion,
        objective=objective,
        bounds=tuple((float(lo), float(hi)) for lo, hi in bounds),
    )


def _minimax_composition(
    lower: float, upper: float, steps: int, degree: int, safety: float, cushion: float
) -> tuple[list[np.ndarray], list[tuple[float, float]]]:
    """Greedy minimax steps and the interval after each (see :func:`design_schedule`)."""
    lo, hi = lower, upper
    bounds = [(lo, hi)]
    coefficients = []
    powers = np.arange(1, degree + 1, 2)
    for k in range(steps):
        coef, _ = minimax_odd(max(lo, cushion * hi), hi, degree)
        if cushion * hi > lo:
            # Fitted on the cushioned interval: rescale so the range on [lo, hi] is centred on 1.
            p_min, p_max = _range_on(coef, lo, hi)
            coef = coef * (2.0 / (p_min + p_max))
        if k < steps - 1:
            coef = coef / (1.0 + safety) ** powers  # p(x / (1 + safety))
        lo = min(_range_on(coef, lo, hi)[0], 1.0)  # a collapsed interval may round to 1 + ulp
        hi = 2.0 - lo
        coefficients.append(coef)
        bounds.append((lo, hi))
    return coefficients, bounds


def _composition_values(coefficients: list[np.ndarray], x: np.ndarray) -> list[np.ndarray]:
    values = [x]
    for coef in coefficients:
        values.append(_odd_eval(coef, values[-1]))
    return values


def _mean_alignment(coefficients: list[np.ndarray], sample: np.ndarray) -> float:
    out = _composition_values(coefficients, sample)[-1]
    return float(out.mean() / math.sqrt(max(float(np.mean(out * out)), 1e-300)))


def _optimise_mean_alignment(
    prior: Any, lower: float, upper: float, steps: int, degree: int, safety: float, cushion: float
) -> tuple[list[np.ndarray], list[tuple[float, float]]]:
    """Maximise mean alignment over ``prior``; returns coefficients and exact range enclosures.

    Start: the worst-case designs for ``[ℓ', upper]`` with ``ℓ'`` on a log grid from
    ``lower`` to ``upper/2``, the best of them on the prior (a schedule aimed at
    where most singular values are, not at the smallest).  Then Nelder–Mead on all
    coefficients, penalised when a step leaves ``[0, ceiling]`` on ``[0, upper]``
    (``ceiling``: the worst-case design's own largest bound).
    """
    from scipy.optimize import minimize

    sample = np.asarray(prior, dtype=np.float64).ravel()
    if sample.size == 0 or not np.all(np.isfinite(sample)):
        raise ValueError("prior must be a non-empty array of finite singular values")
    sample = np.clip(sample, lower, upper)
    candidates = [
        _minimax_composition(ell, upper, steps, degree, safety, cushion)[0]
        for ell in np.geomspace(lower, upper / 2, 16)
    ]
    start_coefs = max(candidates, key=lambda c: _mean_alignment(c, sample))
    ceiling = max(hi for _, hi in _minimax_composition(lower, upper, steps, degree, safety, cushion)[1])
    grid = np.linspace(0.0, upper, 257)
    shapes = [len(c) for c in start_coefs]

    def unpack(theta: np.ndarray) -> list[np.ndarray]:
        return np.split(theta, np.cumsum(shapes)[:-1])

    def loss(theta: np.ndarray) -> float:
        coefs = unpack(theta)
        with np.errstate(over="ignore", invalid="ignore"):
            path = _composition_values(coefs, grid)[1:]
            penalty = sum(max(0.0, float(np.max(v)) - ceiling) + max(0.0, -float(np.min(v))) for v in path)
            value = -_mean_alignment(coefs, sample) + 1e3 * penalty
        return value if math.isfinite(value) else math.inf

    start = np.concatenate(start_coefs)
    result = minimize(
        loss, start, method="Nelder-Mead", options={"maxiter": 200 * len(start), "xatol": 1e-10, "fatol": 1e-12}
    )
    coefs = unpack(result.x if result.fun < loss(start) else start)
    bounds = [(lower, upper)]  # each step's exact range on the previous enclosure
    for coef in coefs:
        bounds.append(_range_on(coef, *bounds[-1]))
    return coefs, bounds
