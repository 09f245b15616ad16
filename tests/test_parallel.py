"""Cells on Dask workers (diagnostics.parallel): same results as the sequential run,
each cell written to the cache by its worker, failures named."""

import pandas as pd
import pytest

from diagnostics import store
from diagnostics.cli import main
from diagnostics.experiments import get

VOLATILE = ("numpy_version", "torch_version", "matfun_version")


def _frame(result):
    return result.frame.drop(columns=[c for c in VOLATILE if c in result.frame]).reset_index(drop=True)


def test_jobs_two_equals_the_sequential_run(tmp_path):
    module = get("transfer")
    seq = store.run_experiment(module, results_dir=tmp_path / "seq", figures_dir=None, quick=True)
    par = store.run_experiment(module, results_dir=tmp_path / "par", figures_dir=None, quick=True, jobs=2)
    assert par.computed == seq.computed > 1
    pd.testing.assert_frame_equal(_frame(par), _frame(seq))
    # the workers wrote the cache: a rerun computes nothing and reads the same frame
    again = store.run_experiment(module, results_dir=tmp_path / "par", figures_dir=None, quick=True, jobs=2)
    assert again.computed == 0 and again.cached == seq.computed
    pd.testing.assert_frame_equal(_frame(again), _frame(seq))


def test_bad_jobs_and_unreachable_scheduler_are_one_line_errors(tmp_path, capsys):
    assert main(["run", "transfer", "--quick", "--jobs", "0", "--out", str(tmp_path)]) == 2
    assert "--jobs must be >= 1" in capsys.readouterr().err
    code = main(["run", "transfer", "--quick", "--scheduler", "tcp://127.0.0.1:9", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "could not reach the Dask scheduler" in err and err.count("\n") == 1


def test_store_rejects_bad_jobs(tmp_path):
    with pytest.raises(store.StoreError, match="jobs"):
        store.run_experiment(get("transfer"), results_dir=tmp_path, figures_dir=None, quick=True, jobs=0)
