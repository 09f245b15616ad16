"""Tests for diagnostics.timing. No test asserts a wall-time bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diagnostics import timing as tm


class CountingCall:
    def __init__(self) -> None:
        self.calls = 0
        self.last_args: tuple = ()
        self.last_kwargs: dict = {}

    def __call__(self, *args, **kwargs) -> None:
        self.calls += 1
        self.last_args, self.last_kwargs = args, kwargs
        sum(range(200))


def test_timer_returns_sane_positive_numbers():
    timing = tm.time_callable(np.linalg.svd, np.ones((20, 20)), repeats=7)
    assert isinstance(timing, tm.Timing)
    assert timing.repeats == 7 and len(timing.samples) == 7 and timing.number == 1
    assert all(math.isfinite(s) and s > 0 for s in timing.samples)
    assert timing.min <= timing.median <= timing.max
    assert 0 <= timing.spread <= timing.max - timing.min
    q25, q75 = np.percentile(timing.samples, [25, 75])
    assert timing.spread == pytest.approx(q75 - q25)


@pytest.mark.parametrize("warmup, repeats", [(0, 1), (2, 5), (3, 4)])
def test_timer_calls_fn_warmup_plus_repeats_times(warmup, repeats):
    fn = CountingCall()
    tm.time_callable(fn, 1, 2, warmup=warmup, repeats=repeats, kwargs={"key": 3})
    assert fn.calls == warmup + repeats
    assert fn.last_args == (1, 2) and fn.last_kwargs == {"key": 3}


def test_min_time_batches_calls_and_reports_per_call_time():
    fn = CountingCall()
    timing = tm.time_callable(fn, warmup=1, repeats=3, min_time=2e-3)
    assert timing.number >= 1
    assert fn.calls == 1 + 1 + 3 * timing.number  # warm-up, calibration, samples
    assert all(s > 0 for s in timing.samples)


def test_custom_synchroniser_runs_before_each_sample_and_after_every_call():
    syncs = []
    tm.time_callable(lambda: None, warmup=2, repeats=3, sync=lambda: syncs.append(1))
    assert len(syncs) == 1 + 3 * (1 + 1)  # after warm-up; per sample: start + one call


def test_cpu_tensors_do_not_trigger_cuda_sync():
    timing = tm.time_callable(torch.mm, torch.ones(8, 8), torch.ones(8, 8), repeats=2)
    assert timing.median > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensor_timing():
    a = torch.randn(256, 256, device="cuda")
    assert tm.time_callable(torch.mm, a, a).median > 0
    assert tm.gemm_roofline(256, device="cuda") > 0


@pytest.mark.parametrize(
    "options",
    [
        {"n": 64},
        {"n": 48, "dtype": "float64"},
        {"n": 32, "dtype": torch.bfloat16, "repeats": 2},
        {"n": 64, "backend": "numpy", "dtype": "float64"},
        {"n": 64, "backend": "numpy", "dtype": np.float32},
        {"n": 1, "repeats": 1, "warmup": 0},
    ],
)
def test_gemm_roofline_is_positive_and_finite(options):
    gflops = tm.gemm_roofline(**options)
    assert isinstance(gflops, float) and math.isfinite(gflops) and gflops > 0


def test_achieved_gflops_arithmetic():
    assert tm.achieved_gflops(2e9, 0.5) == pytest.approx(4.0)
    assert tm.achieved_gflops(0, 1.0) == 0.0
    assert tm.gemm_flops(1000) == 2 * 10**9


@settings(max_examples=30, deadline=None)
@given(
    # r² is ill-conditioned when log(time) varies by only a few ulps (|exponent| ~ 1e-13),
    # so exponents are exactly 0 or clearly nonzero.
    exponent=st.floats(-2.0, 4.0).filter(lambda e: e == 0 or abs(e) > 1e-3),
    constant=st.floats(1e-9, 1e3),
    ns=st.lists(st.integers(1, 10**5), min_size=2, max_size=8, unique=True),
)
def test_scaling_exponent_recovers_exact_power_laws(exponent, constant, ns):
    times = [constant * n**exponent for n in ns]
    fit = tm.scaling_exponent(ns, times)
    assert fit.slope == pytest.approx(exponent, abs=1e-9)
    assert fit.r_squared == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(fit.predict(ns), times, rtol=1e-8)


def test_scaling_exponent_cubic_and_predict():
    ns = [128, 256, 512, 1024, 2048]
    fit = tm.scaling_exponent(ns, [3e-11 * n**3 for n in ns])
    assert fit.slope == pytest.approx(3.0, abs=1e-12)
    assert fit.r_squared == pytest.approx(1.0, abs=1e-12)
    assert fit.intercept == pytest.approx(math.log(3e-11), abs=1e-9)
    assert isinstance(fit.predict(4096), float)
    assert fit.predict(4096) == pytest.approx(3e-11 * 4096**3, rel=1e-9)


def test_scaling_exponent_noisy_data_has_r_squared_below_one():
    ns = np.array([10, 20, 40, 80, 160])
    times = ns**2.0 * np.array([1.0, 1.3, 0.8, 1.2, 0.9])
    fit = tm.scaling_exponent(ns, times)
    assert 0 < fit.r_squared < 1 and 1.5 < fit.slope < 2.5


def test_scaling_exponent_constant_times():
    fit = tm.scaling_exponent([1, 2, 4], [5.0, 5.0, 5.0])
    assert fit.slope == pytest.approx(0.0, abs=1e-14) and fit.r_squared == 1.0
    # Found by hypothesis: the mean of equal logs is off by rounding, r² must stay 1.
    assert tm.scaling_exponent([1, 2, 3], [524.0] * 3).r_squared == 1.0


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: tm.gemm_roofline(0), ValueError, "n must be >= 1"),
        (lambda: tm.gemm_roofline(-4), ValueError, "n must be >= 1"),
        (lambda: tm.gemm_roofline(8, backend="jax"), ValueError, "backend"),
        (lambda: tm.gemm_roofline(8, dtype="int32"), ValueError, "floating"),
        (lambda: tm.gemm_roofline(8, backend="numpy", dtype="int32"), ValueError, "floating"),
        (lambda: tm.gemm_roofline(8, backend="numpy", device="cuda"), ValueError, "cpu"),
        (lambda: tm.gemm_flops(0), ValueError, "n must be >= 1"),
        (lambda: tm.scaling_exponent([1, 2, 3], [1.0, 2.0]), ValueError, "equal length"),
        (lambda: tm.scaling_exponent([1], [1.0]), ValueError, "two points"),
        (lambda: tm.scaling_exponent([2, 2], [1.0, 2.0]), ValueError, "distinct"),
        (lambda: tm.scaling_exponent([1, 2], [1.0, 0.0]), ValueError, "time"),
        (lambda: tm.scaling_exponent([1, 2], [1.0, -1.0]), ValueError, "time"),
        (lambda: tm.scaling_exponent([1, 2], [1.0, float("nan")]), ValueError, "time"),
        (lambda: tm.scaling_exponent([0, 2], [1.0, 2.0]), ValueError, "every n"),
        (lambda: tm.achieved_gflops(1e9, 0.0), ValueError, "seconds"),
        (lambda: tm.achieved_gflops(1e9, -1.0), ValueError, "seconds"),
        (lambda: tm.achieved_gflops(-1.0, 1.0), ValueError, "flops"),
        (lambda: tm.time_callable(42), TypeError, "callable"),
        (lambda: tm.time_callable(abs, 1, repeats=0), ValueError, "repeats"),
        (lambda: tm.time_callable(abs, 1, warmup=-1), ValueError, "warmup"),
        (lambda: tm.time_callable(abs, 1, repeats=2.0), TypeError, "repeats"),
        (lambda: tm.time_callable(abs, 1, min_time=-1.0), ValueError, "min_time"),
        (lambda: tm.time_callable(abs, 1, sync="gpu"), ValueError, "sync"),
    ],
)
def test_bad_input_raises(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_sync_cuda_without_cuda_raises():
    with pytest.raises(ValueError, match="CUDA is not available"):
        tm.time_callable(abs, 1, sync="cuda")


def test_pick_clock_uses_thread_cpu_time_only_for_single_threaded_cpu_work():
    import time

    assert tm.pick_clock("cpu", 1) == ("thread_cpu", time.thread_time)
    assert tm.pick_clock("cpu", 2) == ("wall", time.perf_counter)
    assert tm.pick_clock("cpu", 0) == ("wall", time.perf_counter)  # 0: torch's own setting
    assert tm.pick_clock("cuda:0", 1) == ("wall", time.perf_counter)
