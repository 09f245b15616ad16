"""Metrics: how close an orthogonalising map's output comes to the polar factor.

Every number in the figures comes from this module, so each metric is defined
precisely here and checked against cases with a known answer in
``tests/test_metrics.py``.

Notation: ``G`` is the input (``H×W``), ``G = U Σ Vᵀ`` its thin SVD,
``r_G`` the number of singular values above the cut-off ``rtol·σ_max``,
``U_r, V_r`` the singular vectors of those ``r_G`` values and
``P = polar(G) = U_r V_rᵀ`` the exact polar factor (a partial isometry when
``G`` is rank deficient).  ``X`` is the output of a map applied to ``G``;
``P_T`` is the exact tile-wise polar factor (each tile of ``G`` replaced by its
own polar factor) and ``NS_{T,K}`` tiled Newton–Schulz (HiMuon).

Conventions (shared by every metric)
------------------------------------
Inputs
    numpy arrays or torch tensors (CPU or CUDA, any real floating dtype) of
    shape ``(..., H, W)``; leading dimensions are a batch.  ``X`` and ``G``
    must have the same shape.  NaN/Inf raise :class:`ValueError`.
Reference quantities
    (SVDs, exact polar factors, norms, inner products) are computed in float64
    numpy on the CPU, whatever the input precision or device: the metric measures
    the map, not itself.  Maps under test (``tiled_newton_schulz`` in
    :func:`information_loss`) run on the input as given (library, device,
    precision).
Rank cut-off
    ``rtol=None`` means :func:`matfun.polar`'s default ``u·√(H + W + 1)``, with
    ``u`` half the machine epsilon of the coarser of ``G``'s dtype and the precision
    the maps compute it in (float64 for float64, else float32).  So a rank-deficient float32
    ``G`` has the range one expects, not the float32 rounding noise.  Pass
    ``rtol`` explicitly for low-precision rank-deficient inputs.
Return values
    numpy float64 values of the batch shape: an ``np.ndarray`` of shape
    ``(...)`` for a batch, an ``np.float64`` scalar (a ``float`` subclass) for a
    single matrix.  Metrics with several outputs return a ``dict`` of such
    values (flat, so ``pandas.DataFrame`` takes it directly for 1-D batches).
Tiles
    ``tile`` is an int ``T`` (square tiles) or a pair ``(Th, Tw)`` of ints ``≥ 1``;
    rows split into ``ceil(H/Th)`` blocks ``[i·Th, min((i+1)·Th, H))``, columns
    likewise, edge tiles ragged.  A tile larger than the matrix along an axis
    means a single tile along that axis (clamped to the matrix size, as in the
    tiled maps: with ``T ≥ H, W`` tiled NS is full NS).  Tiles ≤ 0,
    non-integers and bools raise.
Precomputing the reference
    Every metric taking ``G`` also accepts a :class:`Reference` (from
    :func:`reference`) in its place, so curves along iterates
    (:func:`per_step`, :func:`metric_along`) do one SVD of ``G``, not one per step.

References
----------
* Muon² — directional alignment ``cos(X, polar(G))`` as the quality measure of
  a finite orthogonalisation (and preconditioning to improve it).
* HiMuon — tiled Newton–Schulz; the cross-tile information loss
  ``1 − cos(NS_{T,K}(G), P(G))`` and its split into tiling and truncation.
* Move on Muon — orthogonalisation as the dual of the nuclear norm
  (duality efficiency, nuclear norm captured) and as the limit of nuclear-norm
  smoothing (``smoothed_polar``, :func:`smoothing_level`).
* N. J. Higham, *Functions of Matrices*, ch. 8 (the polar decomposition).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import matfun
from matfun import _backend as _bk
from matfun.polar import default_rtol

__all__ = [
    "Reference",
    "alignment",
    "cosine",
    "duality_efficiency",
    "gram_coupling",
    "information_loss",
    "metric_along",
    "nuclear_norm_captured",
    "orthogonality_residual",
    "per_step",
    "per_tile_alignment",
    "reference",
    "smoothing_level",
    "spectral_error",
    "tile_polar",
    "tiling_loss",
    "total_loss",
    "truncation_loss",
]

_EPS32 = float(np.finfo(np.float32).eps)
_EPS64 = float(np.finfo(np.float64).eps)


# ---------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------


def _to_float64(A: Any, name: str) -> np.ndarray:
    """Validate ``A`` (type, ndim ≥ 2, real float, finite) and return float64 numpy."""
    _bk.validate_matrix(A, name=name, check_finite=True)
    if _bk.is_torch(A):
        return A.detach().cpu().double().numpy()
    return np.asarray(A, dtype=np.float64)


def _default_eps(A: Any) -> float:
    return _EPS64 if _bk.dtype_name(A) == "float64" else _EPS32


def _default_rtol(H: int, W: int, A: Any) -> float:
    """:func:`matfun.polar`'s default cut-off ``u·√(H + W + 1)`` (:func:`matfun.polar.default_rtol`),
    for a map computing in float64 (float64 input) or float32 (any other), on ``A``'s dtype."""
    kind = _bk.dtype_name(A)
    return default_rtol(H, W, "float64" if kind == "float64" else "float32", kind)


def _out(a: Any) -> Any:
    """The return convention: float64 array of the batch shape, np.float64 for 0-d."""
    return np.asarray(a, dtype=np.float64)[()]


def _check_same_shape(X: np.ndarray, G_shape: tuple[int, ...], x_name: str = "X", g_name: str = "G") -> None:
    if tuple(X.shape) != tuple(G_shape):
        raise ValueError(
            f"{x_name} and {g_name} must have the same shape (..., H, W); "
            f"got {x_name}.shape={tuple(X.shape)} and {g_name}.shape={tuple(G_shape)}"
        )


def _amax(A: np.ndarray) -> np.ndarray:
    """Per-matrix max |entry|, shape (..., 1, 1); 1 where the matrix is zero (safe divisor)."""
    if A.shape[-1] == 0 or A.shape[-2] == 0:
        return np.ones((*A.shape[:-2], 1, 1))
    m = np.max(np.abs(A), axis=(-2, -1), keepdims=True)
    return np.where(m > 0, m, 1.0)


def _frob(A: np.ndarray) -> np.ndarray:
    """Per-matrix Frobenius norm, over/underflow safe; shape (...)."""
    s = _amax(A)
    return np.sqrt(np.sum((A / s) ** 2, axis=(-2, -1))) * s[..., 0, 0]


def _check_tile(tile: Any, H: int, W: int) -> tuple[int, int]:
    """Validate ``tile`` with :func:`matfun.tiling.check_tile` and clamp it to the matrix size."""
    from matfun.tiling import check_tile

    Th, Tw = check_tile(tile)
    return min(Th, max(H, 1)), min(Tw, max(W, 1))


def _tile_grid_values(values: list[np.ndarray], groups: list[tuple]) -> np.ndarray:
    """Assemble per-group arrays of shape ``(..., n_row_tiles, n_col_tiles)`` into ``(..., nH, nW)``."""
    from matfun.tiling import assemble

    return np.asarray(assemble(values, groups))


def _polar_from_svd(U: np.ndarray, S: np.ndarray, Vh: np.ndarray, rtol: float) -> tuple[np.ndarray, np.ndarray]:
    """``U_r V_rᵀ`` and the keep-mask ``S > rtol·S_max`` (per matrix)."""
    if S.shape[-1] == 0:
        return U @ Vh, S > 0
    keep = S > rtol * S[..., :1]
    return (U * keep[..., None, :]) @ Vh, keep


# ---------------------------------------------------------------------------
# Reference quantities of G
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class Reference:
    """Float64 reference quantities of ``G``, computed once and reused by every metric.

    Build with :func:`reference`.  Attributes (all float64 numpy, batch first):

    G : (..., H, W)
        ``G`` in float64.
    U, S, Vh : (..., H, r), (..., r), (..., r, W)
        Thin SVD, ``r = min(H, W)``.
    keep : (..., r) bool
        ``S > rtol·σ_max`` — the singular values spanning the range of ``G``.
    rank : (...) int
        ``r_G = keep.sum(-1)``.
    P : (..., H, W)
        ``polar(G) = U_r V_rᵀ`` (partial isometry).
    nuclear : (...)
        ``‖G‖_* = Σ σᵢ`` (all singular values, not only the kept ones).
    rtol : float
        The relative cut-off used.
    dtype : str
        Dtype name of the original input (sets the default cut-off).
    """

    G: np.ndarray
    U: np.ndarray
    S: np.ndarray
    Vh: np.ndarray
    keep: np.ndarray
    P: np.ndarray
    rtol: float
    dtype: str
    _tile_cache: dict = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.G.shape)

    @property
    def rank(self) -> np.ndarray:
        return self.keep.sum(-1)

    @property
    def nuclear(self) -> np.ndarray:
        return self.S.sum(-1)

    def tile_polar(self, tile: Any) -> np.ndarray:
        """Exact tile-wise polar factor ``P_T(G)`` (float64, cached per tile).

        ``matfun.Tiled(matfun.Polar(rtol, "float64", method="auto"), tile)`` on the
        float64 ``G``: the same tiling code as the maps under test, with the faster
        exact polar algorithm for the tile size (SVD or QDWH, same result).
        """
        H, W = self.G.shape[-2:]
        key = _check_tile(tile, H, W)
        if key not in self._tile_cache:
            tiled = matfun.Tiled(
                matfun.Polar(rtol=self.rtol, precision="float64", method="auto"), key, memory_budget=None
            )
            self._tile_cache[key] = np.asarray(tiled(self.G, check_finite=False), dtype=np.float64)
        return self._tile_cache[key]


def reference(G: Any, rtol: float | None = None) -> Reference:
    """Compute the float64 reference quantities of ``G`` once (see :class:`Reference`).

    Parameters
    ----------
    G : array of shape (..., H, W)
        numpy array or torch tensor; a :class:`Reference` is returned unchanged
        (when ``rtol`` is None or matches).
    rtol : float, optional
        Relative rank cut-off; default :func:`matfun.polar`'s ``u·√(H + W + 1)``
        (``u`` half the machine epsilon of ``G``'s dtype, at least float32's).
    """
    if isinstance(G, Reference):
        if rtol is not None and rtol != G.rtol:
            raise ValueError(f"reference was built with rtol={G.rtol}, got rtol={rtol}")
        return G
    G64 = _to_float64(G, "G")
    H, W = G64.shape[-2:]
    if H == 0 or W == 0:
        raise ValueError(f"G must have non-empty matrices, got shape {tuple(G64.shape)}")
    if rtol is None:
        rtol = _default_rtol(H, W, G)
    elif not (0 <= rtol < 1):
        raise ValueError(f"rtol must lie in [0, 1), got {rtol!r}")
    U, S, Vh = np.linalg.svd(G64, full_matrices=False)
    P, keep = _polar_from_svd(U, S, Vh, rtol)
    return Reference(G64, U, S, Vh, keep, P, float(rtol), _bk.dtype_name(G))


def _pair(X: Any, G: Any, rtol: float | None) -> tuple[np.ndarray, Reference]:
    """Validate and convert ``X``; build (or reuse) the reference of ``G``; check shapes."""
    if not isinstance(G, Reference):
        # shape check before the SVD, with both original shapes in the message
        if hasattr(X, "shape") and hasattr(G, "shape"):
            _check_same_shape(X, tuple(G.shape))
    ref = reference(G, rtol)
    X64 = _to_float64(X, "X")
    _check_same_shape(X64, ref.shape)
    return X64, ref


# ---------------------------------------------------------------------------
# Direction
# ---------------------------------------------------------------------------


def _cosine64(A: np.ndarray, Bm: np.ndarray) -> np.ndarray:
    sa, sb = _amax(A), _amax(Bm)
    A, Bm = A / sa, Bm / sb
    na = np.sqrt(np.sum(A * A, axis=(-2, -1)))
    nb = np.sqrt(np.sum(Bm * Bm, axis=(-2, -1)))
    dot = np.sum(A * Bm, axis=(-2, -1))
    both_zero = (na == 0) & (nb == 0)
    denom = np.where(na * nb > 0, na * nb, 1.0)
    c = np.where(na * nb > 0, dot / denom, 0.0)
    c = np.clip(c, -1.0, 1.0)
    return np.where(both_zero, 1.0, c)


def _one_minus_cosine64(A: np.ndarray, Bm: np.ndarray) -> np.ndarray:
    """``1 − cos(A, B)`` computed as ``½‖A/‖A‖ − B/‖B‖‖_F²`` (no cancellation near 0)."""
    na, nb = _frob(A), _frob(Bm)
    ok = (na > 0) & (nb > 0)
    sa = np.where(ok, na, 1.0)[..., None, None]
    sb = np.where(ok, nb, 1.0)[..., None, None]
    D = A / sa - Bm / sb
    loss = 0.5 * np.sum(D * D, axis=(-2, -1))
    return np.where(ok, loss, 1.0 - _cosine64(A, Bm))


def cosine(A: Any, B: Any) -> Any:
    """Frobenius cosine ``⟨A, B⟩_F / (‖A‖_F ‖B‖_F)`` per matrix.

    Parameters
    ----------
    A, B : arrays of the same shape (..., H, W)
        numpy arrays or torch tensors (converted to float64 on the CPU).

    Returns
    -------
    np.ndarray of shape (...) or np.float64
        Values in ``[−1, 1]`` (clipped against rounding).  Zero matrices: both
        zero → 1 (the same direction, e.g. ``P(0) = 0`` is exact); exactly one
        zero → 0.  Symmetric and invariant under positive scaling of either
        argument (each matrix is divided by its largest entry first, so inputs
        of size 1e-300 or 1e300 are fine).
    """
    if hasattr(A, "shape") and hasattr(B, "shape"):
        _check_same_shape(A, tuple(B.shape), "A", "B")
    A64, B64 = _to_float64(A, "A"), _to_float64(B, "B")
    return _out(_cosine64(A64, B64))


def alignment(X: Any, G: Any, *, rtol: float | None = None) -> Any:
    """Directional alignment ``cos(X, P(G)) = ⟨X, P⟩_F / (‖X‖_F ‖P‖_F)`` (Muon²).

    ``P = U_r V_rᵀ`` is the exact polar factor of ``G`` in float64 (partial
    isometry for rank-deficient ``G``).  1 exactly for ``X = c·P``, ``c > 0``.
    Zero conventions as in :func:`cosine` (``G = 0`` gives ``P = 0``).

    Returns
    -------
    np.ndarray of shape (...) or np.float64

    References
    ----------
    Muon² ("directional alignment" of the NS output with the polar factor).
    """
    X64, ref = _pair(X, G, rtol)
    return _out(_cosine64(X64, ref.P))


# ---------------------------------------------------------------------------
# Spectrum and orthogonality
# ---------------------------------------------------------------------------


def spectral_error(X: Any, G: Any, *, rtol: float | None = None) -> dict[str, Any]:
    """How far ``X``'s singular values sit from 1 on the range of ``G``, and ``X − P``.

    Definitions (``U_r, V_r`` the singular vectors of ``G``'s ``r_G`` kept
    singular values, ``P = U_r V_rᵀ``):

    * ``σᵢ``, ``i = 1…r_G``: singular values of the compressed ``r_G × r_G``
      matrix ``U_rᵀ X V_r`` (``X`` restricted to ``G``'s column range on the left
      and row range on the right).  For any spectral map ``X = U f(Σ) Vᵀ`` they
      are exactly ``f(σᵢ(G))``; for ``X = P`` all equal 1.  Whatever ``X`` does
      outside the range is not in ``σᵢ`` but is in ``X − P``.
    * ``worst = maxᵢ |σᵢ − 1|``, ``rms = √(meanᵢ (σᵢ − 1)²)``,
      ``median = medianᵢ |σᵢ − 1|`` (all 0 when ``r_G = 0``).
    * ``frobenius = ‖X − P‖_F / ‖P‖_F`` with ``‖P‖_F = √r_G`` (when ``r_G = 0``:
      0 if ``X = 0`` else ``inf``).
    * ``spectral = ‖X − P‖₂`` (absolute; ``‖P‖₂ = 1``).

    Returns
    -------
    dict
        ``worst, rms, median, frobenius, spectral`` (batch shape), ``rank``
        (``r_G``, batch shape, float64) and ``singular_values`` (shape
        ``(..., min(H, W))``, the ``σᵢ`` in descending order, NaN-padded beyond
        ``r_G``).

    References
    ----------
    Move on Muon; *The Polar Express* (worst-case singular value error).
    """
    X64, ref = _pair(X, G, rtol)
    m = ref.keep.astype(np.float64)
    Ur = ref.U * m[..., None, :]
    Vr = np.swapaxes(ref.Vh, -1, -2) * m[..., None, :]
    C = np.swapaxes(Ur, -1, -2) @ X64 @ Vr  # (..., r, r), zero beyond r_G
    sv = np.linalg.svd(C, compute_uv=False)  # descending: the r_G values first, then zeros
    r = sv.shape[-1]
    rank = ref.rank
    in_range = np.arange(r) < rank[..., None]
    sigma = np.where(in_range, sv, np.nan)
    err = np.abs(sv - 1.0) * in_range
    n = np.maximum(rank, 1)
    worst = err.max(axis=-1) if r else np.zeros(rank.shape)
    rms = np.sqrt(np.sum(err * err, axis=-1) / n)
    with warnings.catch_warnings():  # all-NaN rows (r_G = 0) are set to 0 below
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(np.where(in_range, err, np.nan), axis=-1) if r else np.zeros(rank.shape)
    median = np.where(rank > 0, median, 0.0)
    D = X64 - ref.P
    dfro = _frob(D)
    frob_rel = np.where(rank > 0, dfro / np.sqrt(n), np.where(dfro > 0, np.inf, 0.0))
    spec = np.linalg.svd(D, compute_uv=False)[..., 0]
    return {
        "worst": _out(worst),
        "rms": _out(rms),
        "median": _out(median),
        "frobenius": _out(frob_rel),
        "spectral": _out(spec),
        "rank": _out(rank),
        "singular_values": sigma,
    }


def orthogonality_residual(X: Any, G: Any, *, rtol: float | None = None) -> Any:
    """Relative Frobenius orthogonality residual on the smaller Gram matrix.

    * tall or square ``X`` (``H ≥ W``): ``‖XᵀX − Π_row‖_F / ‖Π_row‖_F`` with
      ``Π_row = V_r V_rᵀ`` (``W×W``) the projector on ``G``'s row space;
    * wide ``X`` (``H < W``): ``‖XXᵀ − Π_col‖_F / ‖Π_col‖_F`` with
      ``Π_col = U_r U_rᵀ`` (``H×H``) the projector on ``G``'s column space.

    ``‖Π‖_F = √r_G``.  For ``X = P`` both Gram identities hold exactly, so the
    residual is 0; for full-rank ``G`` it is ``√(Σ(σᵢ(X)² − 1)²/r)``.  When
    ``r_G = 0``: ``‖XᵀX‖_F`` is reported unnormalised (0 for ``X = 0``).

    Returns
    -------
    np.ndarray of shape (...) or np.float64
    """
    X64, ref = _pair(X, G, rtol)
    H, W = X64.shape[-2:]
    m = ref.keep.astype(np.float64)
    if H >= W:
        Q = np.swapaxes(ref.Vh, -1, -2) * m[..., None, :]  # V_r, (..., W, r)
        gram = np.swapaxes(X64, -1, -2) @ X64
    else:
        Q = ref.U * m[..., None, :]  # U_r, (..., H, r)
        gram = X64 @ np.swapaxes(X64, -1, -2)
    Pi = Q @ np.swapaxes(Q, -1, -2)
    res = _frob(gram - Pi)
    rank = ref.rank
    return _out(res / np.sqrt(np.maximum(rank, 1)))


# ---------------------------------------------------------------------------
# Duality (nuclear norm / spectral norm)
# ---------------------------------------------------------------------------


def duality_efficiency(X: Any, G: Any, *, rtol: float | None = None) -> Any:
    """``⟨G, X⟩_F / (‖G‖_* ‖X‖₂)``: the fraction of the dual-norm bound that ``X`` attains.

    ``max_{‖X‖₂ ≤ 1} ⟨G, X⟩ = ‖G‖_*``, attained by ``P(G)``, so the value lies
    in ``[−1, 1]`` and is 1 for ``X = c·P`` (``c > 0``) — and for any ``X``
    that agrees with ``P`` on ``G``'s range with ``‖X‖₂`` unchanged.  Invariant
    under positive scaling of ``X`` and ``G``.  Conventions: ``G = 0`` → 1 (every
    direction attains the zero maximum); ``X = 0``, ``G ≠ 0`` → 0.

    Returns
    -------
    np.ndarray of shape (...) or np.float64

    References
    ----------
    Move on Muon (orthogonalisation is steepest descent under ``‖·‖₂``, the dual
    of the nuclear norm).
    """
    X64, ref = _pair(X, G, rtol)
    sg = _amax(ref.G)
    sx = _amax(X64)
    Xs = X64 / sx
    dot = np.sum((ref.G / sg) * Xs, axis=(-2, -1))
    nuc = ref.nuclear / sg[..., 0, 0]
    spec = np.linalg.svd(Xs, compute_uv=False)[..., 0]
    denom = nuc * spec
    val = np.where(denom > 0, dot / np.where(denom > 0, denom, 1.0), 0.0)
    val = np.where(ref.nuclear > 0, val, 1.0)
    return _out(np.clip(val, -1.0, 1.0))


def nuclear_norm_captured(X: Any, G: Any, *, rtol: float | None = None) -> Any:
    """``⟨G, X⟩_F / ‖G‖_*``: the share of the nuclear norm the update ``X`` realises.

    1 for ``X = P(G)``; unlike :func:`duality_efficiency` it is *not* invariant
    to the scale of ``X`` (a map that shrinks singular values scores below 1,
    one that overshoots can score above 1).  Invariant under positive scaling of
    ``G``.  ``G = 0`` → 1 (convention, consistent with ``P(0) = 0`` being exact).

    Returns
    -------
    np.ndarray of shape (...) or np.float64

    References
    ----------
    Move on Muon.
    """
    X64, ref = _pair(X, G, rtol)
    sg = _amax(ref.G)
    dot = np.sum((ref.G / sg) * X64, axis=(-2, -1))
    nuc = ref.nuclear / sg[..., 0, 0]
    return _out(np.where(nuc > 0, dot / np.where(nuc > 0, nuc, 1.0), 1.0))


# ---------------------------------------------------------------------------
# Cross-tile information loss (HiMuon)
# ---------------------------------------------------------------------------


def _block_diag_gram_share(A: np.ndarray, T: int) -> np.ndarray:
    """Share of ``‖AAᵀ‖_F²`` outside the row-block diagonal (blocks of T rows)."""
    H, W = A.shape[-2:]
    if T >= H:  # one block: nothing outside the diagonal (exactly 0, no rounding)
        return np.zeros(A.shape[:-2])
    s = _amax(A)
    A = A / s
    small = np.swapaxes(A, -1, -2) @ A if H > W else A @ np.swapaxes(A, -1, -2)
    total = np.sum(small * small, axis=(-2, -1))  # ‖AAᵀ‖_F² = ‖AᵀA‖_F²
    nB = -(-H // T)
    if nB * T != H:
        A = np.pad(A, [(0, 0)] * (A.ndim - 2) + [(0, nB * T - H), (0, 0)])
    Ab = A.reshape((*A.shape[:-2], nB, T, W))
    blocks = Ab @ np.swapaxes(Ab, -1, -2)  # (..., nB, T, T)
    inside = np.sum(blocks * blocks, axis=(-3, -2, -1))
    share = np.where(total > 0, 1.0 - inside / np.where(total > 0, total, 1.0), 0.0)
    return np.clip(share, 0.0, 1.0)


def gram_coupling(G: Any, tile: Any) -> dict[str, Any]:
    """Share of the Gram energy outside the tile-block diagonal (a predictor of tiling loss).

    With squared Frobenius norms ("energy"):

    * ``rows = 1 − Σ_i ‖G_i G_iᵀ‖_F² / ‖GGᵀ‖_F²`` with ``G_i`` the ``i``-th block
      of ``Th`` rows (ragged last block): the ``GGᵀ`` energy in off-diagonal
      row-tile blocks;
    * ``cols = 1 − Σ_j ‖G^jᵀ G^j‖_F² / ‖GᵀG‖_F²`` with ``G^j`` the ``j``-th block
      of ``Tw`` columns;
    * ``mean = (rows + cols) / 2``.

    0 for a matrix that is block diagonal on the tile grid (and whenever a single
    tile covers the matrix), up to 1 − 1/n_blocks-ish for dense random matrices.
    ``G = 0`` → 0.  Scale invariant.  Computed without forming the ``H×H`` Gram:
    ``O(H·W·(Th + Tw) + r²s)``.

    Returns
    -------
    dict
        ``rows``, ``cols``, ``mean`` (batch shape).

    References
    ----------
    HiMuon (cross-tile interactions dropped by tiling).
    """
    G64 = _to_float64(G.G if isinstance(G, Reference) else G, "G")
    H, W = G64.shape[-2:]
    Th, Tw = _check_tile(tile, H, W)
    rows = _block_diag_gram_share(G64, Th)
    cols = _block_diag_gram_share(np.swapaxes(G64, -1, -2), Tw)
    return {"rows": _out(rows), "cols": _out(cols), "mean": _out(0.5 * (rows + cols))}


def tile_polar(G: Any, tile: Any, *, rtol: float | None = None) -> np.ndarray:
    """Exact tile-wise polar factor ``P_T(G)`` in float64 numpy (each tile's own ``U Vᵀ``).

    Computed as ``matfun.Tiled(matfun.Polar(rtol, "float64"), tile)`` on ``G``
    in float64 — the tiling code of the maps under test (ragged edge tiles are
    the ragged blocks; one batched SVD per group of equal-shape tiles, no loop
    over tiles).  The cut-off ``rtol`` (default that of the whole ``G``, see
    the module docstring) is relative to each tile's own largest singular value.
    """
    return reference(G, rtol).tile_polar(tile)


def per_tile_alignment(X: Any, G: Any, tile: Any, *, rtol: float | None = None) -> dict[str, Any]:
    """Per-tile alignment ``cos(X_ij, P(G_ij))`` of each tile of ``X`` with its own tile's polar factor.

    Returns
    -------
    dict
        ``per_tile`` (shape ``(..., nH, nW)``), ``mean`` (unweighted mean over
        tiles, ragged edge tiles count as one) and ``min`` (the worst tile),
        both of the batch shape.  A tile where both ``G_ij`` and ``X_ij`` are
        zero scores 1, a zero ``G_ij`` with nonzero ``X_ij`` scores 0.

    References
    ----------
    HiMuon (per-tile Newton–Schulz).
    """
    from matfun.tiling import split_group, tile_groups

    X64, ref = _pair(X, G, rtol)
    H, W = X64.shape[-2:]
    key = _check_tile(tile, H, W)
    Pt = ref.tile_polar(key)
    groups = tile_groups(H, W, key)
    c = _tile_grid_values([_cosine64(split_group(X64, g), split_group(Pt, g)) for g in groups], groups)
    return {
        "per_tile": c,
        "mean": _out(c.mean(axis=(-2, -1))),
        "min": _out(c.min(axis=(-2, -1))),
    }


def _tiled_ns64(G: Any, tile: Any, steps: int, coefficients: Any, precision: str | None) -> np.ndarray:
    tiled = getattr(matfun, "tiled_newton_schulz", None)
    if tiled is None:  # pragma: no cover - until matfun.tiling lands
        raise NotImplementedError("matfun.tiled_newton_schulz is not available yet")
    X = tiled(G, tile, steps=steps, coefficients=coefficients, precision=precision)
    return _to_float64(X, "NS_{T,K}(G)")


def tiling_loss(G: Any, tile: Any, *, rtol: float | None = None) -> Any:
    """Tiling loss ``1 − cos(P_T(G), P(G))``: what exact tile-wise orthogonalisation throws away.

    Computed as ``½‖P_T/‖P_T‖_F − P/‖P‖_F‖_F²`` (equal to ``1 − cos``, without
    cancellation for tiny losses).  0 for a matrix block diagonal on the tile
    grid and for a tile covering the whole matrix.

    References
    ----------
    HiMuon.
    """
    ref = reference(G, rtol)
    return _out(_one_minus_cosine64(ref.tile_polar(tile), ref.P))


def truncation_loss(
    G: Any,
    tile: Any,
    steps: int = 5,
    coefficients: Any = "jordan",
    precision: str | None = None,
    *,
    rtol: float | None = None,
) -> Any:
    """Truncation loss ``1 − cos(NS_{T,K}(G), P_T(G))``: finite NS steps versus the exact tile-wise polar.

    ``NS_{T,K}`` is :func:`matfun.tiled_newton_schulz` run on ``G`` as given
    (library, device, ``precision``); the cosine is taken in float64.

    References
    ----------
    HiMuon.
    """
    return information_loss(G, tile, steps, coefficients, precision, rtol=rtol)["truncation"]


def total_loss(
    G: Any,
    tile: Any,
    steps: int = 5,
    coefficients: Any = "jordan",
    precision: str | None = None,
    *,
    rtol: float | None = None,
) -> Any:
    """Total cross-tile information loss ``1 − cos(NS_{T,K}(G), P(G))``.

    References
    ----------
    HiMuon.
    """
    return information_loss(G, tile, steps, coefficients, precision, rtol=rtol)["total"]


def information_loss(
    G: Any,
    tile: Any,
    steps: int = 5,
    coefficients: Any = "jordan",
    precision: str | None = None,
    *,
    rtol: float | None = None,
) -> dict[str, Any]:
    """Cross-tile information loss of tiled Newton–Schulz, decomposed.

    * ``tiling = 1 − cos(P_T(G), P(G))`` — exact tile-wise polar vs exact polar;
    * ``truncation = 1 − cos(NS_{T,K}(G), P_T(G))`` — finite steps vs exact tile-wise polar;
    * ``total = 1 − cos(NS_{T,K}(G), P(G))``;
    * ``gram_coupling`` (mean), ``gram_coupling_rows``, ``gram_coupling_cols``
      from :func:`gram_coupling`, the a-priori predictor.

    Each ``1 − cos`` is computed as ``½‖Â − B̂‖_F²`` (unit-Frobenius-normalised
    arguments).  The three losses are not additive in general (cosines of
    angles: ``√(2·loss)`` is a chordal distance, so
    ``√total ≤ √tiling + √truncation``).

    Parameters
    ----------
    G : array of shape (..., H, W) or :class:`Reference`
        The map runs on ``G`` as given (library, device, dtype); given a
        :class:`Reference` it runs on the float64 copy ``ref.G``.
    tile : int or (int, int)
    steps : int, default 5
    coefficients : str or sequence of (a, b, c), default "jordan"
    precision : str, optional
        Compute precision of the NS map (see :mod:`matfun._backend`).
    rtol : float, optional
        Rank cut-off of the reference polar factors.

    Returns
    -------
    dict
        ``tiling``, ``truncation``, ``total``, ``gram_coupling``,
        ``gram_coupling_rows``, ``gram_coupling_cols`` (batch shape each).

    References
    ----------
    HiMuon.
    """
    ref = reference(G, rtol)
    original = G if not isinstance(G, Reference) else ref.G
    Pt = ref.tile_polar(tile)
    X = _tiled_ns64(original, tile, steps, coefficients, precision)
    coupling = gram_coupling(ref, tile)
    return {
        "tiling": _out(_one_minus_cosine64(Pt, ref.P)),
        "truncation": _out(_one_minus_cosine64(X, Pt)),
        "total": _out(_one_minus_cosine64(X, ref.P)),
        "gram_coupling": coupling["mean"],
        "gram_coupling_rows": coupling["rows"],
        "gram_coupling_cols": coupling["cols"],
    }


# ---------------------------------------------------------------------------
# Smoothing level (Move on Muon)
# ---------------------------------------------------------------------------


def _smoothed_transfer(sigma: np.ndarray, eps: float) -> np.ndarray:
    return sigma / np.hypot(sigma, eps)


def smoothing_level(transfer: Any, sigma: Any, steps: int | None = None) -> dict[str, float]:
    """The smoothing level ``ε̂`` whose smoothed-polar transfer best fits a transfer function.

    Fits ``f_ε(σ) = σ/√(σ² + ε²)`` (the singular-value map of
    :func:`matfun.smoothed_polar`) to a transfer function ``t(σ)`` on a grid of
    ``σ`` by least squares, ``ε̂ = argmin_ε Σᵢ (f_ε(σᵢ) − t(σᵢ))²``, optimised
    over ``log ε``: a coarse log grid (80 points from ``σ_min/100`` to
    ``100·σ_max``) picks the basin, then ``scipy.optimize.least_squares``
    (analytic Jacobian, tolerances 1e-15) polishes it.  Fed ``f_ε`` itself it
    returns ``ε`` to about 1e-12 relative.  Use a log-spaced grid
    (``np.geomspace``) to weigh all scales alike.

    Parameters
    ----------
    transfer :
        One of

        * array of the values ``t(σᵢ)`` (same shape as ``sigma``);
        * a callable ``σ ↦ t(σ)``;
        * a Newton–Schulz schedule (name, :class:`matfun.Schedule` or sequence of
          ``(a, b, c)``) together with ``steps``: ``t = transfer_function(σ, steps, schedule)``;
        * a :class:`matfun.NewtonSchulz` map (its schedule and steps) or a
          :class:`matfun.SmoothedPolar` map (its own ``σ/√(σ²+ε²)``).
    sigma : array_like, 1-D
        Positive, finite grid of at least 2 values.  For NS transfer functions
        the scale is that of the Frobenius-normalised input ``G/‖G‖_F``, so ``ε̂``
        is in those units too.
    steps : int, optional
        Number of steps, only with a schedule.

    Returns
    -------
    dict
        ``eps`` (ε̂), ``residual`` (RMS of ``f_ε̂(σᵢ) − t(σᵢ)``) and
        ``max_residual`` (largest absolute deviation), as floats.

    References
    ----------
    Move on Muon (orthogonalisation as the ε → 0 limit of the smoothed nuclear norm).
    """
    from scipy.optimize import least_squares

    s = np.asarray(sigma, dtype=np.float64)
    if s.ndim != 1 or s.size < 2:
        raise ValueError(f"sigma must be a 1-D grid of at least 2 values, got shape {s.shape}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError("sigma must be positive and finite")

    if isinstance(transfer, matfun.SmoothedPolar):
        t = _smoothed_transfer(s, transfer.eps)
    elif isinstance(transfer, matfun.NewtonSchulz):
        t = np.asarray(matfun.transfer_function(s, transfer.steps, transfer.schedule), dtype=np.float64)
    elif steps is not None:
        t = np.asarray(matfun.transfer_function(s, steps, transfer), dtype=np.float64)
    elif callable(transfer):
        t = np.asarray(transfer(s), dtype=np.float64)
    elif isinstance(transfer, (str, matfun.Schedule)):
        raise ValueError("a schedule needs steps= (the number of Newton–Schulz steps)")
    else:
        t = _bk._to_numpy(transfer).astype(np.float64) if _bk.is_torch(transfer) else np.asarray(transfer, np.float64)
    if t.shape != s.shape:
        raise ValueError(f"transfer values must have the shape of sigma {s.shape}, got {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("transfer values contain NaN or Inf")

    def resid(theta: np.ndarray) -> np.ndarray:
        return _smoothed_transfer(s, math.exp(theta[0])) - t

    def jac(theta: np.ndarray) -> np.ndarray:
        e2 = math.exp(2 * theta[0])
        # d/dθ σ(σ²+e^{2θ})^{-1/2} = −σ e^{2θ} (σ²+e^{2θ})^{-3/2}
        return (-s * e2 / (s * s + e2) ** 1.5)[:, None]

    lo, hi = math.log(s.min() / 100), math.log(s.max() * 100)
    grid = np.linspace(lo, hi, 80)
    costs = [float(np.sum(resid(np.array([g])) ** 2)) for g in grid]
    theta0 = grid[int(np.argmin(costs))]
    fit = least_squares(resid, x0=[theta0], jac=jac, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    theta = float(fit.x[0])
    if float(np.sum(resid(fit.x) ** 2)) > min(costs):  # never worse than the grid
        theta = float(theta0)
    r = resid(np.array([theta]))
    return {
        "eps": math.exp(theta),
        "residual": float(np.sqrt(np.mean(r * r))),
        "max_residual": float(np.max(np.abs(r))),
    }


# ---------------------------------------------------------------------------
# Metrics along the iterates of a map
# ---------------------------------------------------------------------------


def _stack(values: list[Any]) -> Any:
    if values and isinstance(values[0], Mapping):
        return {k: np.stack([np.asarray(v[k], dtype=np.float64) for v in values]) for k in values[0]}
    return np.stack([np.asarray(v, dtype=np.float64) for v in values])


def per_step(
    metric: Callable[..., Any], iterates: Iterable[Any], G: Any, *, rtol: float | None = None, **kwargs: Any
) -> Any:
    """Evaluate ``metric(X_k, G, **kwargs)`` for each iterate ``X_0 … X_K``.

    The reference quantities of ``G`` (SVD, polar factor, tile-wise polar) are
    computed once and shared by all steps.

    Parameters
    ----------
    metric : callable
        Any metric of this module with signature ``metric(X, G, ...)``
        (``alignment``, ``spectral_error``, ``per_tile_alignment`` with
        ``tile=``, ...).
    iterates : iterable of arrays
        E.g. ``map.iterates(G)`` or :func:`matfun.newton_schulz_iterates`.
    G : array or :class:`Reference`
        The input the iterates were computed from.

    Returns
    -------
    np.ndarray of shape (K+1, ...batch), or a dict of such arrays for
    dict-valued metrics (each entry stacked along a new leading axis).
    """
    ref = reference(G, rtol)
    values = [metric(X, ref, **kwargs) for X in iterates]
    if not values:
        raise ValueError("no iterates given")
    return _stack(values)


def metric_along(map_: Any, G: Any, metric: Callable[..., Any], *, rtol: float | None = None, **kwargs: Any) -> Any:
    """Evaluate ``metric`` along the iterates of one run of ``map_`` on ``G``.

    ``map_`` is any :class:`matfun.Map` (``NewtonSchulz``, ``Polar``, ``Tiled``,
    ...); one call to ``map_.iterates(G)`` produces ``X_0 … X_K`` (the last equals
    ``map_(G)``).  Pass the original ``G`` (not a :class:`Reference`) to run the
    map at the input's precision; a Reference runs it on its float64 copy.  Returns ``per_step(metric, map_.iterates(G), G, **kwargs)``:
    shape ``(K+1, ...batch)``.
    """
    source = G.G if isinstance(G, Reference) else G
    ref = reference(G, rtol)
    return per_step(metric, map_.iterates(source), ref, **kwargs)
