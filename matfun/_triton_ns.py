"""The Triton backend of the Newton–Schulz maps: backend selection and kernel launches.

``backend`` of :class:`~matfun.NewtonSchulz` (and of the tiled maps built on it):

``"torch"``
    torch operations (on CPU, large float32/float64 Gram products use BLAS
    ``syrk``/``symm``, see :mod:`matfun._symmetric`).
``"triton"``
    the Triton kernels of :mod:`matfun._triton_kernels`: tiles (and whole
    matrices) with both sides at most :data:`FUSED_MAX_TILE` run normalisation
    and all ``K`` steps in one fused launch; larger matrices take steps whose
    two symmetric products (``X Xᵀ`` and ``b A + c A²``) come from a symmetric
    Gram kernel that computes the upper block triangle only, and whose product
    ``a X + B X`` is torch's.  CUDA tensors; CPU tensors only under Triton's
    interpreter (``TRITON_INTERPRET=1`` set before the first Triton launch).
``"auto"`` (default)
    ``"triton"`` for CUDA tensors when Triton is installed and the precision is
    one the kernels support (:data:`PRECISIONS`); ``"torch"`` everywhere else.
    If a kernel fails to compile or launch under ``"auto"`` (an unsupported GPU,
    too little shared memory), the call is computed by torch instead, with one
    warning, and ``"auto"`` means torch for the rest of the process.  An explicit
    ``backend="triton"`` raises instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from . import _backend as B

BACKENDS = ("auto", "torch", "triton")
#: compute precisions the kernels implement (float64 stays on torch).
PRECISIONS = ("float32", "bfloat16", "bfloat16-emulated")
#: largest tile side run by the fused kernel (one tile's iterate, Gram matrix and
#: its polynomial live in one program; larger tiles take the stepwise path).
FUSED_MAX_TILE = 128
#: shared memory the fused kernel needs for a float32 128-tile (compiled for sm_90:
#: 192 KiB; bfloat16 128-tiles need 64 KiB, float32 64-tiles 64 KiB).
FLOAT32_TILE_SHARED_BYTES = 192 * 2**10
#: block edges of the symmetric Gram kernel (output block, reduction block).
GRAM_BLOCK, GRAM_REDUCTION_BLOCK = 64, 32


def check_backend(backend: Any) -> str:
    """Validate a ``backend`` argument."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton's CPU interpreter is requested (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(backend: str, X: Any, precision: B.Precision) -> bool:
    """Whether the compute array ``X`` runs on the Triton kernels under ``backend``.

    Raises
    ------
    ImportError
        ``backend="triton"`` without the ``triton`` package.
    ValueError
        ``backend="triton"`` on a precision the kernels lack, on a non-torch
        array, or on a CPU tensor without ``TRITON_INTERPRET=1``.
    """
    if backend == "torch":
        return False
    on_cuda = B.is_torch(X) and X.device.type == "cuda"
    if backend == "auto":
        return on_cuda and precision.name in PRECISIONS and _auto_failure is None and triton_installed()
    if not triton_installed():
        raise ImportError("backend='triton' needs the triton package: pip install 'matfun[triton]'")
    if precision.name not in PRECISIONS:
        raise ValueError(
            f"backend='triton' supports precision {PRECISIONS}, got {precision.name!r}; use backend='torch'"
        )
    if not B.is_torch(X) or not (on_cuda or (X.device.type == "cpu" and interpreting())):
        where = X.device if B.is_torch(X) else type(X).__name__
        raise ValueError(
            f"backend='triton' runs on CUDA tensors, got {where}; CPU tensors run only under "
            "Triton's interpreter (TRITON_INTERPRET=1 set before the first launch); "
            "use backend='torch' or 'auto'"
        )
    return True


#: why ``"auto"`` gave up on Triton in this process (None: it has not)
_auto_failure: str | None = None


def _is_triton_error(error: BaseException) -> bool:
    try:
        from triton.compiler.errors import TritonError as CompileError
        from triton.runtime.errors import TritonError as RuntimeTritonError
    except ImportError:  # pragma: no cover - triton without these modules
        return False
    return isinstance(error, (CompileError, RuntimeTritonError))


def guarded(backend: str, run_triton: Callable[[], Any], run_torch: Callable[[], Any]) -> Any:
    """``run_triton()``; under ``"auto"`` a Triton compile or launch error falls back to
    ``run_torch()`` (warned once; ``"auto"`` then means torch in this process)."""
    global _auto_failure
    if backend != "auto":
        return run_triton()
    try:
        return run_triton()
    except Exception as error:
        if not _is_triton_error(error):
            raise
        _auto_failure = f"{type(error).__name__}: {error}".splitlines()[0]
        warnings.warn(
            f"matfun: the Triton kernels failed on this device ({_auto_failure}); backend='auto' "
            "uses torch from now on (pass backend='torch' to silence this)",
            RuntimeWarning,
            stacklevel=3,
        )
        return run_torch()


_kernel_module: Any = None
_kernel_module_interprets: bool | None = None


def _kernels() -> Any:
    """:mod:`matfun._triton_kernels`, (re)decorated for the current interpreter setting."""
    global _kernel_module, _kernel_module_interprets
    if _kernel_module is None:
        _kernel_module = importlib.import_module("matfun._triton_kernels")
    elif _kernel_module_interprets != interpreting():
        _kernel_module = importlib.reload(_kernel_module)
    _kernel_module_interprets = interpreting()
    return _kernel_module


def fused_max_side(X: torch.Tensor, precision: B.Precision) -> int:
    """Largest tile side the fused kernel runs on ``X``'s device in ``precision``.

    :data:`FUSED_MAX_TILE`, except float32 on a GPU with less opt-in shared
    memory per block than :data:`FLOAT32_TILE_SHARED_BYTES` (e.g. an A100): 64.
    """
    if precision.name != "float32" or X.device.type != "cuda":
        return FUSED_MAX_TILE
    shared = getattr(torch.cuda.get_device_properties(X.device), "shared_memory_per_block_optin", 0)
    return FUSED_MAX_TILE if shared >= FLOAT32_TILE_SHARED_BYTES else FUSED_MAX_TILE // 2


def _block(n: int) -> int:
    """Smallest power of two ≥ n and ≥ 16 (``tl.dot`` needs 16-wide operands)."""
    return max(16, 1 << (max(n, 1) - 1).bit_length())


def _flags(X: torch.Tensor, precision: B.Precision) -> dict[str, bool]:
    rounding = precision.name != "float32"
    # bfloat16 operands on tensor cores; the interpreter multiplies the (exactly
    # representable) rounded values in float32 instead.
    return {"ROUND_BF16": rounding, "BF16_DOT": rounding and X.device.type == "cuda"}


def _coefficients(steps: Sequence[tuple[float, float, float]], device: torch.device) -> torch.Tensor:
    flat = [float(v) for step in steps for v in step] or [0.0]
    return torch.tensor(flat, dtype=torch.float32, device=device)


def fused_tiles(
    X: torch.Tensor,
    tile: tuple[int, int],
    steps: Sequence[tuple[float, float, float]],
    factor: float,
    precision: B.Precision,
    normalize: bool = True,
) -> torch.Tensor:
    """Newton–Schulz on every ``tile`` of every matrix of ``X`` (``(..., H, W)``), one launch.

    ``normalize=False`` skips the per-tile normalisation (the input already is an
    iterate).  Both sides of the effective tile must be at most
    :func:`fused_max_side`.
    """
    H, W = X.shape[-2:]
    th, tw = min(tile[0], H), min(tile[1], W)
    if th > tw:  # run the wide orientation: Gram matrices of the smaller side
        return fused_tiles(X.mT, (tw, th), steps, factor, precision, normalize).mT
    flat = X.reshape(-1, H, W)
    out = torch.empty_like(flat)
    if flat.numel() == 0:
        return out.reshape(X.shape)
    n_tile_rows, n_tile_cols = -(-H // th), -(-W // tw)
    tiles_per_matrix = n_tile_rows * n_tile_cols
    grid = (flat.shape[0] * tiles_per_matrix,)
    _kernels().ns_tiles_kernel[grid](
        flat,
        out,
        _coefficients(steps, X.device),
        len(steps),
        H,
        W,
        th,
        tw,
        n_tile_cols,
        tiles_per_matrix,
        *flat.stride(),
        *out.stride(),
        float(factor),
        BR=_block(th),
        BS=_block(tw),
        NORMALIZE=normalize,
        num_warps=8 if max(th, tw) > 64 else 4,
        **_flags(X, precision),
    )
    return out.reshape(X.shape)


def fused_tiles_iterates(
    X: torch.Tensor,
    tile: tuple[int, int],
    steps: Sequence[tuple[float, float, float]],
    factor: float,
    precision: B.Precision,
) -> Iterator[torch.Tensor]:
    """Every iterate of :func:`fused_tiles`: one launch each, the same arithmetic as the fused run."""
    X = fused_tiles(X, tile, [], factor, precision)
    yield X
    for step in steps:
        X = fused_tiles(X, tile, [step], factor, precision, normalize=False)
        yield X


def gram(
    X: torch.Tensor,
    precision: B.Precision,
    alpha: float = 1.0,
    beta: float = 0.0,
    C0: torch.Tensor | None = None,
) -> torch.Tensor:
    """``α X Xᵀ + β C₀`` for a batch ``(n, r, s)`` (``C₀`` symmetric), rounded once.

    Only the blocks on and above the diagonal are computed; each is also
    stored transposed below it.
    """
    n, R, S = X.shape
    out = torch.empty((n, R, R), dtype=X.dtype, device=X.device)
    blocks = -(-R // GRAM_BLOCK)
    pairs = torch.tensor([(i, j) for i in range(blocks) for j in range(i, blocks)], dtype=torch.int32, device=X.device)
    c0 = out if C0 is None else C0
    _kernels().gram_kernel[(pairs.shape[0], n)](
        X,
        c0,
        out,
        pairs,
        R,
        S,
        float(alpha),
        float(beta),
        *X.stride(),
        *c0.stride(),
        *out.stride(),
        BM=GRAM_BLOCK,
        BK=GRAM_REDUCTION_BLOCK,
        HAS_C0=C0 is not None,
        **_flags(X, precision),
    )
    return out


def _gram_step(X: torch.Tensor, a: float, b: float, c: float, precision: B.Precision) -> torch.Tensor:
    """One NS step on a wide batch ``(n, r, s)``: symmetric products by :func:`gram`."""
    rnd = B.rounding_for(precision)
    A = gram(X, precision)
    if c != 0:
        poly = gram(A, precision, alpha=c, beta=b, C0=A)  # b A + c A Aᵀ, A symmetric
        return rnd(torch.baddbmm(X, poly, X, beta=a))
    return rnd(torch.baddbmm(X, A, X, beta=a, alpha=b))


def newton_schulz_iterates(
    X: torch.Tensor, steps: Sequence[tuple[float, float, float]], factor: float, precision: B.Precision
) -> Iterator[torch.Tensor]:
    """Every iterate of full-matrix NS on the batch ``X`` (``(..., H, W)``) with the Triton kernels.

    Matrices with both sides at most :func:`fused_max_side` run one fused launch
    per iterate; larger ones take :func:`gram` steps.
    """
    H, W = X.shape[-2:]
    if max(H, W) <= fused_max_side(X, precision):
        yield from fused_tiles_iterates(X, (H, W), steps, factor, precision)
        return
    from .newton_schulz import normalize  # the torch normalisation (no kernel needed)

    tall = H > W
    Y = (X.mT if tall else X).reshape(-1, min(H, W), max(H, W))
    Y = B.rounding_for(precision)(normalize(Y, factor)).contiguous()
    shape = X.mT.shape if tall else X.shape
    yield Y.reshape(shape).mT if tall else Y.reshape(shape)
    for a, b, c in steps:
        Y = _gram_step(Y, a, b, c, precision)
        yield Y.reshape(shape).mT if tall else Y.reshape(shape)


def newton_schulz(
    X: torch.Tensor, steps: Sequence[tuple[float, float, float]], factor: float, precision: B.Precision
) -> torch.Tensor:
    """Full-matrix NS with the Triton kernels (one launch when both sides ≤ :func:`fused_max_side`)."""
    H, W = X.shape[-2:]
    if max(H, W) <= fused_max_side(X, precision):
        return fused_tiles(X, (H, W), steps, factor, precision)
    out = None
    for out in newton_schulz_iterates(X, steps, factor, precision):  # noqa: B007 - keeps the last
        pass
    assert out is not None  # the iterates start with the normalised input: there is always one
    return out
