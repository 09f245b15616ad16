"""Hardening of the maps (issue 9: items 1, 6–9; issue 10: items 1, 4, 10).

Each test targets a class of defect, not one instance: every map over the whole
finite range of every dtype, every odd-strided numpy view, every list-taking
API, every argument of the public functions.

Tolerances
----------
Range tests compare a map on ``B·2^k`` (exact in the dtype) with the same map on
``B``: the maps divide by the largest entry first, which is then the same
power-of-two multiple, so the computations agree to a few roundings of the
compute dtype — ``8·eps`` (eps of float32 for float16/bfloat16 inputs, which
compute in float32, plus one rounding of the output to the input dtype).
Preconditioned range tests compare with NS on an equivalent in-range quotient
that differs from the exact one by a few roundings: float64 at 1e-12.
The Polar Express transfer function is checked against 60-digit decimal
arithmetic at 1e-13 relative (5 compositions of degree-5 polynomials in float64
on σ ≤ 1: a few dozen roundings of values ≤ about 1.2).
"""

from __future__ import annotations

import decimal
import pathlib
import re
import warnings

import numpy as np
import pytest
import torch

import matfun
from matfun.polar import default_rtol

ROOT = pathlib.Path(__file__).resolve().parents[1]


from _numeric import as64, rel  # noqa: E402


def integer_matrix(shape, seed=0) -> np.ndarray:
    """Entries in {-7, …, 7}: exact in every dtype (bfloat16 included) at any power-of-two scale."""
    B = np.random.default_rng(seed).integers(-7, 8, size=shape).astype(np.float64)
    B[..., 0, 0] = 7.0  # max|B| = 7 in every matrix
    return B


# ------------------------------------------------------------------ item 9.1: the whole finite range

# (library, dtype, exponents k such that 7·2^k is finite, from subnormal to the largest binade)
RANGE_CASES = [
    ("numpy", "float64", [-1074, -1000, 1020]),
    ("numpy", "float32", [-149, -126, 124]),
    ("numpy", "float16", [-24, -14, 12]),
    ("torch", "float64", [-1074, 1020]),
    ("torch", "float32", [-149, -126, 124]),
    ("torch", "float16", [-24, 12]),
    ("torch", "bfloat16", [-133, 124]),
]
MAPS = {
    "polar": lambda G, k: matfun.polar(G),
    "smoothed_polar": lambda G, k: matfun.smoothed_polar(G, 3.0 * 2.0**k),  # ε in G's units (exact at every k)
    "newton_schulz": lambda G, k: matfun.newton_schulz(G, 5, "polar_express"),
    "newton_schulz_iterates": lambda G, k: list(matfun.newton_schulz_iterates(G, 3))[-1],
    "bf16_emulated": lambda G, k: matfun.newton_schulz(G, 5, precision="bfloat16-emulated"),
    "tiled_ns": lambda G, k: matfun.tiled_newton_schulz(G, (3, 4)),
    "tiled_polar": lambda G, k: matfun.Tiled(matfun.Polar(), 4)(G),
    "tiled_many": lambda G, k: matfun.tiled_newton_schulz_many([G], 4)[0],
    "polar_iterates": lambda G, k: list(matfun.Polar().iterates(G))[-1],
    "polar_qdwh": lambda G, k: matfun.polar(G, method="qdwh"),
    "qdwh_polar": lambda G, k: matfun.qdwh_polar(G),
}
TOL = {"float64": 8 * 2.0**-52, "float32": 8 * 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}


def _make(library: str, dtype: str, B: np.ndarray, k: int):
    G64 = B * 2.0**k
    if library == "numpy":
        return G64.astype(dtype)
    return torch.from_numpy(G64).to(getattr(torch, dtype))


@pytest.mark.parametrize("name", sorted(MAPS))
@pytest.mark.parametrize("library,dtype,exponents", RANGE_CASES)
def test_maps_are_correct_over_the_whole_finite_range(name, library, dtype, exponents):
    B = integer_matrix((2, 5, 7))
    fn = MAPS[name]
    ref = fn(_make(library, dtype, B, 0), 0)
    assert rel(ref, np.zeros(1)) > 0.5  # a real answer, not zeros
    for k in exponents:
        G = _make(library, dtype, B, k)
        assert np.array_equal(as64(G), B * 2.0**k), "test input must be exact"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no overflow/underflow RuntimeWarnings either
            out = fn(G, k)
        assert out.dtype == G.dtype and tuple(out.shape) == tuple(G.shape)
        assert np.all(np.isfinite(as64(out)))
        assert rel(out, ref) <= TOL[dtype], (name, library, dtype, k)


def test_issue_examples_polar_overflow():
    expected = np.full((4, 6), 1 / np.sqrt(24))  # rank one: u vᵀ with unit constant vectors
    for G in (np.ones((4, 6)) * 1e308, torch.ones(4, 6) * 1e38, np.ones((4, 6)) * 5e-324):
        assert rel(matfun.polar(G), expected) < 1e-6
        assert rel(matfun.smoothed_polar(G, 0.0), expected) < 1e-6


def test_smoothed_polar_scaling_relation():
    """P_ε(cG) = P_{cε}... in G's units: smoothed_polar(c·G, c·ε) == smoothed_polar(G, ε)."""
    G = np.random.default_rng(3).standard_normal((5, 8))
    ref = matfun.smoothed_polar(G, 0.7)
    U, S, Vh = np.linalg.svd(G, full_matrices=False)
    assert rel(ref, (U * (S / np.sqrt(S**2 + 0.7**2))) @ Vh) < 1e-13
    for c in (1e-300, 1e-150, 1e150, 1e300):
        assert rel(matfun.smoothed_polar(G * c, 0.7 * c), ref) < 1e-13
    # ε far beyond σ_max of a tiny input: factor σ/ε underflows towards 0, never NaN
    out = matfun.smoothed_polar(G * 1e-300, 1e300)
    assert np.all(np.isfinite(out)) and np.abs(out).max() < 1e-300


def test_preconditioned_quotient_out_of_range():
    rng = np.random.default_rng(4)
    B = rng.standard_normal((6, 9))
    W = rng.uniform(0.5, 2.0, (6, 9))
    ref = matfun.newton_schulz(B / np.sqrt(W), 5)
    # M ⊘ √V overflows float64 (1e300 / 1e-200) and underflows (1e-300 / 1e150)
    for m, v in ((1e300, 1e-300), (1e-300, 1e300), (1e300, 0.0)):
        V = W * v
        eps = 1e-300 if v == 0.0 else 0.0
        out = matfun.preconditioned_newton_schulz(B * m, V, eps, 5)
        expected = matfun.newton_schulz(B, 5) if v == 0.0 else ref  # V = 0: the quotient is M/ε
        assert rel(out, expected) < 1e-12, (m, v)
    # tiled and float32 (quotient formed in float64 then rounded once)
    M32, V32 = (B * 1e38).astype(np.float32), (W * 1e-40).astype(np.float32)
    assert (
        rel(
            matfun.preconditioned_newton_schulz(M32, V32, 1e-30, 5, tile=4),
            matfun.tiled_newton_schulz(as64(M32) / np.sqrt(as64(V32)), 4),
        )
        < 1e-4
    )
    # the plain quotient says it overflows instead of returning inf
    with pytest.raises(ValueError, match="overflows"):
        matfun.precondition(B * 1e300, W * 0.0, 1e-300)
    # a map that is not scale invariant gets the exact quotient
    pre = matfun.Preconditioned(matfun.SmoothedPolar(0.5), W, 1e-8)
    assert rel(pre(B), matfun.smoothed_polar(B / (np.sqrt(W) + 1e-8), 0.5)) < 1e-12


def test_float16_preconditioning_is_not_poisoned():
    """float16: ε = 1e-8 is below float16's range, G ⊙ G above it; both are handled in float32."""
    G = torch.tensor([[300.0, -2.0, 1.0], [0.5, 400.0, 0.0]], dtype=torch.float16)
    for factorized in (False, True):
        state = matfun.SecondMoment(beta2=0.0, factorized=factorized)
        state.update(G)
        assert state.V.dtype == torch.float32 and torch.isfinite(state.V).all()
        out = matfun.preconditioned_newton_schulz(G, state, steps=5)
        ref = matfun.preconditioned_newton_schulz(G.double(), state.V.double(), state.eps, 5)
        assert out.dtype == torch.float16 and torch.isfinite(out).all()
        assert rel(out, ref) < 5e-3  # float16 output rounding plus float32 NS


def test_second_moment_overflow_leaves_state_unchanged():
    for factorized in (False, True):
        state = matfun.SecondMoment(beta2=0.5, factorized=factorized)
        G = np.ones((3, 4))
        state.update(G)
        before = np.array(state.V, copy=True)
        with pytest.raises(ValueError, match="overflows float64"):
            state.update(G * 1e200)
        assert np.array_equal(state.V, before)
        state.update(G)  # still usable, as if the rejected update never happened
        assert np.allclose(state.V, 0.75)  # 0.5·(0.5·1) + 0.5·1
    # factorised V̂ = r cᵀ / sum(c) without an overflowing r cᵀ
    big = matfun.SecondMoment(beta2=0.0, factorized=True)
    big.update(np.full((2, 3), 1e100))
    assert np.allclose(big.V, 1e200, rtol=1e-12)


def test_transfer_function_dtypes_and_range():
    sigma = np.linspace(0, 1, 101)
    for dtype in (np.float16, np.float32):
        rounded = sigma.astype(dtype)
        ref = matfun.transfer_function(rounded.astype(np.float64), 5, "polar_express")
        out = matfun.transfer_function(rounded, 5, "polar_express")
        assert out.dtype == dtype
        # float16 is evaluated in float32 and rounded once: half an ulp of values ≤ 1.2 (≤ 1e-3);
        # float32 evaluation: its roundings grow by the composition's slope (up to ~10³), ≤ 1e-4
        assert np.max(np.abs(out - ref)) < (1e-3 if dtype == np.float16 else 1e-4)
    out = matfun.transfer_function(torch.tensor(sigma).to(torch.bfloat16), 5, "polar_express")
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert matfun.transfer_function(torch.tensor([0, 1]), 1, "cubic").dtype == torch.float64
    assert matfun.transfer_function([0.5], 1, "cubic").tolist() == [0.6875]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isinf(matfun.transfer_function(1e308, 2))  # the true value is out of range
    assert matfun.transfer_function(1e-308, 3, "cubic") > 0  # tiny values stay positive
    for bad in ("0.5", [1 + 2j], np.array([True])):
        with pytest.raises(TypeError, match="sigma"):
            matfun.transfer_function(bad)


# ------------------------------------------------------------------ item 9.6: list-taking APIs


def test_tiled_many_accepts_any_iterable_once():
    rng = np.random.default_rng(5)
    mats = [rng.standard_normal(s) for s in [(6, 9), (2, 5, 4), (7, 7)]]
    expected = [matfun.tiled_newton_schulz(G, 4) for G in mats]
    for source in (mats, tuple(mats), (G for G in mats), iter(mats), (G for G in mats)):
        out = matfun.tiled_newton_schulz_many(source, 4)
        assert len(out) == 3
        for a, b in zip(out, expected):
            assert np.array_equal(a, b)
    assert matfun.tiled_newton_schulz_many(iter([]), 4) == []


def test_tiled_many_nan_names_position_and_batch():
    mats = [np.ones((4, 4)), np.ones((3, 4, 4)), np.ones((4, 4))]
    mats[1][2, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"matrices\[1\].*batch index \(2,\)"):
        matfun.tiled_newton_schulz_many(iter(mats), 2)
    with pytest.raises(TypeError, match=r"matrices\[1\]"):
        matfun.tiled_newton_schulz_many([np.ones((4, 4)), "x"], 2)
    for bad in (np.ones((2, 4, 4)), torch.ones(2, 4, 4), "abc", {"w": np.ones((4, 4))}, 3):
        with pytest.raises(TypeError, match="matrices"):
            matfun.tiled_newton_schulz_many(bad, 2)


def test_schedule_accepts_any_iterable_once():
    triples = [(1.5, -0.5, 0.0), (3.4445, -4.7750, 2.0315)]
    from_gen = matfun.Schedule("g", (t for t in triples))
    assert from_gen.coefficients == tuple(triples)
    assert hash(matfun.Schedule("l", [list(t) for t in triples])) == hash(matfun.Schedule("l", triples))
    G = np.random.default_rng(6).standard_normal((5, 7))
    assert np.array_equal(matfun.newton_schulz(G, 3, (t for t in triples)), matfun.newton_schulz(G, 3, triples))


# ------------------------------------------------------------------ item 9.7: odd numpy views


def _views(A: np.ndarray):
    base = A.copy()
    ro = A.copy()
    ro.setflags(write=False)
    big = A.astype(A.dtype.newbyteorder(">"))
    yield "flip one row", np.flip(base, 0)[:1]
    yield "flip rows", np.flip(base, 0)
    yield "flip cols", base[:, ::-1]
    yield "flip both stepped", base[::-1, ::-2]
    yield "transpose", base.T
    yield "fortran", np.asfortranarray(base)
    yield "broadcast", np.broadcast_to(base[:1], base.shape)
    yield "broadcast batch", np.broadcast_to(base, (3, *base.shape))
    yield "batch flipped", np.stack([base, 2 * base])[::-1]
    yield "read-only", ro
    yield "big-endian", big
    yield "matrix", np.asmatrix(base)


ODD_MAPS = {
    "polar": lambda G: matfun.polar(G),
    "qdwh_polar": lambda G: matfun.qdwh_polar(G),
    "smoothed_polar": lambda G: matfun.smoothed_polar(G, 0.1),
    "newton_schulz": lambda G: matfun.newton_schulz(G, 3),
    "iterates": lambda G: list(matfun.newton_schulz_iterates(G, 2))[-1],
    "bf16_emulated": lambda G: matfun.newton_schulz(G, 2, precision="bfloat16-emulated"),
    "tiled": lambda G: matfun.tiled_newton_schulz(G, 2),
    "tiled_many": lambda G: matfun.tiled_newton_schulz_many([G, G], 2)[1],
    "preconditioned": lambda G: matfun.preconditioned_newton_schulz(G, np.flip(np.abs(np.asarray(G)) + 1, -1), 1e-8, 3),
}


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")  # np.asmatrix itself
@pytest.mark.parametrize("name", sorted(ODD_MAPS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_map_accepts_every_numpy_view(name, dtype):
    A = np.random.default_rng(7).standard_normal((5, 6)).astype(dtype)
    fn = ODD_MAPS[name]
    for label, view in _views(A):
        plain = np.array(view, dtype=dtype, order="C")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. torch's "non-writable array" warning
            out = fn(view)
        # strided layouts may change the summation order inside products: a few roundings
        assert rel(out, fn(plain)) < (1e-12 if dtype == np.float64 else 1e-5), label


# ------------------------------------------------------------------ item 9.8: meta tensors


@pytest.mark.parametrize(
    "call",
    [
        lambda G: matfun.polar(G),
        lambda G: matfun.smoothed_polar(G, 0.1),
        lambda G: matfun.newton_schulz(G, check_finite=False),
        lambda G: list(matfun.newton_schulz_iterates(G)),
        lambda G: matfun.tiled_newton_schulz(G, 2),
        lambda G: matfun.tiled_newton_schulz_many([G], 2),
        lambda G: matfun.preconditioned_newton_schulz(G, torch.ones(4, 6)),
        lambda G: matfun.SecondMoment().update(G),
    ],
)
def test_meta_tensors_give_a_clear_error(call):
    with pytest.raises(ValueError, match="'meta' device"):
        call(torch.ones(4, 6, device="meta"))


def test_meta_second_moment_gives_a_clear_error():
    with pytest.raises(ValueError, match="'meta' device"):
        matfun.preconditioned_newton_schulz(torch.ones(4, 6), torch.ones(4, 6, device="meta"))


# ------------------------------------------------------------------ item 9.9: argument checking

G0 = np.random.default_rng(8).standard_normal((4, 6))
V0 = np.ones((4, 6))

BAD_ARGUMENTS = [
    # (call, exception, message must name the argument and what is accepted)
    *[
        (lambda e=e: matfun.smoothed_polar(G0, e), TypeError, r"eps must be a real number in \[0, inf\)")
        for e in ("0.1", None, True, [0.1], 1j)
    ],
    *[
        (lambda e=e: matfun.smoothed_polar(G0, e), ValueError, r"eps must be a real number in \[0, inf\)")
        for e in (-1.0, float("nan"), float("inf"))
    ],
    *[
        (lambda r=r: matfun.polar(G0, rtol=r), TypeError, r"rtol must be a real number in \[0, 1\)")
        for r in ("1e-3", True)
    ],
    *[
        (lambda r=r: matfun.polar(G0, rtol=r), ValueError, r"rtol must be a real number in \[0, 1\)")
        for r in (float("nan"), -0.1, 1.0)
    ],
    (lambda: matfun.polar(G0, check_finite="no"), TypeError, "check_finite must be True or False"),
    (lambda: matfun.newton_schulz(G0, check_finite=1), TypeError, "check_finite must be True or False"),
    (lambda: matfun.SecondMoment(factorized="no"), TypeError, "factorized must be True or False"),
    (lambda: matfun.SecondMoment(factorized=1), TypeError, "factorized must be True or False"),
    (lambda: matfun.SecondMoment(beta2="0.9"), TypeError, r"beta2 must be a real number in \[0, 1\)"),
    (lambda: matfun.SecondMoment(beta2=None), TypeError, r"beta2 must be a real number in \[0, 1\)"),
    (lambda: matfun.SecondMoment(eps="1e-8"), TypeError, "eps must be a real number"),
    (lambda: matfun.Preconditioned(matfun.NewtonSchulz(), V0, eps=True), TypeError, "eps must be a real number"),
    (lambda: matfun.preconditioned_newton_schulz(G0, V0, "1e-8"), TypeError, "eps must be a real number"),
    (lambda: matfun.precondition(G0, V0, None), TypeError, "eps must be a real number"),
    # M and V: libraries, devices, shapes, kinds
    (
        lambda: matfun.preconditioned_newton_schulz(torch.ones(4, 6), V0),
        TypeError,
        "second_moment is a numpy array but M is a torch array",
    ),
    (
        lambda: matfun.preconditioned_newton_schulz(G0, torch.ones(4, 6)),
        TypeError,
        "second_moment is a torch array but M is a numpy array",
    ),
    (lambda: matfun.precondition(G0, torch.ones(4, 6), 1e-8), TypeError, "V is a torch array but M is a numpy"),
    (
        lambda: matfun.preconditioned_newton_schulz(G0, V0.tolist()),
        TypeError,
        "second_moment must be an array of the same library",
    ),
    (
        lambda: matfun.preconditioned_newton_schulz(G0, np.ones((3, 6))),
        ValueError,
        r"second_moment of shape \(3, 6\) does not broadcast to M of shape \(4, 6\)",
    ),
    (lambda: matfun.preconditioned_newton_schulz(G0, V0 > 0), TypeError, "must hold real numbers"),
    (lambda: matfun.preconditioned_newton_schulz(G0, V0 + 0j), TypeError, "must hold real numbers"),
    (
        lambda: matfun.preconditioned_newton_schulz(torch.ones(4, 6), torch.ones(4, 6, device="meta")),
        ValueError,
        "meta",
    ),
    # steps, tile, precision, coefficients, budget, flops shapes, schedule fields
    *[
        (lambda s=s: matfun.newton_schulz(G0, s), TypeError, "steps must be a non-negative integer")
        for s in (5.0, True, "5", None, np.bool_(True))
    ],
    (lambda: matfun.newton_schulz(G0, -1), ValueError, "steps must be a non-negative integer"),
    (lambda: matfun.transfer_function(0.5, 2.0), TypeError, "steps must be a non-negative integer"),
    *[
        (lambda t=t: matfun.tiled_newton_schulz(G0, t), ValueError, "tile")
        for t in (True, 2.0, "2", (2, None), np.bool_(True))
    ],
    *[
        (lambda p=p: matfun.newton_schulz(G0, precision=p), ValueError, "unknown precision")
        for p in ("float16", 32, "bf16")
    ],
    *[
        (lambda c=c: matfun.newton_schulz(G0, coefficients=c), TypeError, r"coefficients.*real number")
        for c in ([("3.4", -4.7, 2.0)], [(True, 0, 0)], None, (3.4, -4.7, 2.0), 3.0)
    ],
    (
        lambda: matfun.newton_schulz(G0, coefficients=[(1.0, float("nan"), 0.0)]),
        ValueError,
        r"coefficients\[0\]\[1\] must be a real number",
    ),
    (lambda: matfun.newton_schulz(G0, coefficients=[(1.0, float("inf"), 0.0)]), ValueError, "3 finite numbers"),
    (lambda: matfun.Schedule("x", [(1, 0, 0)], "1.02"), TypeError, "normalization must be a real number"),
    (lambda: matfun.Schedule("x", [(1, 0, 0)], float("inf")), ValueError, "normalization must be a real number"),
    (lambda: matfun.Schedule(None, [(1, 0, 0)]), TypeError, "name must be a str"),
    *[
        (lambda b=b: matfun.tiled_newton_schulz(G0, 2, memory_budget=b), ValueError, "memory_budget")
        for b in (1e6, True, "1MB", 0)
    ],
    *[
        (lambda s=s: matfun.NewtonSchulz().flops(s), ValueError, "shape must be")
        for s in ((4.5, 6), (True, 6), (4,), 7, (4, -1))
    ],
    (lambda: matfun.Tiled(matfun.Polar(), 4).flops((4, 6.0)), ValueError, "shape must be"),
    # inputs that are not plain arrays
    (lambda: matfun.newton_schulz(np.ma.masked_array(G0)), TypeError, "masked array"),
]


@pytest.mark.parametrize("call,error,message", BAD_ARGUMENTS)
def test_bad_arguments_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_good_argument_spellings_still_work():
    assert np.allclose(matfun.smoothed_polar(G0, np.float32(0.5)), matfun.smoothed_polar(G0, 0.5))
    assert np.allclose(matfun.smoothed_polar(G0, 1), matfun.smoothed_polar(G0, 1.0))
    assert np.allclose(matfun.smoothed_polar(G0, torch.tensor(0.5)), matfun.smoothed_polar(G0, 0.5))
    assert np.allclose(matfun.newton_schulz(G0, np.int64(3)), matfun.newton_schulz(G0, 3))
    assert np.allclose(
        matfun.tiled_newton_schulz(G0, 2, memory_budget=np.int64(2**20)), matfun.tiled_newton_schulz(G0, 2)
    )
    assert matfun.SecondMoment(factorized=np.bool_(True)).factorized is True
    assert matfun.NewtonSchulz().flops(torch.Size([4, 6])) == matfun.NewtonSchulz().flops((np.int64(4), 6))


# ------------------------------------------------------------------ issue 10.1: Polar Express constants

# Amsel, Persson, Musco, Gower, The Polar Express (2025), arXiv:2505.16932: the reference generator's
# output for ℓ = 1e-3, 5 iterations, safety 2e-2, cushion 0.02 (as recorded in DESIGN.md).
POLAR_EXPRESS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def _exact_composition(x: float, steps: int) -> float:
    """p_K(x / 1.02) in 60-digit decimal arithmetic (independent of matfun's evaluation).

    The float constants convert to Decimal exactly; 60 digits make the result
    exact to far below float64's rounding (exact rationals would need millions
    of digits after 7 quintic compositions).
    """
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        D = decimal.Decimal
        y = D(x) / D(1.02)
        for k in range(steps):
            a, b, c = (D(v) for v in POLAR_EXPRESS[min(k, 4)])
            y = a * y + b * y**3 + c * y**5
        return float(y)


def test_polar_express_constants_are_full_precision():
    assert matfun.SCHEDULES["polar_express"].coefficients == tuple(POLAR_EXPRESS)
    assert matfun.SCHEDULES["polar_express"].normalization == 1.02


def test_polar_express_transfer_function_against_exact_arithmetic():
    sigma = np.concatenate([np.geomspace(1e-3, 1, 60), [0.0, 0.5, 1.0, 1.02]])
    for steps in (1, 3, 5, 7):
        got = matfun.transfer_function(sigma, steps, "polar_express")
        exact = np.array([_exact_composition(s, steps) for s in sigma])
        assert np.max(np.abs(got - exact)) <= 1e-13 * max(1.0, np.max(np.abs(exact)))
    # the published envelope on [1e-3, 1] after 5 steps (DESIGN.md: about [0.85, 1.14])
    p5 = np.array([_exact_composition(s, 5) for s in np.geomspace(1e-3, 1, 400)])
    assert 0.84 < p5.min() and p5.max() < 1.15
    # the old 5-decimal coefficients moved p_5 by ~1e-4: this test would have caught them
    exact5 = np.array([_exact_composition(s, 5) for s in sigma])
    old = matfun.Schedule("old", [tuple(round(v, 5) for v in abc) for abc in POLAR_EXPRESS], 1.02)
    assert np.max(np.abs(matfun.transfer_function(sigma, 5, old) - exact5)) > 1e-5


def test_newton_schulz_polar_express_is_the_exact_transfer_function():
    """NS_K(G) = U p_K(Σ/‖G‖_F) Vᵀ with p_K evaluated exactly (float64 map, 1e-12)."""
    G = np.random.default_rng(9).standard_normal((12, 20))
    U, S, Vh = np.linalg.svd(G, full_matrices=False)
    p = np.array([_exact_composition(s, 5) for s in S / np.linalg.norm(G)])
    assert rel(matfun.newton_schulz(G, 5, "polar_express"), (U * p) @ Vh) < 1e-12


# ------------------------------------------------------------------ issue 10.4: polar cut-off


def _spectrum_matrix(n: int, cond: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Q1 = np.linalg.qr(rng.standard_normal((n, n)))[0]
    Q2 = np.linalg.qr(rng.standard_normal((n, n)))[0]
    return Q1 @ np.diag(np.logspace(0, -np.log10(cond), n)) @ Q2.T


def _kept(P) -> int:
    return int(np.sum(np.linalg.svd(as64(P), compute_uv=False) > 0.5))


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_polar_float32_keeps_full_rank_ill_conditioned_input(library):
    G64 = _spectrum_matrix(64, 1e6, seed=10)
    G = G64.astype(np.float32) if library == "numpy" else torch.from_numpy(G64).float()
    P = matfun.polar(G)
    assert _kept(P) == 64  # the old default max(H, W)·eps kept 54
    # κ·eps(float32) ≈ 0.1 bounds the float32 polar factor's error; the old default gave 3.2
    assert np.linalg.norm(as64(P) - matfun.polar(G64)) < 0.1


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_polar_rank_deficient_input_gives_partial_isometry(dtype):
    rng = np.random.default_rng(11)
    A = rng.standard_normal((64, 10)).astype(dtype)
    Bm = rng.standard_normal((10, 48)).astype(dtype)
    G = (A.astype(np.float32) @ Bm.astype(np.float32)).astype(dtype) if dtype == "float16" else A @ Bm
    exact = A.astype(np.float64) @ Bm.astype(np.float64)
    U, _, Vh = np.linalg.svd(exact, full_matrices=False)
    P = matfun.polar(G)
    assert _kept(P) == 10
    # error: rounding of G (u) amplified by σ_max/σ_10 ≲ 10, plus the output rounding
    tol = {"float64": 1e-12, "float32": 1e-4, "float16": 5e-2}[dtype]
    assert np.linalg.norm(as64(P) - U[:, :10] @ Vh[:10]) < tol


def test_default_rtol_formula():
    u32 = 2.0**-24
    assert default_rtol(64, 64, "float32") == pytest.approx(u32 * np.sqrt(129))
    # the coarser of the data's and the computation's rounding
    assert default_rtol(64, 64, "float64", "float32") == default_rtol(64, 64, "float32")
    assert default_rtol(64, 64, "float32", "float16") == pytest.approx(2.0**-11 * np.sqrt(129))
    assert matfun.polar(np.diag([1.0, 1e-17]), rtol=0.0)[1, 1] == 1.0  # rtol=0 keeps everything


# ------------------------------------------------------------------ issue 10.10: packaging and docs


def test_packaging_files():
    assert (ROOT / "matfun" / "py.typed").is_file()
    assert re.search(r'matfun\s*=\s*\[\s*"py\.typed"\s*\]', (ROOT / "pyproject.toml").read_text())
    license_text = (ROOT / "LICENSE").read_text()
    assert "MIT License" in license_text and "2026 matfun developers" in license_text
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and "## [0.1.0]" in changelog
    readme = (ROOT / "README.md").read_text()
    references = readme[readme.index("## References") :]
    for arxiv in ("2606.27216", "2604.09967", "2605.23871", "2505.16932"):
        assert f"arXiv:{arxiv}" in references
    assert "Amsel, D. Persson, C. Musco, R. M. Gower" in references


def test_public_docstrings_do_not_point_at_private_names():
    for name in matfun.__all__:
        obj = getattr(matfun, name)
        docs = [getattr(obj, "__doc__", None) or ""]
        if isinstance(obj, type):
            docs += [m.__doc__ or "" for k, m in vars(obj).items() if not k.startswith("_") and callable(m)]
        for doc in docs:
            assert not re.search(r"matfun\._|:func:`_|:mod:`_", doc), name
    for fn in (
        matfun.newton_schulz,
        matfun.tiled_newton_schulz,
        matfun.tiled_newton_schulz_many,
        matfun.polar,
        matfun.smoothed_polar,
        matfun.preconditioned_newton_schulz,
        matfun.transfer_function,
    ):
        assert "Raises\n    ------" in fn.__doc__, fn.__name__
