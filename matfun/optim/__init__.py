"""Torch optimizers built on the :mod:`matfun` maps.

* :class:`Muon` — torch.optim.Muon's algorithm on :class:`matfun.NewtonSchulz`
  (any schedule, step count, precision);
* :class:`HiMuon` — tiled Newton–Schulz with cross-layer batching and a
  tile-size schedule;
* :class:`Muon2` — Newton–Schulz on the second-moment-preconditioned momentum
  (Muon², full or factorised Muon²-F).

All three optimise matrices (conv kernels are flattened to ``(out, in·k·k)``);
give vectors and scalars to ``torch.optim.AdamW``.
"""

from .muon import Muon

__all__ = ["Muon"]
