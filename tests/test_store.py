"""Results store: cache keys, atomic cell files, resume, corruption, force, replot; plotting."""

from __future__ import annotations

import dataclasses
import json
import types
import warnings

import numpy as np
import pandas as pd
import pytest

from diagnostics import experiments, plotting, store

# --------------------------------------------------------------------- fakes


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    n: int = 5
    label: str = "full"
    sizes: tuple[int, ...] = (2, 3)

    @classmethod
    def quick(cls) -> FakeConfig:
        return cls(n=5, label="quick")


def make_fake(name: str = "fake", fail_on: int | None = None) -> types.ModuleType:
    """An experiment module counting its run_cell calls; raises on cell ``fail_on``."""
    mod = types.ModuleType(f"fake_experiments.{name}")
    mod.NAME = name
    mod.DESCRIPTION = "a fake experiment for the tests"
    mod.Config = FakeConfig
    mod.calls = []
    mod.fail_on = fail_on
    mod.plots = 0

    def cells(config):
        return [{"i": i, "kind": "even" if i % 2 == 0 else "odd"} for i in range(config.n)]

    def run_cell(config, cell, device, seed):
        if mod.fail_on is not None and cell["i"] == mod.fail_on:
            raise RuntimeError(f"simulated crash in cell {cell['i']}")
        mod.calls.append(cell["i"])
        rng = np.random.default_rng(store.cell_seed(seed, cell))
        return pd.DataFrame({"j": [0, 1], "value": rng.standard_normal(2) + cell["i"]})

    def plot(frame, config, out_dir):
        mod.plots += 1
        return []

    mod.cells, mod.run_cell, mod.plot = cells, run_cell, plot
    return experiments.check_experiment(mod)


def run(mod, tmp_path, **kw):
    kw.setdefault("quick", True)
    kw.setdefault("progress", False)
    return store.run_experiment(mod, results_dir=tmp_path / "results", figures_dir=tmp_path / "figures", **kw)


def cell_files(tmp_path, name="fake"):
    return sorted((tmp_path / "results" / name / "cells").glob("*.csv"))


# ---------------------------------------------------------------------- keys


def test_cell_hash_is_stable_and_sensitive():
    key = {
        "store_format": 1,
        "experiment": "x",
        "config": {"a": [1, 2], "b": 0.5},
        "cell": {"i": 3},
        "seed": 0,
        "device": "cpu",
    }
    # Pinned: a change here silently invalidates every cache on disk (bump STORE_FORMAT instead).
    assert store.cell_hash(key) == "7c2033fd920d8b05b33e"
    assert store.cell_hash(dict(reversed(list(key.items())))) == store.cell_hash(key)
    base = store.cell_key("x", FakeConfig(), {"i": 1}, 0, "cpu")
    for other in (
        store.cell_key("y", FakeConfig(), {"i": 1}, 0, "cpu"),
        store.cell_key("x", FakeConfig(n=6), {"i": 1}, 0, "cpu"),
        store.cell_key("x", FakeConfig(), {"i": 2}, 0, "cpu"),
        store.cell_key("x", FakeConfig(), {"i": 1}, 1, "cpu"),
        store.cell_key("x", FakeConfig(), {"i": 1}, 0, "cuda"),
    ):
        assert store.cell_hash(other) != store.cell_hash(base)
    assert store.cell_seed(0, {"i": 3}) == 7466432018952352191
    with pytest.raises(TypeError, match="cache key"):
        store.cell_key("x", FakeConfig(), {"i": object()}, 0, "cpu")


# ------------------------------------------------------------------ running


def test_rows_carry_config_cell_seed_device_versions(tmp_path):
    mod = make_fake()
    res = run(mod, tmp_path, seed=7)
    assert (res.computed, res.cached, res.corrupt) == (5, 0, 0)
    assert mod.calls == [0, 1, 2, 3, 4] and mod.plots == 1
    f = res.frame
    assert len(f) == 10
    for col in (
        "j",
        "value",
        "n",
        "label",
        "sizes",
        "i",
        "kind",
        "experiment",
        "seed",
        "device",
        "numpy_version",
        "torch_version",
        "matfun_version",
    ):
        assert col in f.columns, col
    assert set(f["label"]) == {"quick"} and set(f["seed"]) == {7} and set(f["device"]) == {"cpu"}
    assert json.loads(f["sizes"].iloc[0]) == [2, 3]  # non-scalars stored as JSON
    assert f["numpy_version"].iloc[0] == np.__version__
    assert list(f["i"]) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    # results.csv holds exactly the combined frame; one CSV + marker per cell; no temp files left.
    pd.testing.assert_frame_equal(store.load_results("fake", tmp_path / "results"), f)
    cells_dir = tmp_path / "results" / "fake" / "cells"
    assert len(cell_files(tmp_path)) == 5 and len(list(cells_dir.glob("*.json"))) == 5
    assert not [p for p in cells_dir.iterdir() if p.name.startswith(".")]
    assert "5 computed, 0 cached" in res.summary() and "results.csv" in res.summary()


def test_interrupted_sweep_resumes_without_recomputing(tmp_path):
    mod = make_fake(fail_on=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(mod, tmp_path)
    assert mod.calls == [0, 1] and len(cell_files(tmp_path)) == 2
    mod.fail_on = None
    res = run(mod, tmp_path)
    assert mod.calls == [0, 1, 2, 3, 4]  # 0 and 1 not recomputed
    assert (res.computed, res.cached) == (3, 2)
    again = run(mod, tmp_path)
    assert (again.computed, again.cached) == (0, 5) and mod.calls == [0, 1, 2, 3, 4]
    pd.testing.assert_frame_equal(again.frame, res.frame)  # cached frame == computed frame


@pytest.mark.parametrize("damage", ["truncate", "drop_marker", "edit_marker", "garbage_marker"])
def test_corrupt_cache_file_is_detected_and_recomputed(tmp_path, damage):
    mod = make_fake()
    first = run(mod, tmp_path)
    victim = cell_files(tmp_path)[1]
    marker = victim.with_suffix(".json")
    if damage == "truncate":
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "drop_marker":
        marker.unlink()
    elif damage == "edit_marker":
        meta = json.loads(marker.read_text())
        meta["key"]["seed"] = 99
        marker.write_text(json.dumps(meta))
    else:
        marker.write_text("{not json")
    mod.calls.clear()
    with pytest.warns(store.CorruptCacheWarning, match="recomputing"):
        res = run(mod, tmp_path)
    assert (res.computed, res.cached, res.corrupt) == (1, 4, 1) and len(mod.calls) == 1
    pd.testing.assert_frame_equal(res.frame, first.frame)
    with warnings.catch_warnings():
        warnings.simplefilter("error", store.CorruptCacheWarning)
        assert run(mod, tmp_path).cached == 5  # repaired


def test_force_recomputes_everything(tmp_path):
    mod = make_fake()
    run(mod, tmp_path)
    mod.calls.clear()
    res = run(mod, tmp_path, force=True)
    assert (res.computed, res.cached) == (5, 0) and mod.calls == [0, 1, 2, 3, 4]


def test_seed_and_config_get_their_own_cache(tmp_path):
    mod = make_fake()
    run(mod, tmp_path, seed=0)
    res = run(mod, tmp_path, seed=1)
    assert res.computed == 5 and len(cell_files(tmp_path)) == 10
    res = run(mod, tmp_path, quick=False)  # full config: other cache keys
    assert res.computed == 5 and set(res.frame["label"]) == {"full"}


def test_replot_computes_nothing_and_needs_a_cache(tmp_path):
    mod = make_fake()
    with pytest.raises(store.CacheMissingError, match="run it without --replot"):
        run(mod, tmp_path, replot=True)
    assert mod.calls == []
    first = run(mod, tmp_path)
    mod.calls.clear()
    res = run(mod, tmp_path, replot=True)
    assert mod.calls == [] and mod.plots == 2 and (res.computed, res.cached) == (0, 5)
    pd.testing.assert_frame_equal(res.frame, first.frame)
    cell_files(tmp_path)[0].unlink()
    with pytest.raises(store.CacheMissingError, match="1 of 5"):
        run(mod, tmp_path, replot=True)
    with pytest.raises(store.StoreError, match="exclude"):
        run(mod, tmp_path, replot=True, force=True)


def test_bad_experiments_are_rejected(tmp_path):
    mod = make_fake()
    mod.run_cell = lambda config, cell, device, seed: [1, 2]
    with pytest.raises(store.StoreError, match="DataFrame"):
        run(mod, tmp_path)
    mod = make_fake()
    mod.cells = lambda config: [{"i": 1}, {"i": 1}]
    with pytest.raises(store.StoreError, match="duplicate"):
        run(mod, tmp_path)

    @dataclasses.dataclass
    class Mutable:
        n: int = 1

        @classmethod
        def quick(cls):
            return cls()

    bad = make_fake()
    bad.Config = Mutable
    with pytest.raises(TypeError, match="frozen"):
        experiments.check_experiment(bad)
    del bad.plot
    with pytest.raises(TypeError, match="lacks plot"):
        experiments.check_experiment(bad)
    with pytest.raises(ValueError, match="already registered"):
        experiments.register(make_fake("transfer"))
    with pytest.raises(KeyError, match=r"valid: .*transfer"):
        experiments.get("no_such_experiment")


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    store.atomic_write_bytes(path, b"one")
    store.atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


# --------------------------------------------------------------- experiment


def test_transfer_experiment_quick_end_to_end(tmp_path):
    mod = experiments.get("transfer")
    config = mod.Config.quick()
    res = store.run_experiment(mod, results_dir=tmp_path / "r", figures_dir=None, quick=True, progress=False)
    f = res.frame
    assert res.computed == len(mod.cells(config)) == len(config.schedules) * len(config.steps)
    sigma, _ = mod.sigma_grid(config)
    assert len(f) == res.computed * sigma.size
    # Dense enough to draw p_5 faithfully: Jordan's 21 local extrema in [1e-2, 1] are all sampled.
    d = f[(f["schedule"] == "jordan") & (f["steps"] == 5)].sort_values("sigma")
    p = d["p"].to_numpy()[d["sigma"].to_numpy() >= 1e-2]
    assert np.count_nonzero(np.diff(np.sign(np.diff(p)))) == 21
    assert np.isfinite(f[["sigma", "p", "smoothed_fit", "eps_hat", "fit_rmse"]].to_numpy()).all()
    eps = f.groupby(["schedule", "steps"])["eps_hat"].first()
    for name in config.schedules:  # more steps, less smoothing
        assert eps[name, 5] < eps[name, 2]
    assert 5e-4 < eps["jordan", 5] < 5e-3
    assert eps["cubic", 5] > 10 * eps["polar_express", 5]
    # the transfer function agrees with matfun's
    import matfun

    d = f[(f["schedule"] == "you") & (f["steps"] == 5)]
    np.testing.assert_allclose(d["p"], matfun.transfer_function(d["sigma"].to_numpy(), 5, "you"), rtol=1e-12)


# ------------------------------------------------------------------ plotting


def _tiny_figure():
    with plotting.style():
        fig = plotting.figure("single")
        ax = fig.axes[0]
        for name in ("cubic", "jordan", "you", "polar_express", "other"):
            ax.plot(
                [1e-3, 1e-1, 1],
                [0.1, 0.5, 1.0],
                color=plotting.schedule_color(name),
                label=plotting.schedule_label(name),
                **plotting.tile_style(128),
            )
        ax.set_xscale("log")
        ax.set_xlabel(r"$\sigma$ (dimensionless)")
        ax.legend()
    return fig


def test_save_figure_is_byte_identical(tmp_path):
    a = plotting.save_figure(_tiny_figure(), tmp_path / "a" / "fig")
    b = plotting.save_figure(_tiny_figure(), tmp_path / "b" / "fig.pdf")  # suffix is dropped
    assert [p.suffix for p in a] == [".pdf", ".png"] and [p.name for p in b] == ["fig.pdf", "fig.png"]
    for x, y in zip(a, b):
        assert x.read_bytes() == y.read_bytes()
    assert b"CreationDate" not in a[0].read_bytes()


def test_style_helpers():
    assert plotting.schedule_color("jordan") == plotting.OKABE_ITO["blue"]
    assert len({plotting.schedule_color(s) for s in plotting.SCHEDULE_COLORS}) == 4
    assert plotting.schedule_color("custom") == plotting.schedule_color("custom")
    assert plotting.tile_style(None) == {"marker": "o", "linestyle": "-"}
    assert plotting.tile_style(128) == plotting.tile_style(128) != plotting.tile_style(256)
    assert plotting.tile_label(None) == "full" and plotting.tile_label(64) == "T = 64"
    with pytest.raises(ValueError):
        plotting.figure("triple")
