"""Wall-clock timing, a dense-GEMM roofline and scaling fits.

* :func:`time_callable` – median and spread of repeated calls, with CUDA synchronisation.
* :func:`gemm_roofline` – GFLOP/s of a dense n×n×n matmul measured now, on a device and dtype,
  the yardstick against which a map's achieved GFLOP/s is judged.
* :func:`achieved_gflops` – FLOPs / seconds / 1e9.
* :func:`scaling_exponent` – least-squares slope of log(time) against log(n).
* :func:`pick_clock` – the thread's CPU time for single-threaded CPU work, else wall time.

Examples
--------
>>> fit = scaling_exponent([64, 128, 256], [1.0, 8.0, 64.0])
>>> round(fit.slope, 12), round(fit.r_squared, 12)
(3.0, 1.0)
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ScalingFit",
    "Timing",
    "achieved_gflops",
    "gemm_flops",
    "gemm_roofline",
    "pick_clock",
    "scaling_exponent",
    "time_callable",
]

SYNC_MODES = (None, "cuda", "none")


@dataclass(frozen=True)
class Timing:
    """Result of :func:`time_callable`; all times in seconds per call.

    Attributes
    ----------
    median : float
        Median of ``samples``.
    spread : float
        Interquartile range of ``samples`` (75th minus 25th percentile, numpy's linear
        interpolation); 0 for a single sample.
    samples : tuple of float
        One per repeat: the time of one batch of ``number`` calls divided by ``number``.
    repeats : int
        Number of samples.
    number : int
        Calls per sample (1 unless ``min_time`` asked for more).
    """

    median: float
    spread: float
    samples: tuple[float, ...]
    repeats: int
    number: int = 1

    @property
    def min(self) -> float:
        """Fastest sample."""
        return min(self.samples)

    @property
    def max(self) -> float:
        """Slowest sample."""
        return max(self.samples)


@dataclass(frozen=True)
class ScalingFit:
    """Least-squares fit ``log(time) = slope · log(n) + intercept`` (natural logs).

    Attributes
    ----------
    slope : float
        Scaling exponent (3 for dense n×n×n matmul).
    intercept : float
        ``log`` of the time predicted at n = 1.
    r_squared : float
        Coefficient of determination of the fit in log space (1 when the points are
        exactly on a line, including the degenerate case of times equal up to rounding).
    """

    slope: float
    intercept: float
    r_squared: float

    def predict(self, n: float | Sequence[float] | np.ndarray) -> float | np.ndarray:
        """Predicted time ``exp(intercept) · n^slope``; a float for scalar n."""
        values = np.exp(self.intercept) * np.asarray(n, dtype=np.float64) ** self.slope
        return float(values) if values.ndim == 0 else values


# ---------------------------------------------------------------------------
# Synchronisation
# ---------------------------------------------------------------------------


def _cuda_devices(values: Iterable[Any]) -> set[Any]:
    """CUDA devices of the torch tensors among ``values`` (searched one level into containers)."""
    devices = set()
    for value in values:
        candidates = value if isinstance(value, (list, tuple)) else (value,)
        for candidate in candidates:
            device = getattr(candidate, "device", None)
            if getattr(device, "type", None) == "cuda" and hasattr(candidate, "is_cuda"):
                devices.add(device)
    return devices


def _make_synchroniser(
    sync: str | Callable[[], Any] | None, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> Callable[[], Any]:
    if callable(sync):
        return sync
    if sync not in SYNC_MODES:
        raise ValueError(f"sync must be None, 'cuda', 'none' or a callable, got {sync!r}")
    if sync == "none":
        return lambda: None
    devices = _cuda_devices((*args, *kwargs.values()))
    if sync is None and not devices:
        return lambda: None
    import torch

    if not torch.cuda.is_available():
        raise ValueError("sync='cuda' was requested but CUDA is not available")
    if not devices:
        return torch.cuda.synchronize

    def synchronize_all() -> None:
        for device in devices:
            torch.cuda.synchronize(device)

    return synchronize_all


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


def _check_int(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _timed_batch(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    number: int,
    synchronise: Callable[[], Any],
) -> float:
    synchronise()
    start = time.perf_counter()
    for _ in range(number):
        fn(*args, **kwargs)
        synchronise()
    return time.perf_counter() - start


def time_callable(
    fn: Callable[..., Any],
    *args: Any,
    warmup: int = 2,
    repeats: int = 5,
    min_time: float = 0.0,
    sync: str | Callable[[], Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> Timing:
    """Time ``fn(*args, **kwargs)`` with ``time.perf_counter``.

    Runs ``warmup`` untimed calls, then ``repeats`` timed samples of ``number`` calls
    each. ``number`` is 1 when ``min_time`` is 0 (the default), so ``fn`` is called
    exactly ``warmup + repeats`` times. With ``min_time > 0`` one extra timed
    calibration call is made after the warm-up and ``number = ceil(min_time / t_call)``
    is chosen so that each sample lasts at least about ``min_time`` seconds.

    Synchronisation: before each sample starts and after every call, the synchroniser
    runs. ``sync=None`` (default) synchronises the CUDA devices of any torch CUDA tensor
    among the arguments (also inside a list/tuple argument) and does nothing otherwise;
    ``"cuda"`` always calls ``torch.cuda.synchronize``; ``"none"`` never syncs; a
    zero-argument callable is used as the synchroniser.

    Parameters
    ----------
    fn : callable
    *args
        Positional arguments of ``fn``.
    warmup : int
        Untimed calls first (>= 0).
    repeats : int
        Timed samples (>= 1).
    min_time : float
        Minimum duration of one sample in seconds (>= 0).
    sync : None, "cuda", "none" or callable
    kwargs : mapping, optional
        Keyword arguments of ``fn`` (a mapping, so they cannot clash with the timer's).

    Returns
    -------
    Timing
        Seconds per call.

    Raises
    ------
    TypeError
        ``fn`` not callable or a count that is not an int.
    ValueError
        Negative ``warmup``, ``repeats < 1``, negative ``min_time``, unknown ``sync``,
        ``sync="cuda"`` without CUDA.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    warmup = _check_int(warmup, "warmup", minimum=0)
    repeats = _check_int(repeats, "repeats", minimum=1)
    if isinstance(min_time, bool) or not isinstance(min_time, numbers.Real):
        raise TypeError(f"min_time must be a real number of seconds, got {min_time!r}")
    if not (min_time >= 0 and math.isfinite(min_time)):
        raise ValueError(f"min_time must be finite and >= 0 seconds, got {min_time}")
    kwargs = dict(kwargs or {})
    synchronise = _make_synchroniser(sync, args, kwargs)

    for _ in range(warmup):
        fn(*args, **kwargs)
    synchronise()
    number = 1
    if min_time > 0:
        single_call = _timed_batch(fn, args, kwargs, 1, synchronise)
        number = max(1, math.ceil(min_time / max(single_call, 1e-9)))
    samples = tuple(_timed_batch(fn, args, kwargs, number, synchronise) / number for _ in range(repeats))
    quartile_25, median, quartile_75 = np.percentile(samples, [25, 50, 75])
    return Timing(
        median=float(median),
        spread=float(quartile_75 - quartile_25),
        samples=samples,
        repeats=repeats,
        number=number,
    )


# ---------------------------------------------------------------------------
# FLOP rates
# ---------------------------------------------------------------------------


def gemm_flops(n: int) -> int:
    """FLOPs of a dense n×n by n×n matmul: ``2 n³`` (one multiply and one add per term)."""
    return 2 * _check_int(n, "n", minimum=1) ** 3


def achieved_gflops(flops: float, seconds: float) -> float:
    """Achieved rate in GFLOP/s: ``flops / seconds / 1e9``.

    Raises
    ------
    ValueError
        Negative or non-finite ``flops``, or ``seconds`` not finite and positive.
    """
    for value, name in ((flops, "flops"), (seconds, "seconds")):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {value!r}")
    if not (math.isfinite(flops) and flops >= 0):
        raise ValueError(f"flops must be finite and >= 0, got {flops}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be finite and > 0, got {seconds}")
    return float(flops) / float(seconds) / 1e9


def _gemm_operands(n: int, dtype: str, device: Any, backend: str, seed: int) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    left, right = rng.standard_normal((2, n, n))
    if backend == "numpy":
        if device is not None and str(device) != "cpu":
            raise ValueError(f"backend='numpy' runs only on device 'cpu', got {device!r}")
        try:
            np_dtype = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"dtype {dtype!r} is not a numpy dtype") from None
        if np_dtype.kind != "f":
            raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")
        return left.astype(np_dtype), right.astype(np_dtype)
    import torch

    torch_dtype = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
        raise ValueError(f"dtype must name a torch floating dtype, got {dtype!r}")
    device = torch.device(device if device is not None else "cpu")
    return (
        torch.from_numpy(left).to(device=device, dtype=torch_dtype),
        torch.from_numpy(right).to(device=device, dtype=torch_dtype),
    )


def gemm_roofline(
    n: int | None = None,
    *,
    dtype: Any = "float32",
    device: Any = "cpu",
    backend: str = "torch",
    warmup: int = 2,
    repeats: int = 5,
    seed: int = 0,
) -> float:
    """Achieved GFLOP/s of one dense n×n×n matmul, measured now (median of ``repeats``).

    This is the practical ceiling ("roofline") for matmul-bound maps on this device and
    dtype; measure it in the same run as the map being judged.

    Parameters
    ----------
    n : int, optional
        Matrix size; default 4096 on CUDA and 1024 on CPU (a 4096 GEMM takes seconds
        on a small CPU).
    dtype : str, numpy dtype or torch.dtype
        Floating dtype, e.g. ``"float32"``, ``"bfloat16"`` (torch only).
    device : str or torch.device
        ``"cpu"`` or a CUDA device (torch only).
    backend : {"torch", "numpy"}
    warmup, repeats : int
        As in :func:`time_callable`.
    seed : int
        Seed of the Gaussian operands.

    Returns
    -------
    float
        ``2 n³ / median_seconds / 1e9``.

    Raises
    ------
    ValueError
        ``n < 1``, unknown backend, non-floating dtype, a non-CPU device for numpy.
    """
    if backend not in ("torch", "numpy"):
        raise ValueError(f"backend must be 'torch' or 'numpy', got {backend!r}")
    if n is None:
        n = 4096 if "cuda" in str(device) else 1024
    n = _check_int(n, "n", minimum=1)
    left, right = _gemm_operands(n, dtype, device, backend, seed)
    timing = time_callable(lambda: left @ right, warmup=warmup, repeats=repeats, sync=_gemm_sync(left))
    return achieved_gflops(gemm_flops(n), timing.median)


def _gemm_sync(operand: Any) -> str | Callable[[], Any]:
    if not getattr(operand, "is_cuda", False):
        return "none"
    import torch

    return lambda: torch.cuda.synchronize(operand.device)


# ---------------------------------------------------------------------------
# Scaling fits
# ---------------------------------------------------------------------------


def scaling_exponent(ns: Sequence[float], times: Sequence[float]) -> ScalingFit:
    """Fit ``log(time) = slope · log(n) + intercept`` by least squares.

    Parameters
    ----------
    ns : sequence of float
        Problem sizes, positive, at least two distinct values.
    times : sequence of float
        Positive finite times, one per size.

    Returns
    -------
    ScalingFit

    Raises
    ------
    ValueError
        Length mismatch, fewer than two points, fewer than two distinct sizes,
        non-positive or non-finite values.
    """
    sizes = np.asarray(ns, dtype=np.float64)
    durations = np.asarray(times, dtype=np.float64)
    if sizes.ndim != 1 or durations.ndim != 1:
        raise ValueError("ns and times must be one-dimensional sequences")
    if sizes.shape != durations.shape:
        raise ValueError(f"ns and times must have equal length, got {sizes.size} and {durations.size}")
    if sizes.size < 2:
        raise ValueError(f"need at least two points to fit a slope, got {sizes.size}")
    if not (np.all(np.isfinite(sizes)) and np.all(sizes > 0)):
        raise ValueError("every n must be finite and > 0")
    if not (np.all(np.isfinite(durations)) and np.all(durations > 0)):
        raise ValueError("every time must be finite and > 0")
    if np.unique(sizes).size < 2:
        raise ValueError("need at least two distinct sizes n to fit a slope")
    log_n, log_t = np.log(sizes), np.log(durations)
    centred_n = log_n - log_n.mean()
    centred_t = log_t - log_t.mean()
    slope = float(np.dot(centred_n, centred_t) / np.dot(centred_n, centred_n))
    intercept = float(log_t.mean() - slope * log_n.mean())
    residual = float(np.sum((centred_t - slope * centred_n) ** 2))
    total = float(np.dot(centred_t, centred_t))
    # Times equal up to rounding (centred_t is then pure rounding noise): a flat line fits.
    rounding = 64 * np.finfo(np.float64).eps * max(1.0, float(np.max(np.abs(log_t))))
    r_squared = 1.0 if total <= rounding**2 * log_t.size else 1.0 - residual / total
    return ScalingFit(slope=slope, intercept=intercept, r_squared=r_squared)


def pick_clock(device: str, threads: int) -> tuple[str, Callable[[], float]]:
    """The clock to time work on ``device`` running on ``threads`` torch CPU threads.

    ``("thread_cpu", time.thread_time)`` for CPU work on one thread: on a loaded
    machine wall time also counts the time the process waits for a core (the
    experiments' step times were 4× their quiet-machine values at load 17 on 2
    cores), the thread's CPU time does not, and on a quiet machine the two agree.
    Otherwise ``("wall", time.perf_counter)`` (several threads' work, or a GPU,
    which the caller synchronises).
    """
    if str(device).split(":")[0] == "cpu" and threads == 1:
        return "thread_cpu", time.thread_time
    return "wall", time.perf_counter
