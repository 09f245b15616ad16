"""CPU Newton–Schulz steps with BLAS syrk/symm (matfun._symmetric) against the bmm reference step."""

import numpy as np
import pytest
import torch

import matfun
from matfun import _backend as B
from matfun import _symmetric, _triton_ns
from matfun.newton_schulz import _torch_step

JORDAN = (3.4445, -4.7750, 2.0315)
CUBIC = (1.5, -0.5, 0.0)  # c = 0: the step without a Gram square (no triangle fill)
IDENTITY = lambda X: X  # noqa: E731


def relative_error(X, Y):
    return float(torch.linalg.norm((X - Y).double()) / torch.linalg.norm(Y.double()))


@pytest.mark.parametrize("n", [1, 63, 64, 150])
def test_fill_mirrors_the_upper_triangle(n):
    rng = np.random.default_rng(n)
    upper = np.triu(rng.standard_normal((n, n)))
    a = np.asfortranarray(upper + np.tril(rng.standard_normal((n, n)), -1))  # garbage below
    _symmetric.fill_lower_from_upper(a)
    np.testing.assert_array_equal(a, upper + np.triu(upper, 1).T)


@pytest.mark.parametrize("coefficients", [JORDAN, CUBIC])
@pytest.mark.parametrize(
    "dtype, rounding, tolerance",
    [
        # float64/float32: same products summed in another order; one step of
        # size |a| + |b| + |c| ≈ 10 on a unit-norm iterate loses at most a few
        # dozen ulps: 1e-13 (eps 2.2e-16) and 1e-5 (eps 1.2e-7).
        (torch.float64, IDENTITY, 1e-13),
        (torch.float32, IDENTITY, 1e-5),
        # bfloat16-emulated: each of the three fused products is rounded once to
        # bf16 (unit roundoff 2^-9); a sum that lands on the other side of a
        # rounding boundary moves an entry by one bf16 ulp (2^-8 relative), so
        # the steps agree to a few 2^-8, not bit for bit.
        (torch.float32, B.bf16_round, 2**-6),
    ],
)
def test_symmetric_step_matches_reference_step(coefficients, dtype, rounding, tolerance):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3, 40, 90, generator=g, dtype=dtype)
    X = rounding(X / torch.linalg.norm(X, dim=(-2, -1), keepdim=True))
    before = X.clone()
    got = _symmetric.symmetric_step(X, *coefficients, rounding)
    want = _torch_step(X, *coefficients, rounding)
    assert got.dtype == dtype and got.shape == X.shape and got.is_contiguous()
    assert torch.equal(X, before)  # the input is read, never overwritten by BLAS
    assert relative_error(got, want) <= tolerance
    if rounding is B.bf16_round:
        assert torch.equal(got, B.bf16_round(got))  # every entry is a bfloat16 value


def test_symmetric_step_output_is_symmetric_in_its_gram():
    """The step maps X to p(X Xᵀ) X, so X₁ X₀ᵀ must be symmetric (a polynomial in X₀X₀ᵀ)."""
    X = torch.randn(70, 130, dtype=torch.float64)
    X = X / torch.linalg.norm(X)
    X1 = _symmetric.symmetric_step(X, *JORDAN, IDENTITY)
    M = X1 @ X.T
    assert torch.allclose(M, M.T, atol=1e-14)


@pytest.fixture
def small_threshold(monkeypatch):
    """Route small matrices through the syrk step so the dispatch is tested quickly."""
    monkeypatch.setattr(_symmetric, "MIN_GRAM_SIZE", 16)


@pytest.mark.parametrize("shape", [(48, 80), (80, 48), (2, 3, 32, 40)])
@pytest.mark.parametrize("precision", ["float64", "float32", "bfloat16-emulated"])
def test_newton_schulz_through_syrk_agrees_with_bmm_path(small_threshold, monkeypatch, shape, precision):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    calls = []
    real_step = _symmetric.symmetric_step
    monkeypatch.setattr(_symmetric, "symmetric_step", lambda *a: calls.append(1) or real_step(*a))
    got = matfun.newton_schulz(G, 5, "jordan", precision)
    assert len(calls) == 5
    monkeypatch.setattr(_symmetric, "MIN_GRAM_SIZE", 10**9)
    want = matfun.newton_schulz(G, 5, "jordan", precision)
    # Five Jordan steps amplify a perturbation by at most a ≈ 3.44 each (the
    # slope of p at 0): float64/float32 agree to 3.44⁵·eps-level; bf16-emulated
    # results agree as two bf16 runs do (rounding flips, a few percent at most).
    tolerance = {"float64": 1e-12, "float32": 1e-4, "bfloat16-emulated": 5e-2}[precision]
    assert relative_error(torch.as_tensor(got), torch.as_tensor(want)) <= tolerance


def test_numpy_input_runs_through_syrk_and_returns_numpy(small_threshold):
    G = np.random.default_rng(2).standard_normal((40, 64)).astype(np.float32)
    out = matfun.newton_schulz(G)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    s = np.linalg.svd(out.astype(np.float64), compute_uv=False)
    assert s.max() < 1.3 and s.min() > 0.6  # Jordan's quintic band around 1


def test_applies_only_to_cpu_float_matrices_without_grad():
    big = torch.zeros(_symmetric.MIN_GRAM_SIZE, _symmetric.MIN_GRAM_SIZE + 1)
    assert _symmetric.applies(big)
    assert not _symmetric.applies(big[:-1])  # Gram side below the threshold
    assert not _symmetric.applies(big.bfloat16())  # native bf16: no BLAS routine, torch keeps it
    assert not _symmetric.applies(big.requires_grad_())


def test_backend_argument_is_checked():
    with pytest.raises(ValueError, match="backend must be one of"):
        matfun.NewtonSchulz(5, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        matfun.tiled_newton_schulz(np.eye(4), 2, backend=None)


def test_triton_backend_without_triton_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_triton_ns, "triton_installed", lambda: False)
    with pytest.raises(ImportError, match=r"matfun\[triton\]"):
        matfun.newton_schulz(torch.randn(8, 8), backend="triton")
    # "auto" quietly stays on torch
    X = torch.randn(8, 8)
    assert torch.equal(matfun.newton_schulz(X), matfun.newton_schulz(X, backend="torch"))
