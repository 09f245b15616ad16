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

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    #: dtype of the input data (set by maps whose defaults depend on it, e.g. polar's cut-off).
    input_dtype: str = ""


def is_torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def is_numpy(x: Any) -> bool:
    return isinstance(x, np.ndarray)


def dtype_name(x: Any) -> str:
    """Name of an array's dtype, e.g. ``"float32"``, library independent."""
    if is_torch(x):
        return str(x.dtype).removeprefix("torch.")
    return np.dtype(x.dtype).name if is_numpy(x) else str(x.dtype)  # name: "float64" also for ">f8"


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
        Not an array (a numpy masked array counts as not an array: its mask
        would be ignored); integer, bool or complex dtype.
    ValueError
        ``ndim < 2``; NaN or Inf (the message names the batch index of the
        first offending matrix); a torch tensor on the ``meta`` device (it has
        a shape but no values to compute with).
    """
    if isinstance(G, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a numpy masked array; matfun maps would ignore the mask: pass "
            f"{name}.filled(value) or a plain array"
        )
    try:
        xp = array_api_compat.array_namespace(G)
    except TypeError:
        raise TypeError(
            f"{name} must be a numpy array or a torch tensor of shape (..., H, W), got {type(G).__name__}"
        ) from None
    if is_torch(G) and G.device.type == "meta":
        raise ValueError(
            f"{name} is a torch tensor on the 'meta' device (shape {tuple(G.shape)}, no values); "
            "matfun maps compute with values: use a CPU or CUDA tensor "
            "(for costs without data, Map.flops(shape) takes a shape)"
        )
    if G.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dimensions (..., H, W), got shape {tuple(G.shape)}")
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


def machine_eps(dtype: str) -> float:
    """Machine epsilon of a floating dtype name (``"bfloat16"`` included)."""
    return float(torch.finfo(_TORCH_DTYPES[dtype]).eps)


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


def to_compute(G: Any, precision: Precision, prefer_torch: bool, rescale: bool = False) -> Any:
    """View or convert ``G`` into the array the computation runs on.

    numpy inputs become torch tensors (zero copy where dtypes agree) when
    ``prefer_torch``; the result has the compute dtype of ``precision``.

    A compute dtype with a narrower range than the input (float64 data computed
    in float32 or bfloat16, float32 data in bfloat16) would overflow or flush
    to zero entries that the input holds.  With ``rescale`` (maps with
    ``map(c·G) = map(G)``) each matrix is first multiplied by the power of two
    that brings its largest entry into ``[0.5, 1)`` (exact); without it an input
    outside the compute range raises.

    Raises
    ------
    ValueError
        ``rescale`` is false and ``G`` does not fit the compute dtype's range.
    """
    if is_numpy(G):
        G = np.asarray(G)  # plain ndarray: np.matrix would turn ``*`` into a product
        if prefer_torch:
            G = torch.from_numpy(torch_viewable(G))
    narrowing = _narrows_range(dtype_name(G), precision.dtype)
    if narrowing and rescale:
        G = ldexp(G, -max_exponent(G))  # exact
    if is_torch(G):
        X = G.to(_TORCH_DTYPES[precision.dtype])
    else:
        xp = array_api_compat.array_namespace(G)
        X = xp.astype(G, getattr(xp, precision.dtype))
    if narrowing and not rescale:
        _check_representable(G, X, precision.dtype)
    return X


def _narrows_range(source: str, target: str) -> bool:
    """Whether casting ``source`` to ``target`` can overflow or flush a subnormal to zero."""
    if source not in _TORCH_DTYPES or target not in _TORCH_DTYPES:
        return False
    a, b = torch.finfo(_TORCH_DTYPES[source]), torch.finfo(_TORCH_DTYPES[target])
    return b.max < a.max or b.smallest_normal * b.eps > a.smallest_normal * a.eps


def max_exponent(G: Any) -> Any:
    """Per matrix, the binary exponent ``e`` with ``max|G| ∈ [2^(e−1), 2^e)`` (0 for a zero matrix).

    Shape ``(..., 1, 1)``, an integer array of ``G``'s library.
    """
    xp = array_api_compat.array_namespace(G)
    amax = xp.max(xp.abs(G), axis=(-2, -1), keepdims=True) if _size(G) else xp.zeros((*G.shape[:-2], 1, 1))
    return (torch.frexp if is_torch(amax) else np.frexp)(amax)[1]


def ldexp(X: Any, e: Any) -> Any:
    """``X·2^e`` exactly (up to underflow), ``e`` an integer array broadcastable to ``X``."""
    if not is_torch(X):
        return np.ldexp(X, e)
    # two factors: 2^(±1074) itself is not representable, its halves are
    half = e // 2
    return X * torch.pow(2.0, half.to(X.dtype)) * torch.pow(2.0, (e - half).to(X.dtype))


def _check_representable(G: Any, X: Any, target: str) -> None:
    """Raise when the cast ``X`` of ``G`` overflowed or flushed a whole non-zero matrix to zero."""
    if _size(G) == 0:
        return
    xp = array_api_compat.array_namespace(X)
    lost = xp.any(G != 0, axis=(-2, -1)) & ~xp.any(X != 0, axis=(-2, -1))
    if not bool(xp.all(xp.isfinite(X))) or bool(xp.any(lost)):
        raise ValueError(
            f"G has entries outside the range of the compute precision {target!r}: compute in the "
            "input's precision (precision=None) or rescale G (and eps with it for smoothed_polar)"
        )


def torch_viewable(G: np.ndarray) -> np.ndarray:
    """``G`` itself when ``torch.from_numpy`` can view it safely, else a C-ordered copy.

    ``torch.from_numpy`` refuses negative strides (numpy flags a one-row view of a
    flipped array contiguous, so ``np.ascontiguousarray`` keeps them), non-native
    byte order, and warns on read-only arrays (``np.broadcast_to``, frozen
    buffers); numpy subclasses (``np.matrix``) become plain arrays.  Positive,
    zero (broadcast) and Fortran-order strides are viewed without a copy when the
    array is writeable.
    """
    G = np.asarray(G)
    if not G.dtype.isnative:
        return G.astype(G.dtype.newbyteorder("="))
    if not G.flags.writeable or any(stride < 0 for stride in G.strides):
        return np.array(G, order="C", copy=True)
    return G


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


def check_real(
    value: Any,
    name: str,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Validate a real-number argument and return it as a Python float.

    Accepts Python and numpy real numbers and 0-d real tensors/arrays; rejects
    bools, strings, ``None``, NaN and values outside ``[low, high]`` (an open end
    when ``low_open``/``high_open``).  ±inf is accepted only when an infinite
    bound allows it.

    Raises
    ------
    TypeError
        Not a real number (the message names ``name`` and what is accepted).
    ValueError
        NaN, or outside the interval.
    """
    if low == -math.inf and high == math.inf:
        what = "a real number"
    else:
        what = f"a real number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if isinstance(value, (bool, np.bool_)) or not _is_real_scalar(value):
        raise TypeError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")
    x = float(value)
    inside = (x > low if low_open else x >= low) and (x < high if high_open else x <= high)
    if math.isnan(x) or not inside:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return x


def _is_real_scalar(value: Any) -> bool:
    if isinstance(value, numbers.Real):
        return True
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        return not value.dtype.is_complex and value.dtype != torch.bool
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.dtype.kind in "iuf"
    return False


def is_integer(value: Any) -> bool:
    """A Python or numpy integer, bools excluded (``True`` is not a size or a count)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_bool(value: Any, name: str) -> bool:
    """Validate a flag: ``True``/``False`` (or numpy bools) only, never a truthy string."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_same_backend(A: Any, B_: Any, name_a: str, name_b: str) -> None:
    """Require ``B_`` to be the same library as ``A`` (and for torch, the same device).

    Raises
    ------
    TypeError
        Different libraries (numpy vs torch).
    ValueError
        torch tensors on different devices.
    """
    lib_a, lib_b = _library(A), _library(B_)
    if lib_a != lib_b:
        raise TypeError(
            f"{name_b} is a {lib_b} array but {name_a} is a {lib_a} array; pass both as the same library (and device)"
        )
    if is_torch(A) and A.device != B_.device:
        raise ValueError(
            f"{name_b} is on device {B_.device} but {name_a} is on {A.device}; move them to the same device"
        )


def _library(x: Any) -> str:
    if is_torch(x):
        return "torch"
    if is_numpy(x):
        return "numpy"
    return type(x).__module__.split(".")[0]
