"""matfun.monitor: the Monitor on torch's and matfun's optimizers, its metrics, outputs, bad
input, and the ``monitor-report`` command."""

from __future__ import annotations

import html.parser
import math
import warnings

import numpy as np
import pytest
import torch

import matfun
import matfun.optim as mo
from diagnostics import cli
from diagnostics.monitor_report import build_html, load_log, verdicts
from matfun.monitor import NONFINITE_GRAD, NONFINITE_UPDATE, Monitor
from matfun.monitor import metrics as M

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:matfun.monitor. first non-finite event:RuntimeWarning")

OPTIMIZERS = {
    "torch-muon": lambda p: torch.optim.Muon(p, lr=0.02, weight_decay=0.1),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "muon": lambda p: mo.Muon(p, lr=0.02),
    "himuon": lambda p: mo.HiMuon(p, lr=0.02, tile=16),
    "muon2": lambda p: mo.Muon2(p, lr=0.02, factorized=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.1),
}
HIDDEN = ["0.weight", "2.weight"]


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)
    )


def _data(n: int = 64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 16, generator=g), torch.randn(n, 4, generator=g)


def _train(make, steps: int = 4, monitor: dict | None = None, nan_at: int | None = None, matrices_only=True):
    model = _model()
    params = [p for p in model.parameters() if p.ndim == 2] if matrices_only else list(model.parameters())
    opt = make(params)
    x, y = _data()
    mon = Monitor(opt, model=model, **monitor) if monitor is not None else None
    for k in range(1, steps + 1):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        if nan_at == k:
            with torch.no_grad():
                model[2].weight.grad[1, 3] = math.nan
        opt.step()
    return model, opt, mon


def _state_tensors(opt):
    return [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]


# ----------------------------------------------------------------------------- attaching changes nothing


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_attaching_changes_nothing_and_records(name):
    make = OPTIMIZERS[name]
    plain_model, plain_opt, _ = _train(make)
    rng = torch.get_rng_state()
    model, opt, mon = _train(make, monitor={"every": 1, "probes": ("tiling", "muon2"), "tile": 16})
    mon.detach()
    for a, b in zip(plain_model.parameters(), model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(_state_tensors(plain_opt), _state_tensors(opt)):
        assert torch.equal(a, b)
    assert torch.equal(rng, torch.get_rng_state())  # the monitor drew no random numbers
    frame = mon.frame()
    assert list(frame.columns) == ["step", "param", "metric", "value"]
    assert sorted(frame.step.unique()) == [1, 2, 3, 4]
    assert set(frame.param) == {"0.weight", "2.weight", "4.weight"}
    metrics = set(frame.metric)
    assert {
        "update_rms",
        "step_norm",
        "effective_step",
        "orthogonality",
        "sv_min",
        "sv_max",
        "alignment_grad",
        "whatif_tiling_loss" if name != "adamw" else "lr",
    } <= metrics
    has_momentum = name != "adamw"
    assert ("alignment_momentum" in metrics) == has_momentum
    assert ("map_error" in metrics) == (name in ("torch-muon", "muon", "himuon", "muon2"))
    orth = frame[frame.metric == "orthogonality"].value
    assert ((orth > 0) & (orth <= 1 + 1e-6)).all()
    assert not [n for n in mon.notes if "failed" in n or "Error" in n], mon.notes


def test_metrics_tell_sgd_from_muon():
    sgd = _train(OPTIMIZERS["sgd-momentum"], steps=10, monitor={"every": 5, "params": HIDDEN})[2]
    muon = _train(OPTIMIZERS["muon"], steps=10, monitor={"every": 5, "params": HIDDEN})[2]
    tmuon = _train(OPTIMIZERS["torch-muon"], steps=10, monitor={"every": 5, "params": HIDDEN})[2]

    def per_layer(mon, metric):
        f = mon.frame()
        return f[f.metric == metric].groupby("param").value.median()

    orth_sgd = per_layer(sgd, "orthogonality")
    assert (orth_sgd < 0.7).all()
    for m in (muon, tmuon):
        # 5 Jordan NS steps on an ill-conditioned momentum leave its smallest singular values
        # short of 1: orthogonality 0.9-0.99, against SGD's 0.3-0.6 on the same layers
        assert (per_layer(m, "orthogonality") > 0.88).all()
        assert (per_layer(m, "orthogonality") - orth_sgd > 0.3).all()
        assert (per_layer(m, "alignment_momentum") > 0.88).all()
        assert (per_layer(m, "map_error") < 0.6).all()  # against the exact polar factor of its input
        # Muon's step: its spectral norm per unit lr is about AdjustLR's factor (1 here) times σ_max(NS)
        assert ((per_layer(m, "effective_step") > 0.7) & (per_layer(m, "effective_step") < 1.7)).all()
    assert "map_error" not in set(sgd.frame().metric)
    v_sgd, v_muon = verdicts(sgd.frame()), verdicts(muon.frame())
    assert all(any("not orthogonalised" in s for s in v_sgd[p]) for p in HIDDEN)
    assert all(any("orthogonalised" in s and "not" not in s for s in v_muon[p]) for p in HIDDEN)


def test_weight_decay_is_separated_out():
    """Muon with weight decay 0 and 0.5 gives the same update direction (decay separated)."""
    f0 = _train(lambda p: mo.Muon(p, lr=0.02, weight_decay=0.0), steps=2, monitor={"every": 1})[2].frame()
    f1 = _train(lambda p: mo.Muon(p, lr=0.02, weight_decay=0.5), steps=1, monitor={"every": 1})[2].frame()
    a = f0[(f0.step == 1) & (f0.metric == "effective_step")].value.to_numpy()
    b = f1[(f1.step == 1) & (f1.metric == "effective_step")].value.to_numpy()
    np.testing.assert_allclose(a, b, rtol=1e-4)


# ----------------------------------------------------------------------------- non-finite events


def test_planted_nan_recorded_with_step_and_param(tmp_path):
    _, _, mon = _train(
        OPTIMIZERS["sgd-momentum"],
        steps=5,
        nan_at=3,
        monitor={"every": 100, "dump_nonfinite": tmp_path / "dumps"},
        matrices_only=False,
    )
    frame = mon.frame()
    events = frame[frame.metric == "nonfinite"]
    grad = events[events.value == NONFINITE_GRAD]
    assert grad.iloc[0].step == 3 and grad.iloc[0].param == "2.weight"
    upd = events[events.value == NONFINITE_UPDATE]
    assert list(upd[upd.step == 3].param) == ["2.weight"]  # the NaN spreads to every layer in step 4
    assert list(upd[upd.param == "2.weight"].step) == [3]  # recorded once, when it became NaN
    assert mon.events[0] == {
        "step": 3,
        "param": "2.weight",
        "tensor": "gradient",
        "count": 1,
        "dump": mon.events[0]["dump"],
    }
    dump = torch.load(mon.events[0]["dump"])
    assert dump["step"] == 3 and torch.isnan(dump["value"][1, 3])
    # the gradient stays NaN in later steps (the weights are): recorded when it turned NaN only
    assert list(grad[grad.param == "2.weight"].step) == [3]
    assert set(grad[grad.step == 4].param) == {"0.weight", "0.bias", "2.bias", "4.weight", "4.bias"}
    assert 5 not in set(events.step)


def test_planted_nan_before_a_matfun_optimizer_rejects_it():
    model = _model()
    opt = mo.Muon([p for p in model.parameters() if p.ndim == 2], lr=0.02)
    mon = Monitor(opt, every=1, model=model)
    x, y = _data()
    torch.nn.functional.mse_loss(model(x), y).backward()
    model[0].weight.grad[0, 0] = math.inf
    with pytest.raises(ValueError, match="NaN or Inf"):  # matfun's Muon raises; the monitor saw it first
        opt.step()
    assert mon.events[0]["step"] == 1 and mon.events[0]["param"] == "0.weight"
    assert mon.events[0]["tensor"] == "gradient"


# ----------------------------------------------------------------------------- bad input, robustness


def test_bad_input_one_clear_error_at_construction(tmp_path):
    opt = torch.optim.SGD(_model().parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"torch.optim.Optimizer"):
        Monitor(object())
    for every in (0, -1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="every"):
            Monitor(opt, every=every)
    with pytest.raises(ValueError, match="does not exist"):
        Monitor(opt, log=tmp_path / "missing" / "log.csv")
    with pytest.raises(ValueError, match="directory"):
        Monitor(opt, log=tmp_path)
    with pytest.raises(ValueError, match="probes"):
        Monitor(opt, probes=("tile",))
    with pytest.raises(ValueError, match="selects no matrix"):
        Monitor(opt, params=["nothing.*"])
    with pytest.raises(TypeError, match="sink"):
        Monitor(opt, sink=3)
    assert not opt._optimizer_step_pre_hooks  # no half-attached monitor


def test_uncomputable_metrics_are_skipped_and_noted_once():
    def broken(optimizer, p):
        raise RuntimeError("no such state")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, mon = _train(
            OPTIMIZERS["sgd-momentum"],
            steps=3,
            matrices_only=False,
            monitor={"every": 1, "momentum_key": broken, "sink": lambda r: 1 / 0},
        )
    assert set(mon.frame().param) == {"0.weight", "2.weight", "4.weight"}  # biases skipped
    assert any("0.bias" in n and "not a matrix" in n for n in mon.notes)
    assert sum("no such state" in n for n in mon.notes) == 3  # once per parameter, not per step
    assert sum("sink" in n for n in mon.notes) == 1
    assert len([w for w in caught if "matfun.monitor" in str(w.message)]) == 4
    # and the metrics that could be computed were
    assert "orthogonality" in set(mon.frame().metric)


def test_warnings_as_errors_never_reach_the_step():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, _, mon = _train(OPTIMIZERS["sgd-momentum"], steps=2, monitor={"every": 1, "sink": lambda r: 1 / 0})
    assert mon.notes


def test_params_filter_sampling_and_detach():
    model, opt, mon = _train(
        OPTIMIZERS["muon"], steps=4, monitor={"every": 1, "params": ["2.*", "4.weight"], "sample": 1, "seed": 3}
    )
    frame = mon.frame()
    assert set(frame.param) <= {"2.weight", "4.weight"}
    per_step = frame[frame.metric == "orthogonality"].groupby("step").param.nunique()
    assert (per_step == 1).all() and len(per_step) == 4
    mon.detach()
    n = len(frame)
    x, y = _data()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    assert len(mon.frame()) == n and mon.step == 4  # detached: nothing more


# ----------------------------------------------------------------------------- outputs


def test_outputs_log_sink_save_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    seen = []
    log = tmp_path / "log.csv"
    with Monitor(torch.optim.SGD(_model().parameters(), lr=0.1), every=2) as probe:
        assert probe.attached
    assert not probe.attached
    _, _, mon = _train(
        OPTIMIZERS["muon"],
        steps=4,
        monitor={"every": 2, "log": log, "sink": seen.append, "tensorboard": tmp_path / "tb"},
    )
    mon.detach()
    frame = mon.frame()
    assert len(seen) == len(frame) and seen[0] == dict(zip(frame.columns, frame.iloc[0].tolist()))
    streamed = load_log(log)
    np.testing.assert_array_equal(streamed.value.to_numpy(), frame.value.to_numpy())
    saved = mon.save(tmp_path / "saved.csv")
    assert load_log(saved).equals(streamed)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert "orthogonality/0.weight" in acc.Tags()["scalars"]
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pyarrow"):
            mon.save(tmp_path / "x.parquet")
    else:
        assert load_log(mon.save(tmp_path / "x.parquet")).equals(streamed)


# ----------------------------------------------------------------------------- metrics


def test_metric_functions():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(12, 20, generator=g, dtype=torch.float64)
    P = matfun.polar(A)
    assert M.orthogonality(3 * P) == pytest.approx(1.0, abs=1e-12)
    assert M.orthogonality(torch.outer(A[:, 0], A[0])) == pytest.approx(1 / math.sqrt(12), rel=1e-6)
    assert M.alignment(P, A, method="svd") == pytest.approx(1.0, abs=1e-12)
    assert M.map_error(2 * P, A, 2.0, method="svd") == pytest.approx(0.0, abs=1e-12)
    assert M.tiling_loss(A, 32) == pytest.approx(0.0, abs=1e-12)  # no larger than a tile
    assert 0 < M.tiling_loss(A, 4) < 1
    # the update direction separates decoupled weight decay exactly
    W0, u = torch.randn(12, 20, generator=g), torch.randn(12, 20, generator=g)
    lr, wd = 0.1, 0.3
    W1 = W0.mul(1 - lr * wd) - lr * u
    torch.testing.assert_close(M.update_direction(W0, W1, lr, wd), u, rtol=1e-5, atol=1e-5)
    out = M.parameter_metrics(W0, W1, lr=torch.tensor(lr), weight_decay=wd, momentum=u, grad=u)
    assert out["alignment_momentum"] == pytest.approx(out["orthogonality"], abs=1e-5)
    assert out["sv_max"] == pytest.approx(float(torch.linalg.matrix_norm(u, 2)), rel=1e-5)
    with pytest.raises(ValueError, match="lr > 0"):
        M.update_direction(W0, W1, 0.0)


# ----------------------------------------------------------------------------- the report


class _Parser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.images, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_data(self, data):
        self.text.append(data)


def test_monitor_report_cli(tmp_path, capsys):
    _, _, mon = _train(OPTIMIZERS["sgd-momentum"], steps=6, nan_at=5, monitor={"every": 2})
    log = mon.save(tmp_path / "run.csv")
    assert cli.main(["monitor-report", str(log), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "monitor_report.html").read_text()
    parser = _Parser()
    parser.feed(page)
    assert parser.sections == ["summary", "verdicts", "curves", "heatmaps", "nonfinite"]
    assert len(parser.images) >= 3 and all(s.startswith("data:image/png;base64,") for s in parser.images)
    text = " ".join(parser.text)
    assert "updates not orthogonalised" in text and "non-finite gradient at step 5" in text
    assert "2.weight" in text
    capsys.readouterr()
    bad = {
        "missing": tmp_path / "nope.csv",
        "empty": tmp_path / "empty.csv",
        "other": tmp_path / "other.csv",
        "binary": tmp_path / "x.bin",
    }
    bad["empty"].write_text("")
    bad["other"].write_text("a,b\n1,2\n")
    bad["binary"].write_bytes(bytes(range(256)))
    for what, path in bad.items():
        assert cli.main(["monitor-report", str(path)]) == 2, what
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "monitor-report: error:" in err, (what, err)


def test_report_verdict_effective_lr_spread():
    rows = []
    for step in (10, 20):
        for param, size in (("a", 0.01), ("b", 0.04), ("c", 0.012)):
            rows += [
                (step, param, "rows", 8),
                (step, param, "cols", 8),
                (step, param, "step_norm", size),
                (step, param, "orthogonality", 0.99),
                (step, param, "alignment_momentum", 0.99),
            ]
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["step", "param", "metric", "value"])
    found = verdicts(frame)
    assert any("effective lr differs 4.0× across the 3 layers of shape 8×8" in s for s in found["b"])
    assert "Verdict per layer" in build_html(frame)


def test_nonfinite_check_fast_path_overflow_is_not_an_event():
    big = torch.nn.Parameter(torch.full((4, 4), 3e38))  # finite, but its sum overflows float32
    opt = torch.optim.SGD([big], lr=0.0)
    mon = Monitor(opt, every=1)
    big.grad = torch.full((4, 4), 3e38)
    opt.step()
    assert mon.events == []
    big.grad[2, 1] = -math.inf
    opt.step()
    # and lr·(−inf) = 0·(−inf) = NaN lands in the weight: a non-finite update
    assert [(e["step"], e["tensor"], e["count"]) for e in mon.events] == [(2, "gradient", 1), (2, "update", 1)]
