"""Tests for diagnostics.matrices: prescribed spectra, rank, coupling, backends, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diagnostics import matrices as mx

SPECTRUM_TOL = 1e-10


def singular_values(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.svd(matrix, compute_uv=False)


# ---------------------------------------------------------------------------
# Spectrum helpers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spectrum",
    [
        mx.geometric_spectrum(17, 1e4),
        mx.power_law_spectrum(17, 1.5),
        mx.linear_spectrum(17, 50.0),
        mx.clustered_spectrum(17, (1.0, 0.3, 0.01), 0.1, seed=3),
    ],
    ids=["geometric", "power_law", "linear", "clustered"],
)
def test_spectrum_helpers_are_sorted_with_max_one(spectrum):
    assert spectrum.shape == (17,)
    assert spectrum[0] == pytest.approx(1.0, abs=1e-15)
    assert np.all(np.diff(spectrum) <= 0)
    assert np.all(spectrum > 0)


def test_geometric_and_linear_spectrum_end_at_inverse_condition_number():
    assert mx.geometric_spectrum(9, 1e6)[-1] == pytest.approx(1e-6, rel=1e-12)
    assert mx.linear_spectrum(9, 1e6)[-1] == pytest.approx(1e-6, rel=1e-12)
    assert np.allclose(np.diff(np.log(mx.geometric_spectrum(9, 1e6))), -np.log(1e6) / 8)
    np.testing.assert_array_equal(mx.geometric_spectrum(1, 10.0), [1.0])


def test_power_law_spectrum_values():
    np.testing.assert_allclose(mx.power_law_spectrum(4, 2.0), [1, 1 / 4, 1 / 9, 1 / 16])


def test_clustered_spectrum_without_spread_is_the_centres():
    spectrum = mx.clustered_spectrum(6, (2.0, 0.2), spread=0.0)
    np.testing.assert_allclose(spectrum, [1, 1, 1, 0.1, 0.1, 0.1])


# ---------------------------------------------------------------------------
# Matrices with prescribed spectra
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 24), (24, 40), (16, 16), (1, 7), (7, 1)])
@pytest.mark.parametrize(
    "make, spectrum_of_rank",
    [
        (lambda s: mx.geometric(s, 1e5, seed=1), lambda r: mx.geometric_spectrum(r, 1e5)),
        (lambda s: mx.power_law(s, 1.0, seed=2), lambda r: mx.power_law_spectrum(r, 1.0)),
        (lambda s: mx.linear(s, 30.0, seed=3), lambda r: mx.linear_spectrum(r, 30.0)),
    ],
    ids=["geometric", "power_law", "linear"],
)
def test_convenience_matrices_have_requested_singular_values(shape, make, spectrum_of_rank):
    matrix = make(shape)
    assert matrix.shape == shape and matrix.dtype == np.float64
    expected = spectrum_of_rank(min(shape))
    np.testing.assert_allclose(singular_values(matrix), expected, rtol=0, atol=SPECTRUM_TOL)


def test_with_spectrum_per_batch_member_singular_values():
    sigma = np.stack([mx.geometric_spectrum(5, 10.0), mx.linear_spectrum(5, 3.0)])
    matrices = mx.with_spectrum((2, 9, 5), sigma, seed=0)
    for member, expected in zip(matrices, sigma):
        np.testing.assert_allclose(singular_values(member), expected, atol=SPECTRUM_TOL)


def test_with_spectrum_accepts_unsorted_and_torch_singular_values():
    sigma = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    matrix = mx.with_spectrum((6, 3), sigma, seed=0)
    np.testing.assert_allclose(singular_values(matrix), [2.0, 1.0, 0.5], atol=SPECTRUM_TOL)


def test_clustered_matrix_has_its_spectrum():
    matrix = mx.clustered((30, 20), centers=(1.0, 0.1), spread=0.0, seed=4)
    expected = np.array([1.0] * 10 + [0.1] * 10)
    np.testing.assert_allclose(singular_values(matrix), expected, atol=SPECTRUM_TOL)


def test_haar_orthogonal_is_orthogonal_and_batched():
    q = mx.haar_orthogonal(6, batch=(3, 2), seed=5)
    assert q.shape == (3, 2, 6, 6)
    gram = np.swapaxes(q, -1, -2) @ q
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(6), gram.shape), atol=1e-13)
    assert not np.allclose(q[0, 0], q[0, 1])


def test_haar_orthogonal_first_entry_is_not_sign_biased():
    # Without the sign fix, numpy's QR makes R's diagonal negative-biased; with it,
    # Q's entries are symmetric around zero.
    q = mx.haar_orthogonal(3, batch=(4000,), seed=0)
    assert abs(np.mean(q[:, 0, 0] > 0) - 0.5) < 0.05


# ---------------------------------------------------------------------------
# Rank, noise, heavy tails
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [0, 1, 4, 12])
def test_rank_deficient_has_exact_rank(rank):
    matrix = mx.rank_deficient((20, 12), rank, condition_number=100.0, seed=7)
    sv = singular_values(matrix)
    assert np.linalg.matrix_rank(matrix) == rank
    if rank:
        np.testing.assert_allclose(sv[:rank], mx.geometric_spectrum(rank, 100.0), atol=SPECTRUM_TOL)
    assert np.all(sv[rank:] < 1e-13)


def test_low_rank_plus_noise_noise_ratio_is_exact():
    clean = mx.low_rank_plus_noise((3, 30, 20), rank=4, noise=0.0, seed=8)
    noisy = mx.low_rank_plus_noise((3, 30, 20), rank=4, noise=0.25, seed=8)
    np.testing.assert_allclose(singular_values(clean)[:, :4], 1.0, atol=SPECTRUM_TOL)
    noise_norm = np.linalg.norm(noisy - clean, axis=(-2, -1))
    np.testing.assert_allclose(noise_norm, 0.25 * np.sqrt(4), rtol=1e-12)


def test_heavy_tailed_has_heavier_tails_than_gaussian():
    entries = mx.heavy_tailed((200, 200), df=2.5, seed=9).ravel()
    standardised = (entries - entries.mean()) / entries.std()
    assert np.mean(standardised**4) > 3.0 + 1.0  # excess kurtosis well above a Gaussian's


# ---------------------------------------------------------------------------
# Tile coupling
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape, tile", [((12, 12), 4), ((10, 7), 3), ((13, 9), (4, 2)), ((2, 5, 9), (2, 3))])
def test_coupling_zero_is_exactly_block_diagonal(shape, tile):
    matrix = mx.tile_coupled(shape, tile, 0.0, seed=10)
    mask = mx.tile_block_mask(shape[-2], shape[-1], tile)
    assert np.all(matrix[..., ~mask] == 0.0)
    assert np.all(matrix[..., mask] != 0.0)


def test_block_mask_on_non_square_grid():
    # 10 rows in tiles of 3 -> 4 tile rows; 7 columns -> 3 tile columns.
    mask = mx.tile_block_mask(10, 7, 3)
    assert mask[:9].any(axis=1).all() and not mask[9].any()
    assert mask[0:3, 0:3].all() and mask[3:6, 3:6].all() and mask[6:9, 6:7].all()
    assert mask.sum() == 9 + 9 + 3


def test_coupling_one_is_dense_and_interpolates_linearly():
    shape, tile = (12, 16), 4
    endpoint_0 = mx.tile_coupled(shape, tile, 0.0, seed=11)
    endpoint_1 = mx.tile_coupled(shape, tile, 1.0, seed=11)
    middle = mx.tile_coupled(shape, tile, 0.3, seed=11)
    assert np.all(endpoint_1 != 0.0)
    np.testing.assert_allclose(middle, 0.7 * endpoint_0 + 0.3 * endpoint_1, atol=1e-14)
    assert np.linalg.norm(endpoint_1) == pytest.approx(np.linalg.norm(endpoint_0), rel=1e-12)


def test_off_diagonal_energy_grows_with_coupling():
    mask = mx.tile_block_mask(32, 32, 8)
    shares = []
    for coupling in (0.0, 0.25, 0.5, 1.0):
        matrix = mx.tile_coupled((32, 32), 8, coupling, seed=12)
        shares.append(np.sum(matrix[~mask] ** 2) / np.sum(matrix**2))
    assert shares[0] == 0.0 and np.all(np.diff(shares) > 0)


# ---------------------------------------------------------------------------
# Reproducibility, backends, batches (property tests)
# ---------------------------------------------------------------------------

GENERATORS = {
    "haar": lambda shape, seed, **kw: mx.haar_orthogonal(shape[-1], batch=shape[:-2], seed=seed, **kw),
    "geometric": lambda shape, seed, **kw: mx.geometric(shape, 100.0, seed=seed, **kw),
    "power_law": lambda shape, seed, **kw: mx.power_law(shape, 1.0, seed=seed, **kw),
    "linear": lambda shape, seed, **kw: mx.linear(shape, 10.0, seed=seed, **kw),
    "clustered": lambda shape, seed, **kw: mx.clustered(shape, seed=seed, **kw),
    "rank_deficient": lambda shape, seed, **kw: mx.rank_deficient(shape, 1, seed=seed, **kw),
    "low_rank_plus_noise": lambda shape, seed, **kw: mx.low_rank_plus_noise(shape, 1, 0.1, seed=seed, **kw),
    "heavy_tailed": lambda shape, seed, **kw: mx.heavy_tailed(shape, seed=seed, **kw),
    "tile_coupled": lambda shape, seed, **kw: mx.tile_coupled(shape, 2, 0.5, seed=seed, **kw),
}

shapes = st.tuples(st.lists(st.integers(1, 3), max_size=2), st.integers(1, 9), st.integers(1, 9)).map(
    lambda t: (*t[0], t[1], t[2])
)


@pytest.mark.parametrize("name", list(GENERATORS))
@settings(max_examples=15, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_reproducible_batched_and_backend_identical(name, shape, seed):
    make = GENERATORS[name]
    if name == "haar":
        shape = (*shape[:-2], shape[-1], shape[-1])
    first = make(shape, seed)
    assert first.shape == shape and first.dtype == np.float64
    np.testing.assert_array_equal(first, make(shape, seed))
    as_torch = make(shape, seed, backend="torch")
    assert isinstance(as_torch, torch.Tensor) and as_torch.dtype == torch.float64
    np.testing.assert_array_equal(as_torch.numpy(), first)
    as_torch32 = make(shape, seed, backend="torch", dtype="float32")
    np.testing.assert_array_equal(as_torch32.numpy(), make(shape, seed, dtype=np.float32))


@pytest.mark.parametrize("name", list(GENERATORS))
def test_different_seeds_differ(name):
    shape = (2, 6, 5) if name != "haar" else (2, 5, 5)
    assert not np.array_equal(GENERATORS[name](shape, 0), GENERATORS[name](shape, 1))


def test_batch_members_differ():
    batch = mx.geometric((4, 6, 6), 10.0, seed=0)
    assert len({member.tobytes() for member in batch}) == 4


def test_like_selects_library_dtype_and_device():
    template = torch.zeros(2, dtype=torch.float32)
    matrix = mx.geometric((5, 4), 10.0, seed=0, like=template)
    assert isinstance(matrix, torch.Tensor) and matrix.dtype == torch.float32
    assert matrix.device == template.device
    as_numpy = mx.geometric((5, 4), 10.0, seed=0, like=np.zeros(1, dtype=np.float32))
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32
    assert mx.geometric((5, 4), 10.0, like=template, dtype=torch.float64).dtype == torch.float64


def test_torch_device_argument():
    matrix = mx.linear((3, 3), 2.0, backend="torch", device="cpu", dtype=torch.bfloat16)
    assert matrix.device.type == "cpu" and matrix.dtype == torch.bfloat16


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_output_equals_numpy():
    matrix = mx.geometric((8, 6), 10.0, seed=0, backend="torch", device="cuda")
    assert matrix.is_cuda
    np.testing.assert_array_equal(matrix.cpu().numpy(), mx.geometric((8, 6), 10.0, seed=0))


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: mx.geometric((4, 4), 0.5), ValueError, "condition_number"),
        (lambda: mx.linear((4, 4), float("nan")), ValueError, "finite"),
        (lambda: mx.geometric_spectrum(0, 2.0), ValueError, "r must be >= 1"),
        (lambda: mx.power_law_spectrum(3, -1.0), ValueError, "exponent"),
        (lambda: mx.rank_deficient((5, 3), 4), ValueError, "rank must be <= min"),
        (lambda: mx.rank_deficient((5, 3), -1), ValueError, "rank must be >= 0"),
        (lambda: mx.low_rank_plus_noise((5, 3), 0, 0.1), ValueError, "rank"),
        (lambda: mx.low_rank_plus_noise((5, 3), 1, -0.1), ValueError, "noise"),
        (lambda: mx.tile_coupled((8, 8), 2, -0.1), ValueError, "coupling"),
        (lambda: mx.tile_coupled((8, 8), 2, 1.5), ValueError, "coupling"),
        (lambda: mx.tile_coupled((8, 8), 0, 0.5), ValueError, "tile"),
        (lambda: mx.tile_coupled((8, 8), (2, 2, 2), 0.5), ValueError, "tile"),
        (lambda: mx.tile_coupled((8, 8), 2.5, 0.5), ValueError, "tile"),
        (lambda: mx.tile_coupled((8, 8), True, 0.5), ValueError, "tile"),
        (lambda: mx.geometric((4, 4), 2.0, backend="jax"), ValueError, "backend"),
        (lambda: mx.geometric((4, 4), 2.0, dtype="int32"), ValueError, "floating"),
        (lambda: mx.geometric((4, 4), 2.0, dtype="bfloat16"), ValueError, "bfloat16"),
        (lambda: mx.geometric((4, 4), 2.0, device="cuda"), ValueError, "device"),
        (
            lambda: mx.geometric((4, 4), 2.0, backend="numpy", like=torch.zeros(1)),
            ValueError,
            "contradicts",
        ),
        (lambda: mx.geometric((4,), 2.0), ValueError, "shape"),
        (lambda: mx.geometric((4, 0), 2.0), ValueError, "shape"),
        (lambda: mx.geometric(4, 2.0), TypeError, "shape"),
        (lambda: mx.geometric((4, 4), 2.0, seed=-1), ValueError, "seed"),
        (lambda: mx.geometric((4, 4), 2.0, seed=1.5), TypeError, "seed"),
        (lambda: mx.with_spectrum((4, 3), [1.0, 0.5]), ValueError, "min\\(H, W\\) = 3"),
        (lambda: mx.with_spectrum((4, 3), [1.0, -0.5, 0.1]), ValueError, "non-negative"),
        (lambda: mx.with_spectrum((2, 4, 3), np.ones((3, 3))), ValueError, "batch"),
        (lambda: mx.heavy_tailed((4, 4), df=0.0), ValueError, "df"),
        (lambda: mx.clustered_spectrum(4, (), 0.1), ValueError, "centers"),
        (lambda: mx.clustered_spectrum(4, (1.0, -1.0), 0.1), ValueError, "centers"),
        (lambda: mx.clustered_spectrum(4, (1.0,), -0.1), ValueError, "spread"),
        (lambda: mx.haar_orthogonal(0), ValueError, "n must be >= 1"),
    ],
)
def test_bad_input_raises_clearly(call, error, message):
    with pytest.raises(error, match=message):
        call()
