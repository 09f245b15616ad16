"""The ``lm`` experiment's training loop and step-time benchmark (one cell each)."""

from __future__ import annotations

import math
import platform
import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from ..corpus import load_corpus, split, unigram_entropy
from ..errors import BadInput
from ..gpt import GPT
from ..plugins import USER_ERRORS, _raised
from ..store import cell_seed
from .lm_optimizers import Optimizer, _alignment, _OrthTimer, lr_factor, make_optimizers, split_model

if TYPE_CHECKING:
    from .lm import Config


# ----------------------------------------------------------------------------- run


def _corpus_for(config: Config, cell: dict):
    """The corpus, checked against the content hash the cell was keyed by (:class:`BadInput` if it changed)."""
    corpus = load_corpus(config.corpus)
    expected = cell.get("corpus_sha256")
    if expected is not None and corpus.sha256 != expected:
        raise BadInput(
            f"corpus {config.corpus or 'stdlib'!r} changed during the run (sha256 {corpus.sha256[:12]}, "
            f"the run started with {expected[:12]}); rerun"
        )
    return corpus


def _step(opt: Optimizer, opts: list, where: str) -> None:
    """``step()`` of every optimizer of one run; a plug-in's own error is :class:`BadInput` naming it."""
    try:
        for o in opts:
            o.step()
    except USER_ERRORS as exc:
        if opt.family != "plugin":
            raise
        raise BadInput(f"plug-in optimizer {opt.name!r} ({opt.target}) raised {_raised(exc)} {where}") from None


def _benchmark(config: Config, device: str, seed: int, cell: dict | None = None) -> pd.DataFrame:
    """Optimizer-step times of every optimizer on the same gradients, interleaved round by round.

    One model and one batch give the gradients; every optimizer gets its own copy of
    the model with those gradients and takes ``timing_rounds`` steps, one per round,
    in an order rotated each round (ABC, BCA, CAB, …) so that a change of machine
    load hits all optimizers alike.  Two untimed warm-up steps each.  HiMuon with a
    full→T schedule is timed in its tiled phase.  Rows: ``optimizer``, ``round``,
    ``bench_step_ms``, ``bench_orth_ms`` (NaN for plug-ins).
    """
    corpus = _corpus_for(config, cell or {})
    train, _ = split(corpus, config.context, config.val_fraction)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cell_seed(seed, {"lm": "benchmark"}) % 2**63)
        model = GPT(config.gpt())
        starts = torch.randint(0, train.size - config.context, (config.batch_size,))
    model.to(device)
    w = torch.from_numpy(train.astype(np.int64))[starts[:, None] + torch.arange(config.context + 1)].to(device)
    model.loss(w[:, :-1], w[:, 1:]).backward()
    cuda = torch.device(device).type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    runs = []
    for opt in config.parsed():
        copy = GPT(config.gpt()).to(device)
        copy.load_state_dict(model.state_dict())
        for q, p in zip(copy.parameters(), model.parameters()):
            assert p.grad is not None  # the loss above reaches every parameter of the model
            q.grad = p.grad.clone()
        rate = dict(config.lrs).get(opt.name, config.lr_grid[0] if config.lr_grid else 1e-3)
        opts = make_optimizers(config, opt, rate, copy, config.steps)
        if opt.full_first:
            for g in opts[0].param_groups:
                g["step_count"] = config.steps  # past the switch to tiles
        runs.append((opt, opts))
    timer = _OrthTimer(sync)
    for _, opts in runs:
        timer.attach(opts[0])
    rows = []
    for r in range(-2, config.timing_rounds):
        for i in range(len(runs)):
            opt, opts = runs[(i + max(r, 0)) % len(runs)]
            orth0 = timer.seconds
            sync()
            t0 = time.perf_counter()
            _step(opt, opts, "in the step-time benchmark")
            sync()
            if r >= 0:
                rows.append(
                    {
                        "optimizer": opt.name,
                        "round": r,
                        "bench_step_ms": 1e3 * (time.perf_counter() - t0),
                        "bench_orth_ms": math.nan if opt.family == "plugin" else 1e3 * (timer.seconds - orth0),
                    }
                )
    return pd.DataFrame(rows)


_TOKENS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_ENTROPY: dict[str, float] = {}


def _as_tokens(corpus, context: int, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The train and validation bytes as int64 CPU tensors, once per corpus content (read-only)."""
    key = (corpus.sha256, context, val_fraction)
    if key not in _TOKENS:
        train, val = split(corpus, context, val_fraction)
        _TOKENS.clear()  # one corpus at a time
        _TOKENS[key] = torch.from_numpy(train.astype(np.int64)), torch.from_numpy(val.astype(np.int64))
    return _TOKENS[key]


def _entropy(corpus) -> float:
    """:func:`unigram_entropy` of the corpus, once per content."""
    if corpus.sha256 not in _ENTROPY:
        _ENTROPY[corpus.sha256] = unigram_entropy(corpus.data)
    return _ENTROPY[corpus.sha256]


def _train(config: Config, cell: dict, device: str, seed: int) -> pd.DataFrame:
    opt = next(o for o in config.parsed() if o.name == cell["optimizer"])
    lr = float(cell["lr"])
    corpus = _corpus_for(config, cell)
    train, val = _as_tokens(corpus, config.context, config.val_fraction)
    run = {"lm": "run", "replica": int(cell["replica"])}
    init_seed, order_seed = cell_seed(seed, {**run, "use": "init"}), cell_seed(seed, {**run, "use": "order"})
    ctx, bs = config.context, config.batch_size

    train_t, val_t = train.to(device), val.to(device)
    offsets = torch.arange(ctx + 1, device=device)
    order = torch.Generator().manual_seed(order_seed % 2**63)
    starts = torch.randint(0, train.numel() - ctx, (config.steps, bs), generator=order).to(device)
    val_starts = torch.linspace(0, val.numel() - ctx - 1, config.val_windows).long().to(device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed % 2**63)
        model = GPT(config.gpt())
    model.to(device)
    hidden = split_model(model)[0]
    opts = make_optimizers(config, opt, lr, model, config.steps)
    base_lrs = [[g["lr"] for g in o.param_groups] for o in opts]
    cuda = torch.device(device).type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        total = 0.0
        for chunk in val_starts.split(max(bs, 1)):
            w = val_t[chunk[:, None] + offsets]
            total += float(model.loss(w[:, :-1], w[:, 1:])) * len(chunk)
        model.train()
        return total / len(val_starts)

    eval_steps = sorted({0, config.steps, *range(config.eval_every, config.steps, config.eval_every)})
    rows: list[dict] = []
    step_s: list[float] = []
    orth_s: list[float] = []
    batch_losses: list[float] = []
    opt_cum = orth_cum = 0.0
    diverged_step = -1
    timer = _OrthTimer(sync)
    timer.attach(opts[0])

    def diverging(x: float) -> bool:
        return not math.isfinite(x) or x > config.diverge_loss

    no_alignment = {"alignment": math.nan, "alignment_min": math.nan, "alignment_ns": math.nan}

    def record(k: int, val_loss: float, align: dict[str, float]) -> None:
        rows.append(
            {
                "step": k,
                "val_loss": val_loss,
                "train_loss": float(np.mean(batch_losses)) if batch_losses else math.nan,
                "tokens": k * bs * ctx,
                "opt_ms_cum": 1e3 * opt_cum,
                "orth_ms_cum": 1e3 * orth_cum,
                **align,
            }
        )
        batch_losses.clear()

    record(0, evaluate(), no_alignment)
    for k in range(1, config.steps + 1):
        factor = lr_factor(config, k)
        for o, lrs in zip(opts, base_lrs):
            for g, base in zip(o.param_groups, lrs):
                g["lr"] = base * factor
        w = train_t[starts[k - 1][:, None] + offsets]
        loss = model.loss(w[:, :-1], w[:, 1:])
        loss_value = float(loss.detach())
        if diverging(loss_value):
            diverged_step = k
            break
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        sampled = k in eval_steps
        before = [p.detach().clone() for p in hidden] if sampled else []
        orth_before = timer.seconds
        sync()
        t0 = time.perf_counter()
        _step(opt, opts, f"in step {k}")
        sync()
        step_s.append(time.perf_counter() - t0)
        orth_s.append(timer.seconds - orth_before)
        opt_cum += step_s[-1]
        orth_cum += orth_s[-1]
        batch_losses.append(loss_value)
        if opt.family == "plugin" and not all(bool(torch.isfinite(p).all()) for p in hidden):
            raise BadInput(
                f"plug-in optimizer {opt.name!r} ({opt.target}) wrote NaN/Inf into the weights "
                f"in step {k} from finite gradients"
            )
        if sampled:
            align = _alignment(before, hidden, opts[0])
            val_loss = evaluate()
            record(k, val_loss, align)
            if diverging(val_loss):
                diverged_step = k
                break

    diverged = diverged_step >= 0
    if diverged and rows[-1]["step"] != diverged_step:
        batch_losses.clear()
        record(diverged_step, math.nan, no_alignment)
    frame = pd.DataFrame(rows)
    step_ms, orth_ms = 1e3 * np.asarray(step_s), 1e3 * np.asarray(orth_s)

    def quartiles(x: np.ndarray) -> list[float]:
        return [float(v) for v in np.percentile(x, [25, 50, 75])] if x.size else [math.nan] * 3

    summary = {}
    for label, x in (("step_ms", step_ms), ("orth_ms", orth_ms), ("rest_ms", step_ms - orth_ms)):
        if label == "orth_ms" and opt.family in ("adamw", "plugin"):
            x = np.zeros_like(x) if opt.family == "adamw" else np.full_like(x, math.nan)
        q25, q50, q75 = quartiles(x) if not np.isnan(x).all() else [math.nan] * 3
        summary.update({f"{label}_q25": q25, f"{label}_median": q50, f"{label}_q75": q75})
    n_hidden = sum(p.numel() for p in hidden) if opt.family != "adamw" else 0
    frame = frame.assign(
        final_val_loss=math.nan if diverged else float(frame["val_loss"].iloc[-1]),
        diverged=diverged,
        diverged_step=diverged_step,
        **summary,
        family=opt.family,
        ns_steps=opt.ns_steps,
        tile=opt.tile,
        full_first=opt.full_first,
        lr_source="recorded" if opt.name in dict(config.lrs) else "sweep",
        unigram_entropy=_entropy(corpus),
        corpus_sha256=corpus.sha256,
        corpus_bytes=corpus.n_bytes,
        corpus_files=corpus.n_files,
        python_version=platform.python_version(),
        n_params_hidden=n_hidden,
        n_params_other=sum(p.numel() for p in model.parameters()) - n_hidden,
    )
    return frame
