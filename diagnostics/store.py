"""Results cache and sweep runner for diagnostics experiments.

Layout (``RESULTS`` is the results root, e.g. ``results/``)::

    RESULTS/NAME/cells/<hash>.csv    one finished cell: tidy rows (the columns that vary)
    RESULTS/NAME/cells/<hash>.json   its completion marker (see below)
    RESULTS/NAME/results.csv         all cells of the last run, concatenated (the columns that vary)
    RESULTS/NAME/results.json        its constant columns, column order and checksum
    FIGURES/NAME/<stem>.pdf|.png     the experiment's figures

Constant columns
    A column that holds one value on every row (the config, the seed, the versions; in
    a cell also the cell's entries and the experiment's per-cell summaries) is written
    once, in the JSON beside the CSV (``"constants": {column: value}``, with
    ``"columns"``, the full column order), not on every row of the CSV.  Read the files
    back with :func:`load_results` (or the cache), which restores those columns: the
    frame is the one a single CSV holding every column would give, values and dtypes
    alike (a column whose rebuilt form would differ, e.g. ``0.0`` beside ``-0.0``, stays
    in the CSV; so does every column of a one-row frame, and at least one column).
    ``results.csv`` alone is plain CSV without those columns.  Files of
    :data:`FILE_FORMAT` 1 (every column in the CSV, no ``results.json``) still read.

Cache key
    ``<hash>`` is the first 20 hex digits of the SHA-256 of the canonical JSON of
    ``{"store_format", "experiment", "config", "cell", "seed", "device"}`` (keys
    sorted, tuples as lists).  Library versions are *recorded* in every row but are
    not part of the key: upgrading numpy does not invalidate the cache (use
    ``force=True``).

Completion marker
    A cell's CSV is written first (temporary file in the same directory, flushed,
    ``fsync``-ed, then ``os.replace``-d into place), and only then its JSON sidecar
    ``{"format", "key", "rows", "columns", "constants", "sha256"}`` (same atomic
    procedure).  A cell counts as cached only if the sidecar exists, parses, its ``key``
    equals the requested key, and the CSV's SHA-256, row count and columns (with the
    constants) match it.  Anything
    else — CSV without sidecar (crash between the two writes), truncated or edited
    CSV, stale sidecar — raises a :class:`CorruptCacheWarning` and the cell is
    recomputed; a bad cache file is never trusted.

Rows
    Every row of a cell carries the experiment's own columns followed by one column
    per config field and per cell entry (a cell entry wins over a config field of the
    same name; a column the experiment already returned is left alone), and
    ``experiment``, ``seed``, ``device``, ``numpy_version``, ``torch_version``,
    ``matfun_version`` (the installed package version, not a git hash).  Non-scalar
    values (tuples, lists, dicts) are stored as JSON strings.

Resuming
    Cells are computed in order and each is written as soon as it finishes, so an
    interrupted sweep (exception, Ctrl-C, crash) resumes at the first unfinished
    cell.  ``force=True`` recomputes every cell; ``replot=True`` computes nothing and
    fails with :class:`CacheMissingError` if any cell is not cached.  A replot
    writes nothing into the results directory when ``results.csv`` and ``results.json``
    already hold what it would write, so a read-only (shared) results directory can be
    replotted.
    Nothing is cached from a failed cell: its files are written only after
    ``run_cell`` returned a valid frame.  The cells of a plug-in that cannot be
    identified (:func:`diagnostics.plugins.cacheable`) are never read from or written
    to the cache: they are computed every run.

Files
    Cache files, ``results.csv`` and ``results.json`` get mode ``0o666 & ~umask``, like
    any file the user creates (a group-readable umask gives a results directory
    colleagues can read).

Seeds
    ``run_cell`` receives the run's seed unchanged; experiments that draw random
    numbers derive per-cell streams from it, e.g. with :func:`cell_seed`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import io
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "FILE_FORMAT",
    "STORE_FORMAT",
    "CacheMissingError",
    "CorruptCacheWarning",
    "RunResult",
    "StoreError",
    "atomic_write_bytes",
    "cell_hash",
    "cell_key",
    "cell_seed",
    "config_for",
    "load_results",
    "run_experiment",
    "version_columns",
    "write_results",
]

#: Bump when the key changes or cached values must be recomputed: old caches are then ignored.
STORE_FORMAT = 1
#: Layout of the cell markers and of ``results.json`` (1: every column in the CSV; 2: constant
#: columns in the JSON).  Not part of the key: a cell cached in an older layout still reads.
FILE_FORMAT = 2
_READABLE_FORMATS = (1, 2)
_RESULTS_CSV, _RESULTS_JSON = "results.csv", "results.json"
_HASH_DIGITS = 20


class StoreError(RuntimeError):
    """A results-store operation that cannot proceed (message says why)."""


class CacheMissingError(StoreError):
    """``replot`` was asked for but some cells have no valid cache file."""


class CorruptCacheWarning(UserWarning):
    """A cache file failed its completion check and is being recomputed."""


@dataclasses.dataclass
class RunResult:
    """Outcome of :func:`run_experiment`."""

    name: str
    frame: pd.DataFrame
    computed: int
    cached: int
    corrupt: int
    results_path: Path
    figures: list[Path]
    figures_dir: Path
    seconds: float

    def summary(self) -> str:
        """One line: cells computed/cached, where results and figures went."""
        n = self.computed + self.cached
        bad = f", {self.corrupt} corrupt cache file(s) recomputed" if self.corrupt else ""
        figs = f"{len(self.figures)} figure file(s) in {self.figures_dir}" if self.figures else "no figures"
        tables = sorted(Path(self.figures_dir).glob("*.md")) if self.figures and self.figures_dir else []
        tables_note = f"; table(s) {', '.join(str(t) for t in tables)}" if tables else ""
        return (
            f"{self.name}: {n} cell(s), {self.computed} computed, {self.cached} cached{bad}; "
            f"{len(self.frame)} rows -> {self.results_path}; {figs}{tables_note} ({self.seconds:.1f} s)"
        )


# ----------------------------------------------------------------------------- keys


def _jsonable(value: Any) -> Any:
    """Canonical JSON-compatible form (tuples → lists, numpy scalars → Python)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"cannot use {value!r} (type {type(value).__name__}) in a cache key: config fields and "
        "cell values must be numbers, strings, booleans, None, or lists/tuples/dicts of those"
    )


def _canonical(value: Any) -> str:
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"), allow_nan=True)


def cell_key(name: str, config: Any, cell: Mapping[str, Any], seed: int, device: str) -> dict[str, Any]:
    """The JSON-able dictionary a cell's cache file is keyed by."""
    return _jsonable(
        {
            "store_format": STORE_FORMAT,
            "experiment": name,
            "config": dataclasses.asdict(config),
            "cell": dict(cell),
            "seed": int(seed),
            "device": str(device),
        }
    )


def cell_hash(key: Mapping[str, Any]) -> str:
    """Stable hash of a :func:`cell_key` (identical across runs, machines, processes)."""
    return hashlib.sha256(_canonical(key).encode()).hexdigest()[:_HASH_DIGITS]


def cell_seed(seed: int, cell: Mapping[str, Any]) -> int:
    """A per-cell 63-bit seed derived from the run's seed and the cell (stable)."""
    digest = hashlib.sha256(_canonical({"seed": int(seed), "cell": dict(cell)}).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ------------------------------------------------------------------------- configs


def config_for(module: ModuleType, quick: bool = False) -> Any:
    """The experiment's quick or full config.

    Quick: ``Config.quick()`` if defined, else ``module.QUICK``.  Full:
    ``Config.full()`` if defined, else ``module.FULL``, else ``Config()``.
    """
    Config = module.Config
    if quick:
        if hasattr(Config, "quick"):
            return Config.quick()
        if hasattr(module, "QUICK"):
            return module.QUICK
        raise StoreError(f"experiment {module.NAME!r} defines neither Config.quick() nor QUICK")
    if hasattr(Config, "full"):
        return Config.full()
    if hasattr(module, "FULL"):
        return module.FULL
    return Config()


# ------------------------------------------------------------------------ versions


def _package_version(dist: str, module: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        mod = sys.modules.get(module)
        if mod is None:
            try:
                mod = __import__(module)
            except ImportError:
                return "unknown"
        return str(getattr(mod, "__version__", "unknown"))


def version_columns() -> dict[str, str]:
    """``numpy_version``, ``torch_version``, ``matfun_version`` of this process."""
    import torch

    return {
        "numpy_version": np.__version__,
        "torch_version": str(torch.__version__),
        "matfun_version": _package_version("matfun", "matfun"),
    }


# -------------------------------------------------------------------- atomic files


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting (not thread-safe, but brief)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same dir, fsync, replace).

    The file gets the mode a plain ``open(path, "w")`` would give it,
    ``0o666 & ~umask`` (``tempfile.mkstemp`` alone would leave it 0600, unreadable
    to the colleagues sharing a results directory).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except OSError:
        return False


def _csv_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    frame.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue().encode("utf-8")


# pandas < 3 parses floats with a fast, not exactly round-tripping parser by default;
# pandas >= 3 round-trips by default and deprecates the option.
_READ_CSV_KW = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}


def _read_csv(data: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(data), **_READ_CSV_KW)


# ---------------------------------------------------------------- constant columns


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def _broadcast(value: Any, index: pd.Index) -> pd.Series:
    """``value`` on every row of ``index``, with the dtype pandas gives a CSV column of it."""
    return pd.Series(value, index=index)


def _constant_value(column: pd.Series) -> tuple[bool, Any]:
    """``(True, value)`` when ``column`` holds ``value`` on every row, else ``(False, None)``.

    ``value`` is a JSON scalar (bool, int, float, str) and :func:`_broadcast` of it
    gives ``column`` back exactly: same dtype and, for floats, the same bits (so
    ``-0.0`` beside ``0.0`` is not constant).
    """
    value = column.iloc[0]
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, (bool, int, float, str)):
        return False, None
    rebuilt = _broadcast(value, column.index)
    if rebuilt.dtype != column.dtype:
        return False, None
    if column.dtype == np.float64:
        same = np.array_equal(column.to_numpy().view(np.uint64), rebuilt.to_numpy().view(np.uint64))
    else:
        same = column.equals(rebuilt)
    return (True, value) if same else (False, None)


def _split_constants(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``frame`` without its constant columns, and ``{column: value}`` of those.

    A frame of fewer than two rows keeps every column (nothing repeats), and one
    column always stays (the CSV must still count the rows).
    """
    if len(frame) < 2:
        return frame, {}
    constants: dict[str, Any] = {}
    for name in frame.columns:
        found, value = _constant_value(frame[name]) if isinstance(name, str) else (False, None)
        if found:
            constants[name] = value
    if len(constants) == len(frame.columns):
        del constants[frame.columns[0]]
    return frame.drop(columns=list(constants)), constants


def _encode(frame: pd.DataFrame) -> tuple[bytes, dict[str, Any]]:
    """``frame`` as CSV bytes of its varying columns and the layout that restores the rest.

    ``frame`` must be as a CSV reads back (the store's frames are); the layout is
    ``{"format", "rows", "columns", "constants", "sha256"}``.
    """
    varying, constants = _split_constants(frame)
    data = _csv_bytes(varying)
    layout = {
        "format": FILE_FORMAT,
        "rows": len(frame),
        "columns": [str(c) for c in frame.columns],
        "constants": constants,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return data, layout


def _decode(data: bytes, layout: Mapping[str, Any], name: str) -> pd.DataFrame:
    """The frame :func:`_encode` wrote as ``data`` and ``layout``.

    ``ValueError`` saying what does not match, about the CSV file called ``name``.
    """
    if hashlib.sha256(data).hexdigest() != layout.get("sha256"):
        raise ValueError(f"{name} does not match its checksum (truncated or modified)")
    try:
        frame = _read_csv(data)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a bad file
        raise ValueError(f"{name} cannot be parsed: {exc}") from None
    columns, constants = layout.get("columns"), layout.get("constants", {})
    if (
        not isinstance(columns, list)
        or not all(isinstance(c, str) for c in columns)
        or not isinstance(constants, dict)
        or not all(isinstance(v, (bool, int, float, str)) for v in constants.values())
        or len(set(columns)) != len(columns)
        or set(frame.columns) & set(constants)
        or set(frame.columns) | set(constants) != set(columns)
        or len(frame) != layout.get("rows")
    ):
        raise ValueError(f"{name} has {len(frame)} rows / columns that differ from its marker")
    if constants:
        frame = pd.concat([frame, pd.DataFrame({k: _broadcast(v, frame.index) for k, v in constants.items()})], axis=1)
    return frame if list(frame.columns) == columns else frame[columns]


def _read_layout(path: Path) -> dict[str, Any]:
    """The JSON beside a CSV (a cell's marker, ``results.json``); ``ValueError`` saying what is wrong."""
    try:
        layout = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"unreadable {path.name}: {exc}") from None
    if not isinstance(layout, dict) or layout.get("format") not in _READABLE_FORMATS:
        raise ValueError(f"{path.name} has an unknown format")
    return layout


# ----------------------------------------------------------------------- the cells


def _column_value(value: Any) -> Any:
    """A config/cell value as a CSV cell (non-scalars as JSON)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return _canonical(value)


def _annotate(frame: pd.DataFrame, config: Any, cell: Mapping[str, Any], extra: Mapping[str, Any]) -> pd.DataFrame:
    frame = frame.reset_index(drop=True).copy()
    values: dict[str, Any] = {}
    for k, v in dataclasses.asdict(config).items():
        values[k] = _column_value(v)
    for k, v in cell.items():
        values[str(k)] = _column_value(v)
    values.update(extra)
    for k, v in values.items():
        if k not in frame.columns:
            frame[k] = v
    return frame


def _cell_paths(cells_dir: Path, digest: str) -> tuple[Path, Path]:
    return cells_dir / f"{digest}.csv", cells_dir / f"{digest}.json"


def _load_cell(cells_dir: Path, key: Mapping[str, Any], digest: str) -> tuple[pd.DataFrame | None, str | None]:
    """``(frame, None)`` for a valid cache file, ``(None, reason)`` otherwise.

    ``reason`` is ``None`` too when there is simply no cache file.
    """
    csv_path, meta_path = _cell_paths(cells_dir, digest)
    if not csv_path.exists() and not meta_path.exists():
        return None, None
    if not csv_path.exists():
        return None, f"{meta_path.name} has no {csv_path.name}"
    if not meta_path.exists():
        return None, f"{csv_path.name} has no completion marker {meta_path.name} (interrupted write?)"
    try:
        meta = _read_layout(meta_path)
    except ValueError as exc:
        return None, str(exc)
    if meta.get("key") != key:
        return None, f"{meta_path.name} belongs to a different cell (hash collision or edited file)"
    try:
        data = csv_path.read_bytes()
    except OSError as exc:
        return None, f"unreadable {csv_path.name}: {exc.strerror or exc}"
    try:
        return _decode(data, meta, csv_path.name), None
    except ValueError as exc:
        return None, str(exc)


def _cell_files(frame: pd.DataFrame) -> tuple[bytes, dict[str, Any]]:
    """A computed cell's CSV bytes and marker layout (:func:`_encode` of the frame a plain CSV reads back)."""
    return _encode(_read_csv(_csv_bytes(frame)))


def _as_stored(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` as it would read back from its cache file (for a cell that is never cached)."""
    return _decode(*_cell_files(frame), "the cell")


def _store_cell(cells_dir: Path, key: Mapping[str, Any], digest: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Write a cell (CSV, then marker) and return it as it reads back from disk."""
    csv_path, meta_path = _cell_paths(cells_dir, digest)
    data, layout = _cell_files(frame)
    # Remove a stale marker first: a crash after the CSV write must not leave an old
    # marker next to a new CSV (the checksum would catch it anyway; this is belt and braces).
    meta_path.unlink(missing_ok=True)
    atomic_write_bytes(csv_path, data)
    atomic_write_bytes(meta_path, _json_bytes({**layout, "key": key}))
    return _decode(data, layout, csv_path.name)


# --------------------------------------------------------------------------- runner


def _check_module(module: ModuleType) -> None:
    from .experiments import check_experiment

    check_experiment(module)


def run_experiment(
    module: ModuleType,
    config: Any = None,
    *,
    results_dir: str | os.PathLike = "results",
    figures_dir: str | os.PathLike | None = "figures",
    device: str = "cpu",
    seed: int = 0,
    force: bool = False,
    replot: bool = False,
    quick: bool = False,
    progress: bool | None = None,
    jobs: int = 1,
    scheduler: str | None = None,
) -> RunResult:
    """Run (or resume, or replot) one experiment and draw its figures.

    Parameters
    ----------
    module
        An experiment module (see :mod:`diagnostics.experiments`).
    config
        Its ``Config`` instance; default: :func:`config_for` ``(module, quick)``.
    results_dir
        Results root: cells go to ``results_dir/NAME/cells``, the combined frame to
        ``results_dir/NAME/results.csv``.
    figures_dir
        Figures root: ``plot`` writes into ``figures_dir/NAME``; ``None`` skips plotting.
    device, seed
        Passed to ``run_cell`` and part of the cache key.
    force
        Recompute every cell even if cached.
    replot
        Compute nothing: redraw the figures from the cache; raises
        :class:`CacheMissingError` if a cell is missing or corrupt.
    progress
        tqdm progress bar over the cells: ``True``, ``False``, or ``None`` (only
        when stderr is a terminal).
    jobs, scheduler
        Compute the uncached cells on ``jobs`` local worker processes, or on the Dask
        cluster at ``scheduler`` (:mod:`diagnostics.parallel`); ``jobs=1`` and no
        scheduler compute them here, in order.  The results are the same.
    """
    from tqdm.auto import tqdm

    _check_module(module)
    if force and replot:
        raise StoreError("force and replot exclude each other (replot computes nothing)")
    name = module.NAME
    if config is None:
        config = config_for(module, quick)
    if not (dataclasses.is_dataclass(config) and not isinstance(config, type)):
        raise StoreError(f"{name}: config must be a Config dataclass instance, got {config!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise StoreError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise StoreError(f"jobs must be an integer >= 1, got {jobs!r}")
    parallel = jobs > 1 or scheduler is not None
    start = time.perf_counter()
    exp_dir = Path(results_dir) / name
    cells_dir = exp_dir / "cells"
    cells = list(module.cells(config))
    if not cells:
        raise StoreError(f"{name}: cells(config) returned no cells")
    for cell in cells:
        if not isinstance(cell, Mapping):
            raise StoreError(f"{name}: each cell must be a dict, got {cell!r}")

    keys = [cell_key(name, config, cell, seed, device) for cell in cells]
    digests = [cell_hash(k) for k in keys]
    if len(set(digests)) != len(digests):
        raise StoreError(f"{name}: cells(config) returned duplicate cells")
    from .plugins import cacheable

    uncached = {digest for cell, digest in zip(cells, digests) if not cacheable(cell)}

    if replot:
        frames, missing = [], []
        for cell, key, digest in zip(cells, keys, digests):
            frame, reason = _load_cell(cells_dir, key, digest) if digest not in uncached else (None, "never cached")
            if frame is None:
                missing.append(f"{_canonical(cell)}" + (f" ({reason})" if reason else ""))
            frames.append(frame)
        if missing:
            raise CacheMissingError(
                f"cannot replot {name!r}: {len(missing)} of {len(cells)} cell(s) have no valid cache "
                f"under {cells_dir} for this config/seed/device (first: {missing[0]}); "
                f"run it without --replot first"
            )
        computed, cached, corrupt = 0, len(cells), 0
    else:
        cells_dir.mkdir(parents=True, exist_ok=True)
        extra = {"experiment": name, "seed": int(seed), "device": str(device), **version_columns()}
        frames, todo = [], []
        computed = cached = corrupt = 0
        bar = tqdm(
            list(zip(cells, keys, digests)),
            desc=name,
            unit="cell",
            disable=(not sys.stderr.isatty()) if progress is None else (not progress),
            file=sys.stderr,
            leave=True,  # the finished bar stays: a short run is seen, also under tmux/screen
            mininterval=0.5,
            dynamic_ncols=True,
        )
        try:
            for cell, key, digest in bar:
                if not force and digest not in uncached:
                    frame, reason = _load_cell(cells_dir, key, digest)
                    if frame is not None:
                        frames.append(frame)
                        cached += 1
                        continue
                    if reason is not None:
                        corrupt += 1
                        warnings.warn(
                            f"{name}: ignoring corrupt cache file in {cells_dir}: {reason}; recomputing the cell",
                            CorruptCacheWarning,
                            stacklevel=2,
                        )
                if parallel:  # computed below, on the workers
                    todo.append((len(frames), cell, key, digest))
                    frames.append(None)
                    continue
                bar.set_postfix_str(_canonical(cell)[:60], refresh=False)
                raw = module.run_cell(config, dict(cell), device, int(seed))
                if not isinstance(raw, pd.DataFrame):
                    raise StoreError(f"{name}: run_cell must return a pandas DataFrame, got {type(raw).__name__}")
                annotated = _annotate(raw, config, cell, extra)
                frames.append(
                    _as_stored(annotated) if digest in uncached else _store_cell(cells_dir, key, digest, annotated)
                )
                computed += 1
        finally:
            bar.close()
        if todo:
            from .parallel import compute_cells

            done = compute_cells(
                module,
                config,
                [t[1:] for t in todo],
                cells_dir,
                extra,
                device,
                int(seed),
                jobs=jobs if scheduler is None else None,
                scheduler=scheduler,
                progress=not bar.disable,
                uncached=uncached,
            )
            for (position, *_), frame in zip(todo, done):
                frames[position] = frame
            computed += len(todo)

    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    results_path = write_results(exp_dir, frame)

    figures: list[Path] = []
    fig_dir = Path(figures_dir) / name if figures_dir is not None else exp_dir
    if figures_dir is not None:
        fig_dir.mkdir(parents=True, exist_ok=True)
        stems = module.plot(frame, config, fig_dir) or []
        for stem in stems:
            stem = Path(stem)
            found = [p for p in (stem.with_name(stem.name + ".pdf"), stem.with_name(stem.name + ".png")) if p.exists()]
            if not found:
                raise StoreError(f"{name}: plot() reported {stem} but wrote neither {stem}.pdf nor {stem}.png")
            figures.extend(found)
    return RunResult(
        name=name,
        frame=frame,
        computed=computed,
        cached=cached,
        corrupt=corrupt,
        results_path=results_path,
        figures=figures,
        figures_dir=fig_dir,
        seconds=time.perf_counter() - start,
    )


def write_results(exp_dir: str | os.PathLike, frame: pd.DataFrame) -> Path:
    """Write a run's combined frame as ``exp_dir/results.csv`` and ``exp_dir/results.json``.

    The CSV holds the columns that vary, the JSON the constant ones (see the module
    docstring); :func:`load_results` gives ``frame`` back.  Files that already hold
    these bytes are left alone (a replot may read a read-only directory).

    Parameters
    ----------
    exp_dir
        The experiment's results directory, ``RESULTS/NAME``.
    frame
        The frame as the store gives it (:attr:`RunResult.frame`, or several of them
        concatenated): as a CSV reads back.

    Returns
    -------
    Path
        The path of ``results.csv``.
    """
    exp_dir = Path(exp_dir)
    csv_path, json_path = exp_dir / _RESULTS_CSV, exp_dir / _RESULTS_JSON
    data, layout = _encode(frame)
    meta = _json_bytes(layout)
    if not (_same_bytes(csv_path, data) and _same_bytes(json_path, meta)):
        atomic_write_bytes(csv_path, data)
        atomic_write_bytes(json_path, meta)
    return csv_path


def load_results(name: str, results_dir: str | os.PathLike = "results") -> pd.DataFrame:
    """The combined frame of the last run: ``results.csv`` with ``results.json``'s constant columns.

    A results directory written before :data:`FILE_FORMAT` 2 (no ``results.json``)
    reads as its CSV.  :class:`StoreError` when the two files do not belong together
    (an interrupted write or an edited file).
    """
    exp_dir = Path(results_dir) / name
    path, json_path = exp_dir / _RESULTS_CSV, exp_dir / _RESULTS_JSON
    if not path.exists():
        raise CacheMissingError(f"no results for {name!r} at {path}; run the experiment first")
    data = path.read_bytes()
    if not json_path.exists():
        return _read_csv(data)
    try:
        return _decode(data, _read_layout(json_path), _RESULTS_CSV)
    except ValueError as exc:
        raise StoreError(f"cannot read the results in {exp_dir}: {exc}; run {name!r} again") from None
