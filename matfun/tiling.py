"""Tiled maps (Hierarchical Muon): the same finite map on every tile, independently.

A matrix ``(..., H, W)`` is cut into a grid of ``Th × Tw`` tiles; the last tile row
and column are *ragged* (``H mod Th`` rows, ``W mod Tw`` columns) when the tile
does not divide the matrix.  Each tile is orthogonalised on its own — with its own
Frobenius normalisation — and the results are reassembled.  This is a local map,
not an approximation of full Muon: spectral interactions across tile boundaries
are dropped, and NS work falls from ``O(r² s K)`` to ``O(H W T K)``.

Implementation: tiles of equal shape form at most four groups (interior, right
edge, bottom edge, corner), each a strided view reshaped into one batch — no
padding, no Python loop over tiles.  Ragged tiles therefore *are* the ragged
blocks (the result on an edge tile equals the map on that block alone), and the
matmul FLOPs are exactly the per-tile sums of :meth:`Tiled.flops`.  Groups of
many matrices with the same ``(tile shape, dtype, device)`` are concatenated and
run as one batch (:func:`tiled_newton_schulz_many`, HiMuon's cross-layer
batching), in chunks bounded by a memory budget.

References
----------
*Hierarchical Muon (HiMuon)*: tile-wise Newton–Schulz with cross-layer batching,
memory-bounded chunking and tile-size schedules.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from . import _backend as B
from . import _triton_ns
from .base import Map, Wrapper, batch_size, check_shape
from .newton_schulz import NewtonSchulz
from .schedules import Coefficients, Schedule, ScheduleLike

TileLike = int | Sequence[int]

#: default working-memory budget per chunk on CPU: chunks this size stay in cache
#: and run ~2× faster than one huge batch (``benchmarks/bench_tiled.py``).
CPU_CHUNK_BYTES = 8 * 2**20


def check_tile(tile: Any) -> tuple[int, int]:
    """Validate ``tile`` (``T`` or ``(Th, Tw)``, positive integers) and return ``(Th, Tw)``."""
    if B.is_integer(tile):
        tile = (tile, tile)
    try:
        Th, Tw = tile
    except (TypeError, ValueError):
        raise ValueError(f"tile must be a positive integer T or a pair (Th, Tw), got {tile!r}") from None
    for t in (Th, Tw):
        if not B.is_integer(t) or t <= 0:
            raise ValueError(f"tile sizes must be positive integers, got {tile!r}")
    return int(Th), int(Tw)


def tile_groups(H: int, W: int, tile: TileLike) -> list[tuple[slice, slice, int, int, int, int]]:
    """The tile grid of an ``H × W`` matrix as groups of equal-shape tiles.

    Returns
    -------
    list of (rows, cols, n_row_tiles, n_col_tiles, th, tw)
        Each group covers ``G[rows, cols]`` with ``n_row_tiles × n_col_tiles``
        tiles of shape ``th × tw``; empty groups are omitted.  At most four:
        interior, right edge, bottom edge, corner.
    """
    Th, Tw = check_tile(tile)
    nh, rh = divmod(H, Th)
    nw, rw = divmod(W, Tw)
    rows = [(slice(0, nh * Th), nh, Th), (slice(nh * Th, H), 1, rh)]
    cols = [(slice(0, nw * Tw), nw, Tw), (slice(nw * Tw, W), 1, rw)]
    return [(rs, cs, nr, nc, th, tw) for rs, nr, th in rows for cs, nc, tw in cols if nr * th > 0 and nc * tw > 0]


def split_group(X: Any, group: tuple) -> Any:
    """Tiles of one group as a batch ``(..., n_row_tiles, n_col_tiles, th, tw)``."""
    rs, cs, nr, nc, th, tw = group
    block = X[..., rs, cs]
    lead = tuple(block.shape[:-2])
    xp = B.namespace(X)
    tiles = xp.reshape(block, (*lead, nr, th, nc, tw))
    return xp.moveaxis(tiles, -3, -2)


def merge_group(tiles: Any, group: tuple) -> Any:
    """Inverse of :func:`split_group`: the block ``(..., nr·th, nc·tw)``."""
    _, _, nr, nc, th, tw = group
    xp = B.namespace(tiles)
    lead = tuple(tiles.shape[:-4])
    return xp.reshape(xp.moveaxis(tiles, -2, -3), (*lead, nr * th, nc * tw))


def assemble(blocks: list[Any], groups: list[tuple]) -> Any:
    """Reassemble the group blocks (in :func:`tile_groups` order) into the full matrix."""
    xp = B.namespace(blocks[0])
    rows: dict[int, list[Any]] = {}
    for block, (rs, *_rest) in zip(blocks, groups):
        rows.setdefault(rs.start, []).append(block)
    stripes = [xp.concat(parts, axis=-1) if len(parts) > 1 else parts[0] for _, parts in sorted(rows.items())]
    return xp.concat(stripes, axis=-2) if len(stripes) > 1 else stripes[0]


def working_bytes_per_tile(th: int, tw: int, itemsize: int) -> int:
    """Upper bound on the NS working memory of one ``th × tw`` tile.

    A generic-path step holds at most ``X``, the Gram matrix and its square,
    their linear combination and the new ``X`` with its two summands: ``4rs + 5r²``
    numbers with ``r = min(th, tw)``, ``s = max(th, tw)``.
    """
    r, s = min(th, tw), max(th, tw)
    return itemsize * (4 * r * s + 5 * r * r)


def default_budget(X: Any) -> int | None:
    """Cache-sized chunks on CPU, one batch on GPUs."""
    on_gpu = B.is_torch(X) and X.device.type != "cpu"
    return None if on_gpu else CPU_CHUNK_BYTES


def check_budget(memory_budget: Any) -> Any:
    """Validate ``memory_budget``: a positive integer number of bytes, ``None`` or ``"auto"``."""
    if memory_budget is None or (isinstance(memory_budget, str) and memory_budget == "auto"):
        return memory_budget
    if not B.is_integer(memory_budget) or memory_budget <= 0:
        raise ValueError(
            "memory_budget must be a positive integer number of bytes, None (unbounded) or 'auto', "
            f"got {memory_budget!r}"
        )
    return int(memory_budget)


class Tiled(Wrapper):
    """Apply ``inner`` independently to every ``Th × Tw`` tile (HiMuon).

    Parameters
    ----------
    inner : Map
        The per-tile map, e.g. ``NewtonSchulz(5, "jordan")`` or ``Polar()`` (the
        exact tile-wise polar factor ``P_T``).  Its precision and backend are used.
    tile : int or (int, int)
        Tile size ``T`` or ``(Th, Tw)``.  A tile at least as large as the matrix
        gives exactly ``inner`` on the whole matrix.
    memory_budget : int, None or "auto"
        Bytes of working memory per chunk of tiles (see
        :func:`working_bytes_per_tile`); ``None`` runs each tile group as one
        batch; ``"auto"`` (default) uses cache-sized chunks on CPU
        (:data:`CPU_CHUNK_BYTES`) and one batch on GPUs.  Results do not depend
        on the chunking.  :meth:`iterates` keeps every chunk alive at once, so
        the budget bounds :meth:`__call__` only.

    Notes
    -----
    Preconditioning is elementwise, so compose it outside:
    ``Preconditioned(Tiled(NewtonSchulz(), T), V)``.
    """

    def __init__(self, inner: Map, tile: TileLike, memory_budget: int | str | None = "auto"):
        if not isinstance(inner, Map):
            raise TypeError(f"inner must be a matfun Map, got {type(inner).__name__}")
        if getattr(inner, "wraps_input", False):
            raise TypeError(
                f"{type(inner).__name__} transforms the whole input; compose it outside the tiling: "
                f"{type(inner).__name__}(Tiled(...), ...)"
            )
        self.inner = inner
        self.tile = check_tile(tile)
        self.memory_budget = check_budget(memory_budget)

    def _tiles_per_chunk(self, flat: Any) -> int:
        """How many tiles like those of the batch ``flat`` (``(..., th, tw)``) one chunk may hold."""
        budget = default_budget(flat) if self.memory_budget == "auto" else self.memory_budget
        itemsize = 4 if B.dtype_name(flat) in ("bfloat16", "float16") else flat.dtype.itemsize
        if budget is None:
            return 2**62  # unbounded: every tile in one batch
        # at least one tile per chunk, even when a single tile exceeds the budget
        th, tw = flat.shape[-2:]
        return max(1, budget // working_bytes_per_tile(th, tw, itemsize))

    def _chunks(self, tiles: Any) -> list[Any]:
        flat = B.namespace(tiles).reshape(tiles, (batch_size(tuple(tiles.shape)), *tuple(tiles.shape[-2:])))
        per_chunk = self._tiles_per_chunk(flat)
        return [flat[a : a + per_chunk] for a in range(0, flat.shape[0], per_chunk)]

    def _fused_kernel(self, X: Any, precision: B.Precision) -> tuple[NewtonSchulz, list[Coefficients]] | None:
        """The inner Newton–Schulz map and its steps when Triton's fused tile kernel runs this
        map on ``X``, else ``None``."""
        inner = self.inner
        if not isinstance(inner, NewtonSchulz) or not _triton_ns.use_triton(inner.backend, X, precision):
            return None
        tile_side = max(min(self.tile[0], X.shape[-2]), min(self.tile[1], X.shape[-1]))
        return (inner, inner._step_coefficients) if tile_side <= _triton_ns.fused_max_side(X, precision) else None

    def _compute_iterates(self, X: Any, precision: B.Precision) -> Iterator[Any]:
        if B._size(X) == 0:
            yield from self.inner._compute_iterates(X, precision)
            return
        fused = self._fused_kernel(X, precision)
        if fused is not None:
            ns, steps = fused
            yield from _triton_ns.fused_tiles_iterates(X, self.tile, steps, ns.schedule.normalization, precision)
            return
        xp = B.namespace(X)
        groups = tile_groups(X.shape[-2], X.shape[-1], self.tile)
        tile_batches = [split_group(X, g) for g in groups]
        runs = [[self.inner._compute_iterates(c, precision) for c in self._chunks(t)] for t in tile_batches]
        for _ in _lockstep(runs):
            blocks = [
                merge_group(xp.reshape(xp.concat(step, axis=0) if len(step) > 1 else step[0], t.shape), g)
                for step, t, g in zip(_, tile_batches, groups)
            ]
            yield assemble(blocks, groups)

    def _compute_final(self, X: Any, precision: B.Precision) -> Any:
        if B._size(X) == 0:
            return self.inner._compute_final(X, precision)
        fused = self._fused_kernel(X, precision)
        if fused is not None:  # every tile, ragged ones included, in one launch
            ns, steps = fused
            return _triton_ns.guarded(
                ns.backend,
                lambda: _triton_ns.fused_tiles(X, self.tile, steps, ns.schedule.normalization, precision),
                lambda: self._compute_tiles(X, precision),
            )
        return self._compute_tiles(X, precision)

    def _compute_tiles(self, X: Any, precision: B.Precision) -> Any:
        """Every tile group through the inner map, chunk by chunk."""
        xp = B.namespace(X)
        groups = tile_groups(X.shape[-2], X.shape[-1], self.tile)
        blocks = []
        for g in groups:
            tiles = split_group(X, g)
            outs = [self.inner._compute_final(c, precision) for c in self._chunks(tiles)]
            flat = xp.concat(outs, axis=0) if len(outs) > 1 else outs[0]
            blocks.append(merge_group(xp.reshape(flat, tiles.shape), g))
        return assemble(blocks, groups)

    def flops(self, shape: tuple[int, ...]) -> int:
        """Sum of ``inner.flops`` over the actual tiles, ragged ones included."""
        shape = check_shape(shape)
        lead = batch_size(shape)
        return sum(
            self.inner.flops((lead * nr * nc, th, tw))
            for _, _, nr, nc, th, tw in tile_groups(shape[-2], shape[-1], self.tile)
        )


def _lockstep(runs: list[list[Iterator[Any]]]) -> Iterator[list[list[Any]]]:
    """Advance every chunk generator of every group together, one iterate at a time."""
    flat = [gen for group in runs for gen in group]
    sizes = [len(group) for group in runs]
    for step in zip(*flat):
        out, i = [], 0
        for n in sizes:
            out.append(list(step[i : i + n]))
            i += n
        yield out


def tiled_newton_schulz(
    G: Any,
    tile: TileLike,
    steps: int = 5,
    coefficients: ScheduleLike = "jordan",
    precision: str | None = None,
    *,
    memory_budget: int | str | None = "auto",
    backend: str = "auto",
    check_finite: bool = True,
) -> Any:
    """Newton–Schulz on every tile of ``G`` independently (HiMuon's map).

    Parameters
    ----------
    G : array of shape (..., H, W)
        numpy array or torch tensor.
    tile : int or (int, int)
        Tile size ``T`` or ``(Th, Tw)``; edge tiles are ragged.  ``T ≥ max(H, W)``
        gives exactly :func:`~matfun.newton_schulz`.
    steps, coefficients, precision
        As for :func:`~matfun.newton_schulz`, applied to each tile with its own
        Frobenius normalisation.
    memory_budget : int, None or "auto"
        Working-memory bytes per chunk of tiles (see :class:`Tiled`).
    backend : {"auto", "torch", "triton"}, default "auto"
        Compute engine, as for :func:`~matfun.newton_schulz`.  With Triton,
        tiles of at most 128 × 128 run in one fused launch: every tile of the
        matrix (ragged edge tiles included) with its normalisation and all
        ``steps``.

    Returns
    -------
    array
        Same library, device, shape and dtype as ``G``.

    Raises
    ------
    TypeError
        ``G`` is not a numpy array or torch tensor, or has an integer, bool or
        complex dtype; ``steps`` is not an integer; coefficients that are not
        real numbers; ``check_finite`` not a bool.
    ValueError
        ``G`` has fewer than 2 dimensions, contains NaN or Inf (the message
        names the batch index), or is a ``meta`` tensor; ``tile`` not a
        positive integer or pair of them; bad ``memory_budget``; unknown
        schedule name or precision; negative ``steps``; bad ``backend`` (as
        for :func:`~matfun.newton_schulz`).
    ImportError
        ``backend="triton"`` and Triton is not installed.

    Examples
    --------
    >>> import numpy as np, matfun
    >>> G = np.random.default_rng(0).standard_normal((300, 200))
    >>> matfun.tiled_newton_schulz(G, 128).shape
    (300, 200)
    """
    inner = NewtonSchulz(steps, coefficients, precision, backend)
    return Tiled(inner, tile, memory_budget)(G, check_finite=check_finite)


def tiled_newton_schulz_many(
    matrices: Iterable[Any],
    tile: TileLike,
    steps: int = 5,
    coefficients: ScheduleLike = "jordan",
    precision: str | None = None,
    *,
    memory_budget: int | str | None = "auto",
    backend: str = "auto",
    check_finite: bool = True,
) -> list[Any]:
    """Tiled Newton–Schulz on many matrices at once (HiMuon's cross-layer batching).

    The tiles of all matrices are grouped by ``(tile shape, dtype, device)``;
    each group runs as one batched Newton–Schulz call (in memory-bounded chunks),
    so a model's many small layers cost a few large products instead of many
    small launches.  Outputs equal the per-matrix :func:`tiled_newton_schulz`
    calls.

    Parameters
    ----------
    matrices : iterable of arrays
        Each of shape ``(..., H, W)``; shapes, dtypes, devices and libraries
        may differ.  Any iterable (list, tuple, generator) is read exactly once.
    tile, steps, coefficients, precision, memory_budget, backend, check_finite
        As for :func:`tiled_newton_schulz`; with Triton each group of equal
        tiles runs as one fused launch per chunk.

    Returns
    -------
    list
        One output per input, in input order; same library, device, shape and
        dtype.

    Raises
    ------
    TypeError
        ``matrices`` is a single array, a string or a mapping (pass
        ``list(d.values())``), or an element is not an array (the message
        names its position ``matrices[i]``).
    ValueError
        An element contains NaN or Inf (the message names ``matrices[i]`` and
        the batch index inside it), or as for :func:`tiled_newton_schulz`.
    """
    matrices = _materialize(matrices)
    tiled = _tiled_map(steps, coefficients, precision, backend, tile, memory_budget)
    inner = tiled.inner
    if all(type(G) is torch.Tensor for G in matrices):  # torch tensors: the plan cached by shape
        return _many_torch(tiled, matrices, check_finite)
    # 1. split every matrix into its tile groups, remembering where each group goes.
    prepared = []
    buckets: dict[tuple[Any, ...], list[tuple[int, int]]] = {}
    for index, G in enumerate(matrices):
        X, prec = tiled._prepare(G, check_finite, name=f"matrices[{index}]")
        groups = tile_groups(X.shape[-2], X.shape[-1], tiled.tile) if B._size(X) else []
        tiles = [split_group(X, g) for g in groups]
        prepared.append((X, prec, groups, tiles))
        for k, t in enumerate(tiles):
            key = (t.shape[-2], t.shape[-1], str(t.dtype), str(getattr(t, "device", "")), prec)
            buckets.setdefault(key, []).append((index, k))
    # 2. per bucket, batched calls over chunks packed from consecutive tiles of its
    #    members (the bucket is never concatenated whole: each chunk stays cache-sized).
    results: dict[tuple[int, int], Any] = {}
    for key, members in buckets.items():
        prec = key[-1]
        parts = [prepared[i][3][k] for i, k in members]
        xp = B.namespace(parts[0])
        counts = [batch_size(tuple(p.shape)) for p in parts]
        per_chunk = tiled._tiles_per_chunk(parts[0])
        outputs_of: list[list[Any]] = [[] for _ in parts]
        flat: dict[int, Any] = {}  # contiguous tile batches, made when first needed, dropped when used up
        for chunk in _pack(counts, per_chunk):
            pieces = []
            for j, a, b in chunk:
                if j not in flat:
                    flat[j] = xp.reshape(parts[j], (counts[j], *tuple(parts[j].shape[-2:])))
                pieces.append(flat[j][a:b])
                if b == counts[j]:
                    del flat[j]
            out = inner._compute_final(xp.concat(pieces, axis=0) if len(pieces) > 1 else pieces[0], prec)
            start = 0
            for j, a, b in chunk:
                outputs_of[j].append(out[start : start + b - a])
                start += b - a
        for (i, k), p, outs in zip(members, parts, outputs_of):
            flat = xp.concat(outs, axis=0) if len(outs) > 1 else outs[0]
            results[i, k] = xp.reshape(flat, p.shape)
    # 3. reassemble every matrix.
    outputs = []
    for index, (G, (X, prec, groups, _tiles)) in enumerate(zip(matrices, prepared)):
        if not groups:
            outputs.append(B.from_compute(inner._compute_final(X, prec), G))
            continue
        blocks = [merge_group(results[index, k], g) for k, g in enumerate(groups)]
        outputs.append(B.from_compute(assemble(blocks, groups), G))
    return outputs


#: map objects and plans reused across calls (an optimizer calls with the same configuration
#: and shapes every step); bounded, cleared when full
_MAP_CACHE: dict[tuple, Tiled] = {}
_PLAN_CACHE: dict[tuple, tuple] = {}
_PRECISION_CACHE: dict[tuple, B.Precision] = {}
_CACHE_SIZE = 256


def _exact(value: Any) -> Any:
    """``value`` with its type, so that a cache key tells apart what validation tells apart
    (``True`` from ``1``, ``16`` from ``16.0``); ``None`` when it is not a plain hashable value."""
    if value is None or type(value) in (int, str):
        return (type(value), value)
    if type(value) is tuple and all(type(v) is int for v in value):
        return (tuple, value)
    return None


def _tiled_map(steps: Any, coefficients: Any, precision: Any, backend: Any, tile: Any, memory_budget: Any) -> Tiled:
    """``Tiled(NewtonSchulz(steps, coefficients, precision, backend), tile, memory_budget)``, built
    once per configuration of plain values (a :class:`~matfun.schedules.Schedule` or a name)."""
    if isinstance(coefficients, Schedule) or type(coefficients) is str:
        parts = (_exact(steps), coefficients, _exact(precision), _exact(backend), _exact(tile), _exact(memory_budget))
        if None not in parts:
            tiled = _MAP_CACHE.get(parts)
            if tiled is None:
                tiled = Tiled(NewtonSchulz(steps, coefficients, precision, backend), tile, memory_budget)
                if len(_MAP_CACHE) >= _CACHE_SIZE:
                    _MAP_CACHE.clear()
                _MAP_CACHE[parts] = tiled
            return tiled
    return Tiled(NewtonSchulz(steps, coefficients, precision, backend), tile, memory_budget)


def _prepare_torch(tiled: Tiled, G: torch.Tensor, check_finite: bool, name: str) -> tuple[Any, B.Precision]:
    """:meth:`Map._prepare` for a plain torch tensor; the checks without a finiteness scan, and the
    precision, are done here when the tensor is already in its compute dtype (else the general path)."""
    if not check_finite and G.ndim >= 2 and G.dtype.is_floating_point and G.device.type != "meta":
        key = (tiled.precision, G.dtype)
        prec = _PRECISION_CACHE.get(key)
        if prec is None:
            prec = tiled._resolve_precision(G)
            if len(_PRECISION_CACHE) >= _CACHE_SIZE:
                _PRECISION_CACHE.clear()
            _PRECISION_CACHE[key] = prec
        if B.dtype_name(G) == prec.dtype:
            return G, prec
    return tiled._prepare(G, check_finite, name=name)


def _many_plan(tiled: Tiled, xs: list[Any], precs: list[B.Precision]) -> tuple:
    """The batching plan of :func:`tiled_newton_schulz_many` for compute tensors ``xs``: each
    matrix's tile groups, and per bucket of equal tiles its members, their tile counts and chunks."""
    key = (tiled.tile, tiled.memory_budget, tuple((tuple(X.shape), X.dtype, X.device, p) for X, p in zip(xs, precs)))
    plan = _PLAN_CACHE.get(key)
    if plan is not None:
        return plan
    groups_of = [tile_groups(X.shape[-2], X.shape[-1], tiled.tile) if B._size(X) else [] for X in xs]
    buckets: dict[tuple[Any, ...], list[tuple[int, int]]] = {}
    shapes: dict[tuple[int, int], tuple[int, ...]] = {}
    for index, (X, prec, groups) in enumerate(zip(xs, precs, groups_of)):
        lead = tuple(X.shape[:-2])
        for k, (_, _, nr, nc, th, tw) in enumerate(groups):
            shapes[index, k] = (*lead, nr, nc, th, tw)
            key_b = (th, tw, str(X.dtype), str(X.device), prec)
            buckets.setdefault(key_b, []).append((index, k))
    bucket_plans = []
    for key_b, members in buckets.items():
        counts = [batch_size(shapes[m]) for m in members]
        i0, k0 = members[0]
        probe = xs[i0].new_empty((0, *shapes[i0, k0][-2:]))  # dtype, device and tile shape of the bucket
        chunks = list(_pack(counts, tiled._tiles_per_chunk(probe)))
        bucket_plans.append((key_b[-1], members, [shapes[m] for m in members], counts, chunks))
    plan = (groups_of, bucket_plans)
    if len(_PLAN_CACHE) >= _CACHE_SIZE:
        _PLAN_CACHE.clear()
    _PLAN_CACHE[key] = plan
    return plan


def _many_torch(tiled: Tiled, matrices: list[torch.Tensor], check_finite: bool) -> list[Any]:
    """:func:`tiled_newton_schulz_many` for plain torch tensors, the same operations in the same
    order, with the plan cached by shapes, dtypes and devices and torch's own view operations."""
    inner = tiled.inner
    prepared = [_prepare_torch(tiled, G, check_finite, f"matrices[{index}]") for index, G in enumerate(matrices)]
    xs = [X for X, _ in prepared]
    precs = [p for _, p in prepared]
    groups_of, bucket_plans = _many_plan(tiled, xs, precs)
    results: dict[tuple[int, int], Any] = {}
    for prec, members, shapes, counts, chunks in bucket_plans:
        outputs_of: list[list[Any]] = [[] for _ in members]
        flat: dict[int, Any] = {}  # contiguous tile batches, made when first needed, dropped when used up
        for chunk in chunks:
            pieces = []
            for j, a, b in chunk:
                if j not in flat:
                    i, k = members[j]
                    rs, cs, nr, nc, th, tw = groups_of[i][k]
                    X = xs[i]
                    tiles = X[..., rs, cs].reshape(*X.shape[:-2], nr, th, nc, tw).transpose(-3, -2)
                    flat[j] = tiles.reshape(counts[j], th, tw)
                pieces.append(flat[j][a:b])
                if b == counts[j]:
                    del flat[j]
            out = inner._compute_final(torch.cat(pieces, dim=0) if len(pieces) > 1 else pieces[0], prec)
            start = 0
            for j, a, b in chunk:
                outputs_of[j].append(out[start : start + b - a])
                start += b - a
        for m, shape, outs in zip(members, shapes, outputs_of):
            results[m] = (torch.cat(outs, dim=0) if len(outs) > 1 else outs[0]).reshape(shape)
    outputs = []
    for index, (G, X, prec, groups) in enumerate(zip(matrices, xs, precs, groups_of)):
        if not groups:
            outputs.append(B.from_compute(inner._compute_final(X, prec), G))
            continue
        blocks = []
        for k, (_, _, nr, nc, th, tw) in enumerate(groups):
            tiles = results[index, k]
            blocks.append(tiles.transpose(-3, -2).reshape(*tiles.shape[:-4], nr * th, nc * tw))
        out = blocks[0] if len(blocks) == 1 else assemble(blocks, groups)
        outputs.append(out if out.dtype == G.dtype and out.device == G.device else B.from_compute(out, G))
    return outputs


def _materialize(matrices: Any) -> list[Any]:
    """The matrices of a list-taking API as a list, reading the iterable once."""
    if isinstance(matrices, torch.Tensor) or hasattr(matrices, "__array__") or hasattr(matrices, "__array_namespace__"):
        raise TypeError(
            "matrices must be an iterable of arrays (e.g. a list), got one array; "
            "for one matrix use tiled_newton_schulz"
        )
    if isinstance(matrices, (str, bytes, Mapping)) or not isinstance(matrices, Iterable):
        raise TypeError(
            "matrices must be an iterable of arrays (list, tuple or generator), "
            f"got {type(matrices).__name__}" + (" (pass list(d.values()))" if isinstance(matrices, Mapping) else "")
        )
    return list(matrices)


def _pack(counts: list[int], per_chunk: int) -> Iterator[list[tuple[int, int, int]]]:
    """Chunks of ``per_chunk`` consecutive tiles across batches of ``counts`` tiles.

    Yields lists of ``(batch index, start, stop)`` slices; a batch may span chunks.
    """
    chunk: list[tuple[int, int, int]] = []
    room = per_chunk
    for j, n in enumerate(counts):
        start = 0
        while start < n:
            stop = min(n, start + room)
            chunk.append((j, start, stop))
            room -= stop - start
            start = stop
            if room == 0:
                yield chunk
                chunk, room = [], per_chunk
    if chunk:
        yield chunk
