"""matfun.design_schedule: minimax composition (Remez), published constants, bounds, errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import matfun
from matfun.design import DesignedSchedule, minimax_odd, safety_for_precision

# Published 5-step Polar Express constants (DESIGN.md; reference generator, l=1e-3,
# safety 2e-2, cushion 0.02), written out here independently of matfun.schedules.
PUBLISHED_PE = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def _published_design() -> DesignedSchedule:
    return matfun.design_schedule(1e-3, 1.0, 5, degree=5, safety=2e-2, cushion=0.02)


def test_reproduces_published_polar_express_constants():
    designed = np.array(_published_design().coefficients)
    np.testing.assert_allclose(designed, np.array(PUBLISHED_PE), rtol=0, atol=1e-10)
    assert _published_design().normalization == pytest.approx(1.02)


def test_named_polar_express_schedule_matches_design():
    # The named schedule must be the design (full precision: 1e-10).  Until the
    # full-precision constants land in matfun.schedules this fails by ~5e-6.
    named = np.array(matfun.SCHEDULES["polar_express"].coefficients)
    np.testing.assert_allclose(named, np.array(_published_design().coefficients), rtol=0, atol=1e-10)
    assert matfun.SCHEDULES["polar_express"].normalization == _published_design().normalization


def _closed_form_cubic(lo: float, hi: float) -> tuple[float, float]:
    """Optimal odd cubic on [lo, hi] in closed form (Polar Express paper, degree-3 case)."""
    alpha = math.sqrt(3 / (hi**2 + lo * hi + lo**2))
    beta = 4 / (2 + lo * hi * (lo + hi) * alpha**3)
    return 1.5 * alpha * beta, -0.5 * alpha**3 * beta


@pytest.mark.parametrize("lo, hi", [(1e-3, 1.0), (0.1, 1.0), (0.5, 1.7), (0.9, 1.1)])
def test_remez_cubic_matches_closed_form(lo, hi):
    coef, _ = minimax_odd(lo, hi, 3)
    np.testing.assert_allclose(coef, _closed_form_cubic(lo, hi), rtol=1e-12)


@pytest.mark.parametrize("degree", [3, 5])
@pytest.mark.parametrize("lo, hi", [(1e-3, 1.0), (0.02, 1.0), (0.3, 1.7), (0.999, 1.001)])
def test_remez_equioscillates(degree, lo, hi):
    # Chebyshev alternation: |1 - p| reaches its maximum E at degree//2 + 2 points with
    # alternating signs, and nowhere exceeds E (checked on a dense grid).
    coef, error = minimax_odd(lo, hi, degree)
    x = np.linspace(lo, hi, 200001)
    e = 1 - sum(c * x ** (2 * j + 1) for j, c in enumerate(coef))
    assert np.max(np.abs(e)) <= error * (1 + 1e-9) + 1e-15
    assert e[0] == pytest.approx(error, rel=1e-9, abs=1e-14)  # p(lo) = 1 - E
    sign_changes = np.count_nonzero(np.diff(np.sign(e[np.abs(e) > 0.999 * error])))
    assert sign_changes >= degree // 2 + 1


def _rounding_tolerances(sched: DesignedSchedule) -> list[float]:
    """Forward error bound of evaluating the composition in float64, per step.

    Step ``i`` adds at most ``8·eps·T_i`` (Horner in x², a few roundings of terms
    of size ``T_i = Σ|c_j| u_i^{2j+1}``) and every later step ``j`` multiplies an
    earlier error by at most its slope ``D_j = max |p_j'|`` on ``[ℓ_j, u_j]``.
    """
    eps = np.finfo(np.float64).eps
    tols = [4 * eps]
    for (a, b, c), (lo, hi) in zip(sched.coefficients, sched.bounds):
        x = np.linspace(lo, hi, 4001)
        slope = np.max(np.abs(a + 3 * b * x**2 + 5 * c * x**4))
        terms = abs(a) * hi + abs(b) * hi**3 + abs(c) * hi**5
        tols.append(tols[-1] * slope + 8 * eps * terms)
    return tols


DESIGNS = [
    {"lower": 1e-3, "steps": 5},
    {"lower": 1e-3, "steps": 5, "degree": 3},
    {"lower": 1e-4, "steps": 8, "safety": 0.0, "cushion": 0.0},
    {"lower": 1e-2, "upper": 0.5, "steps": 4, "degree": 3, "cushion": 0.0},
    {"lower": 0.05, "upper": 0.3, "steps": 3, "precision": "bfloat16"},
    {"lower": 1e-3, "steps": 2, "safety": 0.1, "cushion": 0.1},
    {"lower": 0.9, "upper": 1.0, "steps": 6},  # intervals collapse onto 1 (limiting polynomial)
]


@pytest.mark.parametrize("kwargs", DESIGNS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_transfer_stays_within_promised_bounds(kwargs):
    sched = matfun.design_schedule(**kwargs)
    K = len(sched.coefficients)
    assert len(sched.bounds) == K + 1
    # x0 on a dense grid of the design interval (linear and log spaced), fed through
    # matfun.transfer_function (which divides by the schedule's normalisation).
    x0 = np.unique(
        np.concatenate([np.linspace(sched.lower, sched.upper, 100001), np.geomspace(sched.lower, sched.upper, 100001)])
    )
    for k, ((lo, hi), tol) in enumerate(zip(sched.bounds, _rounding_tolerances(sched))):
        values = matfun.transfer_function(x0 * sched.normalization, k, sched)
        assert values.min() >= lo - tol and values.max() <= hi + tol, (k, values.min(), values.max(), lo, hi)
        assert 0 < lo <= hi
    lo_K, _hi_K = sched.bounds[-1]
    assert lo_K > sched.lower  # the schedule makes progress


def test_more_steps_tighten_the_final_interval():
    widths = [np.subtract(*matfun.design_schedule(1e-3, steps=K).bounds[-1][::-1]) for K in (2, 4, 6, 8)]
    assert all(a > b for a, b in itertools.pairwise(widths))


def test_designed_schedule_works_in_newton_schulz():
    # Full NS is spectral: NS_K(G) = U p_K(Σ/‖G‖_F) Vᵀ with p_K the designed transfer function.
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((12, 8)))
    V, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    s = np.geomspace(1.0, 1e-2, 8)
    G = (U * s) @ V.T
    sched = matfun.design_schedule(1e-3, steps=4, degree=3, safety=0.0)
    X = matfun.newton_schulz(G, 4, sched)
    expected = (U * matfun.transfer_function(s / np.linalg.norm(G), 4, sched)) @ V.T
    np.testing.assert_allclose(X, expected, atol=1e-12)
    Xt = matfun.newton_schulz(torch.from_numpy(G), 4, sched)
    np.testing.assert_allclose(Xt.numpy(), expected, atol=1e-12)


def test_python_tuples_round_trip():
    sched = _published_design()
    rebuilt = eval("[" + sched.python_tuples() + "]")
    assert tuple(map(tuple, rebuilt)) == sched.coefficients


def test_precision_sets_safety():
    assert safety_for_precision("bfloat16") > safety_for_precision("float32") > safety_for_precision("float64")
    bf16 = matfun.design_schedule(1e-3, precision="bfloat16")
    assert bf16.safety == safety_for_precision("bfloat16") and bf16.normalization == 1 + bf16.safety
    assert matfun.design_schedule(1e-3, precision="bfloat16", safety=0.05).safety == 0.05


def test_mean_alignment_objective_beats_worst_case_on_its_prior():
    rng = np.random.default_rng(1)
    prior = np.exp(rng.uniform(np.log(1e-2), np.log(0.3), 400))  # log-uniform spectrum
    worst = matfun.design_schedule(1e-2, 0.3, 3, safety=0.0)
    mean = matfun.design_schedule(1e-2, 0.3, 3, safety=0.0, objective="mean_alignment", prior=prior)

    def alignment(sched):
        out = matfun.transfer_function(prior * sched.normalization, 3, sched)
        return out.mean() / np.sqrt(np.mean(out**2))

    assert alignment(mean) > alignment(worst)
    # its bounds are an exact enclosure too
    x0 = np.linspace(1e-2, 0.3, 20001)
    for k, ((lo, hi), tol) in enumerate(zip(mean.bounds, _rounding_tolerances(mean))):
        v = matfun.transfer_function(x0 * mean.normalization, k, mean)
        assert v.min() >= lo - tol and v.max() <= hi + tol


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lower": 1.0, "upper": 1.0}, "lower must be < upper"),
        ({"lower": 0.5, "upper": 0.1}, "lower must be < upper"),
        ({"lower": 0.0}, "lower must be a finite number > 0"),
        ({"lower": -1e-3}, "lower must be a finite number > 0"),
        ({"lower": float("nan")}, "lower must be a finite number > 0"),
        ({"lower": 1e-3, "upper": float("inf")}, "upper must be a finite number > 0"),
        ({"lower": 1e-3, "steps": 0}, "steps must be an integer >= 1"),
        ({"lower": 1e-3, "steps": 2.5}, "steps must be an integer >= 1"),
        ({"lower": 1e-3, "degree": 7}, "degree must be 3 or 5"),
        ({"lower": 1e-3, "degree": 4}, "degree must be 3 or 5"),
        ({"lower": 1e-3, "safety": -0.1}, "safety must be a finite number >= 0"),
        ({"lower": 1e-3, "cushion": 1.0}, "cushion must lie in"),
        ({"lower": 1e-3, "precision": "fp8"}, "unknown precision"),
        ({"lower": 1e-3, "objective": "median"}, "objective must be one of"),
        ({"lower": 1e-3, "objective": "mean_alignment"}, "needs prior="),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        matfun.design_schedule(**kwargs)


def test_non_numeric_lower_is_a_type_error():
    with pytest.raises(TypeError, match="lower must be a real number"):
        matfun.design_schedule("small")


@settings(max_examples=15, deadline=None)
@given(
    log_lower=st.floats(-5, -0.5),
    steps=st.integers(1, 7),
    degree=st.sampled_from([3, 5]),
    safety=st.sampled_from([0.0, 1e-3, 2e-2]),
    cushion=st.sampled_from([0.0, 0.02, 0.1]),
)
# found by hypothesis: the interval collapses onto 1 and ℓ_k rounded to 1 + ulp > u_k
@example(log_lower=-0.7193341278760572, steps=5, degree=5, safety=0.0, cushion=0.0)
def test_bounds_hold_property(log_lower, steps, degree, safety, cushion):
    sched = matfun.design_schedule(10.0**log_lower, 1.0, steps, degree=degree, safety=safety, cushion=cushion)
    x0 = np.geomspace(sched.lower, 1.0, 20001)
    for k, ((lo, hi), tol) in enumerate(zip(sched.bounds, _rounding_tolerances(sched))):
        v = matfun.transfer_function(x0 * sched.normalization, k, sched)
        assert v.min() >= lo - tol and v.max() <= hi + tol


# ----------------------------------------------------------------- CLI


def test_cli_prints_tuples_and_draws(tmp_path, capsys):
    from diagnostics import cli

    stem = tmp_path / "fig" / "ds"
    code = cli.main(["design-schedule", "--lower", "1e-3", "--steps", "5", "--figure", str(stem)])
    out = capsys.readouterr().out
    assert code == 0
    tuples = [line for line in out.splitlines() if line.startswith("(")]
    printed = eval("[" + "\n".join(tuples) + "]")
    np.testing.assert_allclose(np.array(printed), np.array(PUBLISHED_PE), atol=1e-10)
    assert "1.02" in out  # the normalisation to use
    assert "the same coefficients as the published 'polar_express' schedule" in out
    assert (tmp_path / "fig" / "ds.png").stat().st_size > 0 and (tmp_path / "fig" / "ds.pdf").exists()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--lower", "1", "--upper", "0.5"], "lower must be < upper"),
        (["--lower", "1e-3", "--steps", "0"], "steps must be"),
        (["--lower", "1e-3", "--degree", "7"], "invalid choice"),
        (["--lower", "x"], "invalid float"),
        (["--lower", "1e-3", "--precision", "fp8"], "unknown precision"),
        ([], "--lower"),
    ],
)
def test_cli_bad_arguments_one_line_exit_2(argv, match, capsys):
    from diagnostics import cli

    assert cli.main(["design-schedule", *argv, "--no-figure"]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1


# ----------------------------------------------------------- experiment


def test_design_experiment_tiny_end_to_end(tmp_path):
    from diagnostics.experiments import design

    config = design.Config(
        steps=3,
        shape=(12, 20),
        condition_numbers=(10.0,),
        stream_steps=6,
        record_steps=(2, 5),
        width=16,
        tiles=(0, 8),
        precision_kappa=100.0,
    )
    frames = []
    for cell in design.cells(config):
        frame = design.run_cell(config, cell, "cpu", 0)
        frame["part"] = cell["part"]
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    controlled = frame[(frame["part"] == "controlled") & (frame["step"] == 3)].set_index("schedule")
    # the design for the class interval beats every published schedule at equal K
    published = controlled.loc[list(design.PUBLISHED), "misalignment"]
    assert controlled.loc["designed", "misalignment"] < published.min()
    momenta = frame[frame["part"] == "momenta"]
    assert set(momenta["tile"]) == {0, 8} and np.all(np.isfinite(momenta["misalignment"]))
    precision = frame[frame["part"] == "precision"]
    assert set(precision["precision"]) == {"float32", "bfloat16"}
    stems = design.plot(frame, config, tmp_path)
    assert (tmp_path / "design.png").exists() and stems == [tmp_path / "design"]


def test_tile_spectra_and_interval():
    from diagnostics.experiments import design

    rng = np.random.default_rng(0)
    M = rng.standard_normal((16, 24))
    whole = design.tile_spectra([M], 0)
    np.testing.assert_allclose(np.sort(whole), np.sort(np.linalg.svd(M / np.linalg.norm(M), compute_uv=False)))
    tiles = design.tile_spectra([M], 8)
    assert tiles.size == 6 * 8 and np.all(tiles <= 1)  # 2×3 tiles of 8×8
    lower, upper = design.interval_from_spectra(whole, 0.02)
    assert 0 < lower < upper <= 1 and upper >= whole.max()


def test_remez_narrow_interval_near_limit():
    # Just wider than the limit threshold: Remez degenerates at rounding level, the
    # Newton–Schulz limit polynomial is returned instead (found by the design experiment).
    coef, error = minimax_odd(0.9999973473419231, 1.0000026526580768, 5)
    assert error <= 1e-12
    np.testing.assert_allclose(coef, (15 / 8, -10 / 8, 3 / 8), rtol=1e-4)
