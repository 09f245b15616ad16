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

Plug-in maps (:mod:`diagnostics.plugins`) run on the workers too: each cell of a
plug-in carries what its worker needs to activate it.  A plug-in loaded from
``MODULE:ATTR`` is re-loaded there by that spec, with the submitting process's
working directory put on ``sys.path`` (a remote worker needs the same files: a
shared file system, as for the results); one given as a Python object (a
function, a closure, a :class:`matfun.Map`) is sent pickled (``cloudpickle``).  A
plug-in that cannot be pickled is refused before any cell is computed, and a
plug-in that breaks its contract on a worker raises the same
:class:`~diagnostics.plugins.PluginError` as in a sequential run.  Workers of a
long-running cluster keep the version of a module they imported first: restart
them after editing a plug-in.

Timing experiments (``scaling``; the optimizer-step times of ``training``) measure
wall time: cells that run side by side compete for cores and memory bandwidth, so
run those with ``--jobs 1`` when the times matter.

Requires the ``dask`` extra (``pip install "matfun[dask]"``).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from . import plugins as _plugins

__all__ = ["ParallelError", "compute_cells", "open_client", "ship_plugins"]


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
        cluster = LocalCluster(  # no dashboard; its HTTP server on a free port (8787 may be taken: a warning)
            n_workers=jobs,
            threads_per_worker=1,
            processes=True,
            silence_logs=logging.CRITICAL,
            dashboard_address=None,
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
        )
        return Client(cluster)
    except (OSError, TimeoutError, ValueError) as exc:  # ValueError: a malformed address
        where = f"the Dask scheduler at {scheduler}" if scheduler else f"a local cluster of {jobs} workers"
        raise ParallelError(f"could not reach {where}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class _ShippedPlugin:
    """A plug-in as a worker receives it: its ``spec`` to re-load, or the pickled :class:`Plugin`."""

    name: str
    directory: str
    spec: str | None = None
    pickled: bytes | None = None


def ship_plugins(
    plugins: Sequence[_plugins.Plugin], directory: str | os.PathLike | None = None
) -> dict[str, _ShippedPlugin]:
    """What Dask workers need to run ``plugins``, by name.

    A plug-in loaded from ``MODULE:ATTR`` goes by that spec (re-loaded on the
    worker with ``directory``, default the current one, on ``sys.path``); any other
    is pickled with ``cloudpickle``.

    Raises
    ------
    PluginError
        A plug-in that cannot be pickled (one line naming it; nothing has run).
    """
    directory = os.path.abspath(os.fspath(directory) if directory is not None else os.getcwd())
    shipped = {}
    for p in plugins:
        if p.from_spec:
            shipped[p.name] = _ShippedPlugin(p.name, directory, spec=p.spec)
            continue
        import cloudpickle

        try:
            data = cloudpickle.dumps(p)
        except Exception as exc:  # noqa: BLE001 - pickling fails with many exception types
            raise _plugins.PluginError(
                f"plug-in {p.name!r} ({p.spec}) cannot be sent to Dask workers: it cannot be pickled "
                f"({type(exc).__name__}: {' '.join(str(exc).split())}); run without --jobs/--scheduler, "
                f"or make it importable and pass it as MODULE:ATTR"
            ) from None
        shipped[p.name] = _ShippedPlugin(p.name, directory, pickled=data)
    return shipped


#: On a worker: the plug-ins it has loaded (one object per plug-in, as in a sequential run) and the
#: digests of the cells it is computing.
_LOADED: dict[_ShippedPlugin, _plugins.Plugin] = {}
_RUNNING: set[str] = set()


def _worker_plugin(shipped: _ShippedPlugin) -> _plugins.Plugin:
    """Runs on a worker: the plug-in ``shipped`` describes, loaded once per worker process."""
    plugin = _LOADED.get(shipped)
    if plugin is not None:
        return plugin
    where = f"on a Dask worker (directory {shipped.directory})"
    try:
        if shipped.spec is not None:
            plugin = _plugins.load(shipped.spec, shipped.name, shipped.directory)
        else:
            import cloudpickle

            if shipped.directory not in sys.path:  # a function pickled by reference imports its module
                sys.path.insert(0, shipped.directory)
            plugin = cloudpickle.loads(shipped.pickled)
    except _plugins.PluginError as exc:
        raise _plugins.PluginError(f"{exc} ({where})", plugin=shipped.name) from None
    except Exception as exc:  # noqa: BLE001 - unpickling fails with many exception types
        raise _plugins.PluginError(
            f"plug-in {shipped.name!r} could not be loaded {where}: {type(exc).__name__}: {' '.join(str(exc).split())}",
            plugin=shipped.name,
        ) from None
    _LOADED[shipped] = plugin
    return plugin


def _running_cells() -> set[str]:
    """Runs on a worker: the digests of the cells it is computing."""
    return set(_RUNNING)


def _compute_and_store(
    module_name: str,
    config: Any,
    cell: Mapping[str, Any],
    key: Mapping[str, Any],
    digest: str,
    cells_dir: str,
    extra: Mapping[str, Any],
    device: str,
    seed: int,
    plugin: _ShippedPlugin | None = None,
    cache: bool = True,
) -> tuple[pd.DataFrame, dict[str, set[str]]]:
    """Runs on a worker: one cell (with its plug-in active), written to the cache before it is returned
    (``cache=False``: not written, for a plug-in that cannot be identified).

    Returns the cell's frame and the plug-in's conversion notes (``{name: notes}``).
    """
    import torch

    from . import store

    _RUNNING.add(digest)
    try:
        torch.set_num_threads(1)  # one core per worker: N workers, N cores
        module = importlib.import_module(module_name)
        active = [_worker_plugin(plugin)] if plugin is not None else []
        with _plugins.active(active):
            try:
                raw = module.run_cell(config, dict(cell), device, int(seed))
            except (KeyboardInterrupt, SystemExit) as exc:
                # No one pressed Ctrl-C here: user code raised it.  Left alone it kills the worker process
                # (Dask retries the cell on every worker, each death a long traceback); as an ordinary
                # exception it fails the cell, and the run, in one line.
                what = f"raised {type(exc).__name__} on a Dask worker"
                if active:
                    raise active[0].error(what) from None
                raise RuntimeError(what) from None
        if not isinstance(raw, pd.DataFrame):
            raise store.StoreError(f"{module.NAME}: run_cell must return a pandas DataFrame, got {type(raw).__name__}")
        annotated = store._annotate(raw, config, cell, extra)
        frame = store._store_cell(Path(cells_dir), key, digest, annotated) if cache else store._as_stored(annotated)
        return frame, {p.name: set(p.notes) for p in active}
    finally:
        _RUNNING.discard(digest)


def _wait_for_running(client: Any, digests: Sequence[str]) -> None:
    """Wait until no worker is computing any of ``digests`` (a cancelled task still runs to its end and
    writes its cell; the caller may then remove cells without a worker writing one behind it)."""
    wanted = set(digests)
    while True:
        try:
            running = client.run(_running_cells, on_error="ignore")
        except Exception:  # noqa: BLE001 - a cluster that is gone computes nothing
            return
        if not any(wanted & set(cells) for cells in running.values()):
            return
        time.sleep(0.05)


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
    uncached: frozenset[str] | set[str] = frozenset(),
) -> list[pd.DataFrame]:
    """Run ``todo`` (``(cell, key, digest)`` triples) on Dask workers; frames in ``todo``'s order.

    Each cell is written to ``cells_dir`` by the worker that computed it, with the
    active plug-ins (:func:`diagnostics.plugins.active`) active there too
    (:func:`ship_plugins`).  The first cell that fails stops the run once the
    cells being computed have finished (those, and the ones finished before, stay
    cached; those in ``uncached`` are never written): a plug-in that breaks its contract raises its
    :class:`~diagnostics.plugins.PluginError`, any other failure
    :class:`ParallelError` naming the cell.
    """
    from tqdm.auto import tqdm

    if not todo:
        return []
    local = {p.name: p for p in _plugins.current()}
    used = {cell.get("plugin") for cell, _, _ in todo}
    shipped = ship_plugins([p for name, p in local.items() if name in used])  # refuses before anything runs
    client = open_client(None if jobs is None else min(jobs, len(todo)), scheduler)  # no idle workers
    try:
        futures = [
            client.submit(
                _compute_and_store,
                module.__name__,
                config,
                cell,
                key,
                digest,
                str(cells_dir),
                extra,
                device,
                seed,
                shipped.get(cell.get("plugin") or ""),  # no plug-in is named "" (name_problem)
                digest not in uncached,
                key=f"{module.NAME}-{digest}",
                pure=False,
            )
            for cell, key, digest in todo
        ]
        index = {f.key: k for k, f in enumerate(futures)}
        frames: list[pd.DataFrame | None] = [None] * len(todo)
        from distributed import as_completed

        with tqdm(
            total=len(todo),
            desc=f"{module.NAME} ({len(client.nthreads())} workers)",
            unit="cell",
            disable=not progress,
            leave=False,
        ) as bar:
            for future in as_completed(futures):
                k = index[future.key]
                try:
                    frames[k], notes = future.result()
                except Exception as exc:
                    client.cancel(futures)
                    _wait_for_running(client, [digest for _, _, digest in todo])
                    if isinstance(exc, _plugins.PluginError):
                        raise
                    raise ParallelError(
                        f"{module.NAME}: cell {dict(todo[k][0])} failed on a worker: {type(exc).__name__}: {exc}"
                    ) from exc
                for name, found in notes.items():
                    local[name].notes.update(found)
                bar.update()
        return frames
    finally:
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None:
            cluster.close()
