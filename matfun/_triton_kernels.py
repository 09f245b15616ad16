"""Triton kernels for Newton–Schulz (imported only by :mod:`matfun._triton_ns`).

Two kernels:

``ns_tiles_kernel``
    One program per tile; one launch runs the normalisation and all ``K`` steps
    of every tile of a batch of matrices (ragged edge tiles included: they are
    loaded zero-padded to the block, which leaves Newton–Schulz exact, since
    ``NS([X 0; 0 0]) = [NS(X) 0; 0 0]`` and the Frobenius norm ignores zeros).
``gram_kernel``
    ``C = α X Xᵀ + β C₀`` per matrix of a batch, computing only the blocks on
    and above the diagonal and storing each one a second time, transposed,
    below it (the symmetric ``syrk`` of full-matrix Newton–Schulz).

Rounding: with ``ROUND_BF16`` every fused product is rounded to bfloat16 (round
to nearest even, by integer arithmetic on the float32 bits, so the interpreter
rounds exactly as the GPU does) and the products then multiply bfloat16 values
with float32 accumulation (tensor cores on a GPU; exact float32 products in the
interpreter, whose bfloat16 ``dot`` is not usable).  Without it, products are
IEEE float32 (``input_precision="ieee"``, no TF32).

``TRITON_INTERPRET=1`` must be set before this module is imported for the
kernels to run on CPU tensors (Triton decides at decoration time;
:mod:`matfun._triton_ns` re-imports the module when the setting changes).  The
kernels call only Triton builtins and the helpers below, never the
``@triton.jit`` functions of ``triton.language.standard`` (``tl.max``,
``tl.sum``, ``tl.zeros``): those are decorated when ``triton`` itself is imported, so they
would not run under an interpreter switched on later.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _round_bf16(x):
    """Round float32 values to the nearest bfloat16 (ties to even), kept in float32."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _mm(p, q, BF16_DOT: tl.constexpr):
    """``p @ q`` with float32 accumulation (bfloat16 operands when ``BF16_DOT``)."""
    if BF16_DOT:
        return tl.dot(p.to(tl.bfloat16), q.to(tl.bfloat16), out_dtype=tl.float32)
    else:
        return tl.dot(p, q, input_precision="ieee")


@triton.jit
def ns_tiles_kernel(
    x_ptr,
    out_ptr,
    coef_ptr,
    n_steps,
    H,
    W,
    TH,
    TW,
    n_tile_cols,
    tiles_per_matrix,
    sxb,
    sxh,
    sxw,
    sob,
    soh,
    sow,
    factor,
    BR: tl.constexpr,
    BS: tl.constexpr,
    NORMALIZE: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    BF16_DOT: tl.constexpr,
):
    """Normalise and run ``n_steps`` NS steps on one ``TH × TW`` tile (block ``BR × BS``)."""
    pid = tl.program_id(0)
    matrix = pid // tiles_per_matrix
    tile = pid % tiles_per_matrix
    row0 = (tile // n_tile_cols) * TH
    col0 = (tile % n_tile_cols) * TW
    rows = row0 + tl.arange(0, BR)
    cols = col0 + tl.arange(0, BS)
    mask = (rows[:, None] < tl.minimum(row0 + TH, H)) & (cols[None, :] < tl.minimum(col0 + TW, W))
    x_tile = x_ptr + matrix.to(tl.int64) * sxb + rows[:, None] * sxh + cols[None, :] * sxw
    x = tl.load(x_tile, mask=mask, other=0.0).to(tl.float32)
    if NORMALIZE:
        # X / (factor ‖X‖_F), scaled by the largest entry first (as matfun's normalize)
        amax = tl.reduce(tl.reduce(tl.abs(x), 1, _maximum), 0, _maximum)
        x = x / tl.where(amax > 0, amax, 1.0)
        norm = tl.sqrt(tl.reduce(tl.reduce(x * x, 1, _add), 0, _add)) * factor
        x = x / tl.where(norm > 0, norm, 1.0)
        if ROUND_BF16:
            x = _round_bf16(x)
    for k in range(n_steps):
        a = tl.load(coef_ptr + 3 * k)
        b = tl.load(coef_ptr + 3 * k + 1)
        c = tl.load(coef_ptr + 3 * k + 2)
        gram = _mm(x, tl.trans(x), BF16_DOT)
        if ROUND_BF16:
            gram = _round_bf16(gram)
        if c != 0:
            poly = b * gram + c * _mm(gram, gram, BF16_DOT)
            if ROUND_BF16:
                poly = _round_bf16(poly)
            x = a * x + _mm(poly, x, BF16_DOT)
        else:
            x = a * x + b * _mm(gram, x, BF16_DOT)
        if ROUND_BF16:
            x = _round_bf16(x)
    out_tile = out_ptr + matrix.to(tl.int64) * sob + rows[:, None] * soh + cols[None, :] * sow
    tl.store(out_tile, x.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gram_kernel(
    x_ptr,
    c0_ptr,
    out_ptr,
    pairs_ptr,
    R,
    S,
    alpha,
    beta,
    sxb,
    sxr,
    sxs,
    scb,
    scr,
    scs,
    sob,
    sor,
    soc,
    BM: tl.constexpr,
    BK: tl.constexpr,
    HAS_C0: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    BF16_DOT: tl.constexpr,
):
    """Block ``(i, j)``, ``i ≤ j``, of ``α X Xᵀ + β C₀`` for one matrix, stored at ``(i, j)`` and ``(j, i)``."""
    pid = tl.program_id(0)
    matrix = tl.program_id(1).to(tl.int64)
    bi = tl.load(pairs_ptr + 2 * pid)
    bj = tl.load(pairs_ptr + 2 * pid + 1)
    offs_i = bi * BM + tl.arange(0, BM)
    offs_j = bj * BM + tl.arange(0, BM)
    offs_k = tl.arange(0, BK)
    acc = tl.full((BM, BM), 0.0, tl.float32)
    for k0 in range(0, S, BK):
        ks = k0 + offs_k
        p = tl.load(
            x_ptr + matrix * sxb + offs_i[:, None] * sxr + ks[None, :] * sxs,
            mask=(offs_i[:, None] < R) & (ks[None, :] < S),
            other=0.0,
        ).to(tl.float32)
        q = tl.load(
            x_ptr + matrix * sxb + offs_j[:, None] * sxr + ks[None, :] * sxs,
            mask=(offs_j[:, None] < R) & (ks[None, :] < S),
            other=0.0,
        ).to(tl.float32)
        acc += _mm(p, tl.trans(q), BF16_DOT)
    acc = alpha * acc
    mask = (offs_i[:, None] < R) & (offs_j[None, :] < R)
    if HAS_C0:
        c0 = tl.load(c0_ptr + matrix * scb + offs_i[:, None] * scr + offs_j[None, :] * scs, mask=mask, other=0.0)
        acc += beta * c0.to(tl.float32)
    if ROUND_BF16:
        acc = _round_bf16(acc)
    acc = acc.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + matrix * sob + offs_i[:, None] * sor + offs_j[None, :] * soc, acc, mask=mask)
    if bi != bj:  # the mirrored block: element (i, j) of the block goes to (j, i)
        tl.store(out_ptr + matrix * sob + offs_i[:, None] * soc + offs_j[None, :] * sor, acc, mask=mask)
