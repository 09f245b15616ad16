"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture()
def one_thread():
    """One torch intra-op thread for the test, restored afterwards: the batteries' matrices are
    small, and on a loaded 2-core machine extra threads only spin-wait."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
