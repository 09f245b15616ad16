"""Seeded test matrices with controlled structure.

Every generator draws in float64 numpy from ``np.random.default_rng(seed)`` and only
then converts to the requested library, dtype and device, so the numpy and torch
outputs for one seed are identical (up to the final dtype cast, which both libraries
round the same way).

Shapes are ``(..., H, W)``: leading dimensions form a batch. The whole batch comes
from one random stream, so each member is independent of the others and the batch
is reproducible from the seed; a member of a batch is *not* the same matrix as the
unbatched draw for the same seed.

Output selection (shared by every function that returns a matrix):

``backend``
    ``"numpy"`` (default) or ``"torch"``.
``dtype``
    A real floating dtype: a name (``"float64"``, ``"float32"``, ``"float16"``,
    ``"bfloat16"`` (torch only)), a numpy dtype or a ``torch.dtype``. Default float64.
``device``
    torch device (``"cpu"``, ``"cuda"``, ...); numpy accepts only ``None``/``"cpu"``.
``like``
    An existing array/tensor; its library, dtype and device become the defaults.

Examples
--------
>>> import numpy as np
>>> A = geometric((64, 32), condition_number=1e3, seed=0)
>>> s = np.linalg.svd(A, compute_uv=False)
>>> bool(np.isclose(s[0] / s[-1], 1e3))
True
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "clustered",
    "clustered_spectrum",
    "geometric",
    "geometric_spectrum",
    "haar_orthogonal",
    "heavy_tailed",
    "linear",
    "linear_spectrum",
    "low_rank_plus_noise",
    "power_law",
    "power_law_spectrum",
    "rank_deficient",
    "tile_block_mask",
    "tile_coupled",
    "to_backend",
    "with_spectrum",
]

BACKENDS = ("numpy", "torch")
_FLOAT_NAMES = ("float64", "float32", "float16", "bfloat16")


# ---------------------------------------------------------------------------
# Argument checking
# ---------------------------------------------------------------------------


def _check_int(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _check_seed(seed: Any) -> int:
    return _check_int(seed, "seed", minimum=0)


def _check_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, numbers.Integral) or not isinstance(shape, Sequence):
        raise TypeError(f"shape must be a tuple (..., H, W) of positive ints, got {shape!r}")
    if len(shape) < 2:
        raise ValueError(f"shape must have at least two entries (..., H, W), got {tuple(shape)!r}")
    return tuple(_check_int(s, "every entry of shape", minimum=1) for s in shape)


def _check_condition_number(condition_number: Any) -> float:
    kappa = _check_real(condition_number, "condition_number")
    if kappa < 1.0:
        raise ValueError(f"condition_number must be >= 1, got {kappa}")
    return kappa


# ---------------------------------------------------------------------------
# Backend conversion
# ---------------------------------------------------------------------------


def _dtype_name(dtype: Any) -> str:
    """Canonical name ('float32', ...) of a numpy dtype, torch dtype or string."""
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
    elif type(dtype).__module__ == "torch" and type(dtype).__name__ == "dtype":
        name = str(dtype).removeprefix("torch.")
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError as exc:
            raise TypeError(f"dtype {dtype!r} is not a recognised dtype") from exc
    aliases = {"double": "float64", "float": "float32", "half": "float16"}
    name = aliases.get(name, name)
    if name not in _FLOAT_NAMES:
        raise ValueError(f"dtype must be a real floating dtype, one of {_FLOAT_NAMES}; got {dtype!r}")
    return name


def _describe_like(like: Any) -> tuple[str, str, Any]:
    if isinstance(like, np.ndarray):
        return "numpy", like.dtype.name, None
    if type(like).__module__.startswith("torch") and hasattr(like, "device"):
        return "torch", str(like.dtype).removeprefix("torch."), like.device
    raise TypeError(f"like must be a numpy array or torch tensor, got {type(like).__name__}")


def to_backend(
    array: np.ndarray,
    *,
    backend: str | None = None,
    dtype: Any = None,
    device: Any = None,
    like: Any = None,
) -> Any:
    """Convert a float64 numpy array to the requested library, dtype and device.

    Parameters
    ----------
    array : numpy.ndarray
        The array to convert (normally float64).
    backend : {"numpy", "torch"}, optional
        Output library; default ``"numpy"``, or the library of ``like``.
    dtype : str, numpy dtype or torch.dtype, optional
        Real floating output dtype; default float64, or the dtype of ``like``.
    device : str or torch.device, optional
        torch device; numpy accepts only ``None`` or ``"cpu"``.
    like : numpy.ndarray or torch.Tensor, optional
        Template whose library, dtype and device are the defaults.

    Returns
    -------
    numpy.ndarray or torch.Tensor

    Raises
    ------
    ValueError
        Unknown backend, non-floating dtype, a device for numpy, or a backend that
        contradicts ``like``.
    """
    like_backend, like_dtype, like_device = (None, None, None)
    if like is not None:
        like_backend, like_dtype, like_device = _describe_like(like)
        if backend is not None and backend != like_backend:
            raise ValueError(f"backend={backend!r} contradicts like (a {like_backend} array)")
    backend = backend if backend is not None else (like_backend or "numpy")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    name = _dtype_name(dtype if dtype is not None else (like_dtype or "float64"))
    device = device if device is not None else like_device
    array = np.asarray(array)
    if backend == "numpy":
        if device is not None and str(device) != "cpu":
            raise ValueError(f"backend='numpy' supports only device None or 'cpu', got {device!r}")
        if name == "bfloat16":
            raise ValueError("numpy has no bfloat16; use backend='torch' or another dtype")
        return array.astype(name, copy=False)
    import torch

    return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=getattr(torch, name))


# ---------------------------------------------------------------------------
# Haar-random factors
# ---------------------------------------------------------------------------


def _haar_columns(rng: np.random.Generator, batch: tuple[int, ...], n: int, k: int) -> np.ndarray:
    """(*batch, n, k) with Haar-distributed orthonormal columns (k <= n)."""
    gaussian = rng.standard_normal((*batch, n, k))
    q, r = np.linalg.qr(gaussian)
    signs = np.sign(np.diagonal(r, axis1=-2, axis2=-1))
    signs[signs == 0] = 1.0
    return q * signs[..., None, :]


def haar_orthogonal(
    n: int,
    *,
    batch: Sequence[int] = (),
    seed: int = 0,
    backend: str | None = None,
    dtype: Any = None,
    device: Any = None,
    like: Any = None,
) -> Any:
    """Haar-random orthogonal matrices.

    QR of a standard Gaussian matrix with the signs of R's diagonal moved into Q,
    which makes the distribution exactly Haar.

    Parameters
    ----------
    n : int
        Matrix size (>= 1).
    batch : sequence of int
        Leading batch dimensions.
    seed : int
        Non-negative seed.
    backend, dtype, device, like
        Output selection, see the module docstring.

    Returns
    -------
    array of shape (*batch, n, n)
    """
    n = _check_int(n, "n", minimum=1)
    batch = tuple(_check_int(b, "every entry of batch", minimum=1) for b in batch)
    rng = np.random.default_rng(_check_seed(seed))
    q = _haar_columns(rng, batch, n, n)
    return to_backend(
        q,
        backend=backend,
        dtype=dtype,
        device=device,
        like=like,
    )


# ---------------------------------------------------------------------------
# Prescribed spectra
# ---------------------------------------------------------------------------


def _as_float64(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def _with_spectrum_numpy(shape: tuple[int, ...], singular_values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    *batch, height, width = shape
    rank = min(height, width)
    sigma = np.broadcast_to(singular_values, (*batch, rank))
    left = _haar_columns(rng, tuple(batch), height, rank)
    right = _haar_columns(rng, tuple(batch), width, rank)
    return (left * sigma[..., None, :]) @ np.swapaxes(right, -1, -2)


def _check_singular_values(singular_values: Any, shape: tuple[int, ...]) -> np.ndarray:
    *batch, height, width = shape
    rank = min(height, width)
    sigma = _as_float64(singular_values)
    if sigma.ndim == 0 or sigma.shape[-1] != rank:
        raise ValueError(f"singular_values must have last dimension r = min(H, W) = {rank}, got shape {sigma.shape}")
    try:
        np.broadcast_shapes(sigma.shape[:-1], tuple(batch))
    except ValueError:
        raise ValueError(
            f"singular_values batch shape {sigma.shape[:-1]} does not broadcast to {tuple(batch)}"
        ) from None
    if np.broadcast_shapes(sigma.shape[:-1], tuple(batch)) != tuple(batch):
        raise ValueError(f"singular_values batch shape {sigma.shape[:-1]} would enlarge the batch {tuple(batch)}")
    if not np.all(np.isfinite(sigma)) or np.any(sigma < 0):
        raise ValueError("singular_values must be finite and non-negative")
    return sigma


def with_spectrum(
    shape: Sequence[int],
    singular_values: Any,
    *,
    seed: int = 0,
    backend: str | None = None,
    dtype: Any = None,
    device: Any = None,
    like: Any = None,
) -> Any:
    """Matrix ``U diag(σ) Vᵀ`` with prescribed singular values and Haar-random factors.

    Parameters
    ----------
    shape : tuple of int
        ``(..., H, W)``.
    singular_values : array_like
        Shape ``(r,)`` or broadcastable ``(..., r)`` with r = min(H, W); finite and
        non-negative, any order. U (H×r) and V (W×r) have Haar-random orthonormal columns.
    seed : int
        Non-negative seed.
    backend, dtype, device, like
        Output selection, see the module docstring.

    Returns
    -------
    array of shape ``shape`` whose singular values are ``singular_values`` (to
    float64 rounding, about 1e-15 relative to the largest).

    Raises
    ------
    ValueError
        Wrong length, negative or non-finite singular values, bad shape.
    """
    shape = _check_shape(shape)
    sigma = _check_singular_values(singular_values, shape)
    rng = np.random.default_rng(_check_seed(seed))
    matrix = _with_spectrum_numpy(shape, sigma, rng)
    return to_backend(
        matrix,
        backend=backend,
        dtype=dtype,
        device=device,
        like=like,
    )


def geometric_spectrum(r: int, condition_number: float) -> np.ndarray:
    """``σ_i = κ^(-i/(r-1))`` for i = 0..r-1: from 1 down to 1/κ, evenly spaced in log.

    Raises ValueError for r < 1 or κ < 1. With r = 1 the spectrum is ``[1]``.
    """
    r = _check_int(r, "r", minimum=1)
    kappa = _check_condition_number(condition_number)
    if r == 1:
        return np.ones(1)
    return kappa ** (-np.arange(r) / (r - 1))


def power_law_spectrum(r: int, exponent: float) -> np.ndarray:
    """``σ_i = (i + 1)^(-exponent)`` for i = 0..r-1 (exponent >= 0; 0 gives all ones)."""
    r = _check_int(r, "r", minimum=1)
    exponent = _check_real(exponent, "exponent")
    if exponent < 0:
        raise ValueError(f"exponent must be >= 0 so the spectrum decreases, got {exponent}")
    return np.arange(1, r + 1, dtype=np.float64) ** (-exponent)


def linear_spectrum(r: int, condition_number: float) -> np.ndarray:
    """``σ`` evenly spaced from 1 down to 1/κ (``[1]`` when r = 1)."""
    r = _check_int(r, "r", minimum=1)
    kappa = _check_condition_number(condition_number)
    return np.linspace(1.0, 1.0 / kappa, r)


def clustered_spectrum(
    r: int,
    centers: Sequence[float] = (1.0, 0.1),
    spread: float = 0.05,
    seed: int = 0,
) -> np.ndarray:
    """Singular values gathered in clusters around the given centres.

    The r values are split into ``len(centers)`` groups as evenly as possible (the
    first groups get the extra ones); group k draws ``c_k · exp(spread · z)`` with
    z standard normal. The result is divided by its maximum and sorted descending,
    so with ``spread = 0`` it is exactly ``centers / max(centers)`` repeated.

    Raises
    ------
    ValueError
        Empty or non-positive centres, negative spread, r < 1.
    """
    r = _check_int(r, "r", minimum=1)
    centre_values = np.asarray([_check_real(c, "each center") for c in centers], dtype=np.float64)
    if centre_values.size == 0 or np.any(centre_values <= 0):
        raise ValueError(f"centers must be a non-empty sequence of positive numbers, got {centers!r}")
    spread = _check_real(spread, "spread")
    if spread < 0:
        raise ValueError(f"spread must be >= 0, got {spread}")
    rng = np.random.default_rng(_check_seed(seed))
    group = np.arange(r) * centre_values.size // r  # even split, first groups larger
    values = centre_values[group] * np.exp(spread * rng.standard_normal(r))
    return np.sort(values)[::-1] / values.max()


def geometric(
    shape: Sequence[int],
    condition_number: float,
    *,
    seed: int = 0,
    backend: str | None = None,
    dtype: Any = None,
    device: Any = None,
    like: Any = None,
) -> Any:
    """``with_spectrum(shape, geometric_spectrum(r, condition_number))``; see there."""
    shape = _check_shape(shape)
    sigma = geometric_spectrum(min(shape[-2:]), condition_number)
    return with_spectrum(
        shape,
        sigma,
        seed=seed,
        backend=backend,
        dtype=dtype,
        device=device,
        like=like,
    )


def power_law(
    shape: Sequence[int],
    exponent: float,
    *,
    seed: int = 0,
    backend: str | None = None,
    dtype: Any = None,
    device: Any = None,
    like: Any = None,
) -> Any:
    """``with_spectrum(shape, power_law_spectrum(r, exponent))``; see there."""
    shape = _check_shape(shape)
    sigma = power_law_spectrum(min(shape[-2:]), exponent)
    return with_spectrum(
        shape,
        sigma,
        seed=seed,
        backend=backend,
        dtype=dtype,
        device=device,
        like=like,
    )


def linear(
    shape: Sequence[int],
    condition_number: float,
    *,
    seed: int = 0,
    backend: str | None = None,
    dtype: Any = None,
    device: Any = None,
    like: Any = None,
) -> Any:
    """``with_spectrum(shape, linear_spectrum(r, condition_number))``; see there."""
    shape = _check_shape(shape)
    sigma = linear_spectrum(min(shape[-2:]), condition_number)
    return with_spectrum(
        shape,
        sigma,
        seed=seed,
        backend=backend,
        dtype=dtype,
        device=device,
        like=like,
    )


def clustered(
    shape: Sequence[int],
    centers: Sequence[float] = (1.0, 0.1),
    spread: float = 0.05,
    *,
    seed: int = 0,
    backend: str | None = None,
    dtype: Any = None,
    device: Any = None,
    like: Any = None,
) -> Any:
    """Matrix with a clustered spectrum (one spectrum shared by the whole batch).

    The spectrum and the singular vectors use two independent child streams of
    ``seed`` (``np.random.SeedSequence(seed).spawn(2)``).
    """
    shape = _check_shape(shape)
    children = np.random.SeedSequence(_check_seed(seed)).spawn(2)
    spectrum_seed, factor_seed = (int(child.generate_state(1)[0]) for child in children)
    sigma = clustered_spectrum(min(shape[-2:]), centers, spread, seed=spectrum_seed)
    return with_spectrum(
        shape,
        sigma,
        seed=factor_seed,
        backend=backend,
        dtype=dtype,
        device=device,
        like=like,
    )


# ---------------------------------------------------------------------------
# Rank structure and noise
# ---------------------------------------------------------------------------


def rank_deficient(
    shape: Sequence[int],
    rank: int,
    condition_number: float = 10.0,
    *,
    seed: int = 0,
    backend: str | None = None,
    dtype: Any = None,
    device: Any = None,
    like: Any = None,
) -> Any:
    """Matrix with exactly ``rank`` nonzero singular values.

    The nonzero ones follow ``geometric_spectrum(rank, condition_number)`` (1 down to
    1/κ); the other ``min(H, W) - rank`` are exactly zero. ``rank = 0`` gives a zero
    matrix.

    Raises
    ------
    ValueError
        ``rank`` outside ``[0, min(H, W)]`` or ``condition_number < 1``.
    """
    shape = _check_shape(shape)
    full_rank = min(shape[-2:])
    rank = _check_int(rank, "rank", minimum=0)
    if rank > full_rank:
        raise ValueError(f"rank must be <= min(H, W) = {full_rank}, got {rank}")
    kappa = _check_condition_number(condition_number)
    sigma = np.zeros(full_rank)
    if rank:
        sigma[:rank] = geometric_spectrum(rank, kappa)
    return with_spectrum(
        shape,
        sigma,
        seed=seed,
        backend=backend,
        dtype=dtype,
        device=device,
        like=like,
    )


def low_rank_plus_noise(
    shape: Sequence[int],
    rank: int,
    noise: float,
    *,
    seed: int = 0,
    backend: str | None = None,
    dtype: Any = None,
    device: Any = None,
    like: Any = None,
) -> Any:
    """``L + N``: a rank-``rank`` signal with unit singular values plus Gaussian noise.

    ``L = U_k Vᵀ_k`` (Haar factors, all ``rank`` singular values 1) and N is a
    Gaussian matrix rescaled, per batch member, so that ``‖N‖_F = noise · ‖L‖_F =
    noise · √rank`` exactly. ``noise`` is thus the noise-to-signal Frobenius ratio.

    Raises
    ------
    ValueError
        ``rank`` outside ``[1, min(H, W)]`` or ``noise < 0``.
    """
    shape = _check_shape(shape)
    *batch, height, width = shape
    full_rank = min(height, width)
    rank = _check_int(rank, "rank", minimum=1)
    if rank > full_rank:
        raise ValueError(f"rank must be <= min(H, W) = {full_rank}, got {rank}")
    noise = _check_real(noise, "noise")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    rng = np.random.default_rng(_check_seed(seed))
    left = _haar_columns(rng, tuple(batch), height, rank)
    right = _haar_columns(rng, tuple(batch), width, rank)
    signal = left @ np.swapaxes(right, -1, -2)
    gaussian = rng.standard_normal(shape)
    gaussian_norm = np.linalg.norm(gaussian, axis=(-2, -1), keepdims=True)
    matrix = signal + gaussian * (noise * np.sqrt(rank) / gaussian_norm)
    return to_backend(
        matrix,
        backend=backend,
        dtype=dtype,
        device=device,
        like=like,
    )


def heavy_tailed(
    shape: Sequence[int],
    df: float = 3.0,
    *,
    seed: int = 0,
    backend: str | None = None,
    dtype: Any = None,
    device: Any = None,
    like: Any = None,
) -> Any:
    """Matrix of i.i.d. Student-t entries with ``df`` degrees of freedom (unscaled).

    Small ``df`` gives heavy tails (variance infinite for df <= 2).

    Raises
    ------
    ValueError
        ``df <= 0``.
    """
    shape = _check_shape(shape)
    df = _check_real(df, "df")
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    rng = np.random.default_rng(_check_seed(seed))
    return to_backend(
        rng.standard_t(df, size=shape),
        backend=backend,
        dtype=dtype,
        device=device,
        like=like,
    )


# ---------------------------------------------------------------------------
# Cross-tile coupling
# ---------------------------------------------------------------------------


def _check_tile(tile: Any) -> tuple[int, int]:
    if isinstance(tile, numbers.Integral) and not isinstance(tile, bool):
        tile = (tile, tile)
    if not isinstance(tile, Sequence) or len(tile) != 2:
        raise ValueError(f"tile must be a positive int T or a pair (Th, Tw), got {tile!r}")
    return (
        _check_int(tile[0], "tile height", minimum=1),
        _check_int(tile[1], "tile width", minimum=1),
    )


def tile_block_mask(height: int, width: int, tile: int | tuple[int, int]) -> np.ndarray:
    """Boolean H×W mask of the diagonal blocks ``(i, i)`` of the tile grid.

    Entry (a, b) is True when ``a // Th == b // Tw``. Edge tiles are ragged. When the
    grid is not square (``ceil(H/Th) != ceil(W/Tw)``) only blocks ``(i, i)`` with
    ``i < min(nrows, ncols)`` exist, so the rows (or columns) of the surplus tile
    rows (columns) are entirely False.
    """
    height = _check_int(height, "height", minimum=1)
    width = _check_int(width, "width", minimum=1)
    tile_height, tile_width = _check_tile(tile)
    row_tile = np.arange(height) // tile_height
    col_tile = np.arange(width) // tile_width
    return row_tile[:, None] == col_tile[None, :]


def tile_coupled(
    shape: Sequence[int],
    tile: int | tuple[int, int],
    coupling: float,
    *,
    seed: int = 0,
    backend: str | None = None,
    dtype: Any = None,
    device: Any = None,
    like: Any = None,
) -> Any:
    """Matrix that interpolates from tile-block-diagonal (coupling 0) to dense (coupling 1).

    Exactly ``A = (1 − c)·B + c·D`` where

    * ``B = mask ⊙ Z₁`` with Z₁ standard Gaussian and ``mask = tile_block_mask(H, W, tile)``:
      nonzero only on the diagonal blocks ``(i, i)`` of the tile grid (blocks
      ``[i·Th:(i+1)·Th, j·Tw:(j+1)·Tw]``, ragged at the edges). If the grid is not
      square, only blocks ``(i, i)`` with ``i < min(nrows, ncols)`` are nonzero and the
      surplus rows or columns of B are zero (A is then rank-deficient at c = 0).
    * ``D = Z₂ · ‖B‖_F / ‖Z₂‖_F`` with Z₂ an independent standard Gaussian H×W
      matrix, rescaled per batch member to the Frobenius norm of B.

    Hence c = 0 gives B exactly (off-diagonal tiles are exact zeros), c = 1 gives a
    dense Gaussian matrix, and the path in between is linear in c. The tile
    itself may exceed the matrix (a single tile: B is dense).

    Parameters
    ----------
    shape : tuple of int
        ``(..., H, W)``.
    tile : int or (int, int)
        Tile size T (square tiles) or (Th, Tw), each >= 1.
    coupling : float
        c in [0, 1].
    seed : int
        Non-negative seed.
    backend, dtype, device, like
        Output selection, see the module docstring.

    Raises
    ------
    ValueError
        coupling outside [0, 1], bad tile, bad shape.
    """
    shape = _check_shape(shape)
    tile_pair = _check_tile(tile)
    coupling = _check_real(coupling, "coupling")
    if not 0.0 <= coupling <= 1.0:
        raise ValueError(f"coupling must lie in [0, 1], got {coupling}")
    rng = np.random.default_rng(_check_seed(seed))
    mask = tile_block_mask(shape[-2], shape[-1], tile_pair)
    block_diagonal = rng.standard_normal(shape) * mask
    dense = rng.standard_normal(shape)
    scale = np.linalg.norm(block_diagonal, axis=(-2, -1), keepdims=True) / np.linalg.norm(
        dense, axis=(-2, -1), keepdims=True
    )
    matrix = (1.0 - coupling) * block_diagonal + coupling * (dense * scale)
    return to_backend(
        matrix,
        backend=backend,
        dtype=dtype,
        device=device,
        like=like,
    )
