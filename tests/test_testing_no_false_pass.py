"""The orthogonaliser battery never passes a non-orthogonaliser, and passes every correct map.

Issue: ``1000·polar(G)``, ``1e-6·polar(G)``, a map negating the two smallest
singular directions, one keeping the top 75 %, one exact only on the battery's
fixed shapes and one returning NaN above 48 all passed the ten checks of 0.2.
Each is planted in ``tests/_broken_maps.py`` (written to pass ``zero`` and every
old check it can); each must now fail, on several drawn seeds, with the check
that names its flaw.  The correct maps of the table in
:mod:`matfun.testing.orthogonalizer` must pass on the same seeds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import matfun
from matfun.testing import check_orthogonalizer
from matfun.testing._matrices import DRAWN_SIDES, draw_shapes
from matfun.testing._spectral import DEFAULT_BAND, gain_band
from tests import _broken_maps as broken

SEEDS = (0, 1, 2)


pytestmark = pytest.mark.usefixtures("one_thread")


def _torch_muon_loop(G):
    """torch.optim.Muon's own Newton–Schulz (bfloat16 inside, Jordan's coefficients)."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    return _zeropower_via_newtonschulz(G.clone(), (3.4445, -4.7750, 2.0315), 5, 1e-7).to(G.dtype)


CORRECT = {
    "polar-svd": (matfun.polar, {}),
    "polar-qdwh": (lambda G: matfun.polar(G, method="qdwh"), {}),
    "jordan": (lambda G: matfun.newton_schulz(G, 5, "jordan"), {"schedule": "jordan"}),
    "jordan-undeclared": (lambda G: matfun.newton_schulz(G, 5, "jordan"), {}),
    "you": (lambda G: matfun.newton_schulz(G, 5, "you"), {"schedule": "you"}),
    "polar-express": (lambda G: matfun.newton_schulz(G, 5, "polar_express"), {"schedule": "polar_express"}),
    "polar-express-undeclared": (lambda G: matfun.newton_schulz(G, 5, "polar_express"), {}),
    "jordan-bf16-emulated": (
        lambda G: matfun.newton_schulz(G, 5, "jordan", precision="bfloat16-emulated"),
        {"schedule": "jordan", "precision_profile": "bf16"},
    ),
    "torch-muon-bf16-loop": (_torch_muon_loop, {"schedule": "jordan", "precision_profile": "bf16"}),
    "torch-muon-bf16-input": (
        _torch_muon_loop,
        {"schedule": "jordan", "precision_profile": "bf16", "dtype": "bfloat16"},
    ),
    "tiled-16-jordan": (lambda G: matfun.tiled_newton_schulz(G, 16), {"tile": 16, "schedule": "jordan"}),
    "tiled-16x32-polar-express": (
        lambda G: matfun.tiled_newton_schulz(G, (16, 32), coefficients="polar_express"),
        {"tile": (16, 32), "schedule": "polar_express"},
    ),
    "tiled-polar": (matfun.Tiled(matfun.Polar(), 24), {"tile": 24}),
    "numpy-jordan": (lambda G: matfun.newton_schulz(G, 5, "jordan"), {"backend": "numpy", "schedule": "jordan"}),
}


@pytest.mark.parametrize("name", sorted(CORRECT))
@pytest.mark.parametrize("seed", SEEDS)
def test_correct_maps_pass_on_drawn_shapes(name, seed):
    fn, kwargs = CORRECT[name]
    report = check_orthogonalizer(fn, seed=seed, **kwargs)
    assert report.passed, report.table()
    assert {"direction_gain", "output_spectrum"} <= {c.name for c in report.checks}


#: each planted map, and the checks of which at least one must fail it (its flaw's name)
CAUGHT_BY = {
    "times_1000": {"direction_gain", "output_spectrum"},
    "times_1e_6": {"direction_gain", "output_spectrum"},
    "negate_two_smallest": {"direction_gain"},
    "top_75_percent": {"direction_gain", "output_spectrum"},
    "exact_on_legacy_shapes": {"direction_gain", "output_spectrum", "alignment"},
    "nan_above_48": {"finite", "direction_gain"},
    "spectral_normalisation": {"direction_gain", "output_spectrum"},
    "one_step_jordan": {"direction_gain", "output_spectrum"},
    "naive_svd_polar": {"output_spectrum"},
    "negated": {"direction_gain"},
}


@pytest.mark.parametrize("name", sorted(broken.BROKEN))
@pytest.mark.parametrize("seed", SEEDS)
def test_planted_non_orthogonalisers_fail(name, seed):
    report = check_orthogonalizer(broken.BROKEN[name], seed=seed)
    assert not report.passed, report.table()
    assert CAUGHT_BY[name] <= set(report.failed_names), report.table()


def test_planted_maps_pass_what_the_old_battery_checked():
    """They are real adversaries: the checks of 0.2 alone (on its fixed shapes) pass them."""
    old = {
        "shape",
        "dtype",
        "device",
        "input_unchanged",
        "zero",
        "finite",
        "scale_invariance",
        "orthogonal_equivariance",
        "transpose_equivariance",
    }
    for name in ("times_1000", "times_1e_6", "negate_two_smallest", "top_75_percent", "naive_svd_polar"):
        report = check_orthogonalizer(broken.BROKEN[name], seed=0)
        assert not old & set(report.failed_names), (name, report.table())


def test_the_band_is_declared_schedule_specific():
    """Exact polar passes as an orthogonaliser, and Jordan's band still contains 1; a
    gain of 1.3 is in the default band but outside You's."""
    lo, hi, cut = gain_band("you", 5, "fp32")
    assert lo > 0.9 and hi < 1.2 and cut == pytest.approx(3e-3, rel=0.01)
    assert gain_band(None, 5, "fp32") == (*DEFAULT_BAND, 3e-3)
    assert check_orthogonalizer(lambda G: 1.3 * matfun.polar(G), seed=0).passed
    r = check_orthogonalizer(lambda G: 1.3 * matfun.newton_schulz(G, 5, "you"), schedule="you", seed=0)
    assert {"direction_gain", "output_spectrum"} <= set(r.failed_names)


def test_gain_band_override_for_a_map_with_another_band():
    eps = 0.3  # relative to the normalised input: gains σ/√(σ²+ε²) reach down to ≈ 0.04

    def smoothed(G):
        return matfun.smoothed_polar(G / G.norm(), eps) if torch.any(G) else torch.zeros_like(G)

    assert "direction_gain" in check_orthogonalizer(smoothed, seed=0).failed_names
    report = check_orthogonalizer(smoothed, seed=0, gain_band=(0.01, 1.01), skip=("alignment",))
    assert {"direction_gain", "output_spectrum"}.isdisjoint(report.failed_names), report.table()
    for bad in ((0, 1), (1, 0.5), (0.5, float("inf")), "x", (0.5,)):
        with pytest.raises(ValueError, match="gain_band"):
            check_orthogonalizer(matfun.polar, gain_band=bad)


def test_shapes_are_drawn_per_seed_and_printed():
    a, b = draw_shapes(0), draw_shapes(1)
    assert a == draw_shapes(0) and a != b
    for seed in range(50):
        shapes = draw_shapes(seed)
        sides = [d for s in shapes for d in s]
        assert min(sides) >= DRAWN_SIDES[0] and max(sides) <= DRAWN_SIDES[1] and max(sides) > 64
        (n, m), (h, w), (t1, t2) = shapes
        assert n == m and h < w and t1 > t2
    report = check_orthogonalizer(matfun.polar, seed=7)
    assert report.settings["seed"] == 7 and "seed=7" in report.table()
    assert report.settings["shapes"].split() == [f"{h}x{w}" for h, w in draw_shapes(7)]
    # without a seed, one is drawn (and printed): two runs meet different matrices
    s1 = check_orthogonalizer(matfun.polar, skip=("schedule_agreement",)).settings["seed"]
    s2 = check_orthogonalizer(matfun.polar).settings["seed"]
    assert isinstance(s1, int) and s1 != s2


def test_same_seed_same_report():
    fn = broken.BROKEN["negate_two_smallest"]
    assert check_orthogonalizer(fn, seed=5).table() == check_orthogonalizer(fn, seed=5).table()


def test_user_shapes_are_added_and_checked():
    report = check_orthogonalizer(matfun.polar, seed=0, shapes=[(130, 70)])
    assert report.passed and report.settings["shapes"].endswith("130x70")

    # a map that breaks only on the user's (larger) layer shape is caught there
    def breaks_at_130(G):
        return torch.full_like(G, float("nan")) if 130 in G.shape else matfun.polar(G)

    failed = check_orthogonalizer(breaks_at_130, seed=0, shapes=[(130, 70)]).failed_names
    assert {"direction_gain", "output_spectrum", "alignment"} <= set(failed)
    for bad in ([(1, 5)], [(3,)], [(2.5, 4)], "12x12", [("a", 3)]):
        with pytest.raises(ValueError, match="shapes"):
            check_orthogonalizer(matfun.polar, shapes=bad)


def test_direction_gain_names_the_direction():
    report = check_orthogonalizer(broken.negate_two_smallest, seed=0)
    detail = report["direction_gain"].detail
    assert "gain -1 of direction" in detail and "outside the band [0.5, 1.5]" in detail
    spectrum = check_orthogonalizer(broken.naive_svd_polar, seed=0)["output_spectrum"]
    assert "fills the input's null space" in spectrum.detail and spectrum.threshold == 1e-2


def test_validate_command_draws_prints_and_reproduces_the_seed(capsys):
    from diagnostics.cli import main

    assert main(["validate", "tests._broken_maps:times_1000", "--seed", "3"]) == 1
    first = capsys.readouterr().out
    assert "seed=3" in first and "direction_gain           FAIL" in first
    assert main(["validate", "tests._broken_maps:times_1000", "--seed", "3"]) == 1
    assert capsys.readouterr().out == first
    assert main(["validate", "matfun:polar", "--shapes", "90x40"]) == 0
    out = capsys.readouterr().out
    assert "90x40" in out and "PASSED: all 12 checks" in out
    for bad in (["--shapes", "3x"], ["--shapes", "1x4"], ["--gain-band", "0,1"], ["--gain-band", "1"]):
        assert main(["validate", "matfun:polar", *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err


def test_report_card_verdict_does_not_praise_a_failing_map():
    from diagnostics import report_card
    from matfun.testing import CheckResult, Report

    class Plugin:
        name = "mine"

    acc = pd.DataFrame(
        {
            "map": ["mine", "jordan", "polar_express"] * 2,
            "kappa": [10.0] * 3 + [1e3] * 3,
            "misalignment": [0.0, 0.1, 0.05, 0.0, 0.2, 0.1],
        }
    )
    facts = {"spectral": True, "spectral_residual": 1e-7, "accuracy": acc, "bf16": {}, "time_ratio": float("nan")}
    failing = Report([CheckResult("output_spectrum", False, 999.0, 0, "singular values [1000, 1000]")])
    text = " ".join(report_card._verdict(Plugin(), facts, failing, 5))
    assert "beats" not in text and "does not make it an orthogonaliser" in text and "fails 1 of 1" in text
    passing = Report([CheckResult("output_spectrum", True, 0.0, 0, "")])
    assert "beats both built-ins" in " ".join(report_card._verdict(Plugin(), facts, passing, 5))


def test_rank_deficient_null_space_is_judged_in_fp32_only():
    """bf16 rounding lifts null-space singular values to O(1) through NS's slope: not judged there."""
    fp32 = check_orthogonalizer(matfun.polar, seed=0)["output_spectrum"]
    bf16 = check_orthogonalizer(
        lambda G: matfun.newton_schulz(G, 5, "jordan", precision="bfloat16-emulated"), seed=0, precision_profile="bf16"
    )["output_spectrum"]
    assert "null space" in fp32.detail and "null space" not in bf16.detail and bf16.passed
    assert np.isfinite(fp32.value)


def test_spectral_module_examples_run():
    import doctest

    from matfun.testing import _spectral

    assert doctest.testmod(_spectral).failed == 0
