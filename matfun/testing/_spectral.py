"""Per-direction checks of an orthogonaliser: what it does to every singular direction.

An orthogonaliser maps ``G = U diag(σ) Vᵀ`` to ``U diag(g(σ)) Vᵀ``: every singular
direction ``(u_i, v_i)`` goes to itself with a *gain* ``g_i = u_iᵀ f(G) v_i`` in a
band ``[lo, hi]`` with ``lo > 0`` (Newton–Schulz's oscillates, the polar factor's
is 1), and directions of an exactly rank-deficient ``G``'s null space go to zero.
Alignment with ``polar(G)`` is an average and hides a few bad directions (a map
that negates the two smallest directions of a 48×32 matrix still aligns to 0.875);
these checks read every direction on matrices whose spectra the battery chose.

``direction_gain``
    On ``G`` built with known ``U, σ, V`` (geometric spectrum, κ = :data:`KAPPA`,
    random orthogonal factors; for a tiled map each tile gets its own and a
    random scale), ``D = Uᵀ f(G) V``.  Fails when a *judged* gain ``D_ii`` lies
    outside the band, or when the output leaks off the singular pairs:
    ``‖f(G) − U diag(D_ii) Vᵀ‖_F / ‖f(G)‖_F`` above the leakage tolerance.
    Judged are the directions whose normalised singular value
    ``x_i = σ_i / ‖σ‖₂`` (the input Newton–Schulz sees) is at least the band's
    cut-off: below it a correct finite NS map has not converged yet.
``output_spectrum``
    The output's own singular values: on the full-rank probes every one lies in
    the band (this is what catches ``1000·polar(G)`` and ``1e-6·polar(G)``);
    on an exactly rank-deficient probe (rank r/2, the rest exactly zero) the
    top r/2 lie in the band and the null-space ones are at most
    ``null_tol · max``.  ``null_tol`` applies to the fp32 profile only: a bf16
    input's rounding puts singular values of ≈ 2⁻⁹‖G‖ in the null space and
    NS's slope at zero (3.4445⁵ ≈ 490 for Jordan) lifts them to order one, so
    in bf16 the null space is not judged.

Bands (:func:`gain_band`)
-------------------------
With a declared ``schedule`` and ``steps`` the band is the range of the float64
transfer function ``p_K(x)`` over ``x ∈ [x_cut, 1]``, widened by the profile's
``band_margin`` (fp32 2 %, bf16 10 %: a bf16 map's gains scatter by ≈ 2 %);
``x_cut`` is the smallest ``x ≥ 3e-3`` from which ``p_K`` stays ≥ 1/2.  Without a
schedule the band is :data:`DEFAULT_BAND` = [0.5, 1.5] with cut-off
:data:`DEFAULT_CUT` = 3e-3: it contains the converged ranges of the built-in
5-step schedules (Jordan [0.68, 1.13] — 1.20 just above the cut-off —, You
[0.98, 1.15], Polar Express [0.86, 1.14]) and the polar factor's 1, each with a
margin of at least 25 %.  Pass ``gain_band=(lo, hi)`` for a map with another
documented band (a smoothed polar factor's gain ``σ/√(σ²+ε²)`` falls below 1/2
for ``σ < ε/√3``).

The probes' spectra keep every ``x_i`` above the cut-off on the battery's drawn
shapes (sides ≤ 112: ``x_min ≈ 0.05/√(0.17 r) ≥ 0.011``), so there every
direction is judged; on a large user shape the detail says how many were.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..schedules import transfer_function
from ._env import _Env, _f64
from ._matrices import _haar, _name, _rng
from ._report import CheckResult, _fmt

#: condition number of the probes' geometric spectra
KAPPA = 20.0
#: the band and cut-off without a declared schedule (see the module docstring)
DEFAULT_BAND = (0.5, 1.5)
DEFAULT_CUT = 3e-3
#: relative widening of a declared schedule's band, per precision profile
BAND_MARGIN = {"fp32": 0.02, "bf16": 0.10}
#: leakage ‖f(G) − U diag(D) Vᵀ‖/‖f(G)‖: float32 NS ≲ 3e-6, bf16 loops ≲ 3e-2
LEAKAGE_TOL = {"fp32": 1e-3, "bf16": 1e-1}
#: null-space singular values / largest, fp32 only: float32 rounding (6e-8) times
#: NS's slope at zero (≤ 1e3 for the built-in schedules) is ≲ 1e-4
NULL_TOL = 1e-2

_GRID = np.geomspace(1e-4, 1.0, 4001)


def gain_band(schedule: str | None, steps: int, profile: str) -> tuple[float, float, float]:
    """``(lo, hi, x_cut)``: the gain band an orthogonaliser's judged directions must lie in.

    Parameters
    ----------
    schedule : str or None
        A name of :data:`matfun.SCHEDULES`; ``None`` gives :data:`DEFAULT_BAND`.
    steps : int
        Newton–Schulz steps of the declared schedule.
    profile : {"fp32", "bf16"}
        Precision profile: the relative widening :data:`BAND_MARGIN`.

    Examples
    --------
    >>> lo, hi, cut = gain_band("jordan", 5, "fp32")
    >>> round(lo, 3), round(hi, 3), round(cut, 4)
    (0.668, 1.226, 0.003)
    """
    if schedule is None:
        return DEFAULT_BAND[0], DEFAULT_BAND[1], DEFAULT_CUT
    p = transfer_function(_GRID, steps, schedule)
    low = np.flatnonzero(p < 0.5)
    start = max(int(low[-1]) + 1 if low.size else 0, int(np.searchsorted(_GRID, DEFAULT_CUT)))
    start = min(start, _GRID.size - 1)
    m = BAND_MARGIN[profile]
    return float(p[start:].min()) * (1 - m), float(p[start:].max()) * (1 + m), float(_GRID[start])


class _Block:
    """One tile of a probe: its slice of ``G`` and the known singular factors."""

    def __init__(self, rows: slice, cols: slice, U: np.ndarray, sigma: np.ndarray, V: np.ndarray):
        self.rows, self.cols, self.U, self.sigma, self.V = rows, cols, U, sigma, V


def _probe(
    rng: np.random.Generator, shape: tuple[int, int], tile: tuple[int, int], rank_fraction: float = 1.0
) -> tuple[np.ndarray, list[_Block]]:
    """A matrix whose every tile has a known SVD (geometric spectrum, random scale).

    ``rank_fraction < 1`` keeps only the top ``ceil(fraction·r)`` singular values
    of each tile (the rest exactly zero).
    """
    H, W = shape
    G = np.zeros(shape)
    blocks = []
    for r0 in range(0, H, tile[0]):
        for c0 in range(0, W, tile[1]):
            rows, cols = slice(r0, min(r0 + tile[0], H)), slice(c0, min(c0 + tile[1], W))
            h, w = rows.stop - rows.start, cols.stop - cols.start
            r = min(h, w)
            U, V = _haar(rng, h, r), _haar(rng, w, r)
            sigma = np.geomspace(1.0, 1.0 / KAPPA, r) * 10.0 ** rng.uniform(-1, 1)
            sigma[max(1, math.ceil(rank_fraction * r)) :] = 0.0
            G[rows, cols] = (U * sigma) @ V.T
            blocks.append(_Block(rows, cols, U, sigma, V))
    return G, blocks


def _call(env: _Env, G: np.ndarray) -> np.ndarray | str:
    """``f(G)`` as float64, or why there is no usable output."""
    out, err = env.call(env.make(G))
    if err:
        return err
    X = _f64(out)
    if X.shape != G.shape:
        return f"output shape {X.shape} != input shape {G.shape}"
    if not np.all(np.isfinite(X)):
        return f"{int(np.sum(~np.isfinite(X)))} non-finite output entries"
    return X


def direction_gain(
    env: _Env,
    shapes: Sequence[tuple[int, int]],
    tile: tuple[int, int],
    seed: int,
    band: tuple[float, float, float],
    leakage_tol: float,
) -> CheckResult:
    """The ``direction_gain`` check (see the module docstring)."""
    lo, hi, cut = band
    worst_gain: tuple[float, str] | None = None  # (distance outside the band, description)
    worst_leak, leak_where = 0.0, ""
    judged = total = 0
    bad: list[str] = []
    for i, shape in enumerate(shapes):
        G, blocks = _probe(_rng(seed, 20, i), shape, tile)
        X = _call(env, G)
        if isinstance(X, str):
            bad.append(f"{_name(shape)}: {X}")
            continue
        recon = np.zeros_like(X)
        for b in blocks:
            D = b.U.T @ X[b.rows, b.cols] @ b.V
            gains = np.diag(D)
            recon[b.rows, b.cols] = (b.U * gains) @ b.V.T
            x = b.sigma / np.linalg.norm(b.sigma)
            mask = x >= cut
            judged += int(mask.sum())
            total += x.size
            for j in np.flatnonzero(mask):
                g = float(gains[j])
                outside = max(lo - g, g - hi, 0.0)
                if outside > 0 and (worst_gain is None or outside > worst_gain[0]):
                    worst_gain = (
                        outside,
                        f"gain {_fmt(g)} of direction {j + 1}/{x.size} (x = {_fmt(x[j])}) "
                        f"on {_name(shape)}{_tile_name(b, shape)}",
                    )
        norm = np.linalg.norm(X)
        leak = float(np.linalg.norm(X - recon) / norm) if norm > 0 else math.inf
        if leak > worst_leak:
            worst_leak, leak_where = leak, _name(shape)
    band_text = f"[{_fmt(lo)}, {_fmt(hi)}]"
    if bad:
        return CheckResult("direction_gain", False, math.nan, None, "; ".join(bad))
    if worst_gain is not None:
        return CheckResult(
            "direction_gain", False, worst_gain[0], 0, f"{worst_gain[1]} outside the band {band_text}", "<="
        )
    if worst_leak > leakage_tol:
        return CheckResult(
            "direction_gain",
            False,
            worst_leak,
            leakage_tol,
            f"output leaks off the input's singular pairs on {leak_where}",
            "<=",
        )
    note = "" if judged == total else f" ({judged} of {total} directions above the cut-off x >= {_fmt(cut)})"
    return CheckResult(
        "direction_gain",
        True,
        0.0,
        0,
        f"every gain in {band_text}, leakage {_fmt(worst_leak)} <= {_fmt(leakage_tol)}{note}",
        "<=",
    )


def output_spectrum(
    env: _Env,
    shapes: Sequence[tuple[int, int]],
    tile: tuple[int, int],
    seed: int,
    band: tuple[float, float, float],
    null_tol: float | None,
) -> CheckResult:
    """The ``output_spectrum`` check (see the module docstring)."""
    lo, hi, cut = band
    problems: list[tuple[float, float, str]] = []  # (value, threshold, detail)
    cases: list[tuple[str, tuple[int, int], float]] = [(f"full-rank {_name(s)}", s, 1.0) for s in shapes]
    if null_tol is not None:
        wide = next((s for s in shapes if s[0] < s[1]), shapes[0])
        cases.append((f"rank-deficient {_name(wide)}", wide, 0.5))
    worst_null = 0.0
    for i, (case, shape, fraction) in enumerate(cases):
        G, blocks = _probe(_rng(seed, 21, i), shape, tile, fraction)
        X = _call(env, G)
        if isinstance(X, str):
            problems.append((math.inf, 0, f"{case}: {X}"))
            continue
        for b in blocks:
            x = b.sigma / np.linalg.norm(b.sigma)
            rank = int(np.count_nonzero(b.sigma))
            if np.any(x[:rank] < cut):
                continue  # a direction below the cut-off has not converged: its spectrum proves nothing
            s = np.linalg.svd(X[b.rows, b.cols], compute_uv=False)
            live = s[:rank]
            where = f"{case}{_tile_name(b, shape)}"
            if live.size and (live.min() < lo or live.max() > hi):
                out = max(lo - live.min(), live.max() - hi)
                problems.append(
                    (
                        out,
                        0,
                        f"singular values [{_fmt(live.min())}, {_fmt(live.max())}] on {where} "
                        f"outside the band [{_fmt(lo)}, {_fmt(hi)}]",
                    )
                )
            if null_tol is not None and fraction < 1 and rank < s.size:
                top = max(float(s[0]), np.finfo(float).tiny)
                null = float(s[rank:].max()) / top
                worst_null = max(worst_null, null)
                if null > null_tol:
                    problems.append(
                        (
                            null,
                            null_tol,
                            f"null-space singular value {_fmt(null)} x max on {where} "
                            f"(> {_fmt(null_tol)}: the map fills the input's null space)",
                        )
                    )
    if problems:
        value, threshold, detail = max(problems, key=lambda p: p[0] - p[1])
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return CheckResult("output_spectrum", False, value, threshold, detail + more, "<=")
    null_text = f", null space <= {_fmt(worst_null)} x max" if null_tol is not None else ""
    return CheckResult(
        "output_spectrum",
        True,
        0.0,
        0,
        f"singular values in [{_fmt(lo)}, {_fmt(hi)}] on {len(shapes)} shapes{null_text}",
        "<=",
    )


def _tile_name(b: _Block, shape: tuple[int, int]) -> str:
    if (b.rows.stop - b.rows.start, b.cols.stop - b.cols.start) == shape:
        return ""
    return f" tile [{b.rows.start}:{b.rows.stop}, {b.cols.start}:{b.cols.stop}]"
