"""Plug-in maps, --set overrides and --seeds: adaptor, identity, experiments, cache, errors.

The plug-ins live in a module written to a temporary directory (as a user's own
module would be): a correct schedule (a factory ``steps -> map``), a non-spectral
tiled map and broken ones.  Experiment runs use tiny configs through ``--set``.
"""

from __future__ import annotations

import importlib
import sys
import time
import uuid

import numpy as np
import pandas as pd
import pytest
import torch

import matfun
from diagnostics import cli, experiments, overrides, plotting, plugins, runner, seeds, store

PLUGIN_SOURCE = '''
import os
import time

import numpy as np
import torch
import matfun

CALLS = []


def schedule(steps):
    """A correct schedule: cubic Newton-Schulz, numpy, 2-D only."""
    def ns(G):
        X = G / np.linalg.norm(G)
        for _ in range(steps):
            X = 1.5 * X - 0.5 * X @ X.T @ X
        return X
    return ns


tiled = matfun.Tiled(matfun.NewtonSchulz(5, "jordan"), 8)   # not spectral by design


def torch32(G):
    """Returns float32 for any input: converted back and noted."""
    return matfun.newton_schulz(G.float(), 5, "jordan")
torch32.array_library = "torch"
torch32.steps = 5


def raises(G):
    raise RuntimeError("the map is broken")


def wrong_shape(G):
    return G[:-1]


def nonfinite(G):
    return G * np.inf


def third_call_raises(G):
    CALLS.append(1)
    if len(CALLS) >= 3:
        raise FloatingPointError("fails on its third call")
    return matfun.newton_schulz(G, 5, "jordan")


STARTED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "started.flag")


def fails_ill_conditioned(G):
    """Passes the probe (a Gaussian 24x40, condition number about 8).  For kappa = 10: marks that it
    started and takes 1 s; for kappa = 1000: raises once the kappa = 10 cell has started (on parallel
    workers that cell is then still running when this one fails)."""
    if G.shape != (24, 40) and np.linalg.cond(G) > 100:
        deadline = time.time() + 5.0
        while not os.path.exists(STARTED) and time.time() < deadline:
            time.sleep(0.01)
        raise FloatingPointError("ill-conditioned input")
    if G.shape != (24, 40):
        open(STARTED, "w").close()
        time.sleep(1.0)
    return matfun.newton_schulz(G, 5, "jordan")


def float32_on_cells(G):
    """float64 for the probe's 24x40 matrix, float32 otherwise: its note comes from the experiment's cells."""
    X = matfun.newton_schulz(G, 5, "jordan")
    return X if G.shape == (24, 40) else X.astype(np.float32)


not_callable = 3
'''

#: Tiny sizes for every experiment run in these tests (keys an experiment lacks are not applied to it).
TINY = [
    "--set",
    "shape=16,24",
    "--set",
    "condition_numbers=10",
    "--set",
    "schedules=jordan",
    "--set",
    "tiles=8",
    "--set",
    "max_steps=4",
]


@pytest.fixture()
def usermod(tmp_path, monkeypatch):
    """A fresh user module ``usermaps_<id>`` importable from ``tmp_path`` (also the working directory)."""
    name = f"usermaps_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def run_cli(args, tmp_path):
    return cli.main([*args, "--out", str(tmp_path / "out"), "--no-progress"])


def cells_on_disk(tmp_path, experiment: str) -> int:
    return len(list((tmp_path / "out" / "results" / experiment / "cells").glob("*.json")))


def legend_texts(module, frame, config) -> list[str]:
    with plotting.capture_figures() as figs:
        module.plot(frame, config, "unused")
    return [
        t.get_text()
        for fig, _ in figs
        for leg in fig.legends + [a.get_legend() for a in fig.axes]
        if leg is not None
        for t in leg.get_texts()
    ]


# --------------------------------------------------------------------- adaptor


def test_library_dtype_conversion_is_noted(usermod):
    p = plugins.load(f"{usermod}:torch32", "t32")
    G = np.random.default_rng(0).standard_normal((2, 6, 10))  # a batch, numpy float64
    X = p(G)
    assert isinstance(X, np.ndarray) and X.dtype == np.float64 and X.shape == G.shape
    # the 2-D-only map was looped over the batch: each matrix is its own NS output (float32 accuracy)
    for i in range(2):
        np.testing.assert_allclose(X[i], matfun.newton_schulz(G[i].astype(np.float32), 5, "jordan"), atol=1e-6)
    assert any("float32" in n and "converted back" in n for n in p.notes)


def test_bfloat16_input_to_a_numpy_map_is_noted(usermod):
    p = plugins.load(f"{usermod}:schedule", "cubic")
    X = p(torch.randn(6, 10, dtype=torch.float64).to(torch.bfloat16), steps=3)
    assert X.dtype == torch.bfloat16 and X.shape == (6, 10)
    assert any("bfloat16" in n for n in p.notes)


def test_kinds_and_curves(usermod):
    G = np.random.default_rng(1).standard_normal((8, 12))
    factory = plugins.load(f"{usermod}:schedule", "cubic")
    assert factory.kind == "factory"
    curve = factory.curve(G, 6)
    assert [k for k, _ in curve] == [1, 2, 3, 4, 5, 6]
    # the factory's K-step output equals K cubic steps computed here
    X = G / np.linalg.norm(G)
    for _ in range(6):
        X = 1.5 * X - 0.5 * X @ X.T @ X
    np.testing.assert_allclose(curve[-1][1], X, rtol=1e-12, atol=1e-14)
    ns = plugins.from_object("ns", matfun.NewtonSchulz(4, "jordan"))
    assert ns.kind == "iterates" and [k for k, _ in ns.curve(G, 10)] == [0, 1, 2, 3, 4]
    plain = plugins.load(f"{usermod}:torch32")
    assert plain.kind == "plain" and [k for k, _ in plain.curve(G, 10)] == [5.0]


@pytest.mark.parametrize(
    "attr, problem",
    [
        ("raises", "raised RuntimeError: the map is broken"),
        ("wrong_shape", "returned shape (23, 40) for an input of shape (24, 40)"),
        ("nonfinite", "non-finite"),
        ("not_callable", "not callable"),
        ("missing", "has no attribute 'missing'"),
    ],
)
def test_broken_plugins_raise_one_line_naming_them(usermod, attr, problem):
    with pytest.raises(plugins.PluginError) as info:
        plugins.collect(options=[f"bad={usermod}:{attr}"])
    message = str(info.value)
    assert "'bad'" in message and problem in message and "\n" not in message


def test_missing_module(usermod):
    with pytest.raises(plugins.PluginError, match="no module named 'no_such_module_xyz'"):
        plugins.load("no_such_module_xyz:f", "mine")


def test_identity_follows_the_source(usermod, tmp_path):
    before = plugins.load(f"{usermod}:schedule")
    same = plugins.load(f"{usermod}:schedule")
    assert before.identity == same.identity and before.identity.startswith(f"{usermod}:schedule@")
    path = tmp_path / f"{usermod}.py"
    path.write_text(path.read_text().replace("1.5 * X - 0.5", "1.5 * X - 0.50"))
    importlib.reload(sys.modules[usermod])
    assert plugins.load(f"{usermod}:schedule").identity != before.identity
    # configured Map instances differ by their settings
    a = plugins.from_object("a", matfun.NewtonSchulz(5, "jordan"))
    b = plugins.from_object("b", matfun.NewtonSchulz(5, "you"))
    assert a.identity != b.identity


# ----------------------------------------------------------- transfer measured


def test_measured_transfer_equals_the_analytic_one_and_flags_tiled_maps(usermod):
    from diagnostics.experiments import transfer

    config = transfer.Config(schedules=("jordan",), steps=(3,), panel_steps=3, n_sigma=40)
    ns = plugins.from_object("ns", matfun.NewtonSchulz(3, "jordan", "float64"))
    frame = transfer.measure_transfer(ns, config, seed=0, device="cpu")
    exact = matfun.transfer_function(frame["sigma"].to_numpy(), 3, "jordan")
    # float64 NS on a 40x60 matrix: p measured as u_i^T X v_i agrees with the scalar composition to rounding
    np.testing.assert_allclose(frame["p"], exact, atol=1e-12)
    assert frame["spectral"].all() and frame["spectral_residual"].max() < 1e-12
    tiled = plugins.load(f"{usermod}:tiled")
    f = transfer.measure_transfer(tiled, config, seed=0, device="cpu")
    assert not f["spectral"].any() and f["spectral_residual"].min() > 0.1


# ----------------------------------------------------------- experiments (CLI)


def test_run_with_maps_names_them_in_rows_and_legends_and_caches_per_plugin(usermod, tmp_path, capsys):
    args = [
        "run",
        "ns_convergence",
        "--quick",
        "--map",
        f"cubic={usermod}:schedule",
        "--map",
        f"tiled={usermod}:tiled",
        *TINY,
    ]
    assert run_cli(args, tmp_path) == 0
    frame = store.load_results("ns_convergence", tmp_path / "out" / "results")
    assert set(frame["plugin"].dropna()) == {"cubic", "tiled"}
    cubic = frame[frame["plugin"] == "cubic"]
    assert sorted(cubic["step"]) == [1, 2, 3, 4]  # a factory: one point per K
    module = experiments.get("ns_convergence")
    config = overrides.apply(
        module.Config.quick(),
        [("shape", "16,24"), ("condition_numbers", "10"), ("schedules", "jordan"), ("tiles", "8"), ("max_steps", "4")],
    )
    texts = legend_texts(module, frame, config)
    assert any("cubic" in t for t in texts) and any("tiled" in t for t in texts)
    capsys.readouterr()
    # rerun: everything cached; editing the plug-in's source recomputes its cells only
    assert run_cli(args, tmp_path) == 0
    assert "0 computed, 3 cached" in capsys.readouterr().out
    path = tmp_path / f"{usermod}.py"
    path.write_text(path.read_text().replace("1.5 * X - 0.5", "1.5 * X - 0.50"))
    sys.modules.pop(usermod)
    assert run_cli(args, tmp_path) == 0
    assert "1 computed, 2 cached" in capsys.readouterr().out


def test_broken_plugins_exit_2_and_builtin_cells_kept(usermod, tmp_path, capsys):
    base = ["run", "ns_convergence", "--quick", *TINY]
    assert run_cli(base, tmp_path) == 0
    capsys.readouterr()
    for attr in ("raises", "wrong_shape", "nonfinite", "not_callable", "missing"):
        assert run_cli([*base, "--map", f"bad={usermod}:{attr}"], tmp_path) == 2, attr
        assert "'bad'" in one_line(capsys)
        assert cells_on_disk(tmp_path, "ns_convergence") == 1  # the built-in cell (jordan at κ = 10) is kept


def test_plugin_failing_mid_run_leaves_none_of_its_cells(usermod, tmp_path, capsys):
    args = [
        "run",
        "ns_convergence",
        "--quick",
        *TINY,
        "--set",
        "condition_numbers=10,1000",
        "--map",
        f"late={usermod}:third_call_raises",
    ]
    assert run_cli(args, tmp_path) == 2  # probe: call 1, κ=10: call 2 (cached), κ=1e3: call 3 raises
    err = one_line(capsys)
    assert "'late'" in err and "fails on its third call" in err
    cells = list((tmp_path / "out" / "results" / "ns_convergence" / "cells").glob("*.json"))
    assert len(cells) == 2 and not any("late" in c.read_text() for c in cells)


def test_figures_with_maps_and_seeds_show_spread(usermod, tmp_path, capsys):
    args = [
        "figures",
        "--quick",
        "--only",
        "ns_convergence",
        "duality",
        "--map",
        f"cubic={usermod}:schedule",
        "--seeds",
        "0,1",
        *TINY,
        "--set",
        "stream_steps=5",
        "--set",
        "duality.matrices=geometric",
    ]
    assert run_cli(args, tmp_path) == 0
    for name in ("ns_convergence", "duality"):
        frame = store.load_results(name, tmp_path / "out" / "results")
        assert set(frame["seed"]) == {0, 1} and "cubic" in set(frame["plugin"].dropna())
        assert (tmp_path / "out" / "figures" / name).glob("*.png")
    # seeds are part of the cache key: seed 1 alone is now fully cached, seed 2 is not
    capsys.readouterr()
    duality = [
        "run",
        "duality",
        "--quick",
        "--set",
        "shape=16,24",
        "--set",
        "schedules=jordan",
        "--set",
        "tiles=8",
        "--set",
        "max_steps=4",
        "--set",
        "stream_steps=5",
        "--set",
        "matrices=geometric",
        "--map",
        f"cubic={usermod}:schedule",
    ]
    assert run_cli([*duality, "--seed", "1"], tmp_path) == 0
    assert "0 computed" in capsys.readouterr().out
    assert run_cli([*duality, "--seed", "2"], tmp_path) == 0
    assert "0 cached" in capsys.readouterr().out


def test_overrides_change_the_cache_key(tmp_path, capsys):
    args = [
        "run",
        "transfer",
        "--quick",
        "--set",
        "schedules=jordan",
        "--set",
        "steps=2,3",
        "--set",
        "panel_steps=3",
        "--set",
        "n_sigma=16",
    ]
    assert run_cli(args, tmp_path) == 0
    assert run_cli([*args, "--set", "n_sigma=17"], tmp_path) == 0
    out = capsys.readouterr().out.splitlines()
    assert "2 computed" in out[0] and "2 computed" in out[1]
    frame = store.load_results("transfer", tmp_path / "out" / "results")
    from diagnostics.experiments import transfer

    grid = transfer.sigma_grid(transfer.Config(schedules=("jordan",), steps=(2, 3), panel_steps=3, n_sigma=17))[0]
    assert (frame["n_sigma"] == 17).all() and frame["sigma"].nunique() == len(grid)


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("nope=1", "unknown key 'nope'"),
        ("max_steps=abc", "expected an integer"),
        ("schedules=not_a_schedule", "unknown schedule"),
        ("shape=1,2,3", "expected 2 comma-separated values"),
    ],
)
def test_bad_set_is_one_line_listing_valid_keys(tmp_path, capsys, setting, expected):
    assert run_cli(["run", "ns_convergence", "--quick", "--set", setting], tmp_path) == 2
    err = one_line(capsys)
    assert expected in err and "valid keys" in err and "max_steps (int)" in err
    assert not (tmp_path / "out" / "results" / "ns_convergence").exists()


def test_bad_seeds(tmp_path, capsys):
    assert run_cli(["run", "transfer", "--quick", "--seeds", "0,x"], tmp_path) == 2
    assert "--seeds" in one_line(capsys)


def test_python_api(usermod, tmp_path):
    import diagnostics

    mod = importlib.import_module(usermod)
    result = diagnostics.run(
        "ns_convergence",
        maps={"mine": mod.schedule},
        quick=True,
        set={"shape": (16, 24), "condition_numbers": (10,), "schedules": ("jordan",), "tiles": (8,), "max_steps": 3},
        results_dir=tmp_path / "r",
        figures_dir=tmp_path / "f",
    )
    assert "mine" in set(result.frame["plugin"].dropna()) and result.figures
    with pytest.raises(overrides.OverrideError, match="valid keys"):
        diagnostics.run("ns_convergence", set={"bogus": 1}, quick=True, results_dir=tmp_path / "r")


# -------------------------------------------------------------- seeds merging


def test_merge_figures_draws_mean_and_band():
    def draw(offset):
        with plotting.style():
            fig = plotting.figure("single")
            ax = fig.axes[0]
            ax.plot([1, 2, 3], np.array([1.0, 2.0, 3.0]) + offset)
            ax.plot([1, 2, 3], [5, 5, 5], linestyle="none", marker="o")  # identical: no band
        return fig

    merged = seeds.merge_figures([draw(0.0), draw(1.0), draw(2.0)], [0, 1, 2])
    ax = merged.axes[0]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [2.0, 3.0, 4.0])  # the mean
    bands = [c for c in ax.collections if c.__class__.__name__ in ("PolyCollection", "FillBetweenPolyCollection")]
    assert len(bands) == 1
    ys = bands[0].get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(1.0) and ys.max() == pytest.approx(5.0)  # min-max of the seeds
    assert any("mean of 3 seeds" in t.get_text() for t in merged.texts)


def test_parse_seeds():
    assert runner.parse_seeds("0,1, 2") == (0, 1, 2)
    for bad in ("", "1,1", "-1", "a"):
        with pytest.raises(ValueError):
            runner.parse_seeds(bad)


def test_merge_figures_averages_horizontal_bars():
    def draw(offset):
        with plotting.style():
            fig = plotting.figure("single")
            fig.axes[0].barh([0, 1], [1.0 + offset, 2.0])
        return fig

    merged = seeds.merge_figures([draw(0.0), draw(2.0)], [0, 1])
    widths = [p.get_width() for p in merged.axes[0].patches]
    assert widths == pytest.approx([2.0, 2.0])  # the means: (1 + 3)/2 and 2


# ------------------------------------------------------ plug-ins on Dask workers

TWO_KAPPAS = [*TINY, "--set", "condition_numbers=10,1000"]


def results(tmp_path, out: str, experiment: str = "ns_convergence") -> pd.DataFrame:
    return store.load_results(experiment, tmp_path / out / "results")


def test_map_with_jobs_two_equals_jobs_one(usermod, tmp_path, capsys):
    args = [
        "run",
        "ns_convergence",
        "--quick",
        "--no-progress",
        "--map",
        f"cubic={usermod}:schedule",
        "--map",
        f"f32={usermod}:float32_on_cells",
        *TWO_KAPPAS,
    ]
    for jobs in ("1", "2"):
        assert cli.main([*args, "--jobs", jobs, "--out", str(tmp_path / f"jobs{jobs}")]) == 0
        out = capsys.readouterr().out
        assert "6 computed" in out
        # the note is found on the worker that ran the cell, and printed here
        assert "note: plug-in 'f32': returns float32 for float64 input" in out, (jobs, out)
    sequential, parallel = results(tmp_path, "jobs1"), results(tmp_path, "jobs2")
    assert set(parallel["plugin"].dropna()) == {"cubic", "f32"} and (parallel["plugin"] == "cubic").sum() == 2 * 4
    # the same cells, computed by the same code from the same seeds: equal to the last bit
    pd.testing.assert_frame_equal(parallel, sequential)


def test_python_object_plugin_with_jobs_two(usermod, tmp_path):
    import diagnostics

    steps = 3

    def closure(G):  # not importable: sent to the workers pickled
        return matfun.newton_schulz(G, steps, "jordan")

    closure.steps = steps
    kw = {
        "maps": {"closure": closure},
        "quick": True,
        "figures_dir": None,
        "set": {
            "shape": (16, 24),
            "condition_numbers": (10, 1000),
            "schedules": ("jordan",),
            "tiles": (8,),
            "max_steps": 3,
        },
    }
    sequential = diagnostics.run("ns_convergence", results_dir=tmp_path / "r1", **kw)
    parallel = diagnostics.run("ns_convergence", results_dir=tmp_path / "r2", jobs=2, **kw)
    assert parallel.computed == sequential.computed == 4
    rows = parallel.frame[parallel.frame["plugin"] == "closure"]
    assert len(rows) == 2 and (rows["step"] == 3).all()  # a plain callable: one row per kappa at its own K
    pd.testing.assert_frame_equal(parallel.frame, sequential.frame)


def test_unpicklable_plugin_with_jobs_fails_before_anything_runs(usermod, tmp_path, monkeypatch):
    import threading

    import diagnostics
    from diagnostics import parallel

    lock = threading.Lock()

    def locked(G):  # a closure over a lock: cloudpickle cannot send it
        with lock:
            return matfun.newton_schulz(G, 3, "jordan")

    monkeypatch.setattr(parallel, "open_client", lambda *a: pytest.fail("a cluster was started"))
    with pytest.raises(plugins.PluginError) as info:
        diagnostics.run(
            "ns_convergence", maps={"locked": locked}, quick=True, jobs=2, results_dir=tmp_path / "r", figures_dir=None
        )
    message = str(info.value)
    assert "'locked'" in message and "cannot be pickled" in message and "--jobs" in message
    assert "MODULE:ATTR" in message and "\n" not in message
    assert not (tmp_path / "r").exists()  # nothing computed, nothing cached


def test_plugin_failing_on_a_worker_is_reported_as_in_process(usermod, tmp_path, capsys):
    args = [
        "run",
        "ns_convergence",
        "--quick",
        "--no-progress",
        "--map",
        f"bad={usermod}:fails_ill_conditioned",
        *TWO_KAPPAS,
    ]
    from distributed import LocalCluster

    errors = []
    # a cluster that outlives the command: its workers are not stopped when the command fails
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, silence_logs=50) as cluster:
        for option in (["--jobs", "1"], ["--jobs", "2"], ["--scheduler", cluster.scheduler_address]):
            out = tmp_path / option[0].strip("-")
            (tmp_path / "started.flag").unlink(missing_ok=True)
            assert cli.main([*args, *option, "--out", str(out)]) == 2
            errors.append(one_line(capsys))
            if option[0] == "--scheduler":
                time.sleep(1.0)  # a cell still running on the cluster would be written by now
            cells = list((out / "results" / "ns_convergence" / "cells").glob("*.json"))
            # the built-in cells (kappa = 10, 1000) stay; the plug-in's cell at kappa = 10 succeeded but is removed
            assert len(cells) == 2 and not any('"bad"' in c.read_text() for c in cells), option
    assert len(set(errors)) == 1 and "'bad'" in errors[0] and "ill-conditioned input" in errors[0]


def test_worker_loads_a_spec_plugin_from_the_submitting_directory(tmp_path, monkeypatch):
    from diagnostics import parallel

    name = f"usermaps_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(PLUGIN_SOURCE)
    monkeypatch.chdir(tmp_path)
    p = plugins.load(f"{name}:schedule", "cubic")
    shipped = parallel.ship_plugins([p])["cubic"]
    sys.modules.pop(name)
    monkeypatch.setattr(sys, "path", [e for e in sys.path if e not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path.parent)  # a worker that starts elsewhere
    try:
        on_worker = parallel._worker_plugin(shipped)
        assert on_worker.identity == p.identity and on_worker.target is not p.target
    finally:
        sys.modules.pop(name, None)


def test_override_values_parse_by_field_type():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Config:
        n: int = 1
        rate: float | None = 0.1
        flag: bool = False
        shape: tuple[int, int] = (2, 3)
        names: tuple[str, ...] = ("a",)
        lrs: tuple[tuple[str, float], ...] = ()

    changed = overrides.apply(
        Config(),
        [
            ("n", "4"),
            ("rate", "none"),
            ("flag", "true"),
            ("shape", "8,16"),
            ("names", "x,y"),
            ("lrs", "adamw:3e-3,muon:0.02"),
        ],
    )
    assert changed == Config(4, None, True, (8, 16), ("x", "y"), (("adamw", 0.003), ("muon", 0.02)))
    for bad in (("n", "1.5"), ("flag", "maybe"), ("shape", "8"), ("lrs", "adamw")):
        with pytest.raises(overrides.OverrideError, match="valid keys: n \\(int\\)"):
            overrides.apply(Config(), [bad])


def _torch_only_ns5(G):
    """A map written for ``validate``: 2-D tensor -> 2-D tensor (``.to`` fails on numpy)."""
    import torch

    X = G.to(torch.float32)
    X = X / X.norm()
    for _ in range(5):
        A = X @ X.mT
        X = 3.4445 * X + (-4.7750 * A + 2.0315 * A @ A) @ X
    return X.to(G.dtype)


def test_undeclared_torch_map_is_detected_and_fed_torch():
    """The same function that passes ``validate`` works in ``--map``/``report``: the probe detects torch."""
    import numpy as np

    from diagnostics import plugins

    [p] = plugins.collect({"t": _torch_only_ns5})
    assert p.library == "torch"
    assert any("torch tensors" in n for n in p.notes)
    out = p(np.random.default_rng(0).standard_normal((8, 12)))
    assert isinstance(out, np.ndarray) and out.shape == (8, 12)


def test_map_failing_on_both_libraries_says_what_to_declare():
    import pytest

    from diagnostics import plugins

    def broken(G):
        return G.nope()

    with pytest.raises(plugins.PluginError, match="array_library"):
        plugins.collect({"b": broken})
