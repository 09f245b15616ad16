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
    Amsel et al., *The Polar Express* (2025), 5-step schedule used with the input
    normalised by ``1.02·‖G‖_F``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

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
        if not self.coefficients:
            raise ValueError("a schedule needs at least one (a, b, c) tuple")
        for abc in self.coefficients:
            if len(abc) != 3 or not all(np.isfinite(float(v)) for v in abc):
                raise ValueError(f"each schedule entry must be 3 finite numbers (a, b, c), got {abc!r}")
        if not (self.normalization > 0 and np.isfinite(self.normalization)):
            raise ValueError(f"normalization must be a positive finite number, got {self.normalization!r}")

    def steps(self, steps: int) -> list[Coefficients]:
        """The ``(a, b, c)`` of each of ``steps`` steps (the last entry repeats)."""
        steps = check_steps(steps)
        last = len(self.coefficients) - 1
        return [tuple(map(float, self.coefficients[min(k, last)])) for k in range(steps)]


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
            (8.15655, -22.48329, 15.87877),
            (4.04293, -2.80892, 0.50002),
            (3.89167, -2.77248, 0.50606),
            (3.28575, -2.36813, 0.46449),
            (2.34654, -1.70978, 0.42324),
        ),
        normalization=1.02,
    ),
}

ScheduleLike = Union[str, Schedule, Sequence[Sequence[float]]]


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
    try:
        entries = tuple(tuple(float(v) for v in abc) for abc in coefficients)
    except TypeError:
        raise ValueError(
            "coefficients must be a schedule name or a sequence of (a, b, c) tuples, "
            f"got {coefficients!r}"
        ) from None
    return Schedule("custom", entries)


def check_steps(steps: Any) -> int:
    """Validate a step count: a non-negative integer."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise TypeError(f"steps must be a non-negative integer, got {steps!r}")
    if steps < 0:
        raise ValueError(f"steps must be non-negative, got {steps}")
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
        ``p_K(σ)`` in the library and dtype of ``sigma`` (float64 for scalars
        and lists).
    """
    schedule = get_schedule(coefficients)
    x = sigma if hasattr(sigma, "shape") else np.asarray(sigma, dtype=np.float64)
    x = x / schedule.normalization
    for a, b, c in schedule.steps(steps):
        x2 = x * x
        x = x * (a + x2 * (b + c * x2))
    return x
