"""Newton–Schulz coefficient schedules and their scalar transfer functions.

One Newton–Schulz step maps ``X ↦ a X + b (X Xᵀ) X + c (X Xᵀ)² X``.  On singular
values this is the odd polynomial ``p(x) = a x + b x³ + c x⁵``, so ``K`` steps act
on the spectrum of the normalised input through the composition
``p_K = p_{K-1} ∘ … ∘ p_0``, the *transfer function* of the schedule.

Published schedules (the last tuple repeats when more steps are asked for):

``"cubic"``
    Classical Newton–Schulz ``(1.5, −0.5, 0)``: converges to the polar factor for
    ``σ ∈ (0, √3)``, slowly for small σ.
``"jordan"``
    Keller Jordan's quintic ``(3.4445, −4.7750, 2.0315)``, used by Muon and
    ``torch.optim.Muon``; maps ``[1e-3, 1]`` into about ``[0.47, 1.2]`` in 5 steps.
``"you"``
    Jiacheng You's 5-step schedule.
``"polar_express"``
    N. Amsel, D. Persson, C. Musco, R. M. Gower, *The Polar Express: Optimal
    Matrix Sign Methods and Their Application to the Muon Algorithm* (2025),
    arXiv:2505.16932.  The 5-step schedule in full double precision, as the
    reference implementation prints it: the output of its coefficient
    generator for ``ℓ = 1e-3``, 5 iterations, safety factor ``2e-2`` and
    cushion ``0.02``; used with the input normalised by ``1.02·‖G‖_F``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _backend as B

Coefficients = tuple[float, float, float]


@dataclass(frozen=True)
class Schedule:
    """A Newton–Schulz coefficient schedule.

    Attributes
    ----------
    name : str
        Display name.
    coefficients : tuple of (a, b, c)
        Per-step coefficients; the last tuple repeats beyond its length.
    normalization : float
        Safety factor ``s`` of the initial normalisation ``X₀ = G / (s‖G‖_F)``.
    """

    name: str
    coefficients: tuple[Coefficients, ...]
    normalization: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str, got {self.name!r}")
        # materialise once (a generator would be used up by the checks) as a hashable tuple
        object.__setattr__(self, "coefficients", _coefficient_tuples(self.coefficients))
        norm = B.check_real(self.normalization, "normalization", low=0, high=math.inf, low_open=True, high_open=True)
        object.__setattr__(self, "normalization", norm)

    def steps(self, steps: int) -> list[Coefficients]:
        """The ``(a, b, c)`` of each of ``steps`` steps (the last entry repeats)."""
        steps = check_steps(steps)
        last = len(self.coefficients) - 1
        out: list[Coefficients] = []
        for k in range(steps):
            a, b, c = self.coefficients[min(k, last)]
            out.append((float(a), float(b), float(c)))
        return out


def _coefficient_tuples(coefficients: Any) -> tuple[Coefficients, ...]:
    """``coefficients`` (any iterable of 3-number iterables) as a tuple of float triples.

    Raises
    ------
    TypeError
        Not an iterable of triples, or an entry that is not a real number
        (strings and bools are rejected, not converted).
    ValueError
        No entries, an entry of length other than 3, NaN or ±inf.
    """
    accepted = "a schedule name or a sequence of (a, b, c) tuples of real numbers"
    if isinstance(coefficients, (str, bytes)) or not hasattr(coefficients, "__iter__"):
        raise TypeError(f"coefficients must be {accepted}, got {coefficients!r}")
    entries: list[Coefficients] = []
    for k, abc in enumerate(coefficients):
        if isinstance(abc, (str, bytes)) or not hasattr(abc, "__iter__"):
            raise TypeError(f"coefficients must be {accepted}; entry {k} is {abc!r}")
        abc = tuple(abc)
        if len(abc) != 3:
            raise ValueError(f"each schedule entry must be 3 finite numbers (a, b, c); entry {k} is {abc!r}")
        a, b, c = (B.check_real(v, f"coefficients[{k}][{j}]") for j, v in enumerate(abc))
        entries.append((a, b, c))
        if not all(math.isfinite(v) for v in entries[-1]):
            raise ValueError(f"each schedule entry must be 3 finite numbers (a, b, c); entry {k} is {abc!r}")
    if not entries:
        raise ValueError("a schedule needs at least one (a, b, c) tuple")
    return tuple(entries)


SCHEDULES: dict[str, Schedule] = {
    "cubic": Schedule("cubic", ((1.5, -0.5, 0.0),)),
    "jordan": Schedule("jordan", ((3.4445, -4.7750, 2.0315),)),
    "you": Schedule(
        "you",
        (
            (4.0848, -6.8946, 2.9270),
            (3.9505, -6.3029, 2.6377),
            (3.7418, -5.5913, 2.3037),
            (2.8769, -3.1427, 1.2046),
            (2.8366, -3.0525, 1.2012),
        ),
    ),
    "polar_express": Schedule(
        "polar_express",
        (
            (8.156554524902461, -22.48329292557795, 15.878769915207462),
            (4.042929935166739, -2.808917465908714, 0.5000178451051316),
            (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
            (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
            (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
        ),
        normalization=1.02,
    ),
}

ScheduleLike = str | Schedule | Sequence[Sequence[float]]


def get_schedule(coefficients: ScheduleLike) -> Schedule:
    """Resolve a schedule name, a :class:`Schedule`, or a sequence of ``(a, b, c)``.

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid ones) or malformed tuples.
    """
    if isinstance(coefficients, Schedule):
        return coefficients
    if isinstance(coefficients, str):
        try:
            return SCHEDULES[coefficients]
        except KeyError:
            raise ValueError(
                f"unknown schedule {coefficients!r}; valid names: {sorted(SCHEDULES)} "
                "(or pass a sequence of (a, b, c) tuples)"
            ) from None
    return Schedule("custom", _coefficient_tuples(coefficients))


def check_steps(steps: Any) -> int:
    """Validate a step count: a non-negative integer (bools and floats are rejected)."""
    if not B.is_integer(steps):
        raise TypeError(f"steps must be a non-negative integer, got {steps!r} ({type(steps).__name__})")
    if steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")
    return int(steps)


def transfer_function(sigma: Any, steps: int = 5, coefficients: ScheduleLike = "jordan") -> Any:
    """Scalar transfer function ``p_K`` of a Newton–Schulz schedule.

    For full Newton–Schulz the identity ``NS_K(G) = U p_K(Σ / ‖G‖_F) Vᵀ`` holds
    exactly (in exact arithmetic), so ``sigma`` is a singular value of the
    Frobenius-normalised input ``G/‖G‖_F``; the schedule's own safety factor
    (1.02 for Polar Express) is applied here.

    Parameters
    ----------
    sigma : array_like
        Values in the normalised scale (numpy array, torch tensor or scalar).
    steps : int
        Number of steps ``K``; ``0`` gives ``σ / s``.
    coefficients : str, Schedule or sequence of (a, b, c)
        The schedule.

    Returns
    -------
    array
        ``p_K(σ)`` in the library and dtype of ``sigma`` (float64 for Python
        scalars, lists and integer arrays).  float16 and bfloat16 inputs are
        evaluated in float32 and rounded once.  Where the true value exceeds the
        dtype's range (``|σ|`` well above 1 grows like ``σ^(5^K)``) the result is
        ±inf, without a warning.

    Raises
    ------
    TypeError
        ``sigma`` not real numbers (strings, complex, bool); bad ``steps``
        or ``coefficients`` (see :func:`get_schedule`).
    ValueError
        Negative ``steps``, malformed coefficients.
    """
    schedule = get_schedule(coefficients)
    schedule_steps = schedule.steps(steps)
    x, restore = _transfer_input(sigma)
    with np.errstate(over="ignore", invalid="ignore"):
        x = x / schedule.normalization
        for a, b, c in schedule_steps:
            x2 = x * x
            x = x * (a + x2 * (b + c * x2))
    return restore(x)


def _transfer_input(sigma: Any) -> tuple[Any, Any]:
    """``sigma`` as a real floating array to evaluate on, and the map back to its dtype."""
    import torch

    if isinstance(sigma, torch.Tensor):
        if sigma.dtype == torch.bool or sigma.is_complex():
            raise TypeError(f"sigma must hold real numbers, got a {sigma.dtype} tensor")
        if not sigma.is_floating_point():
            return sigma.to(torch.float64), lambda x: x
        if sigma.dtype in (torch.float16, torch.bfloat16):
            return sigma.float(), lambda x: x.to(sigma.dtype)
        return sigma, lambda x: x
    if hasattr(sigma, "shape") and not isinstance(sigma, (np.ndarray, np.generic)):
        if not B._is_real_float(sigma):  # another array-API library
            raise TypeError(f"sigma must hold real floating numbers, got dtype {sigma.dtype}")
        return sigma, lambda x: x
    try:
        x = np.asarray(sigma)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise TypeError(f"sigma must be real numbers (array, tensor or scalar), got {type(sigma).__name__}") from exc
    if x.dtype.kind not in "iuf":
        raise TypeError(f"sigma must hold real numbers, got dtype {x.dtype} ({sigma!r:.60})")
    if x.dtype.kind in "iu":
        return x.astype(np.float64), lambda y: y
    if x.dtype == np.float16:
        return x.astype(np.float32), lambda y: y.astype(np.float16)
    return x, lambda y: y
