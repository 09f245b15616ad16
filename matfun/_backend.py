"""Backend layer: input validation, compute precision, and library round trips.

Every map in :mod:`matfun` accepts a numpy array or a torch tensor (CPU or CUDA)
of shape ``(..., H, W)`` and returns the same library, device, shape and floating
dtype.  The maps are written once against the array API (through
``array-api-compat``); this module decides *where* that code runs:

* torch tensors run on torch, on their own device;
* numpy arrays run on torch through a zero-copy view (``torch.from_numpy``) for
  the matmul-heavy maps (Newton–Schulz and friends).  This is a measured fast
  path: on a 2-core CPU torch's batched products run small tiles about twice as
  fast as numpy's stacked ``matmul`` (``benchmarks/bench_core.py`` prints the
  ratio).  SVD-based maps keep numpy, whose LAPACK SVD is the faster one there;
* any other array-API library (e.g. ``array_api_strict``) runs on its own
  namespace through the generic code.

Precision
---------
``precision`` selects the compute precision of a map:

``"float64"``, ``"float32"``
    plain IEEE arithmetic in that dtype.
``"bfloat16"``
    native bfloat16 arithmetic (torch only).  Matrix products accumulate in
    float32 and round once, as torch's ``addmm`` does.  On CPU this is hundreds
    of times slower than float32; use it on CUDA.
``"bfloat16-emulated"``
    float32 arithmetic with every fused product rounded to bfloat16
    (round-to-nearest-even) — the numerics of native bf16 matmuls at float32
    speed, for numpy and torch alike.
``None`` (default)
    the input's floating dtype (float16 inputs compute in float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import array_api_compat
import numpy as np
import torch

PRECISIONS = ("float64", "float32", "bfloat16", "bfloat16-emulated")

_TORCH_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class Precision:
    """A resolved compute precision.

    Attributes
    ----------
    name : str
        One of :data:`PRECISIONS`.
    dtype : str
        The dtype arithmetic is carried out in (``"bfloat16-emulated"`` computes
        in ``"float32"``).
    round_bf16 : bool
        Whether results of fused products are rounded to bfloat16.
    """

    name: str
    dtype: str
    round_bf16: bool


def is_torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def is_numpy(x: Any) -> bool:
    return isinstance(x, np.ndarray)


def dtype_name(x: Any) -> str:
    """Name of an array's dtype, e.g. ``"float32"``, library independent."""
    if is_torch(x):
        return str(x.dtype).removeprefix("torch.")
    return str(np.dtype(x.dtype)) if is_numpy(x) else str(x.dtype)


def _is_real_float(x: Any) -> bool:
    if is_torch(x):
        return x.dtype.is_floating_point
    try:
        return np.issubdtype(np.dtype(x.dtype), np.floating)
    except TypeError:  # a foreign array library's dtype object
        xp = array_api_compat.array_namespace(x)
        return xp.isdtype(x.dtype, "real floating")


def validate_matrix(G: Any, name: str = "G", check_finite: bool = True) -> Any:
    """Check that ``G`` is a real floating array of shape ``(..., H, W)``.

    Parameters
    ----------
    G : array
        numpy array, torch tensor or other array-API array.
    name : str
        Name used in error messages.
    check_finite : bool
        Scan for NaN/Inf (one pass over the data; on CUDA one host sync).

    Returns
    -------
    module
        The array-API namespace of ``G``.

    Raises
    ------
    TypeError
        Not an array; integer, bool or complex dtype.
    ValueError
        ``ndim < 2``; NaN or Inf (the message names the batch index of the
        first offending matrix).
    """
    try:
        xp = array_api_compat.array_namespace(G)
    except TypeError:
        raise TypeError(
            f"{name} must be a numpy array or a torch tensor of shape (..., H, W), "
            f"got {type(G).__name__}"
        ) from None
    if G.ndim < 2:
        raise ValueError(
            f"{name} must have at least 2 dimensions (..., H, W), got shape {tuple(G.shape)}"
        )
    if not _is_real_float(G):
        kind = "complex" if "complex" in dtype_name(G) else "non-floating"
        raise TypeError(
            f"{name} has {kind} dtype {dtype_name(G)}; matfun maps need a real floating "
            "dtype (float16, bfloat16, float32 or float64)"
        )
    if check_finite and _size(G) > 0:
        finite = xp.all(xp.isfinite(G), axis=(-2, -1))
        if not bool(xp.all(finite)):
            bad = np.argwhere(~np.asarray(_to_numpy(finite)))
            where = tuple(int(i) for i in bad[0]) if bad.size else ()
            raise ValueError(
                f"{name} contains NaN or Inf (first in the matrix at batch index {where} "
                f"of batch shape {tuple(G.shape[:-2])})"
            )
    return xp


def _size(x: Any) -> int:
    n = 1
    for d in x.shape:
        n *= int(d)
    return n


def _to_numpy(x: Any) -> np.ndarray:
    if is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def resolve_precision(precision: str | None, G: Any) -> Precision:
    """Turn a ``precision`` argument into a :class:`Precision` for input ``G``.

    Raises
    ------
    ValueError
        Unknown name, or native ``"bfloat16"`` for a non-torch input.
    """
    if precision is None:
        name = dtype_name(G)
        precision = "float32" if name == "float16" else name
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS} or None")
    if precision == "bfloat16" and not is_torch(G):
        raise ValueError(
            "precision='bfloat16' (native bf16) needs a torch tensor; for numpy use "
            "'bfloat16-emulated' (float32 compute, products rounded to bf16)"
        )
    if precision == "bfloat16-emulated":
        return Precision(precision, "float32", True)
    return Precision(precision, precision, False)


def bf16_round(X: Any) -> Any:
    """Round a float32 array to the nearest bfloat16 value (ties to even), kept in float32."""
    if is_torch(X):
        return X.to(torch.bfloat16).to(X.dtype)
    xp = array_api_compat.array_namespace(X)
    bits = np.asarray(X, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)
    # NaN/Inf cannot occur here (inputs are validated), so no special case is needed.
    return xp.asarray(rounded.view(np.float32))


def rounding_for(precision: Precision) -> Callable[[Any], Any]:
    """The rounding applied after every fused product: bf16 rounding or identity."""
    return bf16_round if precision.round_bf16 else (lambda X: X)


def to_compute(G: Any, precision: Precision, prefer_torch: bool) -> Any:
    """View or convert ``G`` into the array the computation runs on.

    numpy inputs become torch tensors (zero copy where dtypes agree) when
    ``prefer_torch``; the result has the compute dtype of ``precision``.
    """
    if is_numpy(G) and prefer_torch:
        G = torch.from_numpy(np.ascontiguousarray(G))
    if is_torch(G):
        return G.to(_TORCH_DTYPES[precision.dtype])
    xp = array_api_compat.array_namespace(G)
    return xp.astype(G, getattr(xp, precision.dtype))


def from_compute(X: Any, like: Any) -> Any:
    """Convert a computed array back to the library, device and dtype of ``like``."""
    if is_numpy(like):
        if is_torch(X):
            X = X.detach()
            if X.dtype == torch.bfloat16:
                X = X.float()
            return X.cpu().numpy().astype(like.dtype, copy=False)
        return np.asarray(X).astype(like.dtype, copy=False)
    if is_torch(like):
        return X.to(device=like.device, dtype=like.dtype)
    xp = array_api_compat.array_namespace(like)
    return xp.astype(X, like.dtype)


def namespace(x: Any) -> Any:
    """The array-API namespace of ``x`` (numpy and torch through array-api-compat)."""
    return array_api_compat.array_namespace(x)
