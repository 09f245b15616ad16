"""matfun.testing.check_optimizer: correct Muon-type optimizers pass, each planted bug fails the check naming it."""

from __future__ import annotations

import time

import pytest
import torch

import matfun
import matfun.testing as mt
from matfun.optim import HiMuon, Muon, Muon2
from tests import _planted_optimizers as po

SEEDS = (0, 1)


pytestmark = pytest.mark.usefixtures("one_thread")


CORRECT = {
    "torch-muon": (lambda ps: torch.optim.Muon(ps, lr=0.02), {}),
    "torch-muon-match-rms": (
        lambda ps: torch.optim.Muon(ps, lr=0.02, adjust_lr_fn="match_rms_adamw"),
        {"lr_rule": "match_rms_adamw"},
    ),
    "torch-muon-original": (lambda ps: torch.optim.Muon(ps, lr=0.05, adjust_lr_fn="original"), {"lr_rule": "original"}),
    "torch-muon-no-nesterov-fp32": (lambda ps: torch.optim.Muon(ps, lr=0.02, nesterov=False), {"dtypes": ("float32",)}),
    "torch-muon-momentum-0": (lambda ps: torch.optim.Muon(ps, lr=0.02, momentum=0.0), {}),
    "torch-muon-momentum-0.9": (lambda ps: torch.optim.Muon(ps, lr=0.02, momentum=0.9), {}),
    "torch-muon-no-decay": (lambda ps: torch.optim.Muon(ps, lr=0.02, weight_decay=0.0), {}),
    "torch-muon-3-steps": (lambda ps: torch.optim.Muon(ps, lr=0.02, ns_steps=3), {}),
    "keller-jordan": (po.keller_muon, {}),
    "planted-correct": (po.planted(None), {}),
    "matfun-muon": (lambda ps: Muon(ps, lr=0.02), {}),
    "matfun-muon-bf16-compute": (lambda ps: Muon(ps, lr=0.02, precision="bfloat16-emulated"), {}),
    "matfun-muon-spectral-norm": (
        lambda ps: Muon(ps, lr=0.02, adjust_lr_fn="spectral_norm"),
        {"lr_rule": "spectral_norm"},
    ),
    "himuon": (lambda ps: HiMuon(ps, lr=0.02, tile=16), {"tile": 16}),
    "muon2": (lambda ps: Muon2(ps, lr=0.02), {"preconditioned": True}),
    "muon2-factorized": (lambda ps: Muon2(ps, lr=0.02, factorized=True), {"preconditioned": True}),
}


@pytest.mark.parametrize("name", sorted(CORRECT))
@pytest.mark.parametrize("seed", SEEDS)
def test_correct_optimizers_pass(name, seed):
    factory, kwargs = CORRECT[name]
    report = mt.check_optimizer(factory, seed=seed, **kwargs)
    assert report.passed, report.table()


def test_torch_muon_identified():
    """The report names what it found: the rule, the momentum form, the decay, the rejected conv kernel."""
    r = mt.check_optimizer(po.torch_muon, seed=0)
    assert "lr rule 'original'" in r["step_scale"].detail
    assert "nesterov" in r["momentum"].detail and abs(r["momentum"].value - 0.95) < 0.01
    assert "decoupled, theta x 0.998" in r["weight_decay"].detail
    assert "conv rejected at construction" in r["shapes"].detail
    assert "EMA buffer" in mt.check_optimizer(po.planted(None), seed=0)["momentum"].detail
    assert "sum buffer" in mt.check_optimizer(po.keller_muon, seed=0)["momentum"].detail
    assert "skips" not in r["nonfinite_gradient"].detail
    assert "raises before anything changes" in mt.check_optimizer(po.matfun_muon, seed=0)["nonfinite_gradient"].detail


#: planted bug -> the check that must fail it (the one whose name says why)
CAUGHT_BY = {
    "sgd": "orthogonalised",
    "gradient": "momentum",
    "post_ns_momentum": "momentum",
    "lr_inverted": "step_scale",
    "conv_shape_2": "step_scale",
    "too_small": "step_scale",
    "coupled_wd": "weight_decay",
    "decay_adjusted_lr": "weight_decay",
    "half_applied": "nonfinite_gradient",
    "nan_to_num": "nonfinite_gradient",
    "global_clip": "nonfinite_gradient",
    "modifies_grad": "gradient_unchanged",
    "nondeterministic": "deterministic",
    "state_outside": "checkpoint_resume",
    "zero_nan": "weight_decay",
    "wrong_momentum": "momentum",
    "nesterov_ignored": "momentum",
}


@pytest.mark.parametrize("bug", sorted(CAUGHT_BY))
def test_planted_bugs_fail_the_check_that_names_them(bug):
    report = mt.check_optimizer(po.planted(bug), seed=0, dtypes=("float32",))
    assert CAUGHT_BY[bug] in report.failed_names, report.table()


def test_bf16_in_place_normalisation_of_the_buffer_fails_bfloat16():
    """torch's own Muon with bf16 parameters and nesterov=False (still in torch 2.13), and a planted copy."""
    for factory in (lambda ps: torch.optim.Muon(ps, lr=0.02, nesterov=False), po.planted("bf16_alias", nesterov=False)):
        report = mt.check_optimizer(factory, seed=0)
        assert report.failed_names == ["bfloat16"], report.table()
        assert "modified in place" in report["bfloat16"].detail
    assert mt.check_optimizer(po.planted("bf16_alias", nesterov=False), seed=0, dtypes=("float32",)).passed


def test_momentum_sgd_and_adamw_are_not_muon():
    assert "orthogonalised" in mt.check_optimizer(po.sgd, seed=0).failed_names
    assert "orthogonalised" in mt.check_optimizer(lambda ps: torch.optim.AdamW(ps, lr=1e-3), seed=0).failed_names


def test_a_declared_lr_rule_is_held_to():
    r = mt.check_optimizer(po.torch_muon, seed=0, lr_rule="match_rms_adamw", dtypes=("float32",))
    assert r.failed_names == ["step_scale"] and "the declared rule 'match_rms_adamw'" in r["step_scale"].detail
    custom = mt.check_optimizer(po.torch_muon, seed=0, lr_rule=lambda A, B: max(1, A / B) ** 0.5, dtypes=("float32",))
    assert custom.passed, custom.table()


def test_reference_agrees_and_localises_a_difference():
    # the same algorithm in two implementations agrees to bf16 level ...
    r = mt.check_optimizer(
        po.matfun_muon, reference=po.torch_muon, compute_precision="bfloat16", seed=0, dtypes=("float32",)
    )
    assert r.passed, r.table()
    assert {"reference_params", "reference_scale", "reference_state"} <= {c.name for c in r.checks}
    # ... but not to float32's: the report says so
    strict = mt.check_optimizer(po.matfun_muon, reference=po.torch_muon, seed=0, dtypes=("float32",))
    assert "reference_params" in strict.failed_names
    # a wrong lr rule is localised to the step size, not to the decay
    r = mt.check_optimizer(po.planted("lr_inverted"), reference=po.planted(None), seed=0, dtypes=("float32",))
    assert {"reference_scale", "reference_params"} <= set(r.failed_names), r.table()
    assert "reference_weight_decay" not in r.failed_names and "reference_momentum" not in r.failed_names
    assert (
        r["reference_scale"].detail.startswith("step size per shape differ on row")
        and "agree on" in r["reference_scale"].detail
    )  # √max(1, B/A) differs from √max(1, A/B) on row, wide, tall, conv
    r = mt.check_optimizer(po.planted("coupled_wd"), reference=po.planted(None), seed=0, dtypes=("float32",))
    assert "reference_weight_decay" in r.failed_names


def test_the_same_seed_gives_the_same_report_and_the_seed_is_printed():
    a = mt.check_optimizer(po.planted(None), seed=3, dtypes=("float32",))
    assert a.table() == mt.check_optimizer(po.planted(None), seed=3, dtypes=("float32",)).table()
    assert "seed=3" in a.table() and a.table().startswith("optimizer check:")
    assert isinstance(mt.check_optimizer(po.planted(None), dtypes=("float32",)).settings["seed"], int)


def test_bad_factories_are_one_clear_error():
    with pytest.raises(mt.TargetError, match="raised RuntimeError: no optimizer today"):
        mt.check_optimizer(po.raises_always)
    with pytest.raises(mt.TargetError, match=r"not a torch.optim.Optimizer"):
        mt.check_optimizer(po.not_an_optimizer)
    with pytest.raises(mt.TargetError, match="SystemExit"):
        mt.check_optimizer(po.exits)
    with pytest.raises(mt.TargetError, match="no module named 'nope'"):
        mt.check_optimizer("nope:factory")

    def hangs(params):
        time.sleep(20)

    start = time.monotonic()
    with pytest.raises(mt.BatteryTimeout):
        mt.check_optimizer(hangs, timeout=0.5)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr_rule": "sqrt"}, "unknown lr_rule"),
        ({"lr_rule": 3}, "lr_rule"),
        ({"dtypes": ("bfloat16",)}, "dtypes"),
        ({"dtypes": ("float32", "float16")}, "dtypes"),
        ({"compute_precision": "fp8"}, "compute_precision"),
        ({"skip": ("nope",)}, "unknown check"),
        ({"seed": -1}, "seed"),
        ({"lr": float("nan")}, "lr"),
        ({"momentum": -0.1}, "momentum"),
        ({"timeout": 0}, "timeout"),
        ({"tile": 0}, "tile"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mt.check_optimizer(po.torch_muon, **kwargs)


def test_assert_optimizer_raises_with_the_table():
    with pytest.raises(AssertionError, match="optimizer failed orthogonalised"):
        mt.assert_optimizer(po.sgd, seed=0, dtypes=("float32",))
    assert mt.assert_optimizer(po.torch_muon, seed=0).passed


def test_skip_and_skipped_rows():
    r = mt.check_optimizer(po.torch_muon, seed=0, skip=("bfloat16", "tensor_lr"))
    assert {"bfloat16", "tensor_lr"}.isdisjoint(c.name for c in r.checks)

    def rejects_tensor_lr(params):
        opt = po.PlantedMuon(params)
        step = opt.step

        def checked(closure=None):
            if any(isinstance(g["lr"], torch.Tensor) for g in opt.param_groups):
                raise TypeError("lr must be a float")
            return step(closure)

        opt.step = checked
        return opt

    r = mt.check_optimizer(rejects_tensor_lr, seed=0, dtypes=("float32",))
    assert r.passed and r["tensor_lr"].skipped and "SKIP" in r.table() and "(1 skipped)" in r.table()


def test_the_callers_tensors_are_never_touched():
    calls = []

    def factory(params):
        calls.append([p.data_ptr() for p in params])
        return torch.optim.Muon(params, lr=0.02)

    mt.check_optimizer(factory, seed=0, dtypes=("float32",))
    assert calls and all(isinstance(p, int) for c in calls for p in c)  # fresh parameters each time


# ------------------------------------------------------------------ the command
def test_validate_optimizer_command_exit_codes(capsys):
    from diagnostics.cli import main

    assert main(["validate-optimizer", "tests._planted_optimizers:torch_muon", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "PASSED: all 12 checks" in out and "seed=0" in out
    assert main(["validate-optimizer", "tests._planted_optimizers:coupled", "--no-bf16", "--seed", "0"]) == 1
    assert "weight_decay        FAIL" in capsys.readouterr().out
    assert (
        main(
            [
                "validate-optimizer",
                "tests._planted_optimizers:sgd_momentum",
                "--reference",
                "tests._planted_optimizers:torch_muon",
                "--no-bf16",
                "--seed",
                "0",
            ]
        )
        == 1
    )
    assert "reference_direction" in capsys.readouterr().out
    for argv in (
        ["tests._planted_optimizers:raises_always"],
        ["tests._planted_optimizers:not_an_optimizer"],
        ["tests._planted_optimizers:exits"],
        ["nope:x"],
        ["no_colon"],
        ["tests._planted_optimizers:torch_muon", "--lr-rule", "sqrt"],
        ["tests._planted_optimizers:torch_muon", "--timeout", "0.01"],
    ):
        assert main(["validate-optimizer", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("matfun-diagnostics"), err


def test_validate_optimizer_help_is_fast_and_lists_the_checks(capsys):
    from diagnostics.cli import main

    assert main(["validate-optimizer", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--reference" in out and "--lr-rule" in out and "nonfinite_gradient" in out


def test_command_and_module_list_the_same_checks():
    from diagnostics import validate_optimizer

    assert validate_optimizer.CHECKS == mt.OPTIMIZER_CHECK_NAMES
    assert validate_optimizer.RULES == tuple(mt.LR_RULES)


def test_module_examples_run():
    import doctest

    from matfun.testing import optimizer

    assert doctest.testmod(optimizer).failed == 0


def test_matfun_exports():
    assert mt.check_optimizer is matfun.testing.optimizer.check_optimizer
