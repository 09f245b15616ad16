"""Realistic gradient / momentum / second-moment streams from real (small) training runs.

Momentum matrices seen by Muon-type optimisers are not Gaussian: their spectra are steep
and their second moments structured. The generators here train a small torch model on
CPU and record, for chosen weight matrices at chosen steps, the triple

* ``G`` – the stochastic gradient of the step,
* ``M`` – momentum in the Muon convention, ``M_t = β₁ M_{t-1} + G_t`` (no dampening),
* ``V`` – second moment ``V_t = β₂ V_{t-1} + (1 − β₂) G_t ⊙ G_t`` (as in Muon²),

with ``M_{-1} = V_{-1} = 0`` and no bias correction. M and V are tracked in float64 for
the recorded matrices *independently of the optimiser that trains the model* (AdamW by
default, or SGD with momentum 0.9), so they describe what a Muon-type optimiser would see
along this training trajectory.

Step ``t`` (0-based) means: draw a fresh batch, evaluate the loss at the current
parameters, back-propagate to get ``G_t``, update ``M_t`` and ``V_t``, record if ``t`` is
in ``record_steps``, then take the optimiser step. ``losses[t]`` is that step's loss.

Reproducibility: all randomness comes from a ``torch.Generator`` seeded with ``seed``
and from ``torch.manual_seed(seed)`` applied inside ``torch.random.fork_rng`` (module
construction), so a stream is bit-for-bit reproducible for a seed (on one machine and
thread count) and the caller's global RNG state is left untouched. The number of torch
threads is never changed.

Defaults: ``beta1 = 0.95`` (Muon) and ``beta2 = 0.95`` (Muon²'s choice: the V window
matches the momentum horizon of about 20 steps; pass ``beta2=0.999`` for Adam's).

Examples
--------
>>> stream = teacher_student_stream(50, record_steps=[10, 49], d_in=32, d_out=16)
>>> [(s.step, s.name, s.M.shape) for s in stream]
[(10, 'weight', (16, 32)), (49, 'weight', (16, 32))]
"""

from __future__ import annotations

import itertools
import numbers
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from diagnostics.matrices import to_backend

__all__ = [
    "STREAM_KINDS",
    "GradientSample",
    "GradientStream",
    "gradient_stream",
    "mlp_stream",
    "teacher_student_stream",
    "transformer_stream",
]

OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class GradientSample:
    """One recorded (G, M, V) triple.

    Attributes
    ----------
    step : int
        0-based optimisation step at which G was computed.
    name : str
        Parameter name in the model (e.g. ``"fc1.weight"``).
    G, M, V : numpy.ndarray or torch.Tensor
        Gradient, momentum and second moment, all of the parameter's shape
        (``out_features × in_features``); float64 numpy unless another backend/dtype
        was asked for.
    """

    step: int
    name: str
    G: Any
    M: Any
    V: Any


@dataclass(frozen=True)
class GradientStream:
    """Result of a stream generator: the samples plus the run's provenance.

    Iterating, ``len`` and indexing go over ``samples`` (ordered by step, then by
    parameter order in the model).

    Attributes
    ----------
    kind : str
        Generator that produced it (``"teacher_student"``, ``"mlp"``, ``"transformer"``).
    samples : tuple of GradientSample
    losses : numpy.ndarray
        Training loss of every step, float64, length ``steps``.
    record_steps : tuple of int
        The recorded steps, sorted and unique.
    names : tuple of str
        The recorded parameter names.
    beta1, beta2 : float
        Momentum and second-moment coefficients used for M and V.
    config : dict
        All arguments of the run (sizes, optimiser, lr, seed, ...).
    """

    kind: str
    samples: tuple[GradientSample, ...]
    losses: np.ndarray
    record_steps: tuple[int, ...]
    names: tuple[str, ...]
    beta1: float
    beta2: float
    config: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[GradientSample]:
        return iter(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> GradientSample:
        return self.samples[index]

    def select(self, name: str | None = None, step: int | None = None) -> list[GradientSample]:
        """Samples with the given parameter name and/or step (None matches all)."""
        return [
            sample
            for sample in self.samples
            if (name is None or sample.name == name) and (step is None or sample.step == step)
        ]

    def get(self, name: str, step: int) -> GradientSample:
        """The unique sample of parameter ``name`` at ``step``; KeyError if not recorded."""
        found = self.select(name=name, step=step)
        if not found:
            raise KeyError(f"no sample for name={name!r}, step={step}; names {self.names}, steps {self.record_steps}")
        return found[0]


# ---------------------------------------------------------------------------
# Argument checking
# ---------------------------------------------------------------------------


def _check_int(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _is_real(value: Any) -> bool:
    """A real number that is not a bool (a test, not a narrowing: ``numbers.Real`` has no typed operators)."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def _check_fraction(value: Any, name: str, *, include_one: bool) -> float:
    if not _is_real(value):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    upper_ok = value <= 1.0 if include_one else value < 1.0
    if not (0.0 <= value and upper_ok):
        interval = "[0, 1]" if include_one else "[0, 1)"
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return float(value)


def _check_positive(value: Any, name: str, *, allow_zero: bool = False) -> float:
    if not _is_real(value):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return float(value)


def _check_record_steps(record_steps: Iterable[int] | None, steps: int) -> tuple[int, ...]:
    if record_steps is None:
        return (steps - 1,)
    steps_given: Iterable[Any] = [record_steps] if isinstance(record_steps, numbers.Integral) else record_steps
    checked = []
    for step in steps_given:
        step = _check_int(step, "every record step", minimum=0)
        if step >= steps:
            raise ValueError(f"record step {step} is beyond the run: steps are 0..{steps - 1} (steps={steps})")
        checked.append(step)
    return tuple(sorted(set(checked)))


def _resolve_record_names(
    model: nn.Module, record: Sequence[str] | None, default: Sequence[str]
) -> dict[str, nn.Parameter]:
    matrices = {name: p for name, p in model.named_parameters() if p.ndim == 2}
    if record is None:
        names = list(default)
    else:
        names = [record] if isinstance(record, str) else list(record)
    if not names:
        raise ValueError("record must name at least one weight matrix")
    unknown = [name for name in names if name not in matrices]
    if unknown:
        raise ValueError(f"cannot record {unknown}: the model's weight matrices are {sorted(matrices)}")
    order = list(matrices)
    return {name: matrices[name] for name in sorted(set(names), key=order.index)}


def _make_optimizer(name: str, parameters: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def _power_law_inputs(batch: int, dim: int, power: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian inputs with diagonal covariance, eigenvalues λ_i = i^(-power), i = 1..dim."""
    scale = torch.arange(1, dim + 1, dtype=torch.float32) ** (-power / 2)
    return torch.randn(batch, dim, generator=generator) * scale


# ---------------------------------------------------------------------------
# The training loop shared by all generators
# ---------------------------------------------------------------------------


@dataclass
class _RunSettings:
    steps: int
    record_steps: tuple[int, ...]
    beta1: float
    beta2: float
    optimizer: str
    lr: float
    progress: bool
    backend: str | None
    dtype: Any
    device: Any


def _export(tensor: torch.Tensor, settings: _RunSettings) -> Any:
    snapshot = tensor.detach().cpu().numpy().copy()  # own memory: M and V change in place
    return to_backend(snapshot, backend=settings.backend, dtype=settings.dtype, device=settings.device)


def _train_and_record(
    kind: str,
    model: nn.Module,
    compute_loss: Callable[[], torch.Tensor],
    recorded: Mapping[str, torch.Tensor],
    settings: _RunSettings,
    config: dict[str, Any],
) -> GradientStream:
    optimizer = _make_optimizer(settings.optimizer, model.parameters(), settings.lr)
    momentum = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in recorded.items()}
    second_moment = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in recorded.items()}
    record_set = set(settings.record_steps)
    losses = np.empty(settings.steps, dtype=np.float64)
    samples: list[GradientSample] = []
    for step in tqdm(range(settings.steps), disable=not settings.progress, desc=kind):
        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss()
        loss.backward()
        for name, parameter in recorded.items():
            assert parameter.grad is not None  # every recorded matrix is a parameter the loss depends on
            gradient = parameter.grad.detach().to(torch.float64, copy=True)
            momentum[name].mul_(settings.beta1).add_(gradient)
            second_moment[name].mul_(settings.beta2).addcmul_(gradient, gradient, value=1.0 - settings.beta2)
            if step in record_set:
                samples.append(
                    GradientSample(
                        step=step,
                        name=name,
                        G=_export(gradient, settings),
                        M=_export(momentum[name], settings),
                        V=_export(second_moment[name], settings),
                    )
                )
        losses[step] = loss.item()
        optimizer.step()
    return GradientStream(
        kind=kind,
        samples=tuple(samples),
        losses=losses,
        record_steps=settings.record_steps,
        names=tuple(recorded),
        beta1=settings.beta1,
        beta2=settings.beta2,
        config=config,
    )


def _settings(
    steps: Any,
    record_steps: Any,
    beta1: Any,
    beta2: Any,
    optimizer: Any,
    lr: Any,
    progress: bool,
    backend: Any,
    dtype: Any,
    device: Any,
) -> _RunSettings:
    steps = _check_int(steps, "steps", minimum=1)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    # Validate the output selection now rather than after the training run.
    to_backend(np.zeros(1), backend=backend, dtype=dtype, device=device)
    return _RunSettings(
        steps=steps,
        record_steps=_check_record_steps(record_steps, steps),
        beta1=_check_fraction(beta1, "beta1", include_one=True),
        beta2=_check_fraction(beta2, "beta2", include_one=False),
        optimizer=optimizer,
        lr=_check_positive(lr, "lr"),
        progress=bool(progress),
        backend=backend,
        dtype=dtype,
        device=device,
    )


# ---------------------------------------------------------------------------
# Generators
# ---------------------------------------------------------------------------


def teacher_student_stream(
    steps: int,
    *,
    record_steps: Iterable[int] | int | None = None,
    d_in: int = 256,
    d_out: int = 128,
    batch: int = 64,
    input_power: float = 1.0,
    noise: float = 0.1,
    beta1: float = 0.95,
    beta2: float = 0.95,
    optimizer: str = "adamw",
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = False,
    backend: str | None = None,
    dtype: Any = None,
    device: Any = None,
) -> GradientStream:
    """Linear regression student ``W`` (d_out × d_in) fit online to a linear teacher.

    Each step draws ``x ~ N(0, diag(λ))`` with ``λ_i = i^(-input_power)`` (i = 1..d_in,
    so inputs are axis-aligned with a power-law covariance), labels
    ``y = W* x + noise · ε`` with ``W*`` entries ``N(0, 1/d_in)`` and ε standard
    normal, and the loss ``mean((W x − y)²)`` (``F.mse_loss``). The student starts at
    ``N(0, 1/d_in)`` entries (float32) and is trained with ``optimizer``.

    Parameters
    ----------
    steps : int
        Number of optimisation steps (>= 1).
    record_steps : iterable of int, int or None
        0-based steps to record (each in ``[0, steps)``); None records the last step.
    d_in, d_out, batch : int
        Input size, output size, batch size.
    input_power : float
        Power-law exponent of the input covariance eigenvalues (>= 0; 0 is isotropic).
    noise : float
        Label noise standard deviation (>= 0).
    beta1, beta2 : float
        Coefficients of the tracked momentum (``[0, 1]``) and second moment (``[0, 1)``).
    optimizer : {"adamw", "sgd"}
        Trainer: AdamW (weight decay 0) or SGD with momentum 0.9.
    lr : float
        Learning rate of the trainer.
    seed : int
        Seed of all randomness.
    progress : bool
        Show a tqdm progress bar.
    backend, dtype, device
        Output selection for G, M, V (see ``diagnostics.matrices``); default float64 numpy.

    Returns
    -------
    GradientStream
        Samples named ``"weight"``.
    """
    settings = _settings(steps, record_steps, beta1, beta2, optimizer, lr, progress, backend, dtype, device)
    d_in = _check_int(d_in, "d_in", minimum=1)
    d_out = _check_int(d_out, "d_out", minimum=1)
    batch = _check_int(batch, "batch", minimum=1)
    input_power = _check_positive(input_power, "input_power", allow_zero=True)
    noise = _check_positive(noise, "noise", allow_zero=True)
    seed = _check_int(seed, "seed", minimum=0)

    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(d_out, d_in, generator=generator) / d_in**0.5
    with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from the global RNG
        student = nn.Linear(d_in, d_out, bias=False)
    with torch.no_grad():
        student.weight.copy_(torch.randn(d_out, d_in, generator=generator) / d_in**0.5)

    def compute_loss() -> torch.Tensor:
        inputs = _power_law_inputs(batch, d_in, input_power, generator)
        targets = inputs @ teacher.T + noise * torch.randn(batch, d_out, generator=generator)
        return F.mse_loss(student(inputs), targets)

    config = {
        "steps": settings.steps,
        "d_in": d_in,
        "d_out": d_out,
        "batch": batch,
        "input_power": input_power,
        "noise": noise,
        "optimizer": optimizer,
        "lr": lr,
        "seed": seed,
    }
    recorded = {"weight": student.weight}
    return _train_and_record("teacher_student", student, compute_loss, recorded, settings, config)


def _build_mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    activations = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
    if activation not in activations:
        raise ValueError(f"activation must be one of {tuple(activations)}, got {activation!r}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes), start=1):
        layers[f"fc{index}"] = nn.Linear(fan_in, fan_out)
        if index < len(sizes) - 1:
            layers[f"act{index}"] = activations[activation]()
    return nn.Sequential(layers)


def mlp_stream(
    steps: int,
    *,
    record_steps: Iterable[int] | int | None = None,
    sizes: Sequence[int] = (64, 256, 256, 10),
    batch: int = 128,
    input_power: float = 1.0,
    teacher_width: int = 64,
    activation: str = "relu",
    record: Sequence[str] | str | None = None,
    beta1: float = 0.95,
    beta2: float = 0.95,
    optimizer: str = "adamw",
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
    backend: str | None = None,
    dtype: Any = None,
    device: Any = None,
) -> GradientStream:
    """A small MLP classifier trained online on labels of a random teacher network.

    Inputs are ``N(0, diag(λ))`` with ``λ_i = i^(-input_power)`` in dimension
    ``sizes[0]``. The teacher is a random one-hidden-layer tanh network
    ``sizes[0] → teacher_width → sizes[-1]`` (Gaussian weights; first layer scaled so
    its pre-activations have unit variance, second layer variance 1/teacher_width);
    the label of x is the argmax of the teacher's logits. The student
    ``nn.Sequential(fc1, act1, fc2, act2, ..., fcL)`` with layer widths ``sizes``
    (PyTorch default initialisation under ``torch.manual_seed(seed)``) minimises the
    cross-entropy.

    Parameters
    ----------
    steps, record_steps, batch, input_power, beta1, beta2, optimizer, lr, seed, progress
        As in :func:`teacher_student_stream`.
    sizes : sequence of int
        Layer widths, input first, number of classes last (at least 2 entries; 3 or
        4 gives a 2- or 3-layer MLP).
    teacher_width : int
        Hidden width of the teacher.
    activation : {"relu", "gelu", "tanh"}
        Student nonlinearity.
    record : str or sequence of str, optional
        Weight matrices to record; default all, ``"fc1.weight"``, ``"fc2.weight"``, ...
    backend, dtype, device
        Output selection for G, M, V.

    Returns
    -------
    GradientStream
    """
    settings = _settings(steps, record_steps, beta1, beta2, optimizer, lr, progress, backend, dtype, device)
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) < 2:
        raise ValueError(f"sizes must be a sequence of at least two layer widths, got {sizes!r}")
    sizes = tuple(_check_int(s, "every layer size", minimum=1) for s in sizes)
    if sizes[-1] < 2:
        raise ValueError(f"the last size is the number of classes and must be >= 2, got {sizes[-1]}")
    batch = _check_int(batch, "batch", minimum=1)
    input_power = _check_positive(input_power, "input_power", allow_zero=True)
    teacher_width = _check_int(teacher_width, "teacher_width", minimum=1)
    seed = _check_int(seed, "seed", minimum=0)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = _build_mlp(sizes, activation)
    recorded = _resolve_record_names(student, record, default=[f"fc{i}.weight" for i in range(1, len(sizes))])
    generator = torch.Generator().manual_seed(seed)
    input_variance = float(np.sum(np.arange(1, sizes[0] + 1, dtype=np.float64) ** -input_power))
    teacher_in = torch.randn(sizes[0], teacher_width, generator=generator) / input_variance**0.5
    teacher_out = torch.randn(teacher_width, sizes[-1], generator=generator) / teacher_width**0.5

    def compute_loss() -> torch.Tensor:
        inputs = _power_law_inputs(batch, sizes[0], input_power, generator)
        labels = (torch.tanh(inputs @ teacher_in) @ teacher_out).argmax(dim=1)
        return F.cross_entropy(student(inputs), labels)

    config = {
        "steps": settings.steps,
        "sizes": sizes,
        "batch": batch,
        "input_power": input_power,
        "teacher_width": teacher_width,
        "activation": activation,
        "optimizer": optimizer,
        "lr": lr,
        "seed": seed,
    }
    return _train_and_record("mlp", student, compute_loss, recorded, settings, config)


class _TinyTransformer(nn.Module):
    """Token + learned position embedding, one encoder block, linear read-out."""

    def __init__(self, vocab: int, seq_len: int, d_model: int, heads: int, ff: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Parameter(torch.randn(seq_len, d_model) * 0.02)
        self.block = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=ff, dropout=0.0, batch_first=True, norm_first=True
        )
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(tokens) + self.position))


TRANSFORMER_MATRICES = (
    "block.self_attn.in_proj_weight",
    "block.self_attn.out_proj.weight",
    "block.linear1.weight",
    "block.linear2.weight",
)


def transformer_stream(
    steps: int,
    *,
    record_steps: Iterable[int] | int | None = None,
    d_model: int = 64,
    heads: int = 4,
    feedforward: int = 128,
    vocab: int = 16,
    seq_len: int = 12,
    batch: int = 32,
    record: Sequence[str] | str | None = None,
    beta1: float = 0.95,
    beta2: float = 0.95,
    optimizer: str = "adamw",
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = False,
    backend: str | None = None,
    dtype: Any = None,
    device: Any = None,
) -> GradientStream:
    """One pre-norm transformer encoder block learning to reverse random token sequences.

    Tokens are uniform on ``range(vocab)``; the target at position t is the input token
    at position ``seq_len − 1 − t``, so the block must route information through
    attention. Model: token embedding + learned positions → ``nn.TransformerEncoderLayer``
    (pre-norm, no dropout) → linear head; cross-entropy loss.

    Recorded by default: ``block.self_attn.in_proj_weight`` (Q, K, V projections stacked,
    shape 3·d_model × d_model), ``block.self_attn.out_proj.weight``,
    ``block.linear1.weight`` and ``block.linear2.weight``. Other 2-D parameters
    (``embed.weight``, ``head.weight``, ``position``) can be named in ``record``.

    Parameters are as in :func:`teacher_student_stream` and :func:`mlp_stream`;
    ``d_model`` must be divisible by ``heads``.

    Returns
    -------
    GradientStream
    """
    settings = _settings(steps, record_steps, beta1, beta2, optimizer, lr, progress, backend, dtype, device)
    d_model = _check_int(d_model, "d_model", minimum=1)
    heads = _check_int(heads, "heads", minimum=1)
    if d_model % heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
    feedforward = _check_int(feedforward, "feedforward", minimum=1)
    vocab = _check_int(vocab, "vocab", minimum=2)
    seq_len = _check_int(seq_len, "seq_len", minimum=1)
    batch = _check_int(batch, "batch", minimum=1)
    seed = _check_int(seed, "seed", minimum=0)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _TinyTransformer(vocab, seq_len, d_model, heads, feedforward)
    recorded = _resolve_record_names(model, record, default=TRANSFORMER_MATRICES)
    generator = torch.Generator().manual_seed(seed)

    def compute_loss() -> torch.Tensor:
        tokens = torch.randint(vocab, (batch, seq_len), generator=generator)
        logits = model(tokens)
        return F.cross_entropy(logits.reshape(-1, vocab), tokens.flip(1).reshape(-1))

    config = {
        "steps": settings.steps,
        "d_model": d_model,
        "heads": heads,
        "feedforward": feedforward,
        "vocab": vocab,
        "seq_len": seq_len,
        "batch": batch,
        "optimizer": optimizer,
        "lr": lr,
        "seed": seed,
    }
    return _train_and_record("transformer", model, compute_loss, recorded, settings, config)


STREAM_KINDS: dict[str, Callable[..., GradientStream]] = {
    "teacher_student": teacher_student_stream,
    "mlp": mlp_stream,
    "transformer": transformer_stream,
}


def gradient_stream(kind: str, steps: int, **options: Any) -> GradientStream:
    """Dispatch to ``{kind}_stream(steps, **options)``.

    Parameters
    ----------
    kind : {"teacher_student", "mlp", "transformer"}
    steps : int
    **options
        Keyword arguments of the chosen generator.

    Raises
    ------
    ValueError
        Unknown kind.
    """
    if kind not in STREAM_KINDS:
        raise ValueError(f"kind must be one of {tuple(STREAM_KINDS)}, got {kind!r}")
    return STREAM_KINDS[kind](steps, **options)
