"""The ``lm`` experiment on a tiny GPT and corpus: store, optimizers, corpus loader, plug-ins, divergence."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import textwrap

import numpy as np
import pandas as pd
import pytest

from diagnostics import cli, corpus, experiments, store
from diagnostics.experiments import lm

BUILTINS = (
    "adamw",
    "muon_k5",
    "muon_k3",
    "himuon_t8",
    "himuon_t16",
    "himuon_full_t8",
    "muon2_k5",
    "muon2_k3",
    "muon2f_k5",
    "muon2f_k3",
)


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory) -> str:
    """~40 KB of real Python source (a slice of the default corpus) as a one-file corpus."""
    data = corpus.load_corpus().data[:40_000].tobytes()
    path = tmp_path_factory.mktemp("corpus") / "code.py"
    path.write_bytes(data)
    return str(path)


@pytest.fixture(scope="module")
def tiny(text_corpus) -> lm.Config:
    return lm.Config(
        corpus=text_corpus,
        context=16,
        width=32,
        depth=1,
        heads=2,
        batch_size=8,
        steps=24,
        eval_every=8,
        val_windows=8,
        optimizers=BUILTINS,
        lrs=tuple((o, 1e-2) for o in BUILTINS if o != "adamw"),
        lr_grid=(1e-2, 50.0),
        seeds=(0,),
        timing_rounds=3,
    )


@pytest.fixture(scope="module")
def result(tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm")
    return store.run_experiment(lm, tiny, results_dir=tmp / "results", figures_dir=tmp / "figures", progress=False)


@pytest.fixture(scope="module")
def training(result) -> pd.DataFrame:
    return lm.split_frame(result.frame)[0]


def test_registered():
    assert experiments.get("lm") is lm


def test_columns_and_every_optimizer(training, tiny):
    frame = training
    for col in (
        "optimizer",
        "lr",
        "replica",
        "step",
        "val_loss",
        "train_loss",
        "opt_ms_cum",
        "orth_ms_cum",
        "alignment",
        "final_val_loss",
        "diverged",
        "step_ms_median",
        "orth_ms_median",
        "rest_ms_median",
        "unigram_entropy",
        "corpus_sha256",
        "lr_source",
    ):
        assert col in frame.columns, col
    assert set(frame["optimizer"]) == set(BUILTINS)
    for name, d in frame[~frame["diverged"]].groupby("optimizer"):
        assert list(d["step"]) == [0, 8, 16, 24], name
    assert set(zip(frame["optimizer"] == "adamw", frame["lr_source"])) == {(True, "sweep"), (False, "recorded")}
    data = corpus.load_corpus(tiny.corpus)
    assert (frame["corpus_sha256"] == hashlib.sha256(data.data.tobytes()).hexdigest()).all()


def test_losses_finite_and_falling(training):
    for name, d in training[training["lr"] < 1].groupby("optimizer"):
        val = d["val_loss"].to_numpy()
        assert np.isfinite(val).all() and not d["diverged"].any(), name
        assert val[-1] < val[0] - 0.5, (name, val)  # from ~ln 256 = 5.5 towards the unigram entropy


def test_same_start_and_orth_timing(training):
    frame = training
    init = frame[frame["step"] == 0]["val_loss"].to_numpy()
    np.testing.assert_array_equal(init, init[0])  # same initial weights for every optimizer
    runs = frame.groupby("optimizer").first()
    assert runs.loc["adamw", "orth_ms_median"] == 0
    matrix = runs.drop(index="adamw")
    assert (matrix["orth_ms_median"] > 0).all() and (matrix["orth_ms_median"] <= matrix["step_ms_median"]).all()


def test_alignment(training):
    """Muon's update is NS_5 of the momentum: close to its polar factor, and closer than with K=3."""
    align = training.dropna(subset=["alignment"]).groupby("optimizer")["alignment"].mean()
    assert ((align > -1) & (align <= 1 + 1e-9)).all()
    assert align["muon_k5"] > 0.9
    assert align["muon_k5"] > align["muon_k3"]


def test_identical_rerun(training, tiny):
    cell = {"optimizer": "muon2f_k3", "lr": 1e-2, "replica": 0}
    again = lm.run_cell(tiny, cell, "cpu", 0)
    first = training[training["optimizer"] == "muon2f_k3"]
    assert len(again) == len(first) == 4
    for col in ("val_loss", "train_loss", "alignment"):
        np.testing.assert_array_equal(again[col].to_numpy(), first[col].to_numpy(), err_msg=col)


def test_step_time_benchmark(result):
    """Every optimizer timed in every round on the same gradients; orthogonalisation inside the step."""
    bench = result.frame[result.frame["benchmark"].notna()]
    assert sorted(bench.groupby("optimizer")["round"].apply(sorted).iloc[0]) == [0, 1, 2]
    assert set(bench["optimizer"]) == set(BUILTINS) and (bench["bench_step_ms"] > 0).all()
    matrix = bench[bench["optimizer"] != "adamw"]
    assert (matrix["bench_orth_ms"] > 0).all() and (matrix["bench_orth_ms"] <= matrix["bench_step_ms"]).all()
    assert (bench[bench["optimizer"] == "adamw"]["bench_orth_ms"] == 0).all()
    firsts = bench.sort_index().groupby("round")["optimizer"].first()
    assert firsts.nunique() == 3  # the order rotates


def test_figures_and_table(result):
    for stem in ("lm_loss", "lm_k", "lm_himuon", "lm_lr"):
        assert (result.figures_dir / f"{stem}.png").stat().st_size > 1000, stem
    table = (result.figures_dir / "lm.md").read_text()
    assert "nats/byte" in table and "Muon² at K=3 matches Muon at K=5" in table and "interleaved (3 rounds)" in table
    for verdict_line in [line for line in table.splitlines() if line.startswith("- **")]:
        assert re.search(r"→ \*\*(holds|does not hold)\*\* here", verdict_line), verdict_line
        assert re.search(r"loss (better|worse|indistinguishable);", verdict_line), verdict_line


def test_diverging_run_recorded(result, training):
    """AdamW at lr 50 diverges: recorded (not dropped), never chosen, counted in the table."""
    frame = training
    bad = frame[(frame["optimizer"] == "adamw") & (frame["lr"] == 50.0)]
    assert len(bad) >= 2 and bad["diverged"].all() and bad["diverged_step"].iloc[0] > 0
    assert np.isnan(bad["final_val_loss"]).all() and np.isnan(bad["val_loss"].iloc[-1])
    assert not frame[frame["lr"] < 1]["diverged"].any()
    stats = lm.best_rates(lm.run_summaries(frame))
    assert stats[stats["best"] & (stats["optimizer"] == "adamw")]["lr"].item() == 1e-2
    row = next(line for line in (result.figures_dir / "lm.md").read_text().splitlines() if line.startswith("| AdamW"))
    assert row.endswith("| 1/2 |")


# ----------------------------------------------------------------------------- corpus


def test_corpus_directory(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_bytes(b"second file\n")
    (tmp_path / "a.txt").write_bytes(b"first file\n")
    (tmp_path / ".hidden").write_bytes(b"skipped")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x").write_bytes(b"skipped too")
    c = corpus.load_corpus(str(tmp_path))
    assert c.data.tobytes() == b"first file\nsecond file\n" and c.n_files == 2
    assert c.sha256 == hashlib.sha256(b"first file\nsecond file\n").hexdigest()


def test_split_deterministic_and_disjoint():
    rng = np.random.default_rng(0)
    c = corpus.Corpus(rng.integers(0, 256, 100_000, dtype=np.uint8), "x", 1, "")
    train, val = corpus.split(c, context=32, val_fraction=0.1, block=1000)
    assert train.size + val.size == c.n_bytes and val.size == 10_000
    np.testing.assert_array_equal(val[:1000], c.data[9000:10000])  # block 9 is the first validation block
    t2, _v2 = corpus.split(c, context=32, val_fraction=0.1, block=1000)
    np.testing.assert_array_equal(train, t2)


def test_default_corpus_and_entropy():
    files = corpus.default_files()
    assert files == sorted(files, key=lambda p: p.name) and all(p.suffix == ".py" for p in files)
    assert corpus.unigram_entropy(np.arange(256, dtype=np.uint8)) == pytest.approx(np.log(256))
    assert corpus.unigram_entropy(np.zeros(10, dtype=np.uint8)) == 0.0


@pytest.mark.parametrize("kind", ["missing", "empty", "small"])
def test_corpus_errors(tmp_path, kind):
    path = tmp_path / "c"
    if kind == "empty":
        path.mkdir()
    elif kind == "small":
        path.write_bytes(b"tiny text")
    with pytest.raises(corpus.CorpusError, match=r"does not exist|empty|too small"):
        corpus.split(corpus.load_corpus(str(path)), context=64)


def test_cli_bad_corpus_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lm.Config, "quick", classmethod(lambda cls: cls.quick_sweep(corpus=str(tmp_path / "nope"))))
    code = cli.main(["run", "lm", "--quick", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "does not exist" in err
    assert not list((tmp_path / "o" / "results" / "lm" / "cells").glob("*.csv"))


# ----------------------------------------------------------------------------- plug-ins

PLUGIN_SOURCE = textwrap.dedent(
    """
    import torch

    def sgd(params, lr):
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)

    def raises(params, lr):
        raise RuntimeError("no GPU kernel for this")

    class Poison(torch.optim.Optimizer):
        def __init__(self, params, lr):
            super().__init__(params, {"lr": lr})

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    p.fill_(float("nan"))

    def poison(params, lr):
        return Poison(params, lr)
    """
)


@pytest.fixture
def plugin_module(tmp_path, monkeypatch) -> str:
    name = f"lm_plugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_plugin_optimizer(tiny, plugin_module, tmp_path):
    config = dataclasses.replace(
        tiny, optimizers=("adamw", f"mine={plugin_module}:sgd"), lrs=(("adamw", 1e-2),), lr_grid=(1e-2, 3e-2)
    )
    res = store.run_experiment(lm, config, results_dir=tmp_path / "r", figures_dir=None, progress=False)
    training, times = lm.split_frame(res.frame)
    mine = training[training["optimizer"] == "mine"]
    assert times.loc["mine", "step_ms"] > 0 and np.isnan(times.loc["mine", "orth_ms"])
    assert sorted(set(mine["lr"])) == [1e-2, 3e-2] and (mine["lr_source"] == "sweep").all()
    assert (mine["family"] == "plugin").all() and mine["plugin"].iloc[0] == f"{plugin_module}:sgd"
    finals = mine.groupby("lr")["final_val_loss"].first()
    assert np.isfinite(finals).any() and (finals < 5.0).any()
    assert "mine (plug-in)" in lm.findings(res.frame, config)


@pytest.mark.parametrize(
    "factory, message",
    [
        ("nowhere_xyz_module:sgd", "cannot import"),
        ("{mod}:missing", "missing or not callable"),
        ("{mod}:raises", "raised RuntimeError"),
        ("{mod}:poison", "NaN/Inf"),
    ],
)
def test_broken_plugin_cli(plugin_module, tmp_path, monkeypatch, capsys, factory, message, tiny):
    monkeypatch.setattr(lm.Config, "quick", classmethod(lambda cls: tiny))
    spec = "bad=" + factory.format(mod=plugin_module)
    code = cli.main(["run", "lm", "--quick", "--optimizer", spec, "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and message in err and "'bad'" in err, err
    cells_dir = tmp_path / "o" / "results" / "lm" / "cells"
    assert not cells_dir.exists() or not list(cells_dir.glob("*.csv"))  # plug-ins run first: nothing cached


def test_cli_optimizer_rejected_elsewhere(tmp_path, capsys):
    assert cli.main(["run", "training", "--quick", "--optimizer", "x=a:b", "--out", str(tmp_path)]) == 2
    assert "takes no plug-in optimizers" in capsys.readouterr().err


def test_hidden_matrices_are_the_blocks_weights():
    model = lm.GPT(lm.GPTConfig(context=8, width=16, depth=2, heads=2))
    hidden, rest = lm.split_model(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in hidden) == sorted(
        f"blocks.{i}.{w}.weight" for i in range(2) for w in ("attn.qkv", "attn.proj", "fc", "proj")
    )
    assert len(hidden) + len(rest) == len(list(model.parameters()))


def test_config_validation():
    with pytest.raises(ValueError, match="unknown optimizer"):
        lm.Config(optimizers=("sgd",))
    with pytest.raises(ValueError, match="lrs"):
        lm.Config(lrs=(("muon_k7", 1e-2),))
    assert lm.parse_optimizer("himuon_full_t64").full_first
    assert lm.parse_optimizer("muon2f_k3") == lm.Optimizer("muon2f_k3", "muon2f", 3)
