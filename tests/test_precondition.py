"""Muon² preconditioning: SecondMoment recurrences, factorisation, composition with NS and tiling.

Tolerances: float64 identities at 1e-12 relative (a handful of elementwise
operations plus ≤ 5 NS steps on small matrices); float32 at 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import matfun

prop = settings(deadline=None, max_examples=10, derandomize=True)
seeds = st.integers(0, 2**32 - 1)
shapes = st.tuples(st.sampled_from([(), (2,)]), st.integers(1, 20), st.integers(1, 20))


from _numeric import rel  # noqa: E402


def _matrix(shape, seed):
    lead, H, W = shape
    return np.random.default_rng(seed).standard_normal((*lead, H, W))


# ----------------------------------------------------------------------------- maps


@prop
@given(shapes, seeds, st.floats(1e-6, 1e6), st.sampled_from(["jordan", "cubic", "polar_express"]))
def test_constant_V_is_ns_of_rescaled_matrix(shape, seed, v, schedule):
    M = _matrix(shape, seed)
    V = np.full(M.shape, v)
    eps = 1e-8
    out = matfun.preconditioned_newton_schulz(M, V, eps, 5, schedule)
    assert rel(out, matfun.newton_schulz(M / (np.sqrt(v) + eps), 5, schedule)) < 1e-12
    assert rel(out, matfun.newton_schulz(M, 5, schedule)) < 1e-12  # NS is scale invariant
    # a broadcast scalar / row V works the same
    assert rel(matfun.preconditioned_newton_schulz(M, np.full((1, 1), v), eps, 5, schedule), out) < 1e-12


@prop
@given(shapes, seeds)
def test_preconditioned_map_is_ns_of_preconditioned_matrix(shape, seed):
    rng = np.random.default_rng(seed)
    M = _matrix(shape, seed)
    V = rng.uniform(0.01, 4.0, M.shape)
    expected = matfun.newton_schulz(M / (np.sqrt(V) + 1e-3))
    m = matfun.Preconditioned(matfun.NewtonSchulz(5), V, eps=1e-3)
    assert rel(m(M), expected) < 1e-12
    its = list(m.iterates(M))
    assert len(its) == 6 and np.array_equal(its[-1], m(M))
    assert m.flops(M.shape) == matfun.NewtonSchulz(5).flops(M.shape)


@prop
@given(shapes, seeds, st.one_of(st.integers(1, 8), st.tuples(st.integers(1, 8), st.integers(1, 8))), st.booleans())
def test_tiled_preconditioned_composition(shape, seed, tile, factorized):
    rng = np.random.default_rng(seed)
    M = _matrix(shape, seed)
    state = matfun.SecondMoment(beta2=0.9, eps=1e-6, factorized=factorized)
    for _ in range(3):
        state.update(rng.standard_normal(M.shape))
    pre = matfun.precondition(M, state.V, state.eps)
    expected = matfun.tiled_newton_schulz(pre, tile, 5)
    assert rel(matfun.preconditioned_newton_schulz(M, state, tile=tile), expected) < 1e-12
    composed = matfun.Preconditioned(matfun.Tiled(matfun.NewtonSchulz(5), tile), state)
    assert rel(composed(M), expected) < 1e-12
    assert rel(state.precondition(M), pre) == 0


# ----------------------------------------------------------------------------- SecondMoment


@prop
@given(shapes, seeds, st.floats(0.0, 0.999), st.integers(1, 5))
def test_second_moment_ema_by_hand(shape, seed, beta2, n):
    rng = np.random.default_rng(seed)
    Gs = [rng.standard_normal(shape[0] + shape[1:]) for _ in range(n)]
    full, fact = matfun.SecondMoment(beta2), matfun.SecondMoment(beta2, factorized=True)
    V, r, c = 0.0, 0.0, 0.0
    for G in Gs:
        full.update(G)
        fact.update(G)
        V = beta2 * V + (1 - beta2) * G * G  # V₀ = 0, no bias correction
        r = beta2 * r + (1 - beta2) * (G * G).sum(-1)
        c = beta2 * c + (1 - beta2) * (G * G).sum(-2)
    assert rel(full.V, V) < 1e-12
    assert rel(fact.row, r) < 1e-12 and rel(fact.col, c) < 1e-12
    expected = r[..., :, None] * c[..., None, :] / c.sum(-1)[..., None, None]
    assert rel(fact.V, expected) < 1e-12
    # row sums of V̂ equal r, column sums equal c · sum(r)/sum(c) = c (sum(r) == sum(c))
    assert np.allclose(fact.V.sum(-1), r, rtol=1e-10, atol=0)
    assert np.allclose(fact.V.sum(-2), c, rtol=1e-10, atol=0)


@prop
@given(shapes, seeds, st.integers(1, 4))
def test_factorised_equals_full_for_rank_one_second_moment(shape, seed, n):
    """G = diag(u)·S·diag(v) with S = ±1 has G⊙G = (u²)(v²)ᵀ of rank one, for every update."""
    rng = np.random.default_rng(seed)
    lead, H, W = shape
    full, fact = matfun.SecondMoment(0.8), matfun.SecondMoment(0.8, factorized=True)
    u, v = rng.uniform(0.1, 3, (*lead, H, 1)), rng.uniform(0.1, 3, (*lead, 1, W))
    for _ in range(n):
        G = u * v * rng.choice([-1.0, 1.0], (*lead, H, W)) * rng.uniform(0.5, 2)  # same rank-1 pattern, varying scale
        full.update(G)
        fact.update(G)
    assert rel(fact.V, full.V) < 1e-12
    M = rng.standard_normal((*lead, H, W))
    assert rel(fact.precondition(M), full.precondition(M)) < 1e-12


@prop
@given(shapes, seeds, st.floats(1e-8, 1.0))
def test_beta2_zero_closed_form(shape, seed, eps):
    G = _matrix(shape, seed)
    state = matfun.SecondMoment(beta2=0.0, eps=eps)
    state.update(G)
    assert rel(state.V, G * G) == 0
    assert rel(state.precondition(G), G / (np.abs(G) + eps)) < 1e-15
    assert rel(matfun.preconditioned_newton_schulz(G, state), matfun.newton_schulz(G / (np.abs(G) + eps))) < 1e-12


def test_zero_gradient_factorised_state_is_zero():
    state = matfun.SecondMoment(factorized=True)
    state.update(np.zeros((3, 4)))
    assert not state.V.any() and state.V.shape == (3, 4)


# ----------------------------------------------------------------------------- backends


@pytest.mark.parametrize("factorized", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_torch_agree(factorized, dtype):
    rng = np.random.default_rng(0)
    Gs = [rng.standard_normal((2, 24, 40)).astype(dtype) for _ in range(3)]
    M = rng.standard_normal((2, 24, 40)).astype(dtype)
    a, b = matfun.SecondMoment(0.9, factorized=factorized), matfun.SecondMoment(0.9, factorized=factorized)
    for G in Gs:
        a.update(G)
        b.update(torch.from_numpy(G))
    assert isinstance(b.V, torch.Tensor) and b.V.dtype == getattr(torch, dtype)
    tol = 1e-12 if dtype == "float64" else 1e-4
    assert rel(a.V, b.V) < tol
    for tile in (None, 16):
        x = matfun.preconditioned_newton_schulz(M, a, tile=tile)
        y = matfun.preconditioned_newton_schulz(torch.from_numpy(M), b, tile=tile)
        assert isinstance(x, np.ndarray) and x.dtype == M.dtype
        assert isinstance(y, torch.Tensor) and y.dtype == getattr(torch, dtype)
        assert rel(x, y) < tol


# ----------------------------------------------------------------------------- errors


def test_errors():
    M = np.ones((4, 5))
    with pytest.raises(ValueError, match="does not"):
        matfun.precondition(M, np.ones((5, 4)), 1e-8)
    with pytest.raises(ValueError, match="does not"):
        matfun.precondition(M, np.ones((2, 4, 5)), 1e-8)  # V may broadcast to M, not M to V
    with pytest.raises(ValueError, match="does not"):
        matfun.preconditioned_newton_schulz(M, np.ones((4, 4)))
    with pytest.raises(ValueError, match="eps"):
        matfun.precondition(M, np.ones((4, 5)), -1e-8)
    with pytest.raises(ValueError, match="eps"):
        matfun.SecondMoment(eps=-1.0)
    with pytest.raises(ValueError, match="eps"):
        matfun.Preconditioned(matfun.NewtonSchulz(), np.ones((4, 5)), eps=float("nan"))
    for beta2 in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="beta2"):
            matfun.SecondMoment(beta2=beta2)
    with pytest.raises(ValueError, match="non-negative"):
        matfun.precondition(M, -np.ones((4, 5)), 1e-8)
    with pytest.raises(ValueError, match="non-negative"):
        matfun.precondition(M, np.full((4, 5), np.inf), 1e-8)
    with pytest.raises(ValueError, match="infinite"):
        matfun.precondition(M, np.zeros((4, 5)), 0.0)
    state = matfun.SecondMoment()
    with pytest.raises(RuntimeError, match="update"):
        _ = state.V
    state.update(M)
    with pytest.raises(ValueError, match="shape"):
        state.update(np.ones((5, 4)))
    with pytest.raises(TypeError):
        matfun.Preconditioned(lambda x: x, np.ones((4, 5)))
    with pytest.raises(TypeError, match="outside"):
        matfun.Tiled(matfun.Preconditioned(matfun.NewtonSchulz(), state), 2)
