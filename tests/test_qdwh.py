"""QDWH polar factor: accuracy against the SVD, invariances, rank deficiency, dispatch."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import matfun
from diagnostics.threads import torch_threads
from matfun import _qdwh_lapack, qdwh
from matfun.qdwh import choose_method, weights

EPS64 = np.finfo(np.float64).eps
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def prescribed(shape, kappa, seed=0, rank=None):
    """Seeded matrix (batch allowed) with singular values geomspace(1, 1/κ) (zeros beyond ``rank``)."""
    rng = np.random.default_rng(seed)
    *batch, m, n = shape
    r = min(m, n)
    U = np.linalg.qr(rng.standard_normal((*batch, m, r)))[0]
    V = np.linalg.qr(rng.standard_normal((*batch, n, r)))[0]
    s = np.geomspace(1.0, 1.0 / kappa, r)
    if rank is not None:
        s[rank:] = 0.0
    return (U * s) @ np.swapaxes(V, -1, -2)


@pytest.fixture(params=["batched", "lapack"])
def path(request, monkeypatch):
    """Run a test through the batched torch iteration and through the CPU LAPACK path."""
    monkeypatch.setattr(_qdwh_lapack, "MIN_SIZE", 1 if request.param == "lapack" else 10**9)
    return request.param


def svd_polar(G):
    return matfun.polar(G, method="svd")


def tall(X):
    return X if X.shape[-2] >= X.shape[-1] else np.swapaxes(X, -1, -2)


@pytest.mark.parametrize("kappa", [1.0, 1e4, 1e8, 1e12])
@pytest.mark.parametrize("shape", [(40, 24), (24, 40), (32, 32), (3, 30, 20), (9, 1), (1, 1)], ids=str)
def test_accuracy_float64(kappa, shape, path):
    G = prescribed(shape, kappa)
    U, info = matfun.qdwh_polar(G, return_info=True)
    assert info.svd_fallback == ()  # full rank: QDWH did the work
    assert 1 <= info.iterations <= 6
    assert info.iterations == info.qr_iterations + info.cholesky_iterations + info.polish_iterations
    Ut, Gt = tall(U), tall(G)
    n = Ut.shape[-1]
    H = np.swapaxes(Ut, -1, -2) @ Gt
    H = (H + np.swapaxes(H, -1, -2)) / 2
    # Backward error and orthogonality: a small multiple of eps (measured ≤ 2e-15 here);
    # 1e-14·5 leaves room for other BLAS/LAPACK builds.
    backward = np.linalg.norm(Ut @ H - Gt, axis=(-2, -1)) / np.linalg.norm(Gt, axis=(-2, -1))
    assert backward.max() <= 5e-14
    orthogonality = np.linalg.norm(np.swapaxes(Ut, -1, -2) @ Ut - np.eye(n), axis=(-2, -1))
    assert orthogonality.max() <= 5e-14
    # Agreement with the SVD method: the polar factor's condition number is ~κ, so two
    # backward-stable methods differ by up to a small multiple of κ·eps.
    P = svd_polar(G)
    diff = np.linalg.norm(U - P, axis=(-2, -1)) / np.linalg.norm(P, axis=(-2, -1))
    assert diff.max() <= 20 * max(kappa, 10.0) * EPS64


def test_well_conditioned_runs_cholesky_only_and_few_steps():
    _, info = matfun.qdwh_polar(prescribed((50, 30), 2.0), return_info=True)
    assert info.qr_iterations == 0 and info.cholesky_iterations <= 4
    _, info = matfun.qdwh_polar(prescribed((50, 30), 1e12), return_info=True)
    assert info.qr_iterations >= 2  # ill-conditioned start: QR-based steps first


def test_weights_limit_is_halley():
    np.testing.assert_allclose(weights(1.0), (3.0, 1.0, 3.0))
    a, b, c = weights(1e-3)
    assert c > 100 and np.isclose(c, a + b - 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_cpu_and_dtype(dtype, path):
    G = torch.from_numpy(prescribed((2, 48, 32), 1e3, seed=3)).to(dtype)
    U = matfun.polar(G, method="qdwh")
    assert U.dtype == dtype and U.device == G.device and U.shape == G.shape
    eps = torch.finfo(dtype).eps
    P = matfun.polar(G, method="svd")
    # float32: κ·eps ≈ 1e-4 relative agreement, orthogonality a small multiple of eps·n
    assert float(torch.linalg.matrix_norm(U.mT @ U - torch.eye(32, dtype=dtype)).max()) <= 100 * eps
    assert float((torch.linalg.matrix_norm(U - P) / torch.linalg.matrix_norm(P)).max()) <= 20 * 1e3 * eps


def test_rank_deficient_same_contract_as_svd(path):
    G = prescribed((4, 30, 20), 10.0, seed=5)
    G[1] = prescribed((30, 20), 10.0, seed=6, rank=7)  # numerically rank 7
    G[2] = 0.0  # zero matrix
    U, info = matfun.qdwh_polar(G, return_info=True)
    assert info.svd_fallback == (1, 2)
    P = svd_polar(G)
    np.testing.assert_allclose(U, P, atol=1e-13)
    assert np.all(U[2] == 0)
    # the partial isometry: rank 7, U Uᵀ U = U
    assert np.linalg.matrix_rank(U[1]) == 7
    np.testing.assert_allclose(U[1] @ U[1].T @ U[1], U[1], atol=1e-13)


def test_rank_cutoff_rtol_is_respected(path):
    G = prescribed((30, 20), 1e6, seed=8)
    # rtol above 1/κ: the smallest singular values are cut, exactly as with the SVD
    U, info = matfun.qdwh_polar(G, rtol=1e-4, return_info=True)
    assert info.svd_fallback == (0,)
    np.testing.assert_allclose(U, matfun.polar(G, rtol=1e-4), atol=1e-13)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(2, 24), n=st.integers(2, 24), log_kappa=st.floats(0, 8))
def test_orthogonal_equivariance_and_transpose(seed, m, n, log_kappa, path):
    G = prescribed((m, n), 10.0**log_kappa, seed=seed)
    rng = np.random.default_rng(seed + 1)
    Q1 = np.linalg.qr(rng.standard_normal((m, m)))[0]
    Q2 = np.linalg.qr(rng.standard_normal((n, n)))[0]
    U = matfun.polar(G, method="qdwh")
    tol = 100 * 10.0**log_kappa * EPS64  # conditioning of the polar factor: ~κ·eps
    np.testing.assert_allclose(matfun.polar(Q1 @ G @ Q2.T, method="qdwh"), Q1 @ U @ Q2.T, atol=tol)
    np.testing.assert_allclose(matfun.polar(G.T, method="qdwh"), U.T, atol=tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("scale", [1e-30, 1e-10, 1e10, 1e30])
def test_scale_invariance(dtype, scale, path):
    G = prescribed((2, 24, 16), 1e3, seed=9).astype(dtype)
    U = matfun.polar(G, method="qdwh")
    Us = matfun.polar((G * dtype(scale)).astype(dtype), method="qdwh")
    assert np.all(np.isfinite(Us))
    # only the rounding of G·scale differs: κ·eps relative
    np.testing.assert_allclose(Us, U, atol=100 * 1e3 * np.finfo(dtype).eps)


def test_dispatch_and_errors():
    G = prescribed((20, 12), 10.0)
    with pytest.raises(ValueError, match="method must be one of"):
        matfun.polar(G, method="newton")
    with pytest.raises(ValueError, match="max_iter"):
        matfun.qdwh_polar(G, max_iter=0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        matfun.qdwh_polar(np.full((3, 3), np.nan))
    assert choose_method(np.zeros((8, 8)), "auto") == "svd"  # small: SVD
    big = np.zeros((2048, 2048))
    for threads in (1, 2):  # on the CPU: float64 the SVD (as fast), float32 QDWH (bench_polar.py)
        with torch_threads(threads):
            assert choose_method(big, "auto") == "svd"
            assert choose_method(torch.zeros(2048, 2048, dtype=torch.float64), "auto") == "svd"
            assert choose_method(big.astype(np.float32), "auto") == "qdwh"
            assert choose_method(torch.zeros(2048, 2048), "auto") == "qdwh"
    edge = qdwh.AUTO_MIN_SIZE_CPU_FLOAT32
    assert choose_method(np.zeros((edge, 3 * edge), np.float32), "auto") == "qdwh"
    assert choose_method(np.zeros((edge - 1, 3 * edge), np.float32), "auto") == "svd"
    G32 = prescribed((edge, edge), 10.0, seed=13).astype(np.float32)
    np.testing.assert_array_equal(matfun.polar(G32, method="auto"), matfun.polar(G32, method="qdwh"))
    # as accurate as float32 allows: within a few tens of eps of the float64 polar factor
    assert np.abs(matfun.polar(G32, method="auto") - matfun.polar(G32.astype(np.float64))).max() <= 50 * 1.2e-7
    # auto on a small matrix is exactly the SVD method
    np.testing.assert_array_equal(matfun.polar(G, method="auto"), matfun.polar(G))
    # the map object yields one iterate, the output
    (only,) = list(matfun.Polar(method="qdwh").iterates(G))
    np.testing.assert_allclose(only, matfun.polar(G), atol=1e-14)
    # empty matrices
    assert matfun.qdwh_polar(np.zeros((0, 3))).shape == (0, 3)


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_svd(dtype):
    G = torch.from_numpy(prescribed((3, 96, 64), 1e4, seed=11)).to(dtype=dtype, device="cuda")
    U, info = matfun.qdwh_polar(G, return_info=True)
    assert U.device == G.device and U.dtype == dtype and info.svd_fallback == ()
    P = matfun.polar(G, method="svd")
    eps = torch.finfo(dtype).eps
    assert float((torch.linalg.matrix_norm(U - P) / torch.linalg.matrix_norm(P)).max()) <= 20 * 1e4 * eps


@CUDA
def test_cuda_auto_picks_qdwh_for_large():
    X = torch.zeros(512, 512, device="cuda")
    assert choose_method(X, "auto") == "qdwh"


def test_polish_terms_finish_by_the_taylor_remainder():
    plan = qdwh._Plan(rtol=1e-12, max_iter=20, eps=EPS64)
    t = qdwh.POLISH_TAYLOR
    np.testing.assert_allclose(t, [1, -1 / 2, 3 / 8, -5 / 16, 35 / 128])  # (1 + x)^(-1/2)
    for e in np.geomspace(1e-16, 1e-1, 61):
        k = plan.polish_terms(0.5, e, 100, 100)  # ℓ far from 1: the norm bound alone decides
        if k:
            assert 2 * abs(t[k + 1]) * e ** (k + 1) <= EPS64
            assert k == 1 or 2 * abs(t[k]) * e**k > EPS64  # the fewest terms that finish
        else:
            assert 2 * abs(t[4]) * e**4 > EPS64
    assert plan.polish_terms(0.5, 1.4e-4, 100, 100) == 3 and plan.polish_terms(0.5, 2e-4, 100, 100) == 0
    # float32 at a size where rounding alone exceeds √eps: ℓ ≈ 1 and e at the noise level finish
    plan32 = qdwh._Plan(rtol=1e-6, max_iter=20, eps=float(np.finfo(np.float32).eps))
    noise = 4096 * 64 * plan32.eps
    assert plan32.polish_terms(1.0, noise, 4096, 4096) == 1
    assert plan32.polish_terms(0.9, noise, 4096, 4096) == 0


@pytest.mark.parametrize("terms", [1, 2, 3])
def test_lapack_polish_orthogonalises_and_keeps_the_polar_factor(terms):
    rng = np.random.default_rng(terms)
    n = 40
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    e = {1: 1e-8, 2: 5e-6, 3: 1e-4}[terms]
    X = (Q * np.sqrt(1 + e * rng.uniform(-1, 1, n))) @ V.T  # XᵀX = I + E, ‖E‖₂ ≤ e
    w = _qdwh_lapack._Workspace(np.asfortranarray(X.T))
    E = w.gram_minus_identity()
    bound = _qdwh_lapack._norm_bound_upper(E)
    assert bound >= np.linalg.norm(X.T @ X - np.eye(n), 2)
    assert qdwh._Plan(1e-12, 20, EPS64).polish_terms(0.5, min(bound, e), n, n) == terms
    _qdwh_lapack._polish(w, E, terms)
    U = w.Xt.T
    assert np.linalg.norm(U.T @ U - np.eye(n), 2) <= 20 * EPS64
    np.testing.assert_allclose(U, Q @ V.T, atol=20 * EPS64)  # the polar factor of X


def test_norm_bound_of_an_upper_triangle_ignores_the_lower_one():
    rng = np.random.default_rng(0)
    S = rng.standard_normal((600, 600))
    S = S + S.T
    stored = np.asfortranarray(np.triu(S) + np.tril(rng.standard_normal((600, 600)) * 1e30, -1))
    expected = min(np.linalg.norm(S), np.abs(S).sum(0).max())
    assert _qdwh_lapack._norm_bound_upper(stored) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("kappa", [1e3, 1e6])
def test_lower_bound_is_close_to_the_inverse_condition_number(kappa, path):
    # α from the power estimate, not the norm bounds (which exceed ‖A‖₂ many times)
    _, info = matfun.qdwh_polar(prescribed((300, 260), kappa, seed=4) * 7.0, return_info=True)
    assert 0.5 / kappa <= info.lower_bound <= 1.5 / kappa


def test_large_cpu_matrices_take_the_lapack_path(monkeypatch):
    calls = []
    original = _qdwh_lapack.qdwh_matrix
    monkeypatch.setattr(_qdwh_lapack, "qdwh_matrix", lambda *a: calls.append(1) or original(*a))
    G = prescribed((2, _qdwh_lapack.MIN_SIZE + 40, _qdwh_lapack.MIN_SIZE), 1e5, seed=12)
    U, info = matfun.qdwh_polar(G, return_info=True)
    assert len(calls) == 2 and info.svd_fallback == ()
    monkeypatch.setattr(_qdwh_lapack, "MIN_SIZE", 10**9)
    np.testing.assert_allclose(U, matfun.qdwh_polar(G), atol=100 * 1e5 * EPS64)
    # a tensor that requires grad stays in torch (differentiable), without warnings
    X = torch.from_numpy(G[0]).requires_grad_()
    assert not _qdwh_lapack.applies(X[None])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert matfun.qdwh_polar(X).requires_grad


@pytest.mark.parametrize("max_iter", [1, 2])
def test_max_iter_hands_unconverged_matrices_to_the_svd_with_their_counts(max_iter, path):
    G = prescribed((3, 30, 20), 1e8, seed=13)  # needs 5 steps
    G[1] = prescribed((30, 20), 10.0, seed=14, rank=5)  # rank-deficient: never runs QDWH
    U, info = matfun.qdwh_polar(G, max_iter=max_iter, return_info=True)
    assert info.svd_fallback == (0, 1, 2)
    np.testing.assert_allclose(U, svd_polar(G), atol=20 * 1e8 * EPS64)  # SVDs of other scalings: κ·eps
    # the steps the unconverged matrices took are reported, and the ℓ₀ they used
    assert info.iterations == max_iter == info.qr_iterations + info.cholesky_iterations + info.polish_iterations
    assert 0.5e-8 <= info.lower_bound <= 1.5e-8


@pytest.mark.parametrize("order", ["F", "C"])
def test_lapack_polish_lands_in_the_iterate_whatever_its_layout(order):
    # the iterate must not be silently copied by a BLAS call that writes its result in place
    rng = np.random.default_rng(7)
    n = 30
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    X = Q * np.sqrt(1 + 1e-9 * rng.uniform(-1, 1, n))  # XᵀX = I + E, ‖E‖₂ ≤ 1e-9: one term finishes
    w = _qdwh_lapack._Workspace(np.array(X.T, order=order))
    _qdwh_lapack._polish(w, w.gram_minus_identity(), 1)
    U = w.Xt.T
    assert np.linalg.norm(U.T @ U - np.eye(n), 2) <= 20 * EPS64  # 1e-9 had the polish been lost


@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (6, 6), (9, 1), (2, 2)], ids=str)
def test_input_is_never_changed_and_its_layout_does_not_matter(shape, path):
    rng = np.random.default_rng(15)
    G = rng.standard_normal((2, *shape))
    G *= 0.9 / np.abs(G).max(axis=(-2, -1), keepdims=True)  # largest entry in [0.5, 1): no rescaled copy
    readonly = G.copy()
    readonly.flags.writeable = False
    layouts = {
        "C": G.copy(),
        "F": np.swapaxes(np.swapaxes(G, -1, -2).copy(), -1, -2),
        "negative strides": G[:, ::-1, ::-1].copy()[:, ::-1, ::-1],
        "read-only": readonly,
        "strided view": np.repeat(G, 2, axis=-1)[..., ::2],
        "torch": torch.from_numpy(G.copy()),
        "torch F": torch.from_numpy(G.copy()).mT.contiguous().mT,
    }
    expected = matfun.qdwh_polar(G.copy())
    for name, X in layouts.items():
        as_numpy = (lambda Y: Y.numpy()) if torch.is_tensor(X) else np.asarray
        before = as_numpy(X).copy()
        U = as_numpy(matfun.polar(X, method="qdwh"))
        np.testing.assert_array_equal(as_numpy(X), before, err_msg=name)
        np.testing.assert_allclose(U, expected, atol=10 * EPS64, err_msg=name)  # rounding only


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_gets_the_cut_off_of_its_rounding_level(dtype, path):
    # rank 8 in float64; rounded to 16 bits its other singular values are rounding noise
    # (~1e-3), far above float32's cut-off: qdwh_polar must drop them as matfun.polar does
    G = torch.from_numpy(prescribed((30, 20), 10.0, seed=4, rank=8)).to(dtype)
    U, info = matfun.qdwh_polar(G, return_info=True)
    assert info.svd_fallback == (0,)
    P = matfun.polar(G)
    assert torch.linalg.matrix_rank(U.float(), atol=0.5) == 8
    # both are a float32 SVD's partial isometry rounded to 16 bits: at most one ulp apart
    torch.testing.assert_close(U.float(), P.float(), atol=torch.finfo(dtype).eps, rtol=0)


def test_lapack_polish_judges_rounding_noise_by_the_iterate_it_measured(monkeypatch):
    # The CPU path forms E = XᵀX − I of the n × n iterate on R, whose rounding noise is
    # √n·eps per entry, not √m·eps: with m in the noise allowance, a tall float32 matrix
    # whose ℓ₀ was overestimated got a one-term polish at ‖E‖ ≈ 0.023 (orthogonality 200·eps,
    # measured at 8192 × 1024 with ℓ₀ 10× too high).
    seen = []
    original = qdwh._Plan.polish_terms
    monkeypatch.setattr(
        qdwh._Plan, "polish_terms", lambda self, ell, e, m, n: seen.append((m, n)) or original(self, ell, e, m, n)
    )
    monkeypatch.setattr(_qdwh_lapack, "MIN_SIZE", 1)
    matfun.qdwh_polar(prescribed((200, 8), 10.0, seed=16).astype(np.float32))
    assert seen and all(size == (8, 8) for size in seen)


def test_flops_model_follows_the_method():
    svd, qdwh_map = matfun.Polar(), matfun.Polar(method="qdwh")
    n = 512
    # typical QDWH: 6n³ − (8/3)n³ (QR and its Q) + (11/3 + 2·10/3 + 3)n³ (steps) = (50/3)n³
    assert qdwh_map.flops((n, n)) == pytest.approx(50 * n**3 / 3, abs=1)
    assert svd.flops((n, n)) == 28 * n**3 and matfun.Polar(method="auto").flops((n, n)) == svd.flops((n, n))
    assert qdwh_map.flops((2 * n, 2 * n)) == pytest.approx(8 * qdwh_map.flops((n, n)), abs=8)  # O(n³)
    # batched and transposed shapes count alike; a tall matrix pays 6 s r² for its QR and Q
    assert qdwh_map.flops((3, 2 * n, n)) == qdwh_map.flops((3, n, 2 * n))
    assert qdwh_map.flops((3, 2 * n, n)) == pytest.approx(3 * (12 + 32 / 3) * n**3, abs=3)
