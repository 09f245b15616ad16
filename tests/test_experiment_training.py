"""The ``training`` experiment end-to-end on a tiny model: columns, every optimizer, losses, timings, figures."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from diagnostics import experiments, store
from diagnostics.experiments import training

TINY = dataclasses.replace(
    training.Config.quick(),
    input_dim=16, hidden=(32, 32), output_dim=4, teacher_hidden=16,
    n_train=1024, n_eval=256, batch_size=32, steps=40, eval_every=10, himuon_tiles=(8, 16),
)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("training")
    return store.run_experiment(training, TINY, results_dir=tmp / "results", figures_dir=tmp / "figures",
                                progress=False)


def test_registered():
    assert experiments.get("training") is training


def test_columns_and_optimizers(result):
    frame = result.frame
    for col in ("optimizer", "lr", "step", "train_loss", "eval_loss", "step_ms", "step_ms_median",
                "final_eval_loss", "family", "tile"):
        assert col in frame.columns, col
    expected = {"adamw", "muon", "himuon_t8", "himuon_t16", "muon2", "muon2_f"}
    assert set(frame["optimizer"]) == expected
    assert set(training.run_names(TINY)) == expected
    for name, d in frame.groupby("optimizer"):
        assert sorted(d["step"]) == list(range(TINY.steps + 1)), name


def test_losses_finite_and_decreasing(result):
    for name, d in result.frame.groupby("optimizer"):
        d = d.sort_values("step")
        train = d[d["step"] > 0]["train_loss"].to_numpy()
        ev = d.dropna(subset=["eval_loss"])
        assert np.isfinite(train).all(), name
        assert np.isfinite(ev["eval_loss"]).all(), name
        assert list(ev["step"]) == [0, 10, 20, 30, 40], name
        assert train[-1] < train[0], (name, train[0], train[-1])
        assert ev["eval_loss"].iloc[-1] < ev["eval_loss"].iloc[0], name


def test_same_start_for_every_optimizer(result):
    frame = result.frame
    init = frame[frame["step"] == 0]["eval_loss"].to_numpy()
    first = frame[frame["step"] == 1]["train_loss"].to_numpy()
    np.testing.assert_allclose(init, init[0], rtol=1e-6)  # same initial weights
    np.testing.assert_allclose(first, first[0], rtol=1e-6)  # same first batch


def test_step_times_positive(result):
    frame = result.frame
    times = frame[frame["step"] > 0]["step_ms"]
    assert (times > 0).all() and np.isfinite(times).all()
    assert (frame["step_ms_median"] > 0).all()


def test_figures_exist(result):
    stem = result.figures_dir / "training"
    for ext in ("pdf", "png"):
        path = stem.with_name(stem.name + "." + ext)
        assert path.exists() and path.stat().st_size > 1000, path


def test_threads_restored():
    before = torch.get_num_threads()
    training.run_cell(dataclasses.replace(TINY, steps=2, optimizers=("adamw",)), {"optimizer": "adamw", "lr": 1e-2},
                      "cpu", 0)
    assert torch.get_num_threads() == before


def test_config_validation():
    with pytest.raises(ValueError, match="unknown optimizer"):
        training.Config(optimizers=("sgd",))
    with pytest.raises(ValueError, match="himuon_tiles"):
        training.Config(himuon_tiles=(32, 32))
