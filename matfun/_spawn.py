"""Run a function on ``world_size`` CPU processes joined in a gloo process group.

Used by :func:`matfun.testing.check_sharded_optimizer`, the benchmarks and the
tests.  A rank that raises makes the whole run raise in the parent (with that
rank's traceback) instead of hanging: the others are terminated, and the process
group has a timeout too.  The rendezvous is a temporary file (``FileStore``), so
no port has to be found free.
"""

from __future__ import annotations

import math
import os
import pickle
import queue as queue_module
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch.multiprocessing as mp


class DistributedRunError(RuntimeError):
    """A rank raised, died or timed out; the message says which and why."""


def check_timeout(timeout: Any) -> None:
    """Raise ``ValueError`` unless ``timeout`` is ``None`` or a finite real number > 0."""
    ok = timeout is None or (
        isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and math.isfinite(timeout) and timeout > 0
    )
    if not ok:
        raise ValueError(f"timeout must be a finite number of seconds > 0, or None (no limit), got {timeout!r}")


def _child(fn: Callable, rank: int, world: int, store_path: str, timeout: float | None, args: tuple, out) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        limit = None if timeout is None else timedelta(seconds=timeout)  # None: torch's default
        dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world, timeout=limit)
        try:
            result = fn(rank, world, *args)
        finally:
            dist.destroy_process_group()
        # plain pickle: torch's shared-memory tensor handles die with this process
        out.put((rank, "ok", pickle.dumps(result)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        out.put((rank, "error", traceback.format_exc()))


def run_distributed(fn: Callable[..., Any], world_size: int, *args: Any, timeout: float | None = 120.0) -> list[Any]:
    """``[fn(rank, world_size, *args) for rank in range(world_size)]``, one process each.

    Parameters
    ----------
    fn : callable
        A module-level function (it is pickled by reference for ``spawn``), called
        inside an initialised gloo process group.
    world_size : int
    *args
        Picklable arguments.
    timeout : float or None
        Seconds for the whole run (and for each collective); finite and > 0.
        ``None``: no limit on the run (collectives keep torch's default timeout).

    Raises
    ------
    ValueError
        ``world_size`` is not an integer >= 1, or ``timeout`` is not ``None`` or
        a finite number > 0 (``nan``, ``inf``, ``0`` and negative values are refused).
    DistributedRunError
        A rank raised (its traceback is in the message), exited without a result,
        or the run exceeded ``timeout``.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
    check_timeout(timeout)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="matfun-dist-") as tmp:
        store = os.path.join(tmp, "store")
        procs = [
            ctx.Process(target=_child, args=(fn, r, world_size, store, timeout, args, out), daemon=True)
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        results: dict[int, Any] = {}
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        try:
            while len(results) < world_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(set(range(world_size)) - set(results))
                    raise DistributedRunError(f"ranks {missing} did not finish within {timeout:g} s")
                try:
                    rank, status, value = out.get(timeout=min(left, 1.0))
                except queue_module.Empty:
                    dead = [r for r, p in enumerate(procs) if r not in results and not p.is_alive()]
                    if dead:
                        try:  # a result may still be in flight
                            rank, status, value = out.get(timeout=2.0)
                        except queue_module.Empty:
                            codes = {r: procs[r].exitcode for r in dead}
                            raise DistributedRunError(
                                f"ranks {dead} exited without a result (exit codes {codes})"
                            ) from None
                    else:
                        continue
                if status == "error":
                    raise DistributedRunError(_describe({rank: value, **_more_errors(out)}, world_size))
                results[rank] = pickle.loads(value)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(timeout=5)
    return [results[r] for r in range(world_size)]


_SECONDARY = ("Connection closed by peer", "Connection reset", "ProcessGroupGloo", "gloo/transport", "Timed out")


def _more_errors(out, grace: float = 3.0) -> dict[int, str]:
    """Errors other ranks report within ``grace`` seconds (a failure on one rank
    usually makes its peers fail in their next collective)."""
    more, deadline = {}, time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            rank, status, value = out.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue_module.Empty:
            break
        if status == "error":
            more[rank] = value
    return more


def _describe(errors: dict[int, str], world: int) -> str:
    """The root cause first: a rank whose error is not a peer's broken connection."""
    primary = min(errors, key=lambda r: (any(m in errors[r] for m in _SECONDARY), r))
    msg = f"rank {primary} of {world} raised:\n{errors[primary]}"
    others = sorted(set(errors) - {primary})
    if others:
        msg += f"\n(ranks {others} failed too, in communication with it)"
    return msg
