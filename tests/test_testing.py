"""matfun.testing: the toolkit's maps pass, deliberately broken orthogonalisers fail the right check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import matfun
from matfun.testing import CHECK_NAMES, PROFILES, CheckResult, Report, assert_orthogonalizer, check_orthogonalizer

SHAPES = ((32, 32), (32, 48), (48, 32))
JORDAN = (3.4445, -4.7750, 2.0315)


# ------------------------------------------------------------------ hand-written maps
def hand_jordan(G, a=JORDAN[0], b=JORDAN[1], c=JORDAN[2], steps=5, eps=1e-7, transpose_back=True):
    """Muon's reference loop (torch), optionally broken."""
    X = G.float()
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / (X.norm() + eps)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    if tall and transpose_back:
        X = X.T
    return X.to(G.dtype)


def max_entry_normalised(G):
    """Normalises by the largest entry instead of a norm: σ_max(X₀) ≫ 1, the quintic blows up."""
    X = G / (G.abs().max() + 1e-7)
    for _ in range(5):
        A = X @ X.T
        X = JORDAN[0] * X + (JORDAN[1] * A + JORDAN[2] * A @ A) @ X
    return X


pytestmark = pytest.mark.usefixtures("one_thread")


def failed(report: Report) -> set[str]:
    return {c.name for c in report.failures}


# ------------------------------------------------------------------ the toolkit's maps pass
@pytest.mark.parametrize(
    "fn, kwargs",
    [
        (lambda G: matfun.newton_schulz(G, 5, "jordan"), {"schedule": "jordan"}),
        (matfun.polar, {}),
        (lambda G: matfun.newton_schulz(G, 5, "polar_express"), {"schedule": "polar_express"}),
        (lambda G: matfun.newton_schulz(G, 5, "you"), {"schedule": "you"}),
        (
            lambda G: matfun.newton_schulz(G, 5, "jordan", precision="bfloat16-emulated"),
            {"precision_profile": "bf16", "schedule": "jordan"},
        ),
        (lambda G: matfun.newton_schulz(G, 5, "jordan"), {"backend": "numpy", "schedule": "jordan"}),
        (matfun.polar, {"backend": "numpy", "dtype": "float64"}),
        (hand_jordan, {"schedule": "jordan"}),  # the reference loop the broken variants start from
    ],
    ids=[
        "jordan-fp32",
        "polar",
        "polar_express",
        "you",
        "jordan-bf16-emulated",
        "numpy-jordan",
        "numpy-polar-f64",
        "hand-jordan",
    ],
)
def test_toolkit_maps_pass(fn, kwargs):
    report = check_orthogonalizer(fn, shapes=SHAPES, **kwargs)
    assert report.passed, report.table()
    expected = [n for n in CHECK_NAMES if n != "schedule_agreement" or "schedule" in kwargs]
    assert [c.name for c in report.checks] == expected


def test_native_bf16_input_passes_bf16_profile():
    report = check_orthogonalizer(
        lambda G: matfun.newton_schulz(G, 5, "jordan"),
        dtype="bfloat16",
        precision_profile="bf16",
        schedule="jordan",
        shapes=SHAPES,
    )
    assert report.passed, report.table()


def test_jordan_alignment_is_high_but_not_exact_and_has_margin():
    """The calibration the defaults rest on: Jordan-5 ≈ 0.96 worst case, well above 0.85, below 0.999."""
    for precision, profile in (("float32", "fp32"), ("bfloat16-emulated", "bf16")):
        r = check_orthogonalizer(
            lambda G, precision=precision: matfun.newton_schulz(G, 5, "jordan", precision=precision),
            precision_profile=profile,
            shapes=SHAPES,
            seed=0,
        )
        a = r["alignment"]
        assert PROFILES[profile].min_alignment + 0.05 < a.value < 0.999
        # the worst case is named: the kappa = 1e3 matrix on the fixed shapes, though a drawn shape
        # can make the low-rank-plus-noise matrix the worst instead
        assert a.detail.startswith("worst alignment on ") and ("kappa=1e3" in a.detail or "low-rank" in a.detail)
    assert check_orthogonalizer(matfun.polar, shapes=SHAPES)["alignment"].value > 0.9999


def test_thresholds_are_arguments_not_hard_coded():
    fn = lambda G: matfun.newton_schulz(G, 5, "jordan")  # noqa: E731
    r = check_orthogonalizer(fn, min_alignment=0.99, scale_tol=1e-12, equivariance_tol=1e-12, shapes=SHAPES)
    assert {"alignment", "scale_invariance", "orthogonal_equivariance"} <= failed(r)
    assert r["alignment"].threshold == 0.99


# ------------------------------------------------------------------ broken maps fail the right check
def test_wrong_coefficient_fails_schedule_agreement_only():
    r = check_orthogonalizer(lambda G: hand_jordan(G, a=3.0), schedule="jordan", shapes=SHAPES)
    # a = 3.0 also moves gains out of Jordan's declared band [0.668, 1.226] (to ≈ 0.30)
    assert failed(r) == {"schedule_agreement", "direction_gain", "output_spectrum"}, r.table()
    assert r["schedule_agreement"].value > 0.1
    # the same wrong map in bf16 is still caught under the looser bf16 profile
    r = check_orthogonalizer(
        lambda G: hand_jordan(G.bfloat16(), a=3.0).float(), schedule="jordan", precision_profile="bf16", shapes=SHAPES
    )
    assert "schedule_agreement" in failed(r)


def test_plain_bf16_torch_loop_passes_bf16_profile():
    r = check_orthogonalizer(
        lambda G: hand_jordan(G.bfloat16()).float(), schedule="jordan", precision_profile="bf16", shapes=SHAPES
    )
    assert r.passed, r.table()


def test_missing_transpose_back_fails_shape_and_transpose():
    r = check_orthogonalizer(lambda G: hand_jordan(G, transpose_back=False), schedule="jordan", shapes=SHAPES)
    assert {"shape", "transpose_equivariance"} <= failed(r), r.table()
    assert "48x32 -> 32x48" in r["shape"].detail
    assert "dtype" not in failed(r)


def test_max_entry_normalisation_fails_finite_and_alignment():
    r = check_orthogonalizer(max_entry_normalised, shapes=SHAPES)
    assert {"finite", "alignment"} <= failed(r), r.table()
    assert "non-finite" in r["finite"].detail
    assert "zero" not in failed(r) and "shape" not in failed(r)


def test_wrong_dtype_fails_dtype_only():
    r = check_orthogonalizer(lambda G: matfun.newton_schulz(G).double(), shapes=SHAPES)
    assert failed(r) == {"dtype"}, r.table()
    assert "float64 (want float32)" in r["dtype"].detail


def test_identity_fails_alignment_and_scale_invariance():
    r = check_orthogonalizer(lambda G: G, shapes=SHAPES)
    assert {"alignment", "scale_invariance"} <= failed(r), r.table()
    assert r["alignment"].value < 0.6
    assert r["scale_invariance"].value > 1


def test_additive_eps_normalisation_fails_scale_invariance():
    r = check_orthogonalizer(lambda G: hand_jordan(G, eps=1e-3), shapes=SHAPES)
    assert failed(r) == {"scale_invariance"}, r.table()


def test_raising_function_is_reported_not_crashing():
    def boom(G):
        raise RuntimeError("kaboom in user code")

    r = check_orthogonalizer(boom, schedule="jordan", shapes=SHAPES)
    assert not r.passed
    assert failed(r) == set(CHECK_NAMES)
    assert all("RuntimeError: kaboom in user code" in c.detail for c in r.checks)
    with pytest.raises(AssertionError, match="kaboom"):
        assert_orthogonalizer(boom, shapes=SHAPES)


def test_raising_on_tall_only_fails_the_checks_that_use_tall():
    def wide_only(G):
        if G.shape[0] > G.shape[1]:
            raise ValueError("tall not supported")
        return matfun.newton_schulz(G)

    r = check_orthogonalizer(wide_only, shapes=SHAPES)
    assert {"shape", "transpose_equivariance", "alignment"} <= failed(r)
    assert "zero" in failed(r) and "scale_invariance" not in failed(r)


def test_wrong_library_and_in_place_modification():
    r = check_orthogonalizer(lambda G: matfun.newton_schulz(G).numpy(), shapes=SHAPES)
    assert failed(r) == {"device"}, r.table()

    def in_place(G):
        G /= G.norm() + 1e-30
        return matfun.newton_schulz(G)

    r = check_orthogonalizer(in_place, shapes=SHAPES)
    assert "input_unchanged" in failed(r)


def test_non_array_output_is_reported():
    r = check_orthogonalizer(lambda G: None, shapes=SHAPES)
    assert not r.passed and "alignment" in failed(r)


# ------------------------------------------------------------------ report and API
def test_report_table_and_assert():
    r = check_orthogonalizer(lambda G: G, shapes=SHAPES)
    table = r.table()
    assert str(r) == table
    lines = table.splitlines()
    header = lines[1]
    assert header.split()[:4] == ["check", "result", "value", "threshold"]
    col = header.index("result")
    for line in lines[3 : 3 + len(r.checks)]:  # fixed width: the result column lines up
        assert line[col : col + 4] in ("PASS", "FAIL")
    assert lines[-1].startswith("FAILED: ") and "alignment" in lines[-1]
    assert isinstance(r.checks[0], CheckResult)
    with pytest.raises(AssertionError) as info:
        assert_orthogonalizer(lambda G: G, shapes=SHAPES)
    assert "alignment" in str(info.value) and "threshold" in str(info.value)
    ok = assert_orthogonalizer(matfun.polar, shapes=SHAPES)
    assert ok.passed and ok.table().splitlines()[-1].startswith("PASSED")


def test_skip_seed_and_bad_arguments():
    fn = lambda G: matfun.newton_schulz(G)  # noqa: E731
    r = check_orthogonalizer(fn, skip=("orthogonal_equivariance", "alignment"), shapes=SHAPES)
    assert "alignment" not in [c.name for c in r.checks] and r.passed
    a = check_orthogonalizer(fn, seed=3, shapes=SHAPES)["alignment"].value
    assert a == check_orthogonalizer(fn, seed=3, shapes=SHAPES)["alignment"].value
    assert a != check_orthogonalizer(fn, seed=4, shapes=SHAPES)["alignment"].value
    for kwargs in (
        {"precision_profile": "fp8"},
        {"schedule": "nope"},
        {"backend": "jax"},
        {"backend": "numpy", "dtype": "bfloat16"},
        {"skip": ("bogus",)},
        {"dtype": "int32"},
    ):
        with pytest.raises(ValueError):
            check_orthogonalizer(fn, **kwargs)


def test_numpy_backend_receives_numpy():
    seen = []

    def fn(G):
        seen.append(type(G))
        return matfun.polar(G)

    r = check_orthogonalizer(fn, backend="numpy", shapes=SHAPES)
    assert r.passed and set(seen) == {np.ndarray}
    assert not math.isnan(r["alignment"].value)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device():
    r = check_orthogonalizer(lambda G: matfun.newton_schulz(G, 5, "jordan"), device="cuda", schedule="jordan")
    assert r.passed, r.table()
    r = check_orthogonalizer(lambda G: matfun.newton_schulz(G).cpu(), device="cuda")
    assert "device" in failed(r)
