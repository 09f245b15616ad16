"""Newton–Schulz steps on CPU with the symmetric BLAS products ``syrk`` and ``symm``.

The Gram matrix ``A = X Xᵀ`` and its square ``A² = A Aᵀ`` are symmetric, so BLAS
``syrk`` computes one triangle of each for half the FLOPs of a general product,
and ``symm`` multiplies by a symmetric matrix reading only that triangle.  One
step ``X ← a X + (b A + c A²) X`` on an ``r × s`` matrix then costs
``r²s + r³ + 2r²s`` multiply–adds instead of ``2r²s + 2r³ + 2r²s`` (4 instead of
6 units for a square matrix); the one triangle fill (``A`` is the operand of the
second ``syrk``) is a cache-blocked copy.  Steps with ``c = 0`` need no fill.

The BLAS routines are scipy's (``scipy.linalg.blas``) and run on numpy views of
the torch tensors: a C-contiguous ``r × s`` tensor is the Fortran-contiguous
``s × r`` array ``Xᵀ``, so no operand is copied to change its layout.

Rounding semantics are those of the reference step: every fused product
(``X Xᵀ``; ``b A + c A²``; ``a X + B X``) is computed in the compute dtype and
rounded once by ``rnd`` (bfloat16 rounding for ``"bfloat16-emulated"``).

References
----------
J. J. Dongarra, J. Du Croz, S. Hammarling, I. S. Duff, *A set of level 3 basic
linear algebra subprograms*, ACM TOMS 16(1), 1990 (``xSYRK``, ``xSYMM``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.linalg import blas

#: smallest ``r = min(H, W)`` (Gram size) for which the symmetric step is used.
#: Measured on a shared 2-core CPU (interleaved, 5 Jordan steps, time with syrk/symm
#: over time with the bmm step, one matrix): 1.06 at 512, 1.02 at 1024, 0.61 at
#: 1536 and 2048; batches of 128–512 tiles 3–6× slower under load.  Below the
#: threshold the batched ``bmm`` step wins: small BLAS calls do not amortise their
#: threading and Python overhead.
MIN_GRAM_SIZE = 1536

_ROUTINES = {
    torch.float32: (blas.ssyrk, blas.ssymm),
    torch.float64: (blas.dsyrk, blas.dsymm),
}

#: edge of the square blocks of the triangle fill (64² float32 = 16 KiB: a block
#: and its transpose stay in L1 while copied).
_FILL_BLOCK = 64


def applies(X: torch.Tensor) -> bool:
    """Whether the symmetric step should run on the compute tensor ``X`` (``(..., r, s)``, r ≤ s)."""
    return X.device.type == "cpu" and X.dtype in _ROUTINES and X.shape[-2] >= MIN_GRAM_SIZE and not X.requires_grad


def fill_lower_from_upper(a: np.ndarray) -> np.ndarray:
    """Copy the upper triangle of a square Fortran-ordered array onto its lower one, in place.

    In Fortran order the lower triangle ``a[k, i]`` (``k > i``) of column block ``i``
    is contiguous per column, so block ``(k, i)`` is filled from the transpose of
    block ``(i, k)``; blocks of :data:`_FILL_BLOCK` keep both in cache.
    """
    n = a.shape[0]
    bs = _FILL_BLOCK
    for i in range(0, n, bs):
        j = min(n, i + bs)
        diagonal = a[i:j, i:j]
        upper = np.triu(diagonal)
        diagonal[...] = upper + np.triu(upper, 1).T
        for k in range(j, n, bs):
            l = min(n, k + bs)
            a[k:l, i:j] = a[i:j, k:l].T
    return a


def _fortran(X: torch.Tensor) -> np.ndarray:
    """The ``s × r`` Fortran-ordered numpy view ``Xᵀ`` of a C-contiguous ``r × s`` tensor."""
    return X.numpy().T


def symmetric_step(
    X: torch.Tensor, a: float, b: float, c: float, rnd: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """One Newton–Schulz step ``a X + (b A + c A²) X``, ``A = X Xᵀ``, with ``syrk``/``symm``.

    Parameters
    ----------
    X : torch.Tensor of shape (..., r, s), r ≤ s
        CPU float32 or float64 (the compute array of the wide orientation).
    a, b, c : float
        Step coefficients.
    rnd : callable
        Rounding applied after each fused product (identity or bfloat16 rounding).

    Returns
    -------
    torch.Tensor
        The next iterate, shape and dtype of ``X``, C-contiguous.
    """
    syrk, symm = _ROUTINES[X.dtype]
    shape = X.shape
    flat = X.reshape(-1, *shape[-2:])
    out = torch.empty(flat.shape, dtype=X.dtype)
    for index in range(flat.shape[0]):
        x = _fortran(flat[index].contiguous())
        new = _fortran(out[index])  # Fortran-contiguous: symm writes it in place
        np.copyto(new, x)
        gram = _round_numpy(syrk(1.0, x, trans=1), rnd)  # upper triangle of X Xᵀ
        if c != 0:
            fill_lower_from_upper(gram)
            combined = syrk(c, gram, beta=b, c=np.array(gram, order="F"), overwrite_c=1)  # b A + c A Aᵀ
            result = symm(1.0, _round_numpy(combined, rnd), x, beta=a, c=new, side=1, overwrite_c=1)
        else:
            result = symm(b, gram, x, beta=a, c=new, side=1, overwrite_c=1)
        if result is not new:  # f2py copied instead of writing in place
            np.copyto(new, result)
    return rnd(out).reshape(shape)


def _round_numpy(a: np.ndarray, rnd: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """Apply ``rnd`` to a Fortran-ordered array, keeping Fortran order."""
    rounded = rnd(torch.from_numpy(a.T))
    return rounded.numpy().T
