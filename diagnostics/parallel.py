"""Compute a sweep's uncached cells in parallel, on this machine or on a Dask cluster.

Cells are independent units of work (``run_cell(config, cell, device, seed)`` is a
pure function of its arguments), so they can run anywhere.  :func:`compute_cells`
sends each uncached cell to a Dask ``distributed`` worker; the worker runs the cell
**and writes it to the cell cache itself** (atomic CSV, then its completion
marker, see :mod:`diagnostics.store`).  The cache stays the single source of truth:
a worker that dies loses only the cell it was computing, and a rerun resumes from
what was written.

``--jobs N`` starts a :class:`distributed.LocalCluster` with ``N`` single-threaded
worker processes on this machine; ``--scheduler ADDRESS`` connects to a running
cluster (``dask scheduler`` / ``dask worker``, or any deployment such as
dask-jobqueue on a batch system) whose workers share the results directory
(a shared file system).  Both use the same code path.

Timing experiments (``scaling``; the optimizer-step times of ``training``) measure
wall time: cells that run side by side compete for cores and memory bandwidth, so
run those with ``--jobs 1`` when the times matter.

Requires the ``dask`` extra (``pip install "matfun[dask]"``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["ParallelError", "compute_cells", "open_client"]


class ParallelError(RuntimeError):
    """The cluster could not be started or reached, or a cell failed on a worker."""


def open_client(jobs: int | None = None, scheduler: str | None = None):
    """A ``distributed.Client``: connected to ``scheduler``, or on a new local cluster of
    ``jobs`` single-threaded worker processes.  The caller closes it (and its cluster)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - the test extra installs dask
        raise ParallelError('--jobs/--scheduler need Dask: pip install "matfun[dask]"') from None
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
        raise ParallelError(f"--scheduler needs an address such as tcp://HOST:8786, got {scheduler!r}")
    try:
        if scheduler is not None:
            return Client(scheduler, timeout="10s")
        cluster = LocalCluster(
            n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
        )
        return Client(cluster)
    except (OSError, TimeoutError, ValueError) as exc:  # ValueError: a malformed address
        where = f"the Dask scheduler at {scheduler}" if scheduler else f"a local cluster of {jobs} workers"
        raise ParallelError(f"could not reach {where}: {exc}") from None


def _compute_and_store(
    module_name: str, config: Any, cell: Mapping[str, Any], key: Mapping[str, Any], digest: str,
    cells_dir: str, extra: Mapping[str, Any], device: str, seed: int,
) -> pd.DataFrame:
    """Runs on a worker: one cell, written to the cache before it is returned."""
    import torch

    from . import store

    torch.set_num_threads(1)  # one core per worker: N workers, N cores
    module = importlib.import_module(module_name)
    raw = module.run_cell(config, dict(cell), device, int(seed))
    if not isinstance(raw, pd.DataFrame):
        raise store.StoreError(f"{module.NAME}: run_cell must return a pandas DataFrame, got {type(raw).__name__}")
    return store._store_cell(Path(cells_dir), key, digest, store._annotate(raw, config, cell, extra))


def compute_cells(
    module: Any,
    config: Any,
    todo: Sequence[tuple[Mapping[str, Any], Mapping[str, Any], str]],
    cells_dir: Path,
    extra: Mapping[str, Any],
    device: str,
    seed: int,
    *,
    jobs: int | None = None,
    scheduler: str | None = None,
    progress: bool = False,
) -> list[pd.DataFrame]:
    """Run ``todo`` (``(cell, key, digest)`` triples) on Dask workers; frames in ``todo``'s order.

    Each cell is written to ``cells_dir`` by the worker that computed it.  The first
    cell that fails raises :class:`ParallelError` naming the cell; the cells that
    finished before it stay cached.
    """
    from tqdm.auto import tqdm

    if not todo:
        return []
    client = open_client(None if jobs is None else min(jobs, len(todo)), scheduler)  # no idle workers
    try:
        futures = [
            client.submit(
                _compute_and_store, module.__name__, config, cell, key, digest, str(cells_dir), extra, device, seed,
                key=f"{module.NAME}-{digest}", pure=False,
            )
            for cell, key, digest in todo
        ]
        index = {f.key: k for k, f in enumerate(futures)}
        frames: list[pd.DataFrame | None] = [None] * len(todo)
        from distributed import as_completed

        with tqdm(total=len(todo), desc=f"{module.NAME} ({len(client.nthreads())} workers)", unit="cell",
                  disable=not progress, leave=False) as bar:
            for future in as_completed(futures):
                k = index[future.key]
                try:
                    frames[k] = future.result()
                except Exception as exc:  # noqa: BLE001 - re-raised with the cell named
                    for f in futures:
                        f.cancel()
                    raise ParallelError(
                        f"{module.NAME}: cell {dict(todo[k][0])} failed on a worker: {type(exc).__name__}: {exc}"
                    ) from exc
                bar.update()
        return frames  # type: ignore[return-value]
    finally:
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None:
            cluster.close()
