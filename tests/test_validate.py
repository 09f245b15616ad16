"""diagnostics.validate: exit 0 on a good target, 1 on a broken one, 2 on a bad argument."""

from __future__ import annotations

import textwrap

import pytest
import torch

from diagnostics import validate

GOOD_AND_BROKEN = textwrap.dedent(
    """
    import matfun

    def good(G):
        return matfun.newton_schulz(G, 5, "jordan")

    def good_numpy(G):
        return matfun.newton_schulz(G, 5, "jordan")

    def good_bf16(G):
        return matfun.newton_schulz(G, 5, "jordan", precision="bfloat16-emulated")

    def wrong_coefficient(G):
        return matfun.newton_schulz(G, 5, [(3.0, -4.7750, 2.0315)])

    def identity(G):
        return G

    class Holder:
        @staticmethod
        def ns(G):
            return matfun.newton_schulz(G)

    not_callable = 3
    """
)


@pytest.fixture(autouse=True)
def _restore_threads():
    previous = torch.get_num_threads()  # validate.run sets 1 thread for the tiny matrices
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_ortho_mod.py").write_text(GOOD_AND_BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "my_ortho_mod", raising=False)
    return "my_ortho_mod"


def test_good_target_exits_0(user_module, capsys):
    assert validate.main([f"{user_module}:good", "--schedule", "jordan", "--steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "schedule_agreement" in out and out.rstrip().splitlines()[-1].startswith("PASSED")
    assert f"{user_module}:good" in out
    assert validate.main([f"{user_module}:good_numpy", "--backend", "numpy"]) == 0
    assert validate.main([f"{user_module}:good_bf16", "--precision", "bf16", "--schedule", "jordan"]) == 0
    assert validate.main([f"{user_module}:Holder.ns"]) == 0  # dotted attributes


def test_broken_target_exits_1(user_module, capsys):
    assert validate.main([f"{user_module}:wrong_coefficient", "--schedule", "jordan"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "schedule_agreement" in out.splitlines()[-1]
    assert validate.main([f"{user_module}:identity"]) == 1


@pytest.mark.parametrize(
    "target, message",
    [
        ("nonexistent.module:f", "cannot import module 'nonexistent.module'"),
        ("math:pi", "is not callable"),
        ("badformat", "target must look like 'package.module:function'"),
        ("math:", "bad attribute"),
        ("math:no_such_function", "has no attribute 'no_such_function'"),
        ("my_ortho_mod:not_callable", "is not callable"),
    ],
)
def test_bad_target_exits_2_with_one_line(user_module, capsys, target, message):
    assert validate.main([target]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("matfun-diagnostics validate: error:")
    assert captured.out == ""


def test_bad_options_exit_2(user_module, capsys):
    assert validate.main([f"{user_module}:good", "--schedule", "nope"]) == 2
    assert validate.main([f"{user_module}:good", "--steps", "-1"]) == 2
    assert validate.main([f"{user_module}:good", "--backend", "numpy", "--dtype", "bfloat16"]) == 2
    assert validate.main([]) == 2
    capsys.readouterr()


def test_through_the_cli(user_module, capsys):
    from diagnostics import cli

    assert cli.main(["validate", f"{user_module}:good", "--schedule", "jordan"]) == 0
    assert cli.main(["validate", f"{user_module}:identity"]) == 1
    assert cli.main(["validate", "math:pi"]) == 2
    assert "not callable" in capsys.readouterr().err
