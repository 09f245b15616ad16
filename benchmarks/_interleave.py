"""Interleaved timing for the benchmark scripts: rounds of A B C …, medians and spreads.

A load spike on a shared machine then lands on every side alike instead of on
whichever side happened to run during it.  Progress goes to stderr (tqdm).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm


@dataclass(frozen=True)
class Sample:
    """Seconds per call of one side: median, interquartile range and every sample."""

    median: float
    spread: float
    samples: tuple[float, ...]

    def __str__(self) -> str:
        return f"{self.median:9.4f} s ± {self.spread / 2:.4f}"


def summarize(samples) -> Sample:
    q25, q50, q75 = np.percentile(samples, [25, 50, 75])
    return Sample(float(q50), float(q75 - q25), tuple(samples))


def interleaved(
    sides: Mapping[str, Callable[[], object]],
    repeats: int,
    *,
    warmup: int = 1,
    sync: Callable[[], object] = lambda: None,
    rounds_of: Mapping[str, int] | None = None,
    label: str = "timing",
) -> dict[str, Sample]:
    """Time every side ``repeats`` times, one call of each side per round.

    ``rounds_of`` caps the repeats of slow sides (they run in the first rounds
    only, still interleaved with the others).
    """
    caps = {name: min(repeats, (rounds_of or {}).get(name, repeats)) for name in sides}
    samples: dict[str, list[float]] = {name: [] for name in sides}
    total = sum(caps.values()) + warmup * len(sides)
    with tqdm(total=total, desc=label, file=sys.stderr, leave=False) as bar:
        for fn in sides.values():
            for _ in range(warmup):
                fn()
                sync()
                bar.update()
        for r in range(repeats):
            for name, fn in sides.items():
                if r >= caps[name]:
                    continue
                bar.set_postfix_str(name)
                sync()
                start = time.perf_counter()
                fn()
                sync()
                samples[name].append(time.perf_counter() - start)
                bar.update()
    return {name: summarize(s) for name, s in samples.items()}


def paired_ratio(a: Sample, b: Sample) -> Sample:
    """Per-round ratios ``a/b`` (rounds both sides ran), summarised."""
    n = min(len(a.samples), len(b.samples))
    return summarize([x / y for x, y in zip(a.samples[:n], b.samples[:n])])
