"""Example plug-in maps for ``python -m diagnostics`` (README section "Your own map").

Run them through the experiments and the report card::

    python -m diagnostics run ns_convergence --quick --map polished=examples.my_map:polished_ns
    python -m diagnostics figures --quick --map polished=examples.my_map:polished_ns \\
        --map torch5=examples.my_map:torch_ns5
    python -m diagnostics report examples.my_map:polished_ns --quick --out report/

``polished_ns`` is a *factory* (its only parameter is named ``steps``), so the
experiments draw it against the step count K; ``torch_ns5`` is a plain callable
with a fixed K (its ``steps`` attribute), drawn as one point at K = 5.
"""

from __future__ import annotations

import numpy as np
import torch

#: Jordan's quintic (Muon): fast growth of small singular values, no convergence to 1.
QUINTIC = (3.4445, -4.7750, 2.0315)
#: Cubic Newton–Schulz p(x) = 1.5x − 0.5x³: slow, but converges to exactly 1.
CUBIC = (1.5, -0.5, 0.0)


def polished_ns(steps: int):
    """A new schedule: Jordan's quintic for the first ``steps − 2`` steps, then two cubic polishing steps.

    A factory ``steps -> map``; the map takes one 2-D numpy array (the
    diagnostics' default library) and returns an array of the same shape.
    """

    def polished(G: np.ndarray) -> np.ndarray:
        X = G / (np.linalg.norm(G) + 1e-30)
        tall = X.shape[0] > X.shape[1]
        if tall:
            X = X.T
        for k in range(steps):
            a, b, c = QUINTIC if k < steps - 2 else CUBIC
            A = X @ X.T
            X = a * X + (b * A + c * (A @ A)) @ X
        return X.T if tall else X

    return polished


def torch_ns5(G: torch.Tensor) -> torch.Tensor:
    """Five quintic steps in torch, on a batch ``(..., H, W)`` (declared below)."""
    X = G / (torch.linalg.matrix_norm(G, keepdim=True) + 1e-30)
    tall = X.shape[-2] > X.shape[-1]
    if tall:
        X = X.mT
    a, b, c = QUINTIC
    for _ in range(5):
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.mT if tall else X


torch_ns5.array_library = "torch"  # receive torch tensors, not numpy arrays
torch_ns5.batched = True  # accepts (..., H, W): no per-matrix loop needed
torch_ns5.steps = 5  # its own K: one point at K = 5 in the per-step figures
