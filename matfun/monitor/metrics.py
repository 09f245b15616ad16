"""Pure per-parameter metrics of one optimizer step: what the update did to one matrix.

Every function takes torch tensors (any device), reads them and returns host floats; none
writes into its inputs, consumes random numbers or builds an autograd graph.  They are what
:class:`matfun.monitor.Monitor` records, and can be called directly on any training loop's
tensors (:func:`parameter_metrics` for all of them at once).

Notation: a step of an optimizer with decoupled weight decay ``λ`` and learning rate ``lr``
is ``θ ← θ(1 − lr·λ) − lr·u``; ``u`` is the *update direction* (per unit lr, weight decay
separated out), recovered from the weights before and after the step by
:func:`update_direction`.  For Muon, ``u = AdjustLR(1, shape)·NS(M)``; for SGD, ``u`` is the
momentum buffer.  ``r = min(H, W)``; ``polar(X) = U Vᵀ`` is the exact polar factor
(:func:`matfun.polar`, ``method="auto"``: QDWH where it is the faster one).

References
----------
K. Jordan et al., *Muon: An optimizer for hidden layers in neural networks* (2024): the
update is the (approximate) polar factor of the momentum.
J. Bernstein, L. Newhouse, *Old Optimizer, New Norm: An Anthology* (2024), arXiv:2409.20325:
``polar(M)`` is steepest descent under the spectral norm; ``⟨M, polar(M)⟩ = ‖M‖_*``.
N. J. Higham, *Functions of Matrices*, SIAM (2008), ch. 8 (the polar decomposition).
*Hierarchical Muon (HiMuon)*: tile-wise orthogonalisation (the tiling probe).
*Muon²*: second-moment preconditioning before the map (the preconditioning probe).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "METRICS",
    "PROBES",
    "MissingInput",
    "alignment",
    "condition_number",
    "map_error",
    "orthogonality",
    "parameter_metrics",
    "preconditioning_condition",
    "singular_values",
    "tiling_loss",
    "update_direction",
]

#: Every metric :func:`parameter_metrics` can return, with a one-line meaning.
METRICS: dict[str, str] = {
    "update_rms": "RMS of the step lr·u (weight decay separated out)",
    "step_norm": "spectral norm of the step, ‖lr·u‖₂: the effective step size",
    "effective_step": "spectral norm of the update per unit lr, ‖u‖₂",
    "orthogonality": "‖u‖_* / (√r ‖u‖_F) in (0, 1]; 1 when all singular values of u are equal",
    "sv_min": "smallest singular value of u",
    "sv_max": "largest singular value of u (= effective_step)",
    "alignment_momentum": "cos(u, polar(M)), M the momentum",
    "alignment_grad": "cos(u, polar(G)), G the gradient",
    "map_error": "‖u/s − polar(X)‖_F / ‖polar(X)‖_F, X the map's input, s the lr rule's factor",
    "whatif_tiling_loss": "1 − ⟨M, P_T⟩ / (‖P_T‖₂ ‖M‖_*), P_T the exact tile-wise polar factor at tile T",
    "momentum_cond": "σ_max/σ_min of the momentum",
    "whatif_muon2_cond": "σ_max/σ_min of the Muon²-preconditioned momentum M ⊘ (√V + ε)",
}

#: The what-if probes (off by default in the monitor).
PROBES = ("tiling", "muon2")


def _matrix(t: Tensor, dtype: torch.dtype) -> Tensor:
    t = t.detach()
    if t.ndim < 2:
        raise ValueError(f"needs a matrix (or a conv kernel), got shape {tuple(t.shape)}")
    return t.reshape(t.shape[0], -1).to(dtype)


def _scalar(x: Any) -> float:
    return float(x.detach()) if isinstance(x, Tensor) else float(x)


@torch.no_grad()
def update_direction(
    before: Tensor, after: Tensor, lr: float | Tensor, weight_decay: float = 0.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The update direction ``u = (θ_before·(1 − lr·λ) − θ_after) / lr`` as a matrix.

    Parameters
    ----------
    before, after : Tensor
        The parameter before and after one step (any shape with ``ndim ≥ 2``; conv kernels
        are flattened to ``(out, in·k·k)``).
    lr : float or Tensor
        The learning rate of the step (the param group's ``lr``; a 1-element tensor is read).
    weight_decay : float
        Decoupled weight decay ``λ`` (``θ ← θ(1 − lr·λ)``); 0 for optimizers without it, or
        with L2 decay folded into the gradient (SGD, Adam), where the decay is part of ``u``.
    dtype : torch.dtype
        Dtype of the result (the decay is applied in the parameter's dtype, as the optimizer
        does, so for float32 weights ``θ_before·(1 − lr·λ)`` is the optimizer's value bit for bit).

    Returns
    -------
    Tensor of shape ``(H, W)``, on the parameter's device.
    """
    lr = _scalar(lr)
    if not lr > 0:
        raise ValueError(f"the update direction needs lr > 0, got {lr!r}")
    decayed = before.detach()
    decay = 1 - lr * float(weight_decay)
    if decay != 1:
        decayed = (
            decayed.mul(decay)
            if decayed.dtype in (torch.float32, torch.float64)
            else decayed.to(torch.float32).mul(decay)
        )
    diff = decayed.to(dtype) - after.detach().to(dtype)
    return _matrix(diff, dtype) / lr


@torch.no_grad()
def singular_values(u: Tensor) -> Tensor:
    """Singular values of the matrix ``u`` (descending), by ``torch.linalg.svdvals``."""
    return torch.linalg.svdvals(u)


def orthogonality(u: Tensor | None = None, *, sv: Tensor | None = None) -> float:
    """``‖u‖_* / (√r ‖u‖_F)`` ∈ (0, 1] (NaN for ``u = 0``).

    By Cauchy–Schwarz on the singular values it is 1 exactly when all ``r`` singular values
    are equal (``u`` is a multiple of an orthogonal matrix, what Muon aims at), and
    ``1/√r`` for a rank-one ``u``.  A square Gaussian matrix gives about ``8/(3π) ≈ 0.85``;
    SGD's low-rank momentum much less.  Give ``sv`` (the singular values) to skip the SVD.
    """
    if sv is None:
        if u is None:
            raise TypeError("orthogonality needs the matrix u or its singular values sv")
        sv = singular_values(u)
    s = sv.double()
    fro = torch.linalg.vector_norm(s)
    if not float(fro) > 0:
        return math.nan
    return float(s.sum() / (math.sqrt(s.numel()) * fro))


def _cos(a: Tensor, b: Tensor) -> float:
    a, b = a.double(), b.double()
    denom = float(torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))
    return float((a * b).sum()) / denom if denom > 0 else math.nan


class MissingInput(ValueError):
    """A metric's input (the momentum, a second moment) is not available."""


def _missing(what: str) -> None:
    raise MissingInput(what)


def _polar(X: Tensor, method: str) -> Tensor:
    import matfun

    return matfun.polar(X, method=method)


@torch.no_grad()
def alignment(u: Tensor, X: Tensor, *, method: str = "auto") -> float:
    """``cos(u, polar(X)) = ⟨u, polar(X)⟩ / (‖u‖_F ‖polar(X)‖_F)`` (NaN if either is 0).

    With ``X`` the momentum: 1 when the update is the exact polar factor of the momentum
    (ideal Muon); for SGD (``u = M``) it equals :func:`orthogonality` of ``M``.
    """
    X = X.detach().reshape(u.shape).to(u.dtype)
    return _cos(u, _polar(X, method))


@torch.no_grad()
def map_error(u: Tensor, X: Tensor, scale: float = 1.0, *, method: str = "auto") -> float:
    """``‖u/scale − polar(X)‖_F / ‖polar(X)‖_F``: the orthogonalising map's error on its input.

    ``u`` is the update direction, ``scale`` the learning-rate rule's factor
    (``AdjustLR(1, shape)``), so that ``u/scale`` is the map's output; ``X`` the map's input
    (Muon: the Nesterov momentum; Muon²: the preconditioned momentum).  Jordan's 5-step
    Newton–Schulz leaves singular values in about [0.7, 1.2], an error of 0.1–0.3; a tiled
    map (HiMuon) adds what tiling loses against the full polar factor.
    """
    X = X.detach().reshape(u.shape).to(u.dtype)
    P = _polar(X, method)
    denom = float(torch.linalg.vector_norm(P.double()))
    if not denom > 0:
        return math.nan
    return float(torch.linalg.vector_norm(u.double() / scale - P.double())) / denom


def _tiles(H: int, W: int, tile: tuple[int, int]) -> Iterator[tuple[slice, slice]]:
    th, tw = tile
    for i in range(0, H, th):
        for j in range(0, W, tw):
            yield slice(i, min(i + th, H)), slice(j, min(j + tw, W))


@torch.no_grad()
def tiling_loss(M: Tensor, tile: int | tuple[int, int], *, method: str = "auto") -> float:
    """What tiling at ``T`` would lose on ``M``: ``1 − ⟨M, P_T⟩ / (‖P_T‖₂ ‖M‖_*)`` ∈ [0, 1].

    ``P_T`` is the exact polar factor of every ``Th × Tw`` tile of ``M`` (ragged edges);
    ``⟨M, O⟩/‖O‖₂`` is the descent a step ``O`` buys per unit spectral norm, at most
    ``‖M‖_*`` (attained by ``polar(M)``).  0: tiling loses nothing (e.g. ``M`` no larger
    than a tile, or block diagonal on the tiles); near 1: the tiled step is nearly useless
    at the spectral-norm step size.
    """
    M = M.detach()
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    if min(th, tw) < 1:
        raise ValueError(f"tile must be positive, got {(th, tw)}")
    P = torch.zeros_like(M)
    H, W = M.shape
    for rs, cs in _tiles(H, W, (th, tw)):
        P[rs, cs] = _polar(M[rs, cs], method)
    nuclear = float(singular_values(M.double()).sum())
    spec = float(torch.linalg.matrix_norm(P.double(), 2))
    if not (nuclear > 0 and spec > 0):
        return math.nan
    return 1.0 - float((M.double() * P.double()).sum()) / (spec * nuclear)


#: quantile of the spectrum :func:`condition_number` divides by (see there)
CONDITION_QUANTILE = 0.9


def condition_number(X: Tensor) -> float:
    """``σ₁/σ_k`` of ``X`` with ``k = ⌈0.9·r⌉``: the condition of the top 90 % of the spectrum.

    Not ``σ_max/σ_min``: a momentum matrix usually has a few near-null directions whose
    size is rounding noise, and dividing by them measures the noise (ratios of 1e5 that
    change by 10× between steps).  What a finite Newton–Schulz map must bring to 1 is the
    bulk of the spectrum; ``σ_k`` is floored at ``σ₁·eps`` of the dtype; NaN for 0.
    """
    s = singular_values(X.detach())
    top = float(s[0]) if s.numel() else 0.0
    if not top > 0:
        return math.nan
    k = max(math.ceil(CONDITION_QUANTILE * s.numel()), 1) - 1
    floor = top * torch.finfo(s.dtype).eps
    return top / max(float(s[k]), floor)


@torch.no_grad()
def preconditioning_condition(M: Tensor, V: Tensor | tuple[Tensor, Tensor], eps: float = 1e-8) -> float:
    """Condition number of Muon²'s map input ``M ⊘ (√V + ε)``.

    ``V`` is the second moment: a full ``(H, W)`` tensor, or the factorised row and column
    statistics ``(R, C)`` of Muon²-F (``V ≈ R Cᵀ / ΣR``, as :class:`matfun.SecondMoment`).
    Compare with :func:`condition_number` of ``M``: a smaller number means the
    preconditioned input is easier for a finite Newton–Schulz map.
    """
    return condition_number(preconditioned(M, V, eps))


@torch.no_grad()
def preconditioned(M: Tensor, V: Tensor | tuple[Tensor, Tensor], eps: float = 1e-8) -> Tensor:
    """Muon²'s map input ``M ⊘ (√V + ε)`` for a full ``V`` or Muon²-F's row/column statistics ``(R, C)``."""
    import matfun

    M = M.detach()
    moment = matfun.SecondMoment(eps=eps, factorized=isinstance(V, tuple))
    moment.shape = tuple(M.shape)
    if isinstance(V, tuple):  # factorized
        moment.row, moment.col = (v.detach().to(M.dtype).reshape(-1) for v in V)
    else:
        moment.full = V.detach().to(M.dtype).reshape(M.shape)
    return moment.precondition(M)


def parameter_metrics(
    before: Tensor,
    after: Tensor,
    *,
    lr: float | Tensor,
    weight_decay: float = 0.0,
    momentum: Tensor | None = None,
    grad: Tensor | None = None,
    map_input: Tensor | None = None,
    map_scale: float = 1.0,
    probes: Sequence[str] = (),
    tile: int | tuple[int, int] = 128,
    second_moment: Tensor | tuple[Tensor, Tensor] | None = None,
    second_moment_eps: float = 1e-8,
    polar_method: str = "auto",
    dtype: torch.dtype = torch.float32,
    on_error: Callable[[str, Exception], None] | None = None,
) -> dict[str, float]:
    """Every metric of one matrix parameter over one step (see :data:`METRICS`).

    Parameters
    ----------
    before, after : Tensor
        The parameter before and after the step (``ndim ≥ 2``; conv kernels flattened).
    lr, weight_decay
        The step's learning rate and *decoupled* weight decay (see :func:`update_direction`).
    momentum : Tensor, optional
        The momentum ``M`` (e.g. ``optimizer.state[p]["momentum_buffer"]`` after the step):
        ``alignment_momentum``; also the input of the probes.
    grad : Tensor, optional
        The gradient of the step: ``alignment_grad``.
    map_input : Tensor, optional
        The orthogonalising map's input, when known (``map_error``); ``map_scale`` is the
        lr rule's factor that multiplied the map's output.
    probes : sequence of {"tiling", "muon2"}
        What-if probes on the momentum: ``whatif_tiling_loss`` at ``tile``;
        ``momentum_cond`` and ``whatif_muon2_cond`` with ``second_moment`` (full or ``(R, C)``).
    polar_method : {"auto", "svd", "qdwh"}
        Method of :func:`matfun.polar` for the exact polar factors.
    dtype : torch.dtype
        Compute dtype (float32 by default; float64 for reference values).
    on_error : callable(metric, exception), optional
        Called for a metric that cannot be computed, which is then left out; without it
        the exception propagates.

    Returns
    -------
    dict metric name → float.  Metrics whose inputs are not given are absent.

    Examples
    --------
    >>> import torch
    >>> from matfun.monitor.metrics import parameter_metrics
    >>> W0 = torch.randn(8, 16); G = torch.randn(8, 16)
    >>> W1 = W0 - 0.1 * G                        # one plain SGD step
    >>> m = parameter_metrics(W0, W1, lr=0.1, grad=G)
    >>> round(m["alignment_grad"], 4) == round(m["orthogonality"], 4)   # SGD: cos(G, polar(G))
    True
    """
    bad = set(probes) - set(PROBES)
    if bad:
        raise ValueError(f"unknown probes {sorted(bad)}; choose from {PROBES}")
    out: dict[str, float] = {}

    def attempt(names: str | tuple[str, ...], fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as error:
            if on_error is None:
                raise
            for name in (names,) if isinstance(names, str) else names:
                on_error(name, error)
            return None

    with torch.no_grad():
        u = update_direction(before, after, lr, weight_decay, dtype)
        lr_value = _scalar(lr)
        sv = attempt(("orthogonality", "sv_min", "sv_max", "step_norm", "effective_step"), lambda: singular_values(u))
        out["update_rms"] = lr_value * float(torch.linalg.vector_norm(u.double())) / math.sqrt(max(u.numel(), 1))
        if sv is not None:
            top = float(sv[0]) if sv.numel() else 0.0
            out["effective_step"] = top
            out["step_norm"] = lr_value * top
            out["orthogonality"] = orthogonality(sv=sv)
            out["sv_min"] = float(sv[-1]) if sv.numel() else 0.0
            out["sv_max"] = top
        M = None if momentum is None else _matrix(momentum, dtype)
        if M is not None:
            value = attempt("alignment_momentum", lambda: alignment(u, M, method=polar_method))
            if value is not None:
                out["alignment_momentum"] = value
        if grad is not None:
            value = attempt("alignment_grad", lambda: alignment(u, _matrix(grad, dtype), method=polar_method))
            if value is not None:
                out["alignment_grad"] = value
        if map_input is not None:
            value = attempt(
                "map_error", lambda: map_error(u, _matrix(map_input, dtype), map_scale, method=polar_method)
            )
            if value is not None:
                out["map_error"] = value
        if not probes:
            return out
        if M is None:
            for name in (
                "whatif_tiling_loss" if "tiling" in probes else None,
                "whatif_muon2_cond" if "muon2" in probes else None,
            ):
                if name:
                    attempt(name, lambda: _missing("no momentum to probe"))
            return out
        if "tiling" in probes:
            value = attempt("whatif_tiling_loss", lambda: tiling_loss(M, tile, method=polar_method))
            if value is not None:
                out["whatif_tiling_loss"] = value
        if "muon2" in probes:
            value = attempt("momentum_cond", lambda: condition_number(M))
            if value is not None:
                out["momentum_cond"] = value
            if second_moment is None:
                attempt("whatif_muon2_cond", lambda: _missing("no second moment to precondition with"))
            else:
                value = attempt(
                    "whatif_muon2_cond", lambda: preconditioning_condition(M, second_moment, second_moment_eps)
                )
                if value is not None:
                    out["whatif_muon2_cond"] = value
    return out
