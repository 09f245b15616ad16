"""Overhead of :class:`matfun.monitor.Monitor` on the ``lm`` experiment's model (ratio, never asserted).

The model is the ``lm`` experiment's quick GPT (64 wide, 2 blocks, 4 heads, context 64,
batch 16; :mod:`diagnostics.gpt`), trained as ``lm`` trains it: matfun's Muon
(``adjust_lr_fn="match_rms_adamw"``) on the blocks' matrices, AdamW on the rest, on random
bytes.  Two identical copies train side by side; the monitored one carries
``Monitor(muon, every=EVERY)`` (and, with ``--all``, a second monitor on AdamW).  A round is
``EVERY`` training steps of each side — exactly one recorded step — with the sides
alternating step by step (A B, B A, …), so that a change of load on the shared machine hits
both alike.
Prints the median time per step of each side and the ratio of medians (target ≤ 1.05 at the
default interval), plus the cost of one recorded step measured inside the monitored side.

Usage (repository root)::

    python -m benchmarks.bench_monitor [--every 100] [--rounds 7] [--threads 1] [--log PATH] [--probes]

``--log PATH`` saves the monitored run's log (``python -m diagnostics monitor-report PATH``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import matfun.optim
from diagnostics.gpt import GPT, GPTConfig
from matfun.monitor import Monitor


class Side:
    """One training run (model, optimizers, batches), advanced ``steps`` at a time."""

    def __init__(self, seed: int, batch: int, config: GPTConfig, monitor: dict | None) -> None:
        torch.manual_seed(seed)
        self.model = GPT(config)
        hidden, rest = matfun.optim.split_params(self.model)
        self.opts = [
            matfun.optim.Muon(hidden, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"),
            torch.optim.AdamW([p for _, p in rest], lr=3e-3, weight_decay=0.1),
        ]
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.batch, self.context = batch, config.context
        self.monitors = []
        if monitor is not None:
            targets = self.opts if monitor.pop("all", False) else self.opts[:1]
            self.monitors = [Monitor(o, model=self.model, **monitor) for o in targets]
        self.recorded_s: list[float] = []  # optimizer.step() time of recorded steps
        self.other_s: list[float] = []  # ... of the others

    def train(self, steps: int) -> None:
        for _ in range(steps):
            w = torch.randint(0, 256, (self.batch, self.context + 1), generator=self.gen)
            loss = self.model.loss(w[:, :-1], w[:, 1:])
            for o in self.opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            recorded = self.monitors and (self.monitors[0].step + 1) % self.monitors[0].every == 0
            t0 = time.perf_counter()
            for o in self.opts:
                o.step()
            (self.recorded_s if recorded else self.other_s).append(time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=int, default=100, help="the monitor's interval (default 100, its default)")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds per side (default 7)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--all", action="store_true", help="also monitor AdamW (embeddings, head, norms)")
    ap.add_argument("--probes", action="store_true", help="with the what-if probes (tiling, muon2)")
    ap.add_argument("--log", default=None, help="save the monitored run's log here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = GPTConfig(context=64, width=64, depth=2, heads=4, mlp_ratio=4)
    options = {"every": args.every, "all": args.all}
    if args.probes:
        options.update(probes=("tiling", "muon2"), tile=32)
    plain, watched = Side(0, args.batch, config, None), Side(0, args.batch, config, options)
    for side in (plain, watched):  # warm-up: one interval each
        side.train(args.every)
    times = {"plain": [], "monitored": []}
    for _r in range(args.rounds):
        total = {"plain": 0.0, "monitored": 0.0}
        for k in range(args.every):  # the sides alternate step by step: A B, B A, ...
            order = [("plain", plain), ("monitored", watched)]
            for name, side in order if k % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                side.train(1)
                total[name] += time.perf_counter() - t0
        for name in times:
            times[name].append(total[name] / args.every)
    a, b = statistics.median(times["plain"]), statistics.median(times["monitored"])
    ratios = [m / p for p, m in zip(times["plain"], times["monitored"])]
    rec = statistics.median(watched.recorded_s)
    opt_plain, opt_watched = statistics.median(plain.other_s), statistics.median(watched.other_s)
    amortised = (rec - opt_watched) / args.every + (opt_watched - opt_plain)
    print(
        f"GPT {config.depth}x{config.width}, ctx {config.context}, batch {args.batch}, {args.threads} thread(s), "
        f"every={args.every}, {args.rounds} interleaved rounds of {args.every} steps"
        + (", probes on" if args.probes else "")
        + (", AdamW monitored too" if args.all else "")
    )
    print(f"  plain      {1e3 * a:8.2f} ms/step (median over rounds)")
    print(f"  monitored  {1e3 * b:8.2f} ms/step")
    print(
        f"  ratio of medians {b / a:.3f}; median of the per-round ratios {statistics.median(ratios):.3f} "
        f"(range {min(ratios):.3f}-{max(ratios):.3f})"
    )
    print(
        f"  optimizer.step() calls: plain {1e3 * opt_plain:.2f} ms, monitored unrecorded {1e3 * opt_watched:.2f} ms "
        f"(the every-step non-finite checks), recorded {1e3 * rec:.1f} ms"
    )
    print(
        f"  direct estimate of the overhead: {1e3 * amortised:.3f} ms/step = {100 * amortised / a:.2f} % of the "
        "plain step (recorded-step extra / every + per-step checks)"
    )
    for m in watched.monitors:
        m.detach()
    if args.log:
        import pandas as pd

        frame = pd.concat([m.frame() for m in watched.monitors], ignore_index=True)
        frame.sort_values("step", kind="stable").to_csv(args.log, index=False)
        print(f"  log: {args.log} ({len(frame)} records)")


if __name__ == "__main__":
    main()
