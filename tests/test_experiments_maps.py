"""End-to-end tests of the experiments ns_convergence, precision and duality.

Each runs through the store (cells → tidy frame → results.csv → PDF + PNG) on a
Config smaller than ``--quick`` (the shared CPU is slow); the quick configs are
checked for validity and sweep size separately.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import matfun
from diagnostics import experiments, store
from diagnostics.experiments import duality, ns_convergence, precision

STORE_COLUMNS = {"experiment", "seed", "device", "numpy_version", "torch_version", "matfun_version"}


def _run(module, config, tmp_path):
    result = store.run_experiment(
        module, config, results_dir=tmp_path / "results", figures_dir=tmp_path / "figures", progress=False
    )
    assert result.computed == len(module.cells(config)) and result.cached == 0
    suffixes = sorted(p.suffix for p in result.figures)
    assert suffixes == [".pdf", ".png"]
    for path in result.figures:
        assert path.stat().st_size > 5000, path
    assert result.figures[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.figures[0].read_bytes()[:5] == b"%PDF-"
    on_disk = store.load_results(module.NAME, tmp_path / "results")
    assert len(on_disk) == len(result.frame)
    frame = result.frame
    assert STORE_COLUMNS <= set(frame.columns)
    for field in config.__dataclass_fields__:
        assert field in frame.columns, field
    return frame


@pytest.mark.parametrize("module", [ns_convergence, precision, duality])
def test_registered_and_quick_config_valid(module):
    assert experiments.get(module.NAME) is module
    quick = module.Config.quick()
    full = module.Config()
    assert quick.shape == (64, 128) and full.shape == (256, 512)
    assert len(module.cells(quick)) >= 2
    assert quick.max_steps < full.max_steps


def test_ns_convergence_end_to_end(tmp_path):
    config = ns_convergence.Config(condition_numbers=(10.0, 1e3), shape=(32, 64), tiles=(16,), max_steps=10)
    frame = _run(ns_convergence, config, tmp_path)
    expected = {
        "map",
        "tile",
        "step",
        "alignment",
        "misalignment",
        "rel_error",
        "tiling_loss",
        "spectral_error",
        "sv_worst",
        "tile_alignment_mean",
        "tile_alignment_min",
        "tile_misalignment_worst",
        "schedule",
        "condition_number",
    }
    assert expected <= set(frame.columns)
    # one row per (schedule, κ, map, step)
    assert len(frame) == 4 * 2 * 2 * (config.max_steps + 1)
    assert not frame.duplicated(["schedule", "condition_number", "tile", "step"]).any()
    assert frame["alignment"].between(-1, 1).all()
    np.testing.assert_allclose(frame["misalignment"], 1 - frame["alignment"], atol=1e-12)

    full = frame[frame["tile"] == 0]
    pe = full[(full["schedule"] == "polar_express") & (full["condition_number"] == 10.0) & (full["step"] == 5)]
    assert float(pe["alignment"].iloc[0]) > 0.99
    for kappa in config.condition_numbers:
        cubic = full[(full["schedule"] == "cubic") & (full["condition_number"] == kappa)].sort_values("step")
        assert np.all(np.diff(cubic["alignment"].to_numpy()) >= -1e-12)  # cubic NS: monotone in float64
        assert np.all(np.diff(cubic["rel_error"].to_numpy()) <= 1e-12)
    # cubic NS on κ = 10 is in its quadratic phase by K = 10 (relative error 1.7e-3 at 32×64)
    last = full[(full["schedule"] == "cubic") & (full["condition_number"] == 10.0) & (full["step"] == 10)]
    assert float(last["rel_error"].iloc[0]) < 1e-2
    assert full["tile_alignment_mean"].isna().all() and (full["tiling_loss"] == 0).all()

    tiled = frame[frame["tile"] == 16]
    assert tiled["spectral_error"].isna().all()
    assert (tiled["tile_alignment_min"] <= tiled["tile_alignment_mean"] + 1e-12).all()
    # a converging schedule reaches each tile's own polar factor, but not the global one
    you = tiled[(tiled["schedule"] == "you") & (tiled["step"] == 10)]
    assert (you["tile_alignment_min"] > 0.999).all()
    assert (you["misalignment"] >= 0.5 * you["tiling_loss"]).all() and (you["tiling_loss"] > 0.01).all()


def test_precision_end_to_end(tmp_path):
    config = precision.Config(
        schedules=("jordan", "polar_express", "you"), condition_numbers=(10.0,), shape=(32, 64), max_steps=12
    )
    frame = _run(precision, config, tmp_path)
    assert {"precision", "compute_precision", "bf16_mode", "step", "alignment", "misalignment", "rel_error"} <= set(
        frame.columns
    )
    assert len(frame) == 3 * 3 * (config.max_steps + 1)
    assert set(frame["bf16_mode"]) == {"emulated"}
    assert set(frame.loc[frame["precision"] == "bfloat16", "compute_precision"]) == {"bfloat16-emulated"}
    wide = frame.pivot_table(index=["schedule", "step"], columns="precision", values="alignment")
    late = wide.xs(config.max_steps, level="step")
    # bf16 stops at its floor: below float64 at large K (You converges in float64)
    assert (late["bfloat16"] < late["float64"]).all()
    assert float(late.loc["you", "float64"] - late.loc["you", "bfloat16"]) > 1e-7
    # float32 tracks float64 closely, bf16 still orthogonalises
    assert (np.abs(late["float32"] - late["float64"]) < 1e-5).all()
    assert (late["bfloat16"] > 0.97).all()
    floor = precision.precision_floor(frame, "bfloat16")
    assert 1e-7 < floor < 1e-2


def test_precision_modes():
    assert precision.compute_precision("bfloat16", "cpu") == "bfloat16-emulated"
    assert precision.compute_precision("bfloat16", "cuda:0") == "bfloat16"
    assert precision.compute_precision("float32", "cuda") == "float32"


def test_duality_end_to_end(tmp_path):
    config = duality.Config(
        schedules=("jordan", "polar_express"),
        tiles=(16,),
        smoothing_eps=(1e-3, 1e-1),
        shape=(32, 64),
        stream_steps=20,
        max_steps=8,
    )
    frame = _run(duality, config, tmp_path)
    assert {
        "matrix",
        "family",
        "map",
        "schedule",
        "tile",
        "eps",
        "step",
        "duality_efficiency",
        "nuclear_captured",
        "alignment",
        "input_condition",
    } <= set(frame.columns)
    for kind in ("geometric", "momentum"):
        d = frame[frame["matrix"] == kind]
        assert len(d) == 2 * 2 * (config.max_steps + 1) + 2 + 1
        polar = d[d["map"] == "polar"]
        np.testing.assert_allclose(polar[["duality_efficiency", "nuclear_captured", "alignment"]], 1.0, atol=1e-10)
        assert d["duality_efficiency"].between(-1, 1 + 1e-12).all()
        smooth = d[d["map"] == "smoothed_polar"].sort_values("eps")
        assert smooth["step"].isna().all()
        eff = smooth["duality_efficiency"].to_numpy()
        assert eff[0] > eff[1] and eff[0] > 0.99  # more smoothing, less of the nuclear norm
        full = d[(d["map"] == "full_ns")]
        pe = full[(full["schedule"] == "polar_express") & (full["step"] == config.max_steps)]
        assert float(pe["duality_efficiency"].iloc[0]) > 0.9
        # nuclear norm captured = duality efficiency · ‖X‖₂; at K = 0, X₀ = G/(c‖G‖_F) has
        # ‖X₀‖₂ = σ₁/(c‖G‖_F), c the schedule's normalisation (1.02 for Polar Express)
        G = duality.input_matrix(config, kind, 0)
        for _, row in full[full["step"] == 0].iterrows():
            c = matfun.get_schedule(row["schedule"]).normalization
            assert row["nuclear_captured"] / row["duality_efficiency"] == pytest.approx(
                np.linalg.norm(G, 2) / (c * np.linalg.norm(G)), rel=1e-10
            )
    assert pd.isna(frame.loc[frame["map"] == "polar", "schedule"]).all()
