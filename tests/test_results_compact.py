"""Constant columns are written once (in the JSON beside each CSV) and restored on reading.

The store used to repeat every config field, the seed, the device and the versions on
every row of each cell's CSV and of ``results.csv`` (the quick ``transfer`` results.csv
was 7.8 MB, 42 % of it such columns).  Reading back must give the frame a CSV holding
every column gives: same columns, order, values (floats to the bit) and dtypes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from test_store import FakeConfig, make_fake, run

from diagnostics import experiments, runner, store

#: The columns the fake experiment's rows hold one value on (its config, the run's columns).
CONSTANT = ["n", "label", "sizes", "experiment", "seed", "device", "numpy_version", "torch_version", "matfun_version"]
#: Its columns that vary: the experiment's own and the cell's entries.
VARYING = ["j", "value", "i", "kind"]


def header(path) -> list[str]:
    return header_of(path.read_bytes())


def header_of(data: bytes) -> list[str]:
    return list(pd.read_csv(io.BytesIO(data), nrows=0).columns)


def plain_csv(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` as one CSV holding every column reads back (the old results.csv)."""
    return store._read_csv(store._csv_bytes(frame))


def assert_same_bits(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert list(a.dtypes) == list(b.dtypes)
    for c in a.columns:
        if a[c].dtype == np.float64:
            assert np.array_equal(a[c].to_numpy().view(np.uint64), b[c].to_numpy().view(np.uint64)), c


def test_results_csv_holds_the_varying_columns_and_reads_back_whole(tmp_path):
    res = run(make_fake(), tmp_path, seed=3)
    exp = tmp_path / "results" / "fake"
    assert header(exp / "results.csv") == VARYING  # nothing constant is repeated per row
    meta = json.loads((exp / "results.json").read_text())
    assert sorted(meta["constants"]) == sorted(CONSTANT) and meta["constants"]["seed"] == 3
    assert meta["columns"] == list(res.frame.columns) and meta["rows"] == len(res.frame) == 10
    back = store.load_results("fake", tmp_path / "results")
    assert list(back.columns) == VARYING[:2] + CONSTANT[:3] + VARYING[2:] + CONSTANT[3:]
    assert_same_bits(back, res.frame)
    assert_same_bits(back, plain_csv(res.frame))


def test_cell_files_hold_the_varying_columns_and_the_cache_still_hits(tmp_path):
    mod = make_fake()
    first = run(mod, tmp_path)
    cells = sorted((tmp_path / "results" / "fake" / "cells").glob("*.csv"))
    assert len(cells) == 5
    for path in cells:  # in a cell, its entries (i, kind) are constant too
        assert header(path) == ["j", "value"]
        marker = json.loads(path.with_suffix(".json").read_text())
        assert set(marker["constants"]) == set(CONSTANT) | {"i", "kind"}
        assert marker["constants"]["label"] == "quick" and marker["key"]["config"]["label"] == "quick"
    mod.calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", store.CorruptCacheWarning)
        again = run(mod, tmp_path)
        replot = run(mod, tmp_path, replot=True)
    assert (again.computed, again.cached, mod.calls) == (0, 5, [])
    assert_same_bits(again.frame, first.frame)
    assert_same_bits(replot.frame, first.frame)


def test_a_changed_config_still_misses_the_cache(tmp_path):
    mod = make_fake()
    run(mod, tmp_path)
    mod.calls.clear()
    res = store.run_experiment(
        mod,
        FakeConfig(n=5, label="other"),
        results_dir=tmp_path / "results",
        figures_dir=None,
        progress=False,
    )
    assert (res.computed, res.cached) == (5, 0) and mod.calls == [0, 1, 2, 3, 4]
    assert set(store.load_results("fake", tmp_path / "results")["label"]) == {"other"}
    assert run(mod, tmp_path).cached == 5  # the first config's cells are still there


def test_a_constant_column_must_rebuild_exactly_or_stays_in_the_csv():
    raw = pd.DataFrame(
        {
            "x": [1.5, 2.5, 3.5],
            "zero": [0.0, -0.0, 0.0],  # equal values, not equal bits
            "neg_zero": [-0.0, -0.0, -0.0],
            "nan": [np.nan, np.nan, np.nan],
            "inf": [np.inf, np.inf, np.inf],
            "tiny": [5e-324, 5e-324, 5e-324],
            "flag": [True, True, True],
            "count": [7, 7, 7],
            "text": ['a,b "q"', 'a,b "q"', 'a,b "q"'],
            "digits": ["007", "007", "007"],  # a CSV reads it as the number 7
            "mixed": pd.Series([1, True, 1], dtype=object),
            "f32": np.full(3, 0.1, dtype=np.float32),
        }
    )
    stored = store._as_stored(raw)
    assert_same_bits(stored, plain_csv(raw))
    data, layout = store._cell_files(raw)
    assert "zero" in header_of(data) and "x" in header_of(data)
    assert {"neg_zero", "nan", "inf", "tiny", "flag", "count", "text", "digits", "f32"} <= set(layout["constants"])


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame({"a": [1.0], "b": ["x"]}),  # one row: nothing repeats
        pd.DataFrame({"a": [2, 2], "b": ["x", "x"]}),  # every column constant: one stays
        pd.DataFrame({"a": [1.0, np.nan], "b": ["x", "x"]}),  # one varying column with an empty field
    ],
)
def test_edge_frames_round_trip(frame):
    data, layout = store._cell_files(frame)
    assert header_of(data)  # the CSV keeps a column: it still counts the rows
    assert_same_bits(store._decode(data, layout, "x.csv"), plain_csv(frame))


def test_files_of_the_old_layout_still_read(tmp_path):
    mod = make_fake()
    first = run(mod, tmp_path)
    exp = tmp_path / "results" / "fake"
    for path in sorted((exp / "cells").glob("*.csv")):  # rewrite each cell as format 1 wrote it
        frame = store._read_csv(path.read_bytes())
        marker = json.loads(path.with_suffix(".json").read_text())
        full = store._decode(path.read_bytes(), marker, path.name)
        data = store._csv_bytes(full)
        path.write_bytes(data)
        old = {"format": 1, "key": marker["key"], "rows": len(full), "columns": list(full.columns)}
        path.with_suffix(".json").write_text(json.dumps({**old, "sha256": hashlib.sha256(data).hexdigest()}))
        assert len(frame.columns) < len(full.columns)
    (exp / "results.json").unlink()
    (exp / "results.csv").write_bytes(store._csv_bytes(first.frame))
    assert_same_bits(store.load_results("fake", tmp_path / "results"), first.frame)
    mod.calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", store.CorruptCacheWarning)
        again = run(mod, tmp_path)
    assert (again.cached, mod.calls) == (5, [])
    assert_same_bits(again.frame, first.frame)


def test_results_csv_that_does_not_match_results_json_is_an_error(tmp_path):
    run(make_fake(), tmp_path)
    path = tmp_path / "results" / "fake" / "results.csv"
    path.write_bytes(path.read_bytes() + b"9,1.0,9,odd\n")
    with pytest.raises(store.StoreError, match=r"results\.csv does not match its checksum.*run 'fake' again"):
        store.load_results("fake", tmp_path / "results")
    (tmp_path / "results" / "fake" / "results.json").write_text("{")
    with pytest.raises(store.StoreError, match=r"unreadable results\.json"):
        store.load_results("fake", tmp_path / "results")


def test_a_marker_whose_constants_do_not_fit_its_csv_is_recomputed(tmp_path):
    mod = make_fake()
    first = run(mod, tmp_path)
    marker_path = sorted((tmp_path / "results" / "fake" / "cells").glob("*.json"))[0]
    marker = json.loads(marker_path.read_text())
    marker["constants"]["j"] = 0  # j is also a CSV column
    marker_path.write_text(json.dumps(marker))
    with pytest.warns(store.CorruptCacheWarning, match="differ from its marker"):
        res = run(mod, tmp_path)
    assert (res.computed, res.cached) == (1, 4)
    assert_same_bits(res.frame, first.frame)


def test_several_seeds_write_the_compact_results_too(tmp_path):
    mod = make_fake()
    res = runner.run_module(
        mod, seeds=(0, 1), quick=True, results_dir=tmp_path / "results", figures_dir=None, progress=False
    )
    exp = tmp_path / "results" / "fake"
    assert "seed" in header(exp / "results.csv") and "label" not in header(exp / "results.csv")
    assert_same_bits(store.load_results("fake", tmp_path / "results"), res.frame)


def test_quick_transfer_results_are_compact_and_read_back_whole(tmp_path):
    mod = experiments.get("transfer")
    config = dataclasses.replace(mod.Config.quick(), n_sigma=64)
    res = store.run_experiment(mod, config, results_dir=tmp_path / "r", figures_dir=None, progress=False)
    exp = tmp_path / "r" / "transfer"
    assert not {"schedules", "sigma_min", "n_sigma", "torch_version"} & set(header(exp / "results.csv"))
    assert (exp / "results.csv").stat().st_size < 0.6 * len(store._csv_bytes(res.frame))
    back = store.load_results("transfer", tmp_path / "r")
    assert_same_bits(back, plain_csv(res.frame))
    replot = store.run_experiment(
        mod, config, results_dir=tmp_path / "r", figures_dir=None, progress=False, replot=True
    )
    assert_same_bits(replot.frame, back)
