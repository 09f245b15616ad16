"""Tests of diagnostics.metrics against cases whose answer is known in advance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import matfun
from diagnostics import matrices
from diagnostics import metrics as M

SHAPES = [(12, 12), (20, 12), (12, 20), (3, 16, 9)]
TIGHT = 1e-12


def gaussian(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def svd_polar(G):
    U, _, Vh = np.linalg.svd(G, full_matrices=False)
    return U @ Vh


# ---------------------------------------------------------------------------
# Exact polar factor: every metric at its ideal value
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_exact_polar_is_ideal(shape):
    G = matrices.geometric(shape, 100.0, seed=1)
    P = matfun.polar(G)
    batch = shape[:-2]
    assert np.allclose(M.alignment(P, G), 1, atol=TIGHT, rtol=0)
    assert np.allclose(M.duality_efficiency(P, G), 1, atol=TIGHT, rtol=0)
    assert np.allclose(M.nuclear_norm_captured(P, G), 1, atol=TIGHT, rtol=0)
    assert np.all(M.orthogonality_residual(P, G) < TIGHT)
    err = M.spectral_error(P, G)
    for key in ("worst", "rms", "median", "frobenius", "spectral"):
        assert np.shape(err[key]) == batch
        assert np.all(err[key] < TIGHT), key
    assert np.all(err["rank"] == min(shape[-2:]))
    assert err["singular_values"].shape == (*batch, min(shape[-2:]))


def test_reference_polar_matches_matfun_polar():
    G = gaussian((4, 15, 11), seed=3)
    ref = M.reference(G)
    assert np.allclose(ref.P, matfun.polar(G), atol=1e-13)
    assert np.allclose(ref.P, svd_polar(G), atol=1e-13)
    assert np.allclose(ref.nuclear, np.linalg.svd(G, compute_uv=False).sum(-1))


@pytest.mark.parametrize("c", [0.5, 1.0, 1.7])
def test_scaled_polar_known_values(c):
    """X = c·P: direction perfect; the spectrum is off by exactly |c − 1|."""
    G = matrices.geometric((18, 10), 30.0, seed=2)
    X = c * matfun.polar(G)
    tol = 1e-12
    assert M.alignment(X, G) == pytest.approx(1, abs=tol)
    assert M.duality_efficiency(X, G) == pytest.approx(1, abs=tol)
    assert M.nuclear_norm_captured(X, G) == pytest.approx(c, abs=tol)
    assert M.orthogonality_residual(X, G) == pytest.approx(abs(c * c - 1), abs=tol)
    err = M.spectral_error(X, G)
    for key in ("worst", "rms", "median", "frobenius", "spectral"):
        assert err[key] == pytest.approx(abs(c - 1), abs=tol), key


def test_spectral_map_singular_values_are_the_transfer_function():
    """For X = NS_K(G) the σᵢ are exactly p_K(σᵢ(G)/‖G‖_F)."""
    G = matrices.geometric((24, 16), 50.0, seed=4)
    X = matfun.newton_schulz(G, 5, "jordan", precision="float64")
    S = np.linalg.svd(G, compute_uv=False)
    expected = matfun.transfer_function(S / np.linalg.norm(G), 5, "jordan")
    err = M.spectral_error(X, G)
    assert np.allclose(np.sort(err["singular_values"])[::-1], np.sort(expected)[::-1], atol=1e-10)
    assert err["worst"] == pytest.approx(np.max(np.abs(expected - 1)), abs=1e-10)
    assert err["rms"] == pytest.approx(np.sqrt(np.mean((expected - 1) ** 2)), abs=1e-10)
    assert err["median"] == pytest.approx(np.median(np.abs(expected - 1)), abs=1e-10)
    # ‖X − P‖₂ = max |p(σ) − 1| for a spectral map of a full-rank G
    assert err["spectral"] == pytest.approx(err["worst"], abs=1e-10)
    # orthogonality residual = √(mean (σ² − 1)²) for full rank
    assert M.orthogonality_residual(X, G) == pytest.approx(np.sqrt(np.mean((expected**2 - 1) ** 2)), abs=1e-10)


# ---------------------------------------------------------------------------
# Rank-deficient G: errors measured on the range only
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(20, 12), (12, 20)])
def test_rank_deficient(shape):
    k = 5
    G = matrices.rank_deficient(shape, k, seed=5)
    P = matfun.polar(G)
    err = M.spectral_error(P, G)
    assert err["rank"] == k
    assert np.isfinite(err["singular_values"][:k]).all() and np.isnan(err["singular_values"][k:]).all()
    assert err["worst"] < TIGHT and err["frobenius"] < TIGHT and err["spectral"] < TIGHT
    assert M.orthogonality_residual(P, G) < TIGHT
    assert M.alignment(P, G) == pytest.approx(1, abs=TIGHT)
    assert M.duality_efficiency(P, G) == pytest.approx(1, abs=TIGHT)

    # X = P + a piece acting outside G's range: σᵢ on the range unchanged,
    # X − P sees the piece; duality efficiency still 1 (⟨G, Q⟩ = 0, ‖X‖₂ = 1).
    U, _S, Vh = np.linalg.svd(G)
    Q = 0.5 * np.outer(U[:, k], Vh[k])  # rank one, in the orthogonal complement
    X = P + Q
    err = M.spectral_error(X, G)
    assert err["worst"] < TIGHT
    assert err["spectral"] == pytest.approx(0.5, abs=TIGHT)
    assert err["frobenius"] == pytest.approx(0.5 / np.sqrt(k), abs=TIGHT)
    assert M.duality_efficiency(X, G) == pytest.approx(1, abs=TIGHT)
    assert M.alignment(X, G) == pytest.approx(np.sqrt(k) / np.sqrt(k + 0.25), abs=TIGHT)
    # orthogonality: the Gram picks up 0.25 on one direction outside Π
    assert M.orthogonality_residual(X, G) == pytest.approx(0.25 / np.sqrt(k), abs=TIGHT)


def test_float32_rank_deficient_uses_float32_cutoff():
    G64 = matrices.rank_deficient((30, 20), 6, seed=6)
    G32 = G64.astype(np.float32)
    ref = M.reference(G32)
    assert int(ref.rank) == 6
    P32 = matfun.polar(G32)
    assert M.spectral_error(P32, G32)["worst"] < 1e-5


def test_smoothed_polar_singular_values_and_fit():
    """End to end: the σᵢ of smoothed_polar(G, ε) on G's range give back ε."""
    eps = 0.07
    S = np.geomspace(1.0, 1e-2, 12)
    G = matrices.with_spectrum((16, 12), S, seed=7)
    X = matfun.smoothed_polar(G, eps)
    sig = M.spectral_error(X, G)["singular_values"]
    assert np.allclose(sig, S / np.sqrt(S**2 + eps**2), atol=1e-12)
    fit = M.smoothing_level(sig, S)
    assert fit["eps"] == pytest.approx(eps, rel=1e-8)


# ---------------------------------------------------------------------------
# Cosine
# ---------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    a=st.floats(1e-150, 1e150),
    b=st.floats(1e-150, 1e150),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
)
def test_cosine_symmetric_and_scale_invariant(seed, a, b, h, w):
    rng = np.random.default_rng(seed)
    A, Bm = rng.standard_normal((2, h, w)), rng.standard_normal((2, h, w))
    c = M.cosine(A, Bm)
    assert np.allclose(c, M.cosine(Bm, A), atol=1e-14, rtol=0)
    assert np.allclose(c, M.cosine(a * A, b * Bm), atol=1e-12, rtol=0)
    assert np.all(np.abs(c) <= 1)
    assert np.allclose(M.cosine(A, -b * A), -1, atol=1e-12)


def test_cosine_known_values_and_zero_conventions():
    A = np.array([[1.0, 0.0], [0.0, 0.0]])
    Bm = np.array([[0.0, 1.0], [0.0, 0.0]])
    assert M.cosine(A, Bm) == 0
    assert M.cosine(A, A + Bm) == pytest.approx(1 / np.sqrt(2), abs=1e-15)
    Z = np.zeros((2, 2))
    assert M.cosine(Z, Z) == 1
    assert M.cosine(A, Z) == 0 and M.cosine(Z, A) == 0
    assert M.cosine(1e-300 * A, 1e300 * (A + Bm)) == pytest.approx(1 / np.sqrt(2), abs=1e-15)


def test_zero_input_conventions():
    Z = np.zeros((6, 4))
    assert M.alignment(Z, Z) == 1
    assert M.duality_efficiency(Z, Z) == 1
    assert M.nuclear_norm_captured(Z, Z) == 1
    err = M.spectral_error(Z, Z)
    assert err["rank"] == 0 and err["worst"] == 0 and err["frobenius"] == 0
    assert M.spectral_error(np.ones((6, 4)), Z)["frobenius"] == np.inf
    G = gaussian((6, 4))
    assert M.alignment(Z, G) == 0
    assert M.duality_efficiency(Z, G) == 0
    assert M.gram_coupling(Z, 2)["mean"] == 0


# ---------------------------------------------------------------------------
# Tiling: coupling, tiling loss, per-tile alignment
# ---------------------------------------------------------------------------


def test_tile_polar_matches_a_loop_over_tiles():
    G = gaussian((2, 23, 17), seed=8)
    Th, Tw = 6, 5
    expected = np.zeros_like(G)
    for i in range(0, 23, Th):
        for j in range(0, 17, Tw):
            expected[..., i : i + Th, j : j + Tw] = svd_polar(G[..., i : i + Th, j : j + Tw])
    assert np.allclose(M.tile_polar(G, (Th, Tw)), expected, atol=1e-13)


def test_gram_coupling_hand_computed():
    # all-ones 2×2, tile 1: GGᵀ = 2·ones, energy 16, diagonal blocks 4 + 4 → 1/2
    out = M.gram_coupling(np.ones((2, 2)), 1)
    assert out["rows"] == pytest.approx(0.5) and out["cols"] == pytest.approx(0.5)
    assert out["mean"] == pytest.approx(0.5)
    # rows split only (tile (1, 2)): cols share is 0 (one column block)
    out = M.gram_coupling(np.ones((2, 2)), (1, 2))
    assert out["rows"] == pytest.approx(0.5) and out["cols"] == 0


def test_gram_coupling_against_dense_gram():
    G = gaussian((3, 13, 9), seed=9)
    Th, Tw = 4, 3
    out = M.gram_coupling(G, (Th, Tw))
    for A, T, key in ((G, Th, "rows"), (np.swapaxes(G, -1, -2), Tw, "cols")):
        gram = A @ np.swapaxes(A, -1, -2)
        blocks = np.arange(gram.shape[-1]) // T
        mask = blocks[:, None] == blocks[None, :]
        share = 1 - (gram**2 * mask).sum((-2, -1)) / (gram**2).sum((-2, -1))
        assert np.allclose(out[key], share, atol=1e-13)


@pytest.mark.parametrize("shape,tile", [((16, 16), 4), ((18, 14), (5, 4)), ((12, 20), 5)])
def test_block_diagonal_has_no_loss(shape, tile):
    G = matrices.tile_coupled(shape, tile, 0.0, seed=10)
    coupling = M.gram_coupling(G, tile)
    assert coupling["rows"] < TIGHT and coupling["cols"] < TIGHT
    assert M.tiling_loss(G, tile) < TIGHT
    P_T = M.tile_polar(G, tile)
    assert np.allclose(P_T, matfun.polar(G), atol=1e-12)


@pytest.mark.parametrize("coupling", [0.3, 1.0])
def test_cross_tile_block_has_loss(coupling):
    G = matrices.tile_coupled((16, 16), 4, coupling, seed=11)
    assert M.gram_coupling(G, 4)["mean"] > 0.01
    assert M.tiling_loss(G, 4) > 0.01


def test_one_dense_block_spanning_tiles():
    G = np.zeros((16, 16))
    G[2:10, 3:11] = gaussian((8, 8), seed=12)  # straddles the 4×4 tile grid
    assert M.gram_coupling(G, 4)["mean"] > 0.05
    assert M.tiling_loss(G, 4) > 0.05
    assert M.tiling_loss(G, 16) == 0  # one tile


def test_tile_at_least_the_matrix_is_one_tile():
    G = gaussian((10, 7), seed=13)
    for tile in (10, (10, 7), 64, (100, 3000)):
        assert M.gram_coupling(G, tile)["mean"] == 0
        assert M.tiling_loss(G, tile) == 0
    loss = M.information_loss(G, 64, steps=5)
    X = matfun.newton_schulz(G, 5)
    assert loss["total"] == pytest.approx(1 - M.alignment(X, G), abs=1e-12)
    assert loss["truncation"] == pytest.approx(loss["total"], abs=1e-15)


def test_information_loss_decomposition():
    G = matrices.tile_coupled((2, 20, 16), (6, 5), 0.5, seed=14)
    tile = (6, 5)
    out = M.information_loss(G, tile, steps=5, coefficients="jordan")
    X = matfun.tiled_newton_schulz(G, tile, 5, "jordan")
    P, P_T = matfun.polar(G), M.tile_polar(G, tile)
    assert np.allclose(out["tiling"], 1 - M.cosine(P_T, P), atol=1e-12)
    assert np.allclose(out["truncation"], 1 - M.cosine(X, P_T), atol=1e-12)
    assert np.allclose(out["total"], 1 - M.cosine(X, P), atol=1e-12)
    assert np.allclose(out["gram_coupling"], M.gram_coupling(G, tile)["mean"])
    assert np.allclose(M.truncation_loss(G, tile, 5), out["truncation"])
    assert np.allclose(M.total_loss(G, tile, 5), out["total"])
    assert np.allclose(M.tiling_loss(G, tile), out["tiling"])
    # chordal triangle inequality
    assert np.all(np.sqrt(out["total"]) <= np.sqrt(out["tiling"]) + np.sqrt(out["truncation"]) + 1e-12)
    for v in out.values():
        assert np.shape(v) == (2,)


def test_many_cubic_steps_truncation_loss_vanishes():
    G = matrices.tile_coupled((24, 24), 8, 0.5, seed=15)
    few = M.truncation_loss(G, 8, steps=3, coefficients="cubic")
    many = M.truncation_loss(G, 8, steps=60, coefficients="cubic")
    assert few > 1e-4
    assert many < 1e-12
    out = M.information_loss(G, 8, steps=60, coefficients="cubic")
    assert out["total"] == pytest.approx(out["tiling"], abs=1e-10)


def test_per_tile_alignment():
    G = gaussian((2, 14, 11), seed=16)
    tile = (4, 5)
    out = M.per_tile_alignment(M.tile_polar(G, tile), G, tile)
    assert out["per_tile"].shape == (2, 4, 3)
    assert np.allclose(out["per_tile"], 1, atol=TIGHT)
    assert np.allclose(out["min"], 1, atol=TIGHT) and np.allclose(out["mean"], 1, atol=TIGHT)

    X = matfun.tiled_newton_schulz(G, tile, 5)
    out = M.per_tile_alignment(X, G, tile)
    # compare one ragged corner tile and one interior tile with direct cosines
    assert out["per_tile"][1, 3, 2] == pytest.approx(M.cosine(X[1, 12:, 10:], svd_polar(G[1, 12:, 10:])), abs=1e-13)
    assert out["per_tile"][0, 1, 1] == pytest.approx(M.cosine(X[0, 4:8, 5:10], svd_polar(G[0, 4:8, 5:10])), abs=1e-13)
    assert np.allclose(out["min"], out["per_tile"].min(axis=(-2, -1)))
    assert np.all(out["min"] <= out["mean"]) and np.all(out["mean"] < 1)


# ---------------------------------------------------------------------------
# Smoothing level
# ---------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(log_eps=st.floats(-3.0, 0.5))
def test_smoothing_level_recovers_eps(log_eps):
    eps = 10.0**log_eps
    sigma = np.geomspace(1e-3, 1.0, 64)
    fit = M.smoothing_level(sigma / np.sqrt(sigma**2 + eps**2), sigma)
    assert fit["eps"] == pytest.approx(eps, rel=1e-8)
    assert fit["residual"] < 1e-12


def test_smoothing_level_input_forms():
    sigma = np.geomspace(1e-3, 1.0, 50)
    eps = 0.03
    by_map = M.smoothing_level(matfun.SmoothedPolar(eps), sigma)
    by_callable = M.smoothing_level(lambda s: s / np.hypot(s, eps), sigma)
    by_tensor = M.smoothing_level(torch.tensor(sigma / np.hypot(sigma, eps)), sigma)
    for fit in (by_map, by_callable, by_tensor):
        assert fit["eps"] == pytest.approx(eps, rel=1e-8)
    by_schedule = M.smoothing_level("jordan", sigma, steps=5)
    by_ns = M.smoothing_level(matfun.NewtonSchulz(5, "jordan"), sigma)
    assert by_schedule == by_ns
    assert 0 < by_schedule["eps"] < 0.1 and by_schedule["residual"] > 0.01  # NS is not a smoothed polar
    # more cubic steps → smaller effective smoothing
    levels = [M.smoothing_level("cubic", sigma, steps=k)["eps"] for k in (5, 10, 20)]
    assert levels[0] > levels[1] > levels[2]


def test_smoothing_level_bad_input():
    sigma = np.geomspace(1e-3, 1, 10)
    with pytest.raises(ValueError, match="shape of sigma"):
        M.smoothing_level(np.ones(5), sigma)
    with pytest.raises(ValueError, match="positive"):
        M.smoothing_level(np.ones(10), -sigma)
    with pytest.raises(ValueError, match="steps"):
        M.smoothing_level("jordan", sigma)
    with pytest.raises(ValueError, match="NaN"):
        M.smoothing_level(np.full(10, np.nan), sigma)


# ---------------------------------------------------------------------------
# Along iterates
# ---------------------------------------------------------------------------


def test_metric_along_shapes_and_last_step():
    G = matrices.geometric((3, 16, 10), 20.0, seed=17)
    ns = matfun.NewtonSchulz(6, "cubic")
    curve = M.metric_along(ns, G, M.alignment)
    assert curve.shape == (7, 3)
    assert np.allclose(curve[-1], M.alignment(ns(G), G), atol=1e-15)
    assert np.all(np.diff(curve, axis=0) > 0)  # cubic NS: alignment grows monotonically here
    errs = M.metric_along(ns, G, M.spectral_error)
    assert errs["worst"].shape == (7, 3) and errs["singular_values"].shape == (7, 3, 10)
    tiled = M.metric_along(matfun.Tiled(matfun.NewtonSchulz(4), 4), G, M.per_tile_alignment, tile=4)
    assert tiled["mean"].shape == (5, 3) and tiled["per_tile"].shape == (5, 3, 4, 3)
    again = M.per_step(M.alignment, matfun.newton_schulz_iterates(G, 6, "cubic"), G)
    assert np.array_equal(again, curve)


def test_per_step_single_matrix():
    G = gaussian((8, 5), seed=18)
    curve = M.per_step(M.duality_efficiency, matfun.newton_schulz_iterates(G, 3), G)
    assert curve.shape == (4,)
    with pytest.raises(ValueError, match="no iterates"):
        M.per_step(M.alignment, [], G)


# ---------------------------------------------------------------------------
# Backends, dtypes, batch shapes
# ---------------------------------------------------------------------------


def test_numpy_torch_float32_agree():
    G = matrices.geometric((2, 18, 12), 20.0, seed=19)
    X = matfun.newton_schulz(G, 5)
    Gt, Xt = torch.from_numpy(G), torch.from_numpy(X)
    G32, X32 = G.astype(np.float32), X.astype(np.float32)
    for f in (M.alignment, M.duality_efficiency, M.nuclear_norm_captured, M.orthogonality_residual):
        ref = f(X, G)
        assert isinstance(ref, np.ndarray) and ref.dtype == np.float64
        assert np.array_equal(f(Xt, Gt), ref)
        assert np.allclose(f(X32, G32), ref, atol=1e-5)
        assert np.allclose(f(Xt.float(), Gt.float()), ref, atol=1e-5)
    for f in (M.spectral_error, lambda X, G: M.per_tile_alignment(X, G, 5)):
        a, b = f(X, G), f(Xt.float(), Gt.float())
        for k in a:
            assert np.allclose(a[k], b[k], atol=1e-5), k
    a = M.information_loss(G, 5)
    b = M.information_loss(Gt.float(), 5)
    c = M.information_loss(Gt, 5, precision="float32")
    for k in a:
        assert np.allclose(a[k], b[k], atol=1e-5) and np.allclose(a[k], c[k], atol=1e-5), k
    bf = M.alignment(Xt.bfloat16(), Gt.bfloat16())
    assert np.allclose(bf, M.alignment(X, G), atol=1e-2)


def test_batch_shapes_and_scalar_convention():
    G = gaussian((2, 3, 9, 7), seed=20)
    X = matfun.newton_schulz(G, 3)
    for f in (M.alignment, M.duality_efficiency, M.orthogonality_residual, M.cosine):
        out = f(X, G)
        assert out.shape == (2, 3) and out.dtype == np.float64
        single = f(X[1, 2], G[1, 2])
        assert isinstance(single, np.float64) and np.ndim(single) == 0
        assert single == pytest.approx(out[1, 2], abs=1e-14)
    assert M.spectral_error(X, G)["worst"].shape == (2, 3)
    assert M.gram_coupling(G, 3)["mean"].shape == (2, 3)
    assert M.tiling_loss(G, 3).shape == (2, 3)
    assert M.per_tile_alignment(X, G, 3)["per_tile"].shape == (2, 3, 3, 3)
    assert isinstance(M.tiling_loss(G[0, 0], 3), np.float64)


def test_reference_reuse():
    G = gaussian((2, 9, 7), seed=21)
    ref = M.reference(G)
    X = matfun.newton_schulz(G, 4)
    assert np.array_equal(M.alignment(X, ref), M.alignment(X, G))
    assert np.array_equal(M.spectral_error(X, ref)["rms"], M.spectral_error(X, G)["rms"])
    assert np.array_equal(M.information_loss(ref, 3)["tiling"], M.information_loss(G, 3)["tiling"])
    with pytest.raises(ValueError, match="rtol"):
        M.alignment(X, ref, rtol=0.5)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "f",
    [M.alignment, M.spectral_error, M.orthogonality_residual, M.duality_efficiency, M.nuclear_norm_captured, M.cosine],
)
def test_shape_mismatch_names_both_shapes(f):
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(5, 4\)"):
        f(np.ones((4, 5)), np.ones((5, 4)))
    with pytest.raises(ValueError, match=r"\(2, 4, 5\).*\(4, 5\)"):
        f(np.ones((2, 4, 5)), np.ones((4, 5)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_raise(bad):
    G = gaussian((2, 5, 4))
    Gb = G.copy()
    Gb[1, 2, 3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        M.alignment(G, Gb)
    with pytest.raises(ValueError, match="NaN or Inf"):
        M.alignment(Gb, G)
    with pytest.raises(ValueError, match="NaN or Inf"):
        M.gram_coupling(torch.from_numpy(Gb), 2)
    with pytest.raises(ValueError, match="NaN or Inf"):
        M.cosine(Gb, G)


@pytest.mark.parametrize("tile", [0, -3, (0, 4), (4, -1), 2.5, (2, 2.0), True, "4", (2, 3, 4), None])
def test_bad_tile_raises(tile):
    G = gaussian((8, 8))
    for call in (
        lambda: M.gram_coupling(G, tile),
        lambda: M.tiling_loss(G, tile),
        lambda: M.per_tile_alignment(G, G, tile),
        lambda: M.information_loss(G, tile),
    ):
        with pytest.raises(ValueError, match="tile"):
            call()


def test_bad_types_raise():
    with pytest.raises(TypeError):
        M.alignment([[1.0]], np.ones((1, 1)))
    with pytest.raises(TypeError, match="dtype"):
        M.alignment(np.ones((3, 3), dtype=int), np.ones((3, 3)))
    with pytest.raises(ValueError, match="dimensions"):
        M.alignment(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="rtol"):
        M.alignment(np.ones((3, 3)), np.ones((3, 3)), rtol=2.0)
