"""End-to-end tests of the tile_sweep, preconditioning and scaling experiments (small configs, via the store)."""

from __future__ import annotations

import numpy as np
import pytest

from diagnostics import experiments
from diagnostics.experiments import preconditioning, scaling, tile_sweep
from diagnostics.store import config_for, run_experiment


def _run(module, config, tmp_path):
    result = run_experiment(
        module, config, results_dir=tmp_path / "results", figures_dir=tmp_path / "figures", progress=False
    )
    for ext in ("pdf", "png"):
        path = tmp_path / "figures" / module.NAME / f"{module.NAME}.{ext}"
        assert path.exists() and path.stat().st_size > 1000, path
    assert (tmp_path / "results" / module.NAME / "results.csv").exists()
    return result.frame


@pytest.mark.parametrize("module", [tile_sweep, preconditioning, scaling])
def test_registered_with_quick_config(module):
    assert experiments.get(module.NAME) is module
    quick = config_for(module, quick=True)
    assert module.cells(quick)
    assert config_for(module) != quick


def test_tile_sweep(tmp_path):
    config = tile_sweep.Config(
        shape=(64, 64),
        tiles=(8, 16, 32, 64),
        reference_tile=16,
        couplings=(0.0, 0.1, 1.0),
        samples=1,
        streams=("teacher_student",),
        stream_steps=20,
        stream_width=64,
    )
    frame = _run(tile_sweep, config, tmp_path)
    for column in (
        "tile",
        "tiling",
        "truncation",
        "total",
        "gram_coupling",
        "gram_coupling_tile_normalised",
        "worst_tile_alignment",
        "aligned",
        "whole",
        "source",
        "coupling",
        "shape",
        "steps",
    ):
        assert column in frame.columns, column
    assert len(frame) == (3 + 1) * 4
    losses = frame[["tiling", "truncation", "total"]].to_numpy()
    assert np.all(np.isfinite(losses)) and np.all(losses >= 0) and np.all(losses <= 2)

    coupled = frame[frame["source"] == "coupled"]
    aligned = coupled[coupled["aligned"].astype(bool) & ~coupled["whole"].astype(bool)]
    c0 = aligned[aligned["coupling"] == 0.0]
    assert len(c0) == 2  # T = 16, 32
    # Block diagonal on the tile grid: exact tile-wise polar = exact polar, predictor 0.
    assert np.all(c0["tiling"] < 1e-20)
    assert np.all(c0["gram_coupling"] < 1e-12)
    # Any coupling makes tiling lose information at those same tiles (not monotone in c, see the docstring).
    for c in (0.1, 1.0):
        assert np.all(aligned[aligned["coupling"] == c]["tiling"] > 1e-3)
    # A tile cutting the coupling blocks loses information even at c = 0.
    assert float(coupled[(coupled["coupling"] == 0.0) & (coupled["tile"] == 8)]["tiling"].iloc[0]) > 1e-3
    # A tile covering the matrix is full NS: no tiling loss, total = truncation.
    whole = frame[frame["whole"].astype(bool)]
    assert np.all(whole["tiling"] < 1e-20)
    np.testing.assert_allclose(whole["total"], whole["truncation"], rtol=1e-6)
    assert np.all(frame[frame["source"] == "teacher_student"]["coupling"].isna())


def test_preconditioning(tmp_path):
    config = preconditioning.Config(
        stream_steps=30, record_steps=(29,), width=32, schedules=("cubic", "jordan"), max_steps=20
    )
    frame = _run(preconditioning, config, tmp_path)
    assert set(frame["record"]) == {"spectrum", "summary", "alignment", "steps_to"}
    assert set(frame["variant"]) == {"none", "full", "factorized"}
    assert (tmp_path / "figures" / "preconditioning" / "steps_to_threshold.md").exists()

    al = frame[frame["record"] == "alignment"]
    assert al["alignment"].between(-1, 1).all()
    assert set(al["steps"]) == set(range(config.max_steps + 1))

    summary = frame[frame["record"] == "summary"].set_index(["matrix", "variant"])
    assert (summary["condition_number"] >= 1).all()
    np.testing.assert_allclose(summary.xs("none", level="variant")["direction_vs_polar_M"], 1.0, atol=1e-12)
    # Preconditioning flattens the spectrum of the realistic momenta of the teacher-student layer and of
    # the MLP input layer.  (It does not for the rank-deficient hidden layer fc2: see the docstring.)
    for matrix in ("teacher_student:weight@29", "mlp:fc1.weight@29"):
        none = summary.loc[(matrix, "none"), "condition_number"]
        for variant in ("full", "factorized"):
            assert summary.loc[(matrix, variant), "condition_number"] < none, (matrix, variant)

    st = frame[frame["record"] == "steps_to"]
    cubic = st[(st["schedule"] == "cubic") & (st["variant"] == "none") & (st["threshold"] == 0.99)]
    assert cubic["steps_needed"].notna().any()
    for _, row in st[st["reduction"].notna()].iterrows():
        base = st[
            (st["matrix"] == row["matrix"])
            & (st["schedule"] == row["schedule"])
            & (st["threshold"] == row["threshold"])
            & (st["variant"] == "none")
        ]["steps_needed"].iloc[0]
        assert row["reduction"] == pytest.approx(1 - row["steps_needed"] / base)
    table = preconditioning.steps_table(frame)
    assert {"none", "full", "factorized", "reduction_full", "reduction_factorized"} <= set(table.columns)


def test_factorized_second_moment_is_rank_one_exact():
    rng = np.random.default_rng(0)
    r, c = rng.random(5), rng.random(7)
    V = np.outer(r, c)
    np.testing.assert_allclose(preconditioning.factorized_second_moment(V), V, rtol=1e-12)


def test_scaling(tmp_path):
    config = scaling.Config(ns=(32, 64, 128), tiles=(16,), warmup=0, repeats=1, min_time=0.0)
    frame = _run(scaling, config, tmp_path)
    for column in ("map", "tile", "n", "flops", "seconds", "gflops", "spread", "device", "dtype"):
        assert column in frame.columns, column
    assert set(frame["map"]) == {"polar", "ns", "tiled", "gemm"}
    assert (frame["flops"] > 0).all() and (frame["seconds"] > 0).all() and np.isfinite(frame["gflops"]).all()
    for (_, _), d in frame.groupby(["map", "tile"]):
        flops = d.sort_values("n")["flops"].to_numpy()
        assert np.all(np.diff(flops) > 0)
    ns = frame[frame["map"] == "ns"].set_index("n")["flops"]
    tiled = frame[frame["map"] == "tiled"].set_index("n")["flops"]
    assert (tiled.loc[[64, 128]] < ns.loc[[64, 128]]).all()  # T < n: cheaper than full NS


def test_scaling_slopes_only_when_reliable():
    sizes = [96, 128, 192, 256, 384, 512, 768]
    assert scaling.fit_sizes(sizes) == [256, 384, 512, 768]  # the upper half, at least MIN_FIT_SIZES
    assert scaling.fit_sizes([256, 512, 1024]) == [256, 512, 1024]
    n = np.array([256.0, 384, 512, 768])
    assert scaling.reliable_slope(n, 2e-9 * n**3) == pytest.approx(3.0)
    assert scaling.reliable_slope(n[:3], 2e-9 * n[:3] ** 3) is None  # too few sizes for a slope
    assert scaling.reliable_slope(n, 2e-9 * n**3 * np.array([1.0, 4.0, 0.5, 1.0])) is None  # r² too low


def test_scaling_timings_are_interleaved():
    order = []
    calls = [lambda: order.append("A"), lambda: order.append("B")]
    fake_clock = iter(range(10**6))
    out = scaling.interleaved_timings(calls, warmup=1, repeats=3, min_time=0.5, clock=lambda: float(next(fake_clock)))
    assert "".join(order) == "AABB" + "AB" * 3  # warm-up and calibration per map, then ABAB rounds
    assert [t.repeats for t in out] == [3, 3] and all(t.median == 1.0 for t in out)


def test_preconditioning_matrix_labels_spell_out_parameter_and_step():
    assert preconditioning.matrix_label("teacher_student:weight@79") == "teacher–student W, step 79"
    assert preconditioning.matrix_label("mlp:fc1.weight@20", "\n") == "MLP fc1\nstep 20"
