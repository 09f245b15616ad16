"""Smoke test: the QDWH benchmark runs end to end and prints its ratios (timings are never asserted)."""

from __future__ import annotations

import re

from benchmarks import bench_polar
from matfun import _qdwh_lapack


def test_bench_polar_quick_prints_every_comparison(capsys):
    default = _qdwh_lapack.MIN_SIZE
    assert bench_polar.main(["--quick", "--repeats", "1", "--sizes", "64", "--path-sizes", "256"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"QDWH on 512² Gaussian: \d+ steps", out)
    for case in ("cpu float64 512x512: qdwh", "cpu float64 64x64: qdwh", "cpu float64 256x256 qdwh: lapack path"):
        line = next(line for line in out.splitlines() if line.startswith(case))
        assert float(re.search(r"ratio (\d+\.\d+)", line).group(1)) > 0
    assert "cuda float32" in out  # measured, or skipped and said so
    assert _qdwh_lapack.MIN_SIZE == default  # the path comparison restores the threshold
