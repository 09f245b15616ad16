"""Maps that are not orthogonalisers, each written to slip past a weaker battery.

``tests/test_testing_no_false_pass.py`` asserts that the battery fails every one
(and names the check); the module docstring of :mod:`matfun.testing.orthogonalizer`
lists them.  Importable as ``tests._broken_maps:NAME`` for the CLI tests.
"""

from __future__ import annotations

import math

import torch

import matfun

LEGACY_SHAPES = {(32, 32), (32, 48), (48, 32)}  # the battery's fixed shapes up to 0.2


def _zero_safe(fn):
    """``f(0) = 0`` exactly, as the battery's ``zero`` check wants: each map fails for its own flaw only."""

    def wrapped(G):
        return torch.zeros_like(G) if not torch.any(G) else fn(G)

    wrapped.__name__ = wrapped.__qualname__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


def _svd(G):
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return U, S, Vh


def times_1000(G):
    return 1000 * matfun.polar(G)


def times_1e_6(G):
    return 1e-6 * matfun.polar(G)


@_zero_safe
def negate_two_smallest(G):
    U, S, Vh = _svd(G)
    signs = torch.ones_like(S)
    signs[-2:] = -1
    return ((U * signs) @ Vh).to(G.dtype)


@_zero_safe
def top_75_percent(G):
    U, S, Vh = _svd(G)
    k = math.ceil(0.75 * S.numel())
    return (U[:, :k] @ Vh[:k]).to(G.dtype)


@_zero_safe
def exact_on_legacy_shapes(G):
    """The polar factor on the three fixed shapes the battery used to run, a plain normalisation elsewhere."""
    if tuple(G.shape) in LEGACY_SHAPES:
        return matfun.polar(G)
    return G / G.norm()


def nan_above_48(G):
    if max(G.shape) > 48:
        return torch.full_like(G, float("nan"))
    return matfun.polar(G)


@_zero_safe
def spectral_normalisation(G):
    """G / ‖G‖₂: the right scale, no orthogonalisation at all."""
    return (G.double() / torch.linalg.matrix_norm(G.double(), ord=2)).to(G.dtype)


def one_step_jordan(G):
    """Muon's quintic run once: far from converged on small singular values."""
    return matfun.newton_schulz(G, 1, "jordan")


@_zero_safe
def naive_svd_polar(G):
    """``U @ Vh`` with no cut-off: fills an exactly rank-deficient input's null space with unit singular values."""
    U, _S, Vh = _svd(G)
    return (U @ Vh).to(G.dtype)


def negated(G):
    return -matfun.polar(G)


BROKEN = {
    "times_1000": times_1000,
    "times_1e_6": times_1e_6,
    "negate_two_smallest": negate_two_smallest,
    "top_75_percent": top_75_percent,
    "exact_on_legacy_shapes": exact_on_legacy_shapes,
    "nan_above_48": nan_above_48,
    "spectral_normalisation": spectral_normalisation,
    "one_step_jordan": one_step_jordan,
    "naive_svd_polar": naive_svd_polar,
    "negated": negated,
}
