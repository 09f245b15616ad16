"""Temporarily set torch's CPU thread count.

The diagnostics run many small products (tiles, 64×128 test matrices).  On a
small shared CPU, OpenMP's hand-off to a second thread can cost far more than
it saves (measured: 12 ms per 128×128 ``baddbmm`` with 2 threads at load 8 on
2 cores, against 0.12 ms on one), and results do not need the threads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run torch CPU ops on ``n`` threads inside the block; ``None`` leaves the count alone.

    The previous count is restored on exit, also after an exception.
    """
    before = torch.get_num_threads()
    if n is not None and n != before:
        if n < 1:
            raise ValueError(f"thread count must be >= 1, got {n}")
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
