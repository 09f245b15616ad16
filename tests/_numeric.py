"""Comparison helpers shared by the map tests (imported as a plain module from tests/)."""

import numpy as np
import torch


def as64(x) -> np.ndarray:
    """A numpy float64 copy of an array or tensor."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def rel(A, B) -> float:
    """‖A − B‖_F / ‖B‖_F in float64 (‖A‖_F when B is zero)."""
    A, B = as64(A), as64(B)
    nb = np.linalg.norm(B)
    return float(np.linalg.norm(A - B) / nb) if nb > 0 else float(np.linalg.norm(A))
