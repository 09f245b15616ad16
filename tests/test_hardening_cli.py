"""Issue 9 items 10-13 and issue 10 item 9: the command line's one-line contract, the
results store's file modes, a validation that cannot pass falsely, precision
profiles that still catch a coefficient typo, tiled maps, and a lazy registry."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from test_store import make_fake

import matfun
from diagnostics import cli, experiments, store, validate
from matfun.testing import BatteryTimeout, assert_orthogonalizer, check_orthogonalizer

SHAPES = ((32, 32), (32, 48), (48, 32))
JORDAN = (3.4445, -4.7750, 2.0315)


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def fake(monkeypatch):
    mod = make_fake("fake_hard")
    monkeypatch.setitem(experiments.REGISTRY, mod.NAME, mod)
    return mod


def base(tmp_path) -> list[str]:
    return ["run", "fake_hard", "--quick", "--no-progress", "--out", str(tmp_path)]


# ------------------------------------------------------------- item 10: one line, exit 2


def test_replot_reads_a_read_only_results_directory_and_says_why_when_it_must_write(
    fake, tmp_path, capsys, monkeypatch
):
    assert cli.main(base(tmp_path)) == 0

    def read_only(path, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(store, "atomic_write_bytes", read_only)
    capsys.readouterr()
    assert cli.main([*base(tmp_path), "--replot"]) == 0  # results.csv unchanged: nothing to write
    (tmp_path / "results" / "fake_hard" / "results.csv").unlink()
    assert cli.main([*base(tmp_path), "--replot"]) == 2
    err = one_line(capsys)
    assert "Permission denied" in err and "results.csv" in err and "Traceback" not in err


@pytest.mark.parametrize("root", ["results", "figures"])
def test_name_subdirectory_that_is_a_file_is_one_line_before_computing(fake, tmp_path, capsys, root):
    (tmp_path / root).mkdir()
    (tmp_path / root / "fake_hard").write_text("in the way")
    for extra in ([], ["--replot"]):
        assert cli.main(base(tmp_path) + extra) == 2
        err = one_line(capsys)
        assert "is a file" in err or "not a directory" in err
    assert fake.calls == []  # nothing computed


def test_os_errors_during_a_run_are_one_line(fake, tmp_path, capsys, monkeypatch):
    def disk_full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(store, "atomic_write_bytes", disk_full)
    assert cli.main(base(tmp_path)) == 2
    err = one_line(capsys)
    assert err.startswith("matfun-diagnostics run: error: No space left on device: '") and ".csv'" in err


def test_unreadable_cache_file_is_recomputed_then_a_failing_write_is_one_line(fake, tmp_path, capsys):
    assert cli.main(base(tmp_path)) == 0
    victim = sorted((tmp_path / "results" / "fake_hard" / "cells").glob("*.csv"))[0]
    victim.unlink()
    victim.mkdir()  # unreadable as a file, and os.replace cannot overwrite it
    capsys.readouterr()
    assert cli.main(base(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "warning:" in err[0] and "unreadable" in err[0]
    assert len(err) == 2 and err[1].startswith("matfun-diagnostics run: error:")


def test_failed_cell_caches_nothing(tmp_path, monkeypatch):
    mod = make_fake("fake_fail", fail_on=2)
    monkeypatch.setitem(experiments.REGISTRY, mod.NAME, mod)
    with pytest.raises(RuntimeError, match="simulated crash"):  # an experiment bug keeps its traceback
        cli.main(["run", "fake_fail", "--quick", "--no-progress", "--out", str(tmp_path)])
    exp = tmp_path / "results" / "fake_fail"
    assert len(list((exp / "cells").glob("*.json"))) == 2 and not (exp / "results.csv").exists()


def test_interrupt_is_one_line_exit_130(fake, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "run_experiment", interrupted)
    assert cli.main(base(tmp_path)) == 130
    assert "interrupted" in one_line(capsys)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_cache_files_and_results_respect_the_umask(fake, tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        assert cli.main(base(tmp_path)) == 0
    finally:
        os.umask(previous)
    exp = tmp_path / "results" / "fake_hard"
    files = [exp / "results.csv", exp / "results.json", *(exp / "cells").iterdir()]
    assert len(files) == 12 and {f.stat().st_mode & 0o777 for f in files} == {mode}


# ------------------------------------------------- item 11: validate never passes falsely

HOSTILE = textwrap.dedent(
    """
    import os, sys
    import matfun

    def good(G):
        return matfun.newton_schulz(G, 5, "jordan")

    def exit0(G):
        sys.exit(0)

    def os_exit0(G):
        os._exit(0)

    def keyboard(G):
        raise KeyboardInterrupt

    class Custom(BaseException):
        pass

    def base_exception(G):
        raise Custom("escape")

    def hang(G):
        import time
        time.sleep(3600)

    def fork_then_identity(G):
        if os.fork() == 0:
            return matfun.newton_schulz(G, 5, "jordan")  # the fork answers with the right matrix
        os._exit(0)

    def patch_and_cheat(G):
        import matfun.testing as mt
        matfun.polar = lambda X, **kw: X
        mt.polar = lambda X, **kw: X
        mt.newton_schulz = lambda X, *a, **kw: X
        return G  # the identity: judged by a process the patches never reach
    """
)


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    (tmp_path / "hostile_mod.py").write_text(HOSTILE)
    for name, line in {
        "exit_at_import": "import sys; sys.exit(0)",
        "os_exit_at_import": "import os; os._exit(0)",
        "close_stdout_at_import": "import os, sys, matfun; sys.stdout.close(); os.close(1)\n"
        "def identity(G):\n    return G",
        "hang_at_import": "import time; time.sleep(3600)",
    }.items():
        (tmp_path / f"{name}.py").write_text(line + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "hostile_mod"


@pytest.mark.parametrize(
    "fn, message",
    [
        ("exit0", "SystemExit"),
        ("keyboard", "KeyboardInterrupt"),
        ("base_exception", "Custom: escape"),
        ("patch_and_cheat", "alignment"),
    ],
)
def test_target_that_escapes_or_cheats_fails(hostile, capsys, fn, message):
    assert validate.main([f"{hostile}:{fn}", "--schedule", "jordan"]) == 1
    out = capsys.readouterr().out
    assert message in out and out.rstrip().splitlines()[-1].startswith("FAILED")


@pytest.mark.parametrize(
    "target, code, message",
    [
        ("hostile_mod:os_exit0", 1, "exit code 0"),
        ("hostile_mod:fork_then_identity", 1, "target"),
        ("exit_at_import:f", 2, "importing module 'exit_at_import' failed: SystemExit"),
        ("os_exit_at_import:f", 1, "exit code 0 while importing"),
    ],
)
def test_target_that_ends_its_process_fails_with_one_line(hostile, capsys, target, code, message):
    assert validate.main([target]) == code
    captured = capsys.readouterr()
    assert captured.out == "" and message in one_line_of(captured.err)


def one_line_of(err: str) -> str:
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_closed_stdout_in_the_target_does_not_hide_the_verdict(hostile, capsys):
    assert validate.main(["close_stdout_at_import:identity"]) == 1
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("FAILED")


@pytest.mark.parametrize("target", ["hostile_mod:hang", "hang_at_import:f"])
def test_hanging_target_times_out_exit_2(hostile, capsys, target):
    assert validate.main([target, "--timeout", "3"]) == 2
    err = one_line(capsys)
    assert "timeout=3 s" in err and "--timeout" in err


def test_in_process_timeout_and_string_targets(hostile):
    def hang(G):
        import time

        time.sleep(3600)

    with pytest.raises(BatteryTimeout, match=r"timeout=0.5 s"):
        assert_orthogonalizer(hang, shapes=SHAPES, timeout=0.5)
    with pytest.raises(AssertionError, match="SystemExit"):
        assert_orthogonalizer(lambda G: sys.exit(0), shapes=SHAPES)
    assert check_orthogonalizer(f"{hostile}:good", schedule="jordan", shapes=SHAPES).passed
    with pytest.raises(ValueError, match="timeout"):
        check_orthogonalizer(matfun.polar, timeout=-1)


def test_validate_options_are_one_line_exit_2(hostile, capsys):
    for argv in (["x:y", "--timeout", "0"], ["x:y", "--tile", "0"], ["x:y", "--skip", "bogus"]):
        assert validate.main(argv) == 2
    capsys.readouterr()
    assert validate.main([f"{hostile}:good", "--schedule", "nope"]) == 2
    assert "nope" in one_line(capsys)


# --------------------------------------- item 12: profiles, coefficient typos, warnings


def plain_bf16_jordan(a=JORDAN[0], b=JORDAN[1], c=JORDAN[2]):
    """Keller Jordan's reference loop in bfloat16 (what most Muon code runs)."""

    def fn(G):
        X = G.bfloat16()
        tall = X.shape[0] > X.shape[1]
        X = X.T if tall else X
        X = X / (X.norm() + 1e-7)
        for _ in range(5):
            A = X @ X.T
            X = a * X + (b * A + c * A @ A) @ X
        return (X.T if tall else X).float()

    return fn


# c = 2.0295 (an error of 2e-3) sits at bf16's detection limit: its fit is 0.0034-0.0069 over
# seeds 0-29 against the threshold 0.005 (a correct bf16 loop: 0.0006-0.0032), so it is caught
# on seed 0, where the profile table was calibrated, not on every drawn seed; the other two
# typos (fits >= 0.0087) are caught on any seed.
@pytest.mark.parametrize("typo, seed", [({"c": 2.0351}, None), ({"b": -4.7705}, None), ({"c": 2.0295}, 0)])
def test_bf16_profile_catches_a_coefficient_typo(typo, seed):
    correct = check_orthogonalizer(
        plain_bf16_jordan(), schedule="jordan", precision_profile="bf16", shapes=SHAPES, seed=seed
    )
    assert correct.passed, correct.table()
    r = check_orthogonalizer(
        plain_bf16_jordan(**typo), schedule="jordan", precision_profile="bf16", shapes=SHAPES, seed=seed
    )
    assert r.failed_names == ["schedule_agreement"], r.table()
    assert "coefficient error" in r["schedule_agreement"].detail


def test_fp32_profile_catches_a_last_digit_typo():
    fn = lambda G: matfun.newton_schulz(G, 5, [(3.4446, -4.7750, 2.0315)])  # noqa: E731
    assert check_orthogonalizer(fn, schedule="jordan", shapes=SHAPES).failed_names == ["schedule_agreement"]


def test_tolerance_profile_option_and_deprecated_alias(hostile, capsys):
    assert validate.main([f"{hostile}:good", "--tolerance-profile", "bf16", "--schedule", "jordan"]) == 0
    assert capsys.readouterr().err == ""
    assert validate.main([f"{hostile}:good", "--precision", "bf16"]) == 0
    assert "deprecated" in one_line(capsys)


def test_no_numpy_warnings_leak_from_the_battery():
    wild = [
        lambda G: G * 1e300,
        lambda G: torch.full_like(G, float("nan")),
        lambda G: G * 0,
        lambda G: torch.full_like(G, float("inf")),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn in wild:
            assert not check_orthogonalizer(
                fn, backend="torch", dtype="float64", schedule="jordan", shapes=SHAPES
            ).passed
        huge = lambda A: np.asarray(A) * 1e300  # noqa: E731
        assert not check_orthogonalizer(huge, backend="numpy", dtype="float64", shapes=SHAPES).passed


# ------------------------------------------------------------------- item 13: tiled maps


def test_tiled_map_passes_with_its_tile_and_broken_tiling_fails():
    tiled = lambda G: matfun.tiled_newton_schulz(G, 16, 5, "jordan")  # noqa: E731
    whole = check_orthogonalizer(tiled, schedule="jordan", shapes=SHAPES)
    assert {"orthogonal_equivariance", "alignment", "schedule_agreement"} <= set(whole.failed_names)
    assert whole["alignment"].value < 0.65  # by design: tiles are not the whole polar factor
    r = check_orthogonalizer(tiled, schedule="jordan", tile=16, shapes=SHAPES)
    # ≈ 0.97 on the fixed shapes; the drawn ones can end in a ragged 16×1 tile (57×17: 0.94)
    assert r.passed and r["alignment"].value > 0.9, r.table()
    wrong_tile = lambda G: matfun.tiled_newton_schulz(G, 8, 5, "jordan")  # noqa: E731
    assert not check_orthogonalizer(wrong_tile, schedule="jordan", tile=16, shapes=SHAPES).passed


def test_tiled_map_through_validate(hostile, tmp_path, capsys):
    (tmp_path / "tiled_mod.py").write_text(
        "import matfun\ndef ns(G):\n    return matfun.tiled_newton_schulz(G, 16, 5, 'jordan')\n"
    )
    assert validate.main(["tiled_mod:ns", "--tile", "16", "--schedule", "jordan"]) == 0
    assert "tile=16x16" in capsys.readouterr().out


# ------------------------------------------------------- issue 10 item 9: lazy registry


def test_help_and_list_import_neither_matplotlib_nor_scipy_stats_nor_torch():
    code = (
        "import sys, contextlib, io\nfrom diagnostics import cli\n"
        "for argv in (['--help'], ['list'], ['run', '--help'], ['validate', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        cli.main(argv)\n"
        "print(sorted(m for m in ('matplotlib', 'scipy.stats', 'torch', 'pandas') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_lazy_registry_matches_the_modules(monkeypatch):
    for name in experiments.names():
        entry = experiments.REGISTRY[name]
        module = experiments.get(name)
        assert module.NAME == name and module.DESCRIPTION.strip() == experiments.describe(name)
        monkeypatch.setitem(experiments.REGISTRY, name, entry)  # leave the registry as found
    bad = experiments.LazyExperiment("json", "json", "the json module")
    with pytest.raises(TypeError, match="lacks"):
        bad.load()


def test_validate_lists_every_check_without_importing_matfun():
    from matfun.testing import CHECK_NAMES

    assert validate.CHECKS == CHECK_NAMES
