"""Validate a Muon-type torch optimizer in CI: its update rule, measured from the outside.

:func:`check_optimizer` builds parameters, hands them to ``make_optimizer``,
sets controlled gradients, calls ``step()`` and judges only what it can observe
— the parameters, ``state_dict()`` and exceptions — so it works on any
``torch.optim.Optimizer``: torch's, a paper's reference code, your own::

    import torch, matfun.testing as mt

    def test_my_muon():
        mt.assert_optimizer(lambda params: MyMuon(params, lr=0.02), lr_rule="original")

Notation: ``Δ = θ₁ − θ₀`` is one step's change, ``lr`` the group's learning rate
(read from ``param_groups``, or ``lr=``), a conv kernel ``(out, in, k, k)`` is
judged as the ``out × (in·k·k)`` matrix Muon orthogonalises.  Gradients are
controlled: a known SVD (κ = 20 geometric spectrum), rank-1 ``u vᵀ``, zero.

Checks (``Report.checks``, in this order; names are stable)
------------------------------------------------------------
``shapes``
    a step on square 32×32, wide 16×48, tall 48×16, row 1×32, column 32×1
    and conv 8×4×3×3 parameters runs and leaves finite values of the same
    shape and dtype.  A shape the factory *rejects* at construction is
    skipped with a note; one it accepts and then fails on fails the check.
``orthogonalised``
    from ``θ₀ = 0`` (no weight decay acts) one step with a known-SVD gradient
    ``G = U diag(σ) Vᵀ``: the gains ``g_i = −u_iᵀ Δ v_i`` are all positive
    with ``max g / min g ≤ 3`` (the ratio of the orthogonaliser battery's band
    [0.5, 1.5]: Jordan's 5 steps give 1.7, momentum SGD gives κ = 20) and the
    update does not leak off ``G``'s singular pairs (``≤ 0.1``: bf16 NS leaks
    ≈ 3e-2).  With ``tile=`` every tile has its own SVD and scale; with
    ``preconditioned=True`` the map input is not ``G`` (Muon²'s is ``M ⊘ √V``),
    so only the update's own singular values are judged (``σ_max/σ_min ≤ 3``
    on the wide and tall shapes).
``momentum``
    three steps on two 32×32 parameters from ``θ₀ = 0``: ``g₁ = a·u vᵀ``,
    ``g₂ = b·u' vᵀ`` (``u ⊥ u'``, entries of equal magnitude), ``g₃ = 0``.  The map input is then rank one,
    ``(αu + βu') vᵀ``, which every orthogonaliser maps to its own direction:
    ``ρ = α/β`` is read exactly from the update after orthogonalisation
    (decoupled decay removed with the factor the weight-decay probe measured).
    Momentum before the map gives ``ρ₃ = μ·a/b``; Nesterov ``ρ₂ = ρ₃·μ/(1+μ)``,
    plain ``ρ₂ = ρ₃``.  The two parameters use ``a/b = 1`` and ``2``, so
    every ``ρ`` is near 1, where a bf16 map reproduces it to 1–5 % (a bf16
    Newton–Schulz step amplifies the rounding of a rank-one input's weaker
    component: ``ρ = 3.8`` reads 4 % off, ``0.24`` 19 %).  Momentum taken
    *after* the map (orthogonalising each gradient) gives the same ``ρ`` on
    both and fails (threshold: a factor √2 from the predicted 2), as does an
    update that vanishes with the gradient (no momentum).  The form is the
    nearer of plain and Nesterov (within 20 %).  ``μ`` and ``nesterov`` are
    compared with the group's ``momentum``/``nesterov`` (or ``betas[0]``)
    when it declares them (5 %).  EMA (``B ← μB + (1−μ)g``) and sum (``B ← μB + g``) differ by a
    constant factor that orthogonalisation removes: the detail names the form
    when the state holds the buffer.
``step_scale``
    from ``θ₀ = 0``, a rank-1 gradient on every accepted shape: a rank-1 input
    has ``x = 1`` under every normalisation, so ``σ₁(Δ)/lr = gain·rule(shape)``
    with one gain for all shapes (mean of 4 probes per shape: a bf16 map's
    gain scatters by ±2.5 % per probe).  The rule is ``lr_rule`` when
    declared, otherwise the known rule (``original`` ``√max(1, A/B)``,
    ``match_rms_adamw`` ``0.2·√max(A, B)``, ``spectral_norm`` ``√(A/B)``,
    ``none`` 1) whose implied gains agree across shapes within 10 % (any two
    rules differ by ≥ 23 % on these shapes); the gain must lie in
    [0.5, 1.5] (Jordan 0.696, You 0.978, Polar Express 0.904, polar 1).  A
    scale no rule explains fails and names the shapes (a conv rule on
    ``shape[:2]`` is 3× off on 8×4×3×3).
``weight_decay``
    from a fresh state, a zero gradient on ``θ₀ ≠ 0`` (square and tall): the
    parameters stay finite (a 0/0 normalisation fails), and ``θ₁ = c·θ₀``
    (decoupled, ``c = 1 − lr·λ`` with the group's ``weight_decay``, 1 % + 1e-6)
    or ``θ₁ = θ₀`` (``λ = 0``: zero gradients change nothing).  A change that
    is not a multiple of ``θ₀`` (residual > 0.1) is decay *through the map*
    (coupled, ``NS(g + λθ)``) and fails; so does a factor that differs between
    shapes (decay with the adjusted lr).
``gradient_unchanged``
    ``step()`` never modifies ``p.grad`` (over every step of the battery).
``grad_none``
    a parameter whose ``grad`` is ``None`` is left unchanged.
``nonfinite_gradient``
    after a clean step, one parameter's gradient holds a NaN (then an Inf):
    raising is fine if nothing changed (parameters and state), skipping that
    parameter or plain propagation into it (NaN parameter) are fine, but any
    other parameter or its state must equal a run with a clean gradient bit
    for bit, and the bad parameter must not take a finite step.
``deterministic``
    two runs of the same 3-step stream give bit-identical parameters.
``checkpoint_resume``
    ``state_dict()`` after step 1, loaded into a fresh optimizer over copies
    of the parameters, resumes steps 2–3 bit for bit.
``tensor_lr``
    a float64 0-d tensor ``lr`` with the float's value gives the float run's
    parameters to 4 ulps (skipped when the optimizer rejects tensor ``lr``).
``bfloat16`` (with ``"bfloat16"`` in ``dtypes``)
    the 3-step stream on bfloat16 parameters follows the float32 run:
    ``‖θ_bf16 − θ_f32‖ / ‖θ_f32 − θ₀‖ ≤ 0.1`` and every state tensor within
    ``0.05``.  Derivation: bf16 stores each value to 2⁻⁹ relative; a bf16
    Newton–Schulz step differs from float32's by ≈ 2e-2 (the orthogonaliser
    battery's calibration), so three steps of change agree to ≲ 3e-2 (0.1
    leaves 3× margin); momentum is linear in the gradients, ≲ 3·2⁻⁹ ≈ 6e-3.
    The parameters start at zero and gradients have norm 50, so every step is
    far above a bf16 ulp of the parameters and a buffer normalised in place
    (torch's bf16 ``nesterov=False``) is off by a factor of ≈ 2.5.

With ``reference=`` (another factory) both run the same probes and stream;
``reference_params`` compares the parameters after the stream (``rtol``:
1e-4 for optimizers computing in float32, 5e-2 with
``compute_precision="bfloat16"``), and on a mismatch the localising rows say
where: ``reference_scale`` (per-shape step sizes), ``reference_direction``
(cosine of the one-step updates), ``reference_weight_decay``,
``reference_momentum`` and ``reference_state`` (state tensors by key).

Isolation: ``make_optimizer`` may be a callable or a ``"module:function"``
string.  :func:`check_optimizer` runs in this process; the
``validate-optimizer`` command runs it in a child process, so that a factory
that exits, crashes or hangs cannot end or stall the command.  The verdicts
are computed in that child: a target written to fake the report (by patching
matfun) is beyond what a battery can stop — read its code.
"""

from __future__ import annotations

import math
import secrets
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from . import _spectral
from ._isolation import DEFAULT_TIMEOUT, BatteryTimeout, TargetError, check_timeout, split_target
from ._matrices import _rng, _with_spectrum
from ._optimizer_driver import Driver, Observed, Run
from ._report import CheckResult, Report, _fmt

__all__ = ["LR_RULES", "OPTIMIZER_CHECK_NAMES", "assert_optimizer", "check_optimizer"]

OPTIMIZER_CHECK_NAMES = (
    "shapes",
    "orthogonalised",
    "momentum",
    "step_scale",
    "weight_decay",
    "gradient_unchanged",
    "grad_none",
    "nonfinite_gradient",
    "deterministic",
    "checkpoint_resume",
    "tensor_lr",
    "bfloat16",
    "reference_params",
    "reference_scale",
    "reference_direction",
    "reference_weight_decay",
    "reference_momentum",
    "reference_state",
)

#: the learning-rate rules Muon implementations use, as factor(A, B) of the (flattened) A×B matrix
LR_RULES: dict[str, Callable[[int, int], float]] = {
    "original": lambda A, B: math.sqrt(max(1.0, A / B)),
    "match_rms_adamw": lambda A, B: 0.2 * math.sqrt(max(A, B)),
    "spectral_norm": lambda A, B: math.sqrt(A / B),
    "none": lambda A, B: 1.0,
}

SHAPES: dict[str, tuple[int, ...]] = {
    "square": (32, 32),
    "wide": (16, 48),
    "tall": (48, 16),
    "row": (1, 32),
    "column": (32, 1),
    "conv": (8, 4, 3, 3),
}
GAIN_BAND = (0.5, 1.5)
GAIN_RATIO = GAIN_BAND[1] / GAIN_BAND[0]
LEAKAGE_TOL = 0.1
RULE_TOL = 0.1
_SCALE_PROBES = 4  # rank-1 probes averaged per shape: a bf16 map's gain scatters by ±2.5 % per probe
MOMENTUM_TOL = 0.05
STREAM_STEPS = 3
BF16_PARAM_TOL, BF16_STATE_TOL = 0.1, 0.05
ULPS = 4
REFERENCE_RTOL = {"float32": 1e-4, "bfloat16": 5e-2}


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], -1)


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    return shape[0], int(np.prod(shape[1:]))


def _signs(rng: np.random.Generator, n: int) -> np.ndarray:
    """A unit vector of equal-magnitude entries (random signs): its outer products have no
    tiny entries, so an element-wise preconditioner ``M ⊘ (√V + ε)`` keeps them rank one."""
    return rng.choice((-1.0, 1.0), size=n) / math.sqrt(n)


def _balanced(rng: np.random.Generator, n: int, block: int) -> np.ndarray:
    """±1 entries with as many +1 as −1 in every ``block`` (so ``u ⊙ h ⊥ u`` within each block)."""
    h = np.empty(n)
    for start in range(0, n, block):
        k = min(block, n - start)
        h[start : start + k] = rng.permutation(np.repeat((1.0, -1.0), (k + 1) // 2))[:k]
    return h


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(np.sum(a * b) / (na * nb)) if na > 0 and nb > 0 else 0.0


def _rel(a: np.ndarray, b: np.ndarray, scale: float | None = None) -> float:
    d = np.linalg.norm(a - b)
    n = np.linalg.norm(b) if scale is None else scale
    if not np.all(np.isfinite(a)) or not np.all(np.isfinite(b)):
        return math.inf
    return float(d / n) if n > 0 else (0.0 if d == 0 else math.inf)


class _Battery:
    """The probes: each runs fresh optimizers and keeps its measurements for the reference comparison."""

    def __init__(
        self,
        driver: Driver,
        *,
        seed: int,
        dtype: torch.dtype,
        lr: float | None,
        momentum: float | None,
        lr_rule: Any,
        tile: tuple[int, int] | None,
        preconditioned: bool,
    ):
        self.driver, self.seed, self.dtype = driver, seed, dtype
        self.lr_option, self.momentum_option = lr, momentum
        self.lr_rule, self.tile, self.preconditioned = lr_rule, tile, preconditioned
        self.accepted: dict[str, str | None] = {}  # kind -> None (works) or why it was skipped
        self.grad_changes: list[str] = []
        self.decay: dict[str, float | None] = {}
        self.measured: dict[str, Any] = {}

    # ---------------------------------------------------------------- plumbing
    def build(self, values: Sequence[np.ndarray], dtype: torch.dtype | None = None) -> Run | str:
        return self.driver.build(values, dtype or self.dtype)

    def step(self, run: Run, grads: Sequence[np.ndarray | None]) -> tuple[Observed, str | None]:
        err = self.driver.step(run, grads)
        obs = self.driver.observe(run)
        for i, (given, after) in enumerate(zip(grads, obs.grads)):
            if given is not None and after is not None:
                want = torch.as_tensor(given, dtype=torch.float64).to(run.params[i].dtype).double().numpy()
                if not np.array_equal(after, want, equal_nan=True):
                    self.grad_changes.append(f"parameter {i} {'x'.join(map(str, given.shape))}")
        return obs, err

    def lr_of(self, obs: Observed, i: int = 0) -> float | None:
        lr = obs.groups[i].get("lr") if self.lr_option is None else self.lr_option
        return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0 else None

    def rng(self, *key: int) -> np.random.Generator:
        return _rng(self.seed, 40, *key)

    def tiles(self, A: int, B: int) -> tuple[int, tuple[int, int]]:
        """``(number of tiles, shape the lr rule sees)`` of an ``A×B`` matrix.

        Untiled: one tile, the matrix.  Tiled (HiMuon's convention): a matrix no
        larger than a tile is one tile; otherwise every tile is orthogonalised on
        its own — a rank-one input becomes a rank-one update of norm
        ``gain·√(#tiles)`` — and the rule sees the effective tile.
        """
        if self.tile is None or A * B <= self.tile[0] * self.tile[1]:
            return 1, (A, B)
        return math.ceil(A / self.tile[0]) * math.ceil(B / self.tile[1]), (min(self.tile[0], A), min(self.tile[1], B))

    def kinds(self, *wanted: str) -> list[str]:
        return [k for k in (wanted or SHAPES) if self.accepted.get(k, "not run") is None]

    # ---------------------------------------------------------------- checks
    def shapes(self) -> CheckResult:
        notes, bad = [], []
        for i, (kind, shape) in enumerate(SHAPES.items()):
            run = self.build([np.zeros(shape)])
            if isinstance(run, str):
                self.accepted[kind] = run
                notes.append(f"{kind} rejected at construction ({run})")
                if kind == "square":
                    raise TargetError(f"{self.driver.name}: {run} on a 32x32 matrix parameter")
                continue
            grad = self.rng(0, i).standard_normal(shape)
            obs, err = self.step(run, [grad])
            p = run.params[0]
            if err:
                bad.append(f"{kind} {'x'.join(map(str, shape))}: {err}")
            elif tuple(p.shape) != shape or p.dtype != self.dtype or not np.all(np.isfinite(obs.params[0])):
                bad.append(
                    f"{kind}: parameter became {tuple(p.shape)} {p.dtype}, finite={np.all(np.isfinite(obs.params[0]))}"
                )
            else:
                self.accepted[kind] = None
                continue
            self.accepted[kind] = "failed"
        works = [k for k, v in self.accepted.items() if v is None]
        detail = "; ".join(bad) if bad else f"steps on {', '.join(works)}" + (f"; {'; '.join(notes)}" if notes else "")
        return CheckResult("shapes", not bad, len(bad), 0, detail)

    def orthogonalised(self) -> CheckResult:
        kinds = self.kinds("wide", "tall") if self.preconditioned else self.kinds("square", "wide", "tall", "conv")
        worst, worst_where, leak_worst = 0.0, "", 0.0
        for i, kind in enumerate(kinds):
            shape = SHAPES[kind]
            H, W = _matrix_shape(shape)
            tile = self.tile or (max(H, W), max(H, W))
            G, blocks = _spectral._probe(self.rng(1, i), (H, W), tile)
            run = self.build([np.zeros(shape)])
            if isinstance(run, str):
                return CheckResult("orthogonalised", False, math.nan, GAIN_RATIO, f"{kind}: {run}")
            obs, err = self.step(run, [G.reshape(shape)])
            if err:
                return CheckResult("orthogonalised", False, math.nan, GAIN_RATIO, f"{kind}: {err}")
            D = -_flat(obs.params[0])
            self.measured.setdefault("update", {})[kind] = D
            if not np.all(np.isfinite(D)) or not np.any(D):
                return CheckResult(
                    "orthogonalised",
                    False,
                    math.nan,
                    GAIN_RATIO,
                    f"{kind}: the update is {'zero' if np.all(np.isfinite(D)) else 'not finite'}",
                )
            if self.preconditioned:
                s = np.linalg.svd(D, compute_uv=False)
                ratio, what = float(s.max() / s.min()) if s.min() > 0 else math.inf, "singular values"
            else:
                gains, recon = [], np.zeros_like(D)
                for b in blocks:
                    g = np.diag(b.U.T @ D[b.rows, b.cols] @ b.V)
                    recon[b.rows, b.cols] = (b.U * g) @ b.V.T
                    gains.append(g)
                g = np.concatenate(gains)
                ratio = float(g.max() / g.min()) if g.min() > 0 else math.inf
                what = "gains along the gradient's singular directions"
                leak = float(np.linalg.norm(D - recon) / np.linalg.norm(D))
                if leak > LEAKAGE_TOL:
                    return CheckResult(
                        "orthogonalised",
                        False,
                        leak,
                        LEAKAGE_TOL,
                        f"{kind}: the update leaks off the gradient's singular pairs "
                        f"({_fmt(leak)}): it is not a spectral map of the momentum",
                    )
                leak_worst = max(leak_worst, leak)
                if g.min() <= 0:
                    return CheckResult(
                        "orthogonalised",
                        False,
                        math.inf,
                        GAIN_RATIO,
                        f"{kind}: a singular direction moves the wrong way (gain {_fmt(g.min())})",
                    )
            if ratio > worst:
                worst, worst_where = ratio, f"{kind} ({what} span {_fmt(ratio)}x)"
        if not kinds:
            return CheckResult("orthogonalised", False, math.nan, GAIN_RATIO, "no accepted matrix shape to probe")
        ok = worst <= GAIN_RATIO
        detail = (
            f"worst {worst_where}"
            if ok
            else f"{worst_where}: the update keeps the gradient's spectrum (kappa = {_spectral.KAPPA:g}), "
            "not orthogonalised"
        ) + ("" if self.preconditioned else f"; leakage <= {_fmt(leak_worst)}")
        return CheckResult("orthogonalised", ok, worst, GAIN_RATIO, detail)

    def weight_decay(self) -> CheckResult:
        results, bad = [], []
        for i, kind in enumerate(self.kinds("square", "tall")):
            shape = SHAPES[kind]
            theta0 = _with_spectrum(
                self.rng(2, i), (shape[0], shape[1]), np.geomspace(1.0, 1.0 / _spectral.KAPPA, min(shape))
            )
            run = self.build([theta0])
            if isinstance(run, str):
                return CheckResult("weight_decay", False, math.nan, None, f"{kind}: {run}")
            theta0 = _f64p(run)  # as stored in the parameter dtype
            obs, err = self.step(run, [np.zeros(shape)])
            if err:
                return CheckResult("weight_decay", False, math.nan, None, f"{kind}, zero gradient: {err}")
            theta1 = obs.params[0]
            if not np.all(np.isfinite(theta1)):
                return CheckResult(
                    "weight_decay",
                    False,
                    math.inf,
                    None,
                    f"{kind}: a zero gradient from a fresh state gives non-finite parameters "
                    "(0/0 in the map's normalisation?)",
                )
            delta = theta1 - theta0
            lr, lam = self.lr_of(obs), obs.groups[0].get("weight_decay")
            lam = float(lam) if isinstance(lam, (int, float)) and not isinstance(lam, bool) else None
            if not np.any(delta):
                self.decay[kind] = 1.0
                if lam:
                    bad.append(f"{kind}: declares weight_decay={lam:g} but a zero-gradient step left it unchanged")
                results.append(f"{kind}: unchanged (no decay)")
                continue
            k = float(np.sum(delta * theta0) / np.sum(theta0 * theta0))
            resid = float(np.linalg.norm(delta - k * theta0) / np.linalg.norm(delta))
            if resid > 0.1:
                self.decay[kind] = None
                return CheckResult(
                    "weight_decay",
                    False,
                    resid,
                    0.1,
                    f"{kind}: coupled: a zero gradient moved theta by something that is not a multiple "
                    f"of theta (residual {_fmt(resid)}): the decay goes through the map; decoupled "
                    "decay is theta <- theta(1 - lr*lambda)",
                )
            self.decay[kind] = 1.0 + k
            if lr is not None and lam is not None:
                want = -lr * lam
                if abs(k - want) > 0.01 * abs(want) + 1e-6:
                    bad.append(
                        f"{kind}: decay factor {_fmt(1 + k)}, but 1 - lr*lambda = {_fmt(1 + want)} "
                        f"(lr {lr:g}, weight_decay {lam:g})"
                    )
            results.append(f"{kind}: decoupled, theta x {1 + k:.6g}")
        factors = [v for v in self.decay.values() if v is not None]
        if len(factors) > 1 and max(factors) - min(factors) > 1e-6 + 0.01 * (1 - min(factors)):
            bad.append(
                f"the decay factor depends on the shape ({', '.join(f'{k} {_fmt(v)}' for k, v in self.decay.items())})"
                ": decay with the shape-adjusted lr?"
            )
        if bad:
            return CheckResult("weight_decay", False, len(bad), 0, "; ".join(bad))
        return CheckResult("weight_decay", True, 0, 0, "; ".join(results) or "no shape to probe")

    def momentum(self) -> CheckResult:
        name = "momentum"
        if "square" not in self.kinds("square"):
            return CheckResult(name, True, None, None, "skipped: 32x32 not accepted", skipped=True)
        block = self.tile[0] if self.tile is not None else 32
        if block % 2 or block < 2:
            return CheckResult(
                name,
                True,
                None,
                None,
                f"skipped: tile rows of {block} hold no orthogonal pair of probe directions",
                skipped=True,
            )
        rng = self.rng(3)
        u, v = _signs(rng, 32), _signs(rng, 32)
        P, Q = np.outer(u, v), np.outer(u * _balanced(rng, 32, block), v)  # u ⊥ u' in every tile row
        scales = ((1.0, 1.0), (2.0, 1.0))  # a/b = 1 and 2: ratios near 1, which a bf16 map reproduces to 1-5 %
        run = self.build([np.zeros((32, 32)), np.zeros((32, 32))])
        if isinstance(run, str):
            return CheckResult(name, False, math.nan, None, run)
        thetas, states = [[np.zeros((32, 32))] * 2], None
        for t, grads in enumerate(([a * P for a, _ in scales], [b * Q for _, b in scales], [np.zeros((32, 32))] * 2)):
            obs, err = self.step(run, grads)
            if err:
                return CheckResult(name, False, math.nan, None, f"step {t + 1}: {err}")
            thetas.append(obs.params)
            if t == 0:
                states = obs.state
        c = self.decay.get("square") or 1.0
        rho = np.zeros((2, 2))  # [param, step 2/3]
        norms = np.zeros((2, 2))
        for i in range(2):
            for j, t in enumerate((2, 3)):
                O = -(thetas[t][i] - c * thetas[t - 1][i])
                norms[i, j] = np.linalg.norm(O)
                beta = float(np.sum(O * Q))
                rho[i, j] = float(np.sum(O * P)) / beta if beta != 0 else math.inf
        self.measured["momentum"] = rho
        group = obs.groups[0]
        declared = self.momentum_option
        if declared is None:
            declared = group.get(
                "momentum",
                (group.get("betas") or (None,))[0] if isinstance(group.get("betas"), (tuple, list)) else None,
            )
        declared = float(declared) if isinstance(declared, (int, float)) and not isinstance(declared, bool) else None
        if norms[0, 1] <= 1e-6 * max(norms[0, 0], 1e-300):
            if declared == 0:
                return CheckResult(name, True, 0.0, None, "no momentum (the group declares momentum 0)")
            return CheckResult(
                name,
                False,
                0.0,
                None,
                "the update vanishes with the gradient: it is built from the raw gradient, not the "
                f"momentum{f' (the group declares momentum {declared:g})' if declared else ''}",
            )
        q = [a / b for a, b in scales]
        spread = (rho[1, 1] / rho[0, 1]) / (q[1] / q[0]) if rho[0, 1] not in (0, math.inf) else math.inf
        if not (np.isfinite(spread) and spread > 0 and abs(math.log(spread)) < math.log(math.sqrt(2))):
            return CheckResult(
                name,
                False,
                float(spread),
                1.0,
                f"the update mixes past and new gradients in the ratio {_fmt(rho[0, 1])} for "
                f"a/b = 1 and {_fmt(rho[1, 1])} for a/b = 2: the momentum is not what is "
                "orthogonalised (each gradient is orthogonalised, then averaged?)",
            )
        mu = float(rho[0, 1])  # a/b = 1: rho3 = mu
        steps_ratio = float(rho[0, 1] / rho[0, 0]) if rho[0, 0] else math.inf
        forms = {"plain": 1.0, "nesterov": (1 + mu) / mu if mu > 0 else math.inf}
        form = min(forms, key=lambda f: abs(math.log(steps_ratio / forms[f])) if forms[f] < math.inf else math.inf)
        if not np.isfinite(steps_ratio) or abs(math.log(steps_ratio / forms[form])) > math.log(1.2):
            return CheckResult(
                name,
                False,
                steps_ratio,
                None,
                f"momentum form not recognised: rho3/rho2 = {_fmt(steps_ratio)} (plain 1, Nesterov "
                f"{_fmt(forms['nesterov'])} for mu = {_fmt(mu)})",
            )
        kind = _buffer_form(states[0] if states else {}, scales[0][0] * P, mu)
        detail = f"momentum before the map, {form}, mu = {mu:.4g}{kind}"
        problems = []
        if declared is not None and abs(mu - declared) > MOMENTUM_TOL * max(declared, 1e-3):
            problems.append(f"measured mu = {mu:.4g}, the group declares {declared:g}")
        nesterov = group.get("nesterov")
        if isinstance(nesterov, bool) and nesterov != (form == "nesterov"):
            problems.append(f"the group declares nesterov={nesterov}, the update is {form}")
        if problems:
            return CheckResult(name, False, mu, None, "; ".join(problems))
        return CheckResult(name, True, mu, None, detail + (f" (declared {declared:g})" if declared is not None else ""))

    def step_scale(self) -> CheckResult:
        name = "step_scale"
        measured: dict[str, float] = {}
        lr = None
        for i, kind in enumerate(self.kinds()):
            shape = SHAPES[kind]
            A, B = _matrix_shape(shape)
            rng = self.rng(4, i)
            grads = [np.outer(_signs(rng, A), _signs(rng, B)).reshape(shape) for _ in range(_SCALE_PROBES)]
            run = self.build([np.zeros(shape)] * _SCALE_PROBES)
            if isinstance(run, str):
                continue
            obs, err = self.step(run, grads)
            if err:
                return CheckResult(name, False, math.nan, RULE_TOL, f"{kind}: {err}")
            lr = self.lr_of(obs)
            if lr is None:
                return CheckResult(
                    name, False, math.nan, RULE_TOL, "no float lr in the param group: pass lr= to check the step size"
                )
            s = float(np.mean([np.linalg.norm(_flat(p), 2) for p in obs.params])) / lr
            measured[kind] = s / math.sqrt(self.tiles(A, B)[0])
        self.measured["scale"] = measured
        if not measured:
            return CheckResult(name, False, math.nan, RULE_TOL, "no accepted shape to probe")
        rules = _rules(self.lr_rule)
        fits = {}
        for rule, fn in rules.items():
            gains = {k: v / fn(*self.tiles(*_matrix_shape(SHAPES[k]))[1]) for k, v in measured.items()}
            lo, hi = min(gains.values()), max(gains.values())
            fits[rule] = (hi / lo - 1 if lo > 0 else math.inf, gains)
        best = min(fits, key=lambda r: fits[r][0])
        spread, gains = fits[best]
        gain = float(np.median(list(gains.values())))
        if spread <= RULE_TOL and GAIN_BAND[0] <= gain <= GAIN_BAND[1]:
            return CheckResult(
                name, True, spread, RULE_TOL, f"lr rule {best!r}, gain {gain:.3g} at x = 1, on {', '.join(measured)}"
            )
        if spread <= RULE_TOL:
            return CheckResult(
                name,
                False,
                gain,
                None,
                f"lr rule {best!r} explains the shapes, but every step is {gain:.3g}x lr*rule "
                f"(an orthogonaliser's gain lies in [{GAIN_BAND[0]}, {GAIN_BAND[1]}])",
            )
        off = sorted(gains, key=lambda k: abs(math.log(gains[k] / gain)), reverse=True)
        worst = ", ".join(f"{k} {'x'.join(map(str, SHAPES[k]))} {gains[k] / gain:.3g}x" for k in off[:2])
        which = f"the declared rule {best!r}" if self.lr_rule is not None else f"any known rule (closest {best!r})"
        return CheckResult(name, False, spread, RULE_TOL, f"no single gain under {which}: {worst} the others")

    def gradient_unchanged(self) -> CheckResult:
        bad = self.grad_changes
        return CheckResult(
            "gradient_unchanged",
            not bad,
            len(bad),
            0,
            f"step() modified p.grad in place: {bad[0]}" + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else "")
            if bad
            else "p.grad unchanged by every step",
        )

    def grad_none(self) -> CheckResult:
        rng = self.rng(5)
        theta = [rng.standard_normal((32, 32)) for _ in range(2)]
        run = self.build(theta)
        if isinstance(run, str):
            return CheckResult("grad_none", False, math.nan, 0, run)
        before = [_f64p(run, i) for i in range(2)]
        obs, err = self.step(run, [rng.standard_normal((32, 32)), None])
        if err:
            return CheckResult("grad_none", False, math.nan, 0, f"a parameter without grad: {err}")
        changed = not np.array_equal(obs.params[1], before[1])
        return CheckResult(
            "grad_none",
            not changed,
            int(changed),
            0,
            "a parameter with grad None was changed" if changed else "grad None: left unchanged",
        )

    def nonfinite(self) -> CheckResult:
        name = "nonfinite_gradient"
        rng = self.rng(6)
        theta = [rng.standard_normal((32, 32)) * 0.1 for _ in range(2)]
        warm = [rng.standard_normal((32, 32)) for _ in range(2)]
        clean = [rng.standard_normal((32, 32)) for _ in range(2)]
        outcomes = []
        for bad_value in (math.nan, math.inf):
            bad_grad = clean[1].copy()  # on the last parameter: a per-parameter loop has updated the first
            bad_grad[3, 5] = bad_value
            runs = []
            for _ in range(2):
                r = self.build(theta)
                if isinstance(r, str):
                    return CheckResult(name, False, math.nan, 0, r)
                runs.append(r)
            for r in runs:
                _, err = self.step(r, warm)
                if err:
                    return CheckResult(name, False, math.nan, 0, f"clean step: {err}")
            before = self.driver.observe(runs[0])
            got, err = self.step(runs[0], [clean[0], bad_grad])
            ref, ref_err = self.step(runs[1], clean)
            if ref_err:
                return CheckResult(name, False, math.nan, 0, f"clean step: {ref_err}")
            what = "NaN" if math.isnan(bad_value) else "Inf"
            if err:
                changed = _changes(before, got)
                if changed:
                    return CheckResult(
                        name,
                        False,
                        len(changed),
                        0,
                        f"half-applied step: {err.split(':')[0]} on a {what} gradient after changing "
                        + ", ".join(changed[:3]),
                    )
                outcomes.append(f"{what}: raises before anything changes")
                continue
            others = _changes(_select(ref, [0]), _select(got, [0]))
            if others:
                return CheckResult(
                    name,
                    False,
                    len(others),
                    0,
                    f"a {what} gradient on parameter 1 changed parameter 0's step "
                    f"({', '.join(others[:3])}): it leaked into another parameter",
                )
            p0, p0_before = got.params[1], before.params[1]
            if np.array_equal(p0, p0_before):
                outcomes.append(f"{what}: skips the parameter")
            elif not np.all(np.isfinite(p0)):
                outcomes.append(f"{what}: propagates into that parameter only")
            else:
                return CheckResult(
                    name,
                    False,
                    1,
                    0,
                    f"the parameter with a {what} gradient took a finite step: "
                    "the non-finite gradient was silently replaced",
                )
        return CheckResult(name, True, 0, 0, "; ".join(outcomes))

    def stream(
        self,
        dtype: torch.dtype | None = None,
        *,
        zero_init: bool = False,
        norm: float | None = None,
        tensor_lr: bool = False,
        resume_after: int | None = None,
    ) -> Observed | str:
        """The 3-step stream on square/wide/tall parameters: the final observation, or what failed."""
        kinds = self.kinds("square", "wide", "tall") or ["square"]
        rng = self.rng(7)
        theta = [np.zeros(SHAPES[k]) if zero_init else 0.1 * rng.standard_normal(SHAPES[k]) for k in kinds]
        grads = []
        for _ in range(STREAM_STEPS):
            gs = [rng.standard_normal(SHAPES[k]) for k in kinds]
            grads.append([g * (norm / np.linalg.norm(g)) for g in gs] if norm else gs)
        run = self.build(theta, dtype)
        if isinstance(run, str):
            return run
        if tensor_lr and (err := self.driver.tensor_lr(run)):
            return err
        obs = self.driver.observe(run)
        for t, g in enumerate(grads):
            obs, err = self.step(run, g)
            if err:
                return f"step {t + 1}: {err}"
            if resume_after == t + 1:
                ckpt = self.driver.checkpoint(run)
                if isinstance(ckpt, str):
                    return ckpt
                fresh = self.build(obs.params, dtype)
                if isinstance(fresh, str):
                    return fresh
                if err := self.driver.restore(fresh, ckpt):
                    return err
                run = fresh
        return obs

    def deterministic(self) -> CheckResult:
        a, b = self.stream(), self.stream()
        if isinstance(a, str) or isinstance(b, str):
            return CheckResult("deterministic", False, math.nan, 0, str(a if isinstance(a, str) else b))
        self.measured["stream"] = a
        diff = [i for i in range(len(a.params)) if not np.array_equal(a.params[i], b.params[i], equal_nan=True)]
        return CheckResult(
            "deterministic",
            not diff,
            len(diff),
            0,
            f"two runs of one stream differ on parameter(s) {diff}" if diff else f"{STREAM_STEPS}-step runs identical",
        )

    def checkpoint_resume(self) -> CheckResult:
        base, resumed = self.measured.get("stream") or self.stream(), self.stream(resume_after=1)
        if isinstance(base, str) or isinstance(resumed, str):
            return CheckResult("checkpoint_resume", False, math.nan, 0, str(base if isinstance(base, str) else resumed))
        diff = _changes(base, resumed)
        return CheckResult(
            "checkpoint_resume",
            not diff,
            len(diff),
            0,
            f"resumed run differs: {', '.join(diff[:3])}"
            if diff
            else "state_dict() after step 1 resumes steps 2-3 bit for bit",
        )

    def tensor_lr(self) -> CheckResult:
        base, got = self.measured.get("stream") or self.stream(), self.stream(tensor_lr=True)
        if isinstance(base, str):
            return CheckResult("tensor_lr", False, math.nan, ULPS, f"float lr: {base}")
        if isinstance(got, str):
            return CheckResult(
                "tensor_lr", True, None, ULPS, f"skipped: a tensor lr is not accepted ({got})", skipped=True
            )
        eps = float(torch.finfo(self.dtype).eps)
        worst = max(
            float(np.max(np.abs(a - b) / np.maximum(np.abs(b) * eps, np.finfo(float).tiny)))
            for a, b in zip(got.params, base.params)
        )
        return CheckResult("tensor_lr", worst <= ULPS, worst, ULPS, f"tensor lr vs float lr: {_fmt(worst)} ulps")

    def bfloat16(self) -> CheckResult:
        name = "bfloat16"
        f32 = self.stream(torch.float32, zero_init=True, norm=50.0)
        b16 = self.stream(torch.bfloat16, zero_init=True, norm=50.0)
        for label, run in (("float32", f32), ("bfloat16", b16)):
            if isinstance(run, str):
                return CheckResult(name, False, math.nan, BF16_PARAM_TOL, f"{label}: {run}")
        assert not isinstance(f32, str) and not isinstance(b16, str)
        for i, (sa, sb) in enumerate(zip(b16.state, f32.state)):
            for key in sorted(set(sa) & set(sb)):
                r = _rel(sa[key], sb[key])
                if r > BF16_STATE_TOL:
                    return CheckResult(
                        name,
                        False,
                        r,
                        BF16_STATE_TOL,
                        f"state {key!r} of parameter {i} differs from the float32 run by {_fmt(r)} "
                        "(modified in place by the map?)",
                    )
        worst, where = 0.0, ""
        for i, (a, b) in enumerate(zip(b16.params, f32.params)):
            r = _rel(a, b)
            if r > worst:
                worst, where = r, f"parameter {i}"
        if worst > BF16_PARAM_TOL:
            return CheckResult(name, False, worst, BF16_PARAM_TOL, f"bf16 parameters leave the float32 run on {where}")
        return CheckResult(name, True, worst, BF16_PARAM_TOL, f"follows float32 to {_fmt(worst)} ({where})")


def _f64p(run: Run, i: int = 0) -> np.ndarray:
    return run.params[i].detach().double().numpy().copy()


def _buffer_form(state: dict[str, np.ndarray], g1: np.ndarray, mu: float) -> str:
    """``", EMA buffer"``/``", sum buffer"`` from the state after step 1, when a tensor ∝ g₁ is there."""
    for key, buf in state.items():
        if buf.shape != g1.shape or _cos(buf, g1) < 0.999:
            continue
        k = float(np.sum(buf * g1) / np.sum(g1 * g1))
        if abs(k - 1) < 0.02:
            return f", sum buffer ({key!r} = g after step 1)"
        if abs(k - (1 - mu)) < 0.02 * max(1 - mu, 1e-3):
            return f", EMA buffer ({key!r} = (1 - mu) g after step 1)"
    return ""


def _select(obs: Observed, idx: list[int]) -> Observed:
    return Observed(
        [obs.params[i] for i in idx],
        [obs.grads[i] for i in idx],
        [obs.state[i] for i in idx],
        [obs.groups[i] for i in idx],
    )


def _changes(a: Observed, b: Observed) -> list[str]:
    """What differs (bitwise) between two observations: parameters and state tensors."""
    out = []
    for i, (x, y) in enumerate(zip(a.params, b.params)):
        if not np.array_equal(x, y, equal_nan=True):
            out.append(f"parameter {i}")
    for i, (sa, sb) in enumerate(zip(a.state, b.state)):
        for key in sorted(set(sa) | set(sb)):
            if key not in sa or key not in sb or not np.array_equal(sa[key], sb[key], equal_nan=True):
                out.append(f"state {key!r} of parameter {i}")
    return out


def _rules(lr_rule: Any) -> dict[str, Callable[[int, int], float]]:
    if lr_rule is None:
        return LR_RULES
    if isinstance(lr_rule, str):
        if lr_rule not in LR_RULES:
            raise ValueError(
                f"unknown lr_rule {lr_rule!r}; choose one of {sorted(LR_RULES)} or pass a callable (A, B) -> factor"
            )
        return {lr_rule: LR_RULES[lr_rule]}
    if callable(lr_rule):
        return {getattr(lr_rule, "__name__", "declared"): lr_rule}
    raise ValueError(f"lr_rule must be a rule name or a callable (A, B) -> factor, got {lr_rule!r}")


def _compare(name: str, mine: Any, theirs: Any, tol: float, what: str) -> CheckResult:
    if mine is None or theirs is None:
        return CheckResult(name, True, None, tol, f"skipped: {what} not measured on both", skipped=True)
    if isinstance(mine, dict):
        keys = sorted(set(mine) & set(theirs), key=str)
        errs = {k: _rel(np.asarray(mine[k], float), np.asarray(theirs[k], float)) for k in keys}
        only = sorted(set(mine) ^ set(theirs), key=str)
        note = f" (only one side has {', '.join(map(str, only))})" if only else ""
        if not errs:
            return CheckResult(name, True, None, tol, f"skipped: no {what} in common{note}", skipped=True)
        k = max(errs, key=lambda key: errs[key])
        bad = sorted((key for key in keys if errs[key] > tol), key=lambda key: -errs[key])
        if not bad:
            return CheckResult(name, True, errs[k], tol, f"{what}: worst {k} differs by {_fmt(errs[k])}{note}")
        good = [str(key) for key in keys if errs[key] <= tol]
        return CheckResult(
            name,
            False,
            errs[k],
            tol,
            f"{what} differ on "
            + ", ".join(f"{key} ({_fmt(errs[key])})" for key in bad[:4])
            + (f"; agree on {', '.join(good)}" if good else "")
            + note,
        )
    err = _rel(np.asarray(mine, float), np.asarray(theirs, float))
    return CheckResult(name, err <= tol, err, tol, f"{what} differ by {_fmt(err)}")


def check_optimizer(
    make_optimizer: Callable[[list[torch.nn.Parameter]], Any] | str,
    *,
    reference: Callable[[list[torch.nn.Parameter]], Any] | str | None = None,
    lr_rule: str | Callable[[int, int], float] | None = None,
    tile: int | tuple[int, int] | None = None,
    preconditioned: bool = False,
    dtypes: Sequence[str] = ("float32", "bfloat16"),
    lr: float | None = None,
    momentum: float | None = None,
    compute_precision: str = "float32",
    seed: int | None = None,
    skip: Sequence[str] = (),
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Report:
    """Run the optimizer battery on ``make_optimizer`` and return a :class:`Report`.

    Parameters
    ----------
    make_optimizer : callable or str
        ``make_optimizer(params) -> torch.optim.Optimizer`` for a list of
        ``torch.nn.Parameter``; a ``"module:function"`` string is imported.
    reference : callable or str, optional
        Another factory: both run the same probes and the report compares them
        (``reference_*`` checks).
    lr_rule : str or callable, optional
        The declared learning-rate rule: a name of :data:`LR_RULES` or
        ``factor(A, B)`` for the flattened ``A × B`` matrix.  Default: identify it.
    tile : int or (int, int), optional
        The optimizer orthogonalises each tile separately (HiMuon).
    preconditioned : bool
        The map input is preconditioned (Muon²): judge the update's singular
        values, not its directions.
    dtypes : sequence of str
        ``"float32"`` (every check) and ``"bfloat16"`` (the ``bfloat16`` check).
    lr, momentum : float, optional
        Override what the param groups say (for optimizers that store them elsewhere).
    compute_precision : {"float32", "bfloat16"}
        The precision the optimizers compute in: the ``reference_*`` tolerances.
    seed : int, optional
        Seed of every probe; default drawn afresh and printed in the settings.
    skip : sequence of str
        Check names to leave out.
    timeout : float or None
        Seconds for the whole battery (default 600).

    Returns
    -------
    Report

    Raises
    ------
    TargetError
        The factory is not importable, not callable, raises on a plain 32×32
        matrix parameter, or returns something that is not an optimizer.
    BatteryTimeout
        The battery did not finish within ``timeout`` (the call is abandoned).
    ValueError
        Bad arguments.

    Examples
    --------
    >>> import torch, matfun.testing as mt
    >>> report = mt.check_optimizer(lambda ps: torch.optim.Muon(ps, lr=0.02), dtypes=("float32",), seed=0)
    >>> report.passed, report["step_scale"].detail.split(",")[0]
    (True, "lr rule 'original'")
    """
    factory, name = _factory(make_optimizer, "make_optimizer")
    ref = None if reference is None else _factory(reference, "reference")
    dtypes = (dtypes,) if isinstance(dtypes, str) else tuple(dtypes)
    if not dtypes or dtypes[0] != "float32" or not set(dtypes) <= {"float32", "bfloat16"}:
        raise ValueError(f"dtypes must start with 'float32' and may add 'bfloat16', got {dtypes!r}")
    if compute_precision not in REFERENCE_RTOL:
        raise ValueError(f"compute_precision must be one of {sorted(REFERENCE_RTOL)}, got {compute_precision!r}")
    skip = (skip,) if isinstance(skip, str) else tuple(skip)
    unknown = set(skip) - set(OPTIMIZER_CHECK_NAMES)
    if unknown:
        raise ValueError(f"unknown check names in skip: {sorted(unknown)}; valid: {list(OPTIMIZER_CHECK_NAMES)}")
    _rules(lr_rule)
    if tile is not None:
        from ..tiling import check_tile

        tile = check_tile(tile)
    for label, value in (("lr", lr), ("momentum", momentum)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
        ):
            raise ValueError(f"{label} must be a finite number >= 0, got {value!r}")
    if seed is None:
        seed = secrets.randbelow(2**31)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    timeout = check_timeout(timeout)
    settings: dict[str, Any] = {"seed": int(seed), "dtypes": ",".join(dtypes)}
    if lr_rule is not None:
        settings["lr_rule"] = lr_rule if isinstance(lr_rule, str) else getattr(lr_rule, "__name__", "declared")
    if tile is not None:
        settings["tile"] = f"{tile[0]}x{tile[1]}"
    if preconditioned:
        settings["preconditioned"] = True
    if ref is not None:
        settings["reference"] = ref[1]

    def battery(target: Callable[[list[torch.nn.Parameter]], Any], label: str) -> _Battery:
        return _Battery(
            Driver(target, label),
            seed=int(seed),
            dtype=torch.float32,
            lr=lr,
            momentum=momentum,
            lr_rule=lr_rule,
            tile=tile,
            preconditioned=preconditioned,
        )

    def body() -> Report:
        report = Report(target=name, settings=settings, title="optimizer check")
        mine = _run_checks(battery(factory, name), report, skip, "bfloat16" in dtypes)
        if ref is not None:
            theirs = _run_checks(battery(*ref), Report(), skip, False)
            _reference_rows(mine, theirs, report, skip, REFERENCE_RTOL[compute_precision])
        return report

    return _with_deadline(body, timeout)


def _run_checks(b: _Battery, report: Report, skip: Sequence[str], bf16: bool) -> _Battery:
    order: list[tuple[str, Callable[[], CheckResult]]] = [
        ("shapes", b.shapes),
        ("weight_decay", b.weight_decay),
        ("orthogonalised", b.orthogonalised),
        ("momentum", b.momentum),
        ("step_scale", b.step_scale),
        ("grad_none", b.grad_none),
        ("nonfinite_gradient", b.nonfinite),
        ("deterministic", b.deterministic),
        ("checkpoint_resume", b.checkpoint_resume),
        ("tensor_lr", b.tensor_lr),
    ]
    if bf16:
        order.append(("bfloat16", b.bfloat16))
    results: dict[str, CheckResult] = {}
    for name, check in order:
        if name in skip and name != "shapes":  # shapes decides which kinds the others probe
            continue
        try:
            results[name] = check()
        except (TargetError, BatteryTimeout):
            raise
        except Exception as exc:  # noqa: BLE001 - a weird optimizer object; the check fails, the battery goes on
            results[name] = CheckResult(name, False, math.nan, None, f"check errored: {type(exc).__name__}: {exc}")
    if "gradient_unchanged" not in skip:
        results["gradient_unchanged"] = b.gradient_unchanged()
    for name in OPTIMIZER_CHECK_NAMES:
        if name in results and name not in skip:
            report.checks.append(results[name])
    return b


def _reference_rows(mine: _Battery, theirs: _Battery, report: Report, skip: Sequence[str], rtol: float) -> None:
    a, b = mine.measured, theirs.measured
    stream = (a.get("stream"), b.get("stream"))
    rows = [
        _compare(
            "reference_params",
            stream[0] and dict(enumerate(stream[0].params)),
            stream[1] and dict(enumerate(stream[1].params)),
            rtol,
            "parameters after the stream",
        ),
        _compare("reference_scale", a.get("scale"), b.get("scale"), max(rtol, 1e-3), "step size per shape"),
        _compare("reference_direction", a.get("update"), b.get("update"), rtol, "one-step update per shape"),
        _compare(
            "reference_weight_decay",
            _decay(mine),
            _decay(theirs),
            max(rtol, 1e-6),
            "decay factor per shape (inf: coupled on one side)",
        ),
        _compare("reference_momentum", a.get("momentum"), b.get("momentum"), max(rtol, 1e-3), "momentum ratios"),
        _compare("reference_state", _state_by_key(stream[0]), _state_by_key(stream[1]), rtol, "state tensors"),
    ]
    report.checks.extend(r for r in rows if r.name not in skip)


def _decay(b: _Battery) -> dict[str, float] | None:
    """Decay factor per probed shape (NaN where the decay was coupled)."""
    return {k: math.nan if v is None else v for k, v in b.decay.items()} or None


def _state_by_key(obs: Observed | None) -> dict[str, np.ndarray] | None:
    if obs is None:
        return None
    return {f"{key} of parameter {i}": v for i, s in enumerate(obs.state) for key, v in s.items()}


def _factory(target: Any, what: str) -> tuple[Callable[[list[torch.nn.Parameter]], Any], str]:
    """The callable and its display name; a ``"module:function"`` string is imported here."""
    if isinstance(target, str):
        from ._isolation import _resolve_target

        split_target(target)
        try:
            return _resolve_target(target), target
        except TargetError:
            raise
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise TargetError(f"importing {target!r} failed: {type(exc).__name__}: {exc}") from None
    if not callable(target):
        raise TypeError(f"{what} must be callable or a 'module:function' string, got {type(target).__name__}")
    return target, getattr(target, "__qualname__", None) or repr(target)


def _with_deadline(body: Callable[[], Report], timeout: float | None) -> Report:
    """``body()`` in a daemon thread that the battery abandons at the deadline."""
    if timeout is None:
        return body()
    box: dict[str, Any] = {}
    threads = torch.get_num_threads()

    def work() -> None:
        torch.set_num_threads(threads)
        try:
            box["report"] = body()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=work, daemon=True, name="matfun.testing optimizer battery")
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise BatteryTimeout(
            f"the optimizer battery did not finish within {timeout:g} s (the call is abandoned in a daemon thread)"
        )
    if "error" in box:
        raise box["error"]
    return box["report"]


def assert_optimizer(make_optimizer: Any, **kwargs: Any) -> Report:
    """Run :func:`check_optimizer` and raise ``AssertionError`` with the table when a check fails."""
    report = check_optimizer(make_optimizer, **kwargs)
    if not report.passed:
        raise AssertionError("optimizer failed " + ", ".join(report.failed_names) + "\n" + report.table())
    return report
