"""Shared fixtures."""

from __future__ import annotations

import random
import zlib

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


@pytest.fixture(autouse=True)
def reproducible_battery_seeds(request, monkeypatch):
    """The batteries draw a fresh seed per call when none is given; in the test suite those
    draws come from a generator seeded by the test's name, so a run is reproducible (a
    failure recurs, and says its seed) while successive calls in one test still differ."""
    rng = random.Random(zlib.crc32(request.node.nodeid.encode()))
    from matfun.testing import optimizer, orthogonalizer

    for module in (orthogonalizer, optimizer):
        monkeypatch.setattr(module.secrets, "randbelow", lambda n: rng.randrange(n))
