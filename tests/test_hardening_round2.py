"""Hardening, round 2 (items 2, 3, 5 and 6): stale cache entries, silent successes, one line instead of a
traceback, names and seeds."""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys
import uuid

import numpy as np
import pandas as pd
import pytest

import matfun
from diagnostics import cli, overrides, plugins, runner, store

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
    "max_steps=3",
]

USER_SOURCE = """
import sys
import numpy as np
import torch
import matfun


def exits(G):
    sys.exit(0)


def meta(G):
    return torch.empty(G.shape, dtype=G.dtype, device="meta")
meta.array_library = "torch"


def sparse(G):
    return matfun.newton_schulz(G, 3, "jordan").to_sparse()
sparse.array_library = "torch"


def interrupts(G):
    if G.shape != (24, 40):  # passes the probe, then interrupts on the worker
        raise KeyboardInterrupt
    return matfun.newton_schulz(G, 3, "jordan")


def good(G):
    return matfun.newton_schulz(G, 3, "jordan")


def opt_exits(params, lr):
    sys.exit(0)


def opt_some(params, lr):
    return torch.optim.SGD(params[:1], lr=lr)


def opt_none(params, lr):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def opt_sgd(params, lr):
    return torch.optim.SGD(params, lr=lr)
"""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def usermod(tmp_path, monkeypatch):
    name = f"round2_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def run_cli(args, tmp_path):
    return cli.main([*args, "--out", str(tmp_path / "out"), "--no-progress"])


@pytest.fixture()
def tiny_corpus(tmp_path):
    from diagnostics import corpus

    path = tmp_path / "corpus.txt"
    path.write_bytes(corpus.load_corpus().data[:40_000].tobytes())
    return path


def lm_args(corpus_path) -> list[str]:
    return [
        "run",
        "lm",
        "--quick",
        "--set",
        f"corpus={corpus_path}",
        "--set",
        "context=16",
        "--set",
        "width=32",
        "--set",
        "depth=1",
        "--set",
        "heads=2",
        "--set",
        "batch_size=4",
        "--set",
        "steps=4",
        "--set",
        "eval_every=2",
        "--set",
        "val_windows=4",
        "--set",
        "seeds=0",
        "--set",
        "timing_rounds=0",
        "--set",
        "lrs=()",
        "--set",
        "lr_grid=0.01",
    ]


# ------------------------------------------------------------------ item 3: silent successes


def test_sys_exit_in_a_map_is_a_failure_of_that_plugin(usermod, tmp_path, capsys):
    assert run_cli(["run", "ns_convergence", "--quick", "--map", f"ex={usermod}:exits", *TINY], tmp_path) == 2
    err = one_line(capsys)
    assert "'ex'" in err and "SystemExit(0)" in err


def test_sys_exit_in_an_lm_factory_is_one_line_exit_2(usermod, tmp_path, capsys, tiny_corpus):
    args = [*lm_args(tiny_corpus), "--set", "optimizers=adamw", "--optimizer", f"ex={usermod}:opt_exits"]
    assert run_cli(args, tmp_path) == 2
    err = one_line(capsys)
    assert "'ex'" in err and "SystemExit(0)" in err


def test_optimizer_option_is_added_to_the_overridden_optimizers(usermod, tmp_path, capsys, tiny_corpus):
    args = [*lm_args(tiny_corpus), "--set", "optimizers=adamw", "--optimizer", f"mine={usermod}:opt_sgd"]
    assert run_cli(args, tmp_path) == 0
    frame = store.load_results("lm", tmp_path / "out" / "results")
    assert set(frame["optimizer"]) == {"adamw", "mine"}


def test_a_repeated_set_key_checks_every_value_and_a_scoped_one_wins(tmp_path, capsys):
    # the earlier value is checked too (it used to be dropped unchecked)
    assert (
        run_cli(
            ["run", "ns_convergence", "--quick", *TINY, "--set", "schedules=nope", "--set", "schedules=jordan"],
            tmp_path,
        )
        == 2
    )
    assert "nope" in one_line(capsys)
    assert (
        run_cli(["run", "ns_convergence", "--quick", *TINY, "--set", "max_steps=1e9", "--set", "max_steps=3"], tmp_path)
        == 2
    )
    assert "exceeds the size bound" in one_line(capsys)
    from diagnostics import experiments

    module = experiments.get("ns_convergence")
    per = overrides.overrides_for(overrides.parse(["ns_convergence.max_steps=4", "max_steps=3"]), [module])
    config = overrides.apply(module.Config.quick(), per["ns_convergence"])
    assert config.max_steps == 4  # NAME.KEY wins over KEY
    per = overrides.overrides_for(overrides.parse(["schedules=nope", "ns_convergence.schedules=jordan"]), [module])
    with pytest.raises(overrides.OverrideError):  # the losing value is checked too
        overrides.apply(module.Config.quick(), per["ns_convergence"])


# ------------------------------------------------------- item 5: one line instead of a traceback


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("schedules=", "empty list"),
        ("condition_numbers=", "empty list"),
        ("precisions=", "empty list"),
        ("schedules=jordan,jordan", "repeated value"),
        ("condition_numbers=10,1e1", "repeated value"),
        ("condition_numbers=nan", "finite number"),
        ("condition_numbers=inf", "finite number"),
        ("max_steps=1e9", "exceeds the size bound"),
        ("shape=16,100000000", "exceeds the size bound"),
    ],
)
def test_generic_override_checks_are_one_line(tmp_path, capsys, setting, expected):
    experiment = "precision" if setting.startswith("precisions") else "ns_convergence"
    assert run_cli(["run", experiment, "--quick", "--set", setting], tmp_path) == 2
    err = one_line(capsys)
    assert expected in err and "valid keys" in err
    assert not (tmp_path / "out" / "results" / experiment / "cells").exists()


def test_generic_override_checks_apply_to_any_config():
    @dataclasses.dataclass(frozen=True)
    class Config:
        n: int = 8
        xs: tuple[float, ...] = (1.0,)
        maybe: tuple[str, ...] = ()
        seeds: tuple[int, ...] = (0,)
        pairs: tuple[tuple[str, float], ...] = ()

    assert overrides.apply(Config(), [("maybe", "")]).maybe == ()  # empty by default: may be emptied
    assert overrides.apply(Config(), [("seeds", "123456")]).seeds == (123456,)  # a seed is a label, not a size
    assert overrides.apply(Config(), [("n", "1024")]).n == 1024
    for key, text in [("xs", ""), ("xs", "1,1"), ("xs", "-inf"), ("n", "1025"), ("pairs", "a:1,a:2")]:
        with pytest.raises(overrides.OverrideError):
            overrides.apply(Config(), [(key, text)])


@pytest.mark.parametrize("attr, problem", [("meta", "meta device"), ("sparse", "layout")])
def test_meta_or_sparse_output_is_one_line(usermod, tmp_path, capsys, attr, problem):
    assert run_cli(["run", "ns_convergence", "--quick", "--map", f"{attr}={usermod}:{attr}", *TINY], tmp_path) == 2
    err = one_line(capsys)
    assert f"'{attr}'" in err and problem in err


@pytest.mark.parametrize(
    "attr, problem",
    [
        ("opt_some", "does not optimise 3 of the 4 hidden matrices"),
        ("opt_none", "optimises 1 parameter(s) it was not given"),
    ],
)
def test_lm_factory_that_does_not_cover_the_hidden_matrices_is_refused(
    usermod, tmp_path, capsys, tiny_corpus, attr, problem
):
    args = [*lm_args(tiny_corpus), "--set", "optimizers=adamw", "--optimizer", f"x={usermod}:{attr}"]
    assert run_cli(args, tmp_path) == 2
    err = one_line(capsys)
    assert "'x'" in err and problem in err


def test_keyboard_interrupt_in_a_plugin_on_a_worker_is_one_line(usermod, tmp_path, capsys):
    args = ["run", "ns_convergence", "--quick", "--map", f"ki={usermod}:interrupts", *TINY, "--jobs", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "diagnostics", *args, "--out", str(tmp_path / "o"), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'ki'" in lines[0] and "KeyboardInterrupt" in lines[0], proc.stderr


def test_design_schedule_bad_figure_and_huge_interval_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["design-schedule", "--lower", "1e-3", "--figure", ""]) == 2
    assert "--figure" in one_line(capsys)
    (tmp_path / "adir").mkdir()
    assert cli.main(["design-schedule", "--lower", "1e-3", "--figure", "adir"]) == 2
    assert "--figure" in one_line(capsys)
    assert cli.main(["design-schedule", "--lower", "1e-3", "--upper", "1e300", "--no-figure"]) == 2
    assert "1e+300" in one_line(capsys)
    for lower, upper in ((1e-3, 1e300), (1e-200, 1e-100)):
        with pytest.raises(ValueError, match="cannot design"):
            matfun.design_schedule(lower, upper)


# ------------------------------------------------------------------- item 6: names and seeds


@pytest.mark.parametrize("name", ["nan", "NA", "None", "null", "1", "True", "inf", "Nan"])
def test_names_that_do_not_survive_the_csv_are_refused(usermod, tmp_path, capsys, name):
    assert run_cli(["run", "ns_convergence", "--quick", "--map", f"{name}={usermod}:good", *TINY], tmp_path) == 2
    assert repr(name) in one_line(capsys)
    assert cli.main(["report", f"{usermod}:good", "--name", name, "--out", str(tmp_path / "r")]) == 2
    assert repr(name) in one_line(capsys)
    with pytest.raises(plugins.PluginError):
        plugins.from_object(name, lambda G: G)


def test_lm_plugin_optimizer_names_are_checked_too(usermod, tmp_path, capsys, tiny_corpus):
    args = [*lm_args(tiny_corpus), "--set", "optimizers=adamw", "--optimizer", f"nan={usermod}:opt_sgd"]
    assert run_cli(args, tmp_path) == 2
    assert "'nan'" in one_line(capsys)


def test_python_seeds_must_be_distinct(tmp_path):
    import diagnostics

    for bad in ((0, 0), (), (-1,), (True,), "0"):
        with pytest.raises(ValueError, match="seeds"):
            diagnostics.run("transfer", quick=True, seeds=bad, results_dir=tmp_path / "r", figures_dir=None)
    assert not (tmp_path / "r").exists()
    assert runner.check_seeds(3) == (3,) and runner.check_seeds([np.int64(1), 2]) == (1, 2)


# ------------------------------------------------------------------ item 2: stale results


def _ns(G, steps):
    return matfun.newton_schulz(G, steps, "jordan")


def _make(steps):
    def closure(G):
        return matfun.newton_schulz(G, steps, "jordan")

    return closure


PY_TINY = {"shape": (16, 24), "condition_numbers": (10,), "schedules": ("jordan",), "tiles": (8,), "max_steps": 3}


@pytest.mark.parametrize("make", [lambda k: functools.partial(_ns, steps=k), _make], ids=["partial", "closure"])
def test_partials_and_closures_are_identified_by_their_values(tmp_path, make):
    import diagnostics

    kw = {"quick": True, "figures_dir": None, "results_dir": tmp_path / "r", "set": PY_TINY}
    five = diagnostics.run("ns_convergence", maps={"mine": make(5)}, **kw)
    one = diagnostics.run("ns_convergence", maps={"mine": make(1)}, **kw)
    assert five.computed == 2 and one.computed == 1 and one.cached == 1  # the plug-in's cell only
    rows5, rows1 = (r.frame[r.frame["plugin"] == "mine"] for r in (five, one))
    assert not np.allclose(rows5["misalignment"].to_numpy(), rows1["misalignment"].to_numpy())
    again = diagnostics.run("ns_convergence", maps={"mine": make(1)}, **kw)
    assert again.computed == 0  # same values: cached
    assert plugins.from_object("a", make(5)).identity != plugins.from_object("a", make(1)).identity


def test_unidentifiable_plugin_runs_uncached_with_one_note(tmp_path, capsys):
    import diagnostics

    nosource = eval("lambda G: matfun.newton_schulz(G, 3, 'jordan')")  # no readable source
    kw = {"quick": True, "figures_dir": None, "results_dir": tmp_path / "r", "set": PY_TINY}
    for expected_cached in (0, 1):
        result = diagnostics.run("ns_convergence", maps={"anon": nosource}, **kw)
        assert result.cached == expected_cached and result.computed == 2 - expected_cached  # built-in cell cached
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "'anon'" in err[0] and "never cached" in err[0]
    cells = list((tmp_path / "r" / "ns_convergence" / "cells").glob("*.json"))
    assert len(cells) == 1 and not any("anon" in c.read_text() for c in cells)
    from diagnostics import store

    with pytest.raises(store.CacheMissingError):
        diagnostics.run("ns_convergence", maps={"anon": nosource}, replot=True, **kw)
    assert plugins.from_object("anon", nosource).identity.endswith("@unidentified")


def test_unidentifiable_plugin_with_jobs_is_not_cached_by_the_workers(tmp_path, capsys):
    import diagnostics

    nosource = eval("lambda G: matfun.newton_schulz(G, 3, 'jordan')")
    kw = {"quick": True, "figures_dir": None, "set": {**PY_TINY, "condition_numbers": (10, 1000)}}
    seq = diagnostics.run("ns_convergence", maps={"anon": nosource}, results_dir=tmp_path / "a", **kw)
    par = diagnostics.run("ns_convergence", maps={"anon": nosource}, results_dir=tmp_path / "b", jobs=2, **kw)
    pd.testing.assert_frame_equal(par.frame, seq.frame)
    cells = list((tmp_path / "b" / "ns_convergence" / "cells").glob("*.json"))
    assert len(cells) == 2 and not any("anon" in c.read_text() for c in cells)


def test_lm_corpus_rewritten_in_place_is_recomputed(tmp_path, capsys, tiny_corpus):
    args = [*lm_args(tiny_corpus), "--set", "optimizers=adamw"]
    assert run_cli(args, tmp_path) == 0
    first = store.load_results("lm", tmp_path / "out" / "results")
    tiny_corpus.write_bytes(tiny_corpus.read_bytes()[::-1])  # same path, other content
    capsys.readouterr()
    assert run_cli(args, tmp_path) == 0
    assert "1 computed, 0 cached" in capsys.readouterr().out
    second = store.load_results("lm", tmp_path / "out" / "results")
    import hashlib

    assert (second["corpus_sha256"] == hashlib.sha256(tiny_corpus.read_bytes()).hexdigest()).all()
    assert first["corpus_sha256"].iloc[0] != second["corpus_sha256"].iloc[0]


def test_lm_corpus_changed_during_the_run_is_refused(tiny_corpus):
    from diagnostics.errors import BadInput
    from diagnostics.experiments import lm

    config = lm.Config(
        corpus=str(tiny_corpus),
        context=16,
        width=32,
        depth=1,
        heads=2,
        batch_size=4,
        steps=4,
        eval_every=2,
        val_windows=4,
        seeds=(0,),
        timing_rounds=0,
        optimizers=("adamw",),
        lr_grid=(0.01,),
    )
    cell = lm.cells(config)[0]
    tiny_corpus.write_bytes(b"x" + tiny_corpus.read_bytes())
    with pytest.raises(BadInput, match="changed during the run"):
        lm.run_cell(config, cell, "cpu", 0)


# ------------------------------------------------- item 6: --jobs against the sequential run


NUMPY_MAP = """
import numpy as np


def cubic(steps):
    def ns(G):
        X = G / np.linalg.norm(G)
        for _ in range(steps):
            X = 1.5 * X - 0.5 * X @ X.T @ X
        return X
    return ns
"""


def test_jobs_equal_the_sequential_run_within_the_stated_tolerance(tmp_path, monkeypatch):
    """Dask workers run numpy's BLAS on one thread (OPENBLAS_NUM_THREADS=1), a sequential run on all
    cores: a numpy map on matrices large enough for threaded BLAS may differ by rounding.  The README
    states 1e-9 relative; everything else (and every torch computation) is equal."""
    import diagnostics

    name = f"npmap_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(NUMPY_MAP)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    kw = {
        "maps": {"np": f"{name}:cubic"},
        "quick": True,
        "figures_dir": None,
        "set": {
            "shape": (128, 256),
            "condition_numbers": (10, 1000),
            "schedules": ("jordan",),
            "tiles": (32,),
            "max_steps": 4,
        },
    }
    seq = diagnostics.run("ns_convergence", results_dir=tmp_path / "seq", **kw).frame
    par = diagnostics.run("ns_convergence", results_dir=tmp_path / "par", jobs=2, **kw).frame
    assert list(par.columns) == list(seq.columns) and len(par) == len(seq)
    numeric = [c for c in seq.columns if pd.api.types.is_float_dtype(seq[c])]
    pd.testing.assert_frame_equal(par.drop(columns=numeric), seq.drop(columns=numeric))
    builtin = seq["plugin"].isna()
    pd.testing.assert_frame_equal(par[builtin], seq[builtin])  # torch: equal to the last bit
    np.testing.assert_allclose(par[numeric].to_numpy(float), seq[numeric].to_numpy(float), rtol=1e-9, atol=1e-300)
    sys.modules.pop(name, None)
