"""Command line: help, list, run/figures/replot/force, and one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from test_store import make_fake

from diagnostics import cli, experiments


def err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one clear line
    return err


@pytest.mark.parametrize("command", [[], ["list"], ["run"], ["figures"], ["validate"]])
def test_help_of_every_subcommand(command, capsys):
    assert cli.main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: matfun-diagnostics" in out
    if command in ([], ["run"], ["figures"]):
        assert "examples:" in out


def test_list(capsys):
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(experiments.names())
    assert any(line.startswith("transfer ") and "transfer function" in line for line in lines)


def test_python_dash_m():
    proc = subprocess.run([sys.executable, "-m", "diagnostics", "list"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "transfer" in proc.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "nope"], "unknown experiment 'nope'; valid: transfer"),
        (["figures", "--only", "transfer", "nope"], "unknown experiment 'nope'; valid: transfer"),
        (["run", "transfer", "--device", "tpu"], "bad device 'tpu'"),
        (["run", "transfer", "--device", "cuda:x"], "bad device"),
        (["run", "transfer", "--seed", "-1"], "--seed must be non-negative"),
        (["run", "transfer", "--seed", "x"], "invalid int value"),
        (["run", "transfer", "--force", "--replot"], "not allowed with argument"),
        (["run", "transfer", "--out", "o", "--results", "r"], "--out cannot be combined"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    assert message in err_line(capsys)
    assert not (tmp_path / "results").exists()  # nothing computed


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu(capsys, tmp_path):
    assert cli.main(["run", "transfer", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA GPU is available" in err_line(capsys)


def test_unwritable_output_directory(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file")
    assert cli.main(["run", "transfer", "--quick", "--out", str(blocker / "sub")]) == 2
    err = err_line(capsys)
    assert "cannot write to results directory" in err and str(blocker) in err


def test_validate_missing_module_exits_2(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_import_validate", lambda: None)
    assert cli.main(["validate"]) == 2
    assert "diagnostics.validate is missing" in err_line(capsys)


@pytest.fixture
def fake(monkeypatch):
    mod = make_fake("fake_cli")
    monkeypatch.setitem(experiments.REGISTRY, mod.NAME, mod)
    return mod


def test_run_force_replot_with_fake_experiment(fake, tmp_path, capsys):
    base = ["run", "fake_cli", "--quick", "--no-progress", "--out", str(tmp_path)]
    assert cli.main(base) == 0
    out = capsys.readouterr().out
    assert "fake_cli: 5 cell(s), 5 computed, 0 cached" in out and str(tmp_path / "results") in out
    assert (tmp_path / "results" / "fake_cli" / "results.csv").exists()
    assert cli.main(base) == 0 and fake.calls == [0, 1, 2, 3, 4]
    assert "0 computed, 5 cached" in capsys.readouterr().out
    assert cli.main([*base, "--force"]) == 0 and len(fake.calls) == 10
    assert cli.main([*base, "--replot"]) == 0 and len(fake.calls) == 10 and fake.plots == 4
    # replot with another seed has no cache: clear error, nothing computed
    assert cli.main([*base, "--replot", "--seed", "5"]) == 2
    assert "cannot replot 'fake_cli'" in err_line(capsys) and len(fake.calls) == 10


def test_corrupt_cache_warning_on_stderr(fake, tmp_path, capsys):
    base = ["run", "fake_cli", "--quick", "--no-progress", "--out", str(tmp_path)]
    assert cli.main(base) == 0
    victim = sorted((tmp_path / "results" / "fake_cli" / "cells").glob("*.csv"))[0]
    victim.write_bytes(victim.read_bytes()[:10])
    capsys.readouterr()
    assert cli.main(base) == 0 and len(fake.calls) == 6
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "corrupt" in captured.err
    assert "1 computed, 4 cached, 1 corrupt" in captured.out


def test_quick_defaults_do_not_touch_full_size_directories(fake, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["figures", "--only", "fake_cli", "--quick", "--no-progress"]) == 0
    assert (tmp_path / "results" / "quick" / "fake_cli" / "results.csv").exists()
    assert not (tmp_path / "results" / "fake_cli").exists()


def test_transfer_run_then_replot_gives_identical_figures(tmp_path, capsys):
    base = ["run", "transfer", "--quick", "--no-progress", "--out", str(tmp_path)]
    assert cli.main(base) == 0
    figs = sorted((tmp_path / "figures" / "transfer").iterdir())
    assert [p.name for p in figs] == ["transfer_functions.pdf", "transfer_functions.png"]
    before = {p.name: p.read_bytes() for p in figs}
    assert all(len(b) > 1000 for b in before.values())
    for p in figs:
        p.unlink()
    capsys.readouterr()
    assert (
        cli.main(["figures", "--only", "transfer", "--replot", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    )
    assert "0 computed, 8 cached" in capsys.readouterr().out
    after = {p.name: p.read_bytes() for p in sorted((tmp_path / "figures" / "transfer").iterdir())}
    assert after == before  # byte-identical, drawn from the cache alone
