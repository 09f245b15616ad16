"""Row-sharded matrices through a matrix map: who computes which rows, and what it costs.

FSDP2 (:func:`torch.distributed.fsdp.fully_shard`) stores every parameter as a
DTensor with placement ``Shard(0)`` on a one-dimensional device mesh: rank ``r``
holds rows ``[r·c, min((r+1)·c, H))`` of an ``H × W`` matrix, ``c = ⌈H / world⌉``
(:func:`torch.chunk`; trailing ranks may hold no row).  A map such as
Newton–Schulz needs whole matrices, or, for HiMuon, whole tiles.  This module
plans where each piece of work runs and moves only the rows that piece needs:

* :func:`plan_tiles` (HiMuon): the unit of work is a block of whole tile rows.
  Each block is computed by the rank that holds most of its rows.  When every
  shard boundary falls on a tile boundary every block is computed where it lies
  and **nothing is communicated**; when boundaries cut tiles only the rows of the
  cut tiles move (there and back), so the result never depends on the world size.
* :func:`plan_owners` (Muon, Muon²): one owner per matrix, balanced by cost.  The
  shards are gathered to the owner, the map runs there (batched by shape) and the
  result rows are scattered back.

:func:`run_units` executes a plan with two ``all_to_all_single`` exchanges (one per
direction, one per dtype) and returns the local output rows together with a
:class:`Communication` record: the bytes it moved, and the bytes the
gather-everything baseline (every rank all-gathers every matrix and recomputes
it) would have moved.  Every rank computes the same plan from global shapes only,
so the byte counts need no communication and agree on every rank.

References
----------
W. Zhao et al., *PyTorch FSDP: experiences on scaling fully sharded data
parallel* (VLDB 2023), and the FSDP2 ``fully_shard`` documentation (row-wise
``Shard(0)`` layout).  *Hierarchical Muon (HiMuon)*, arXiv 2606.27216 (tile-wise
Newton–Schulz).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "Communication",
    "Unit",
    "plan_owners",
    "plan_tiles",
    "row_partition",
    "run_units",
]


def row_partition(rows: int, world: int) -> list[tuple[int, int]]:
    """Rows ``[start, stop)`` held by each rank under FSDP2's ``Shard(0)`` (torch.chunk).

    >>> row_partition(5, 2)
    [(0, 3), (3, 5)]
    >>> row_partition(3, 4)
    [(0, 1), (1, 2), (2, 3), (3, 3)]
    """
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    chunk = -(-rows // world) if rows else 0
    return [(min(r * chunk, rows), min((r + 1) * chunk, rows)) for r in range(world)]


@dataclass(frozen=True)
class Unit:
    """Rows ``[start, stop)`` of matrix ``matrix``, computed whole by rank ``owner``."""

    matrix: int
    start: int
    stop: int
    owner: int


@dataclass(frozen=True)
class Communication:
    """Bytes moved by one execution of a plan (both directions counted).

    Attributes
    ----------
    bytes_sent : int
        Bytes this rank sent.
    bytes_total : int
        Bytes all ranks sent together.
    baseline_bytes_total : int
        What a gather-everything scheme would send: every rank all-gathers every
        matrix, ``(world − 1)·H·W`` elements per matrix.
    """

    bytes_sent: int = 0
    bytes_total: int = 0
    baseline_bytes_total: int = 0

    def __add__(self, other: Communication) -> Communication:
        return Communication(
            self.bytes_sent + other.bytes_sent,
            self.bytes_total + other.bytes_total,
            self.baseline_bytes_total + other.baseline_bytes_total,
        )


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def plan_tiles(shapes: Sequence[tuple[int, int]], tile_rows: Sequence[int], world: int) -> list[Unit]:
    """Blocks of whole tile rows, each computed where most of its rows are.

    Parameters
    ----------
    shapes : sequence of (H, W)
        Global matrix shapes.
    tile_rows : sequence of int
        Tile height per matrix (``H`` for one full-matrix tile).
    world : int

    Returns
    -------
    list of Unit
        Consecutive tile-row blocks with the same owner merged into one unit; a
        unit starts on a tile boundary, so tiling it gives the global tiles.
        Ties go to the lower rank.
    """
    units: list[Unit] = []
    for i, ((H, _), th) in enumerate(zip(shapes, tile_rows)):
        if th < 1:
            raise ValueError(f"tile rows must be >= 1, got {th} for matrix {i}")
        parts = row_partition(H, world)
        for start in range(0, H, th):
            block = (start, min(start + th, H))
            owner = max(range(world), key=lambda r: (_overlap(block, parts[r]), -r))
            last = units[-1] if units else None
            if last is not None and last.matrix == i and last.owner == owner and last.stop == start:
                units[-1] = Unit(i, last.start, block[1], owner)
            else:
                units.append(Unit(i, block[0], block[1], owner))
    return units


def plan_owners(
    shapes: Sequence[tuple[int, int]], world: int, cost: Callable[[tuple[int, int]], float] | None = None
) -> list[Unit]:
    """One owner per whole matrix, balanced by ``cost`` (greedy, largest first).

    ``cost`` defaults to the leading Newton–Schulz FLOP count ``r²·s``
    (``r = min(H, W)``, ``s = max(H, W)``).  Ties in load go to the rank that
    already holds most of the matrix's rows, then to the lower rank, so the plan is
    the same on every rank.
    """
    cost = cost or (lambda shape: float(min(shape)) ** 2 * max(shape))
    load = [0.0] * world
    owners = [0] * len(shapes)
    plain = [(H, W) for H, W in shapes]  # cost sees plain tuples (not torch.Size or lists)
    order = sorted(range(len(shapes)), key=lambda i: (-cost(plain[i]), i))
    for i in order:
        parts = row_partition(plain[i][0], world)
        r = min(range(world), key=lambda r: (load[r], -(parts[r][1] - parts[r][0]), r))
        owners[i] = r
        load[r] += cost(plain[i])
    return [Unit(i, 0, H, owners[i]) for i, (H, _) in enumerate(shapes)]


@dataclass(frozen=True)
class _Transfer:
    unit: int
    holder: int  # rank that holds the rows
    lo: int  # global rows [lo, hi)
    hi: int


def _transfers(units: Sequence[Unit], parts: Sequence[list[tuple[int, int]]], world: int) -> list[_Transfer]:
    out = []
    for k, u in enumerate(units):
        for h in range(world):
            lo, hi = max(parts[u.matrix][h][0], u.start), min(parts[u.matrix][h][1], u.stop)
            if lo < hi and h != u.owner:
                out.append(_Transfer(k, h, lo, hi))
    return out


def _exchange(
    pieces: dict[int, list[Tensor]],
    recv_numel: dict[int, int],
    dtype: torch.dtype,
    device: torch.device,
    world: int,
    group: dist.ProcessGroup | None,
) -> dict[int, Tensor]:
    """One ``all_to_all_single`` with split sizes: ``pieces[dst]`` go to ``dst``;
    returns the flat buffer each source sent."""
    chunks = [torch.cat([p.reshape(-1) for p in pieces[d]]) for d in range(world) if pieces.get(d)]
    send = torch.cat(chunks) if chunks else torch.empty(0, dtype=dtype, device=device)
    send_sizes = [sum(p.numel() for p in pieces.get(d, ())) for d in range(world)]
    recv_sizes = [recv_numel.get(s, 0) for s in range(world)]
    recv = torch.empty(sum(recv_sizes), dtype=dtype, device=device)
    dist.all_to_all_single(recv, send, recv_sizes, send_sizes, group=group)
    return dict(enumerate(recv.split(recv_sizes)))


def run_units(
    local: Sequence[Tensor],
    shapes: Sequence[tuple[int, int]],
    units: Sequence[Unit],
    compute: Callable[[list[Unit], list[Tensor]], list[Tensor]],
    *,
    group: dist.ProcessGroup | None = None,
) -> tuple[list[Tensor], Communication]:
    """Run ``compute`` on every unit this rank owns; return the local output rows.

    Parameters
    ----------
    local : sequence of Tensor
        This rank's rows of each matrix (shape ``(stop − start, W)`` as given by
        :func:`row_partition`).
    shapes : sequence of (H, W)
        Global shapes, the same on every rank.
    units : sequence of Unit
        A plan covering every row of every matrix exactly once (:func:`plan_tiles`
        or :func:`plan_owners`), the same on every rank.
    compute : callable
        ``compute(units, matrices) -> outputs``: this rank's units and their
        assembled rows; outputs of the same shapes.  It is called once (possibly with
        empty lists), so it can batch across units.
    group : ProcessGroup, optional
        Default: the world.

    Returns
    -------
    outputs : list of Tensor
        This rank's rows of each map output.
    communication : Communication

    Raises
    ------
    ValueError
        A local shard whose shape does not match the FSDP2 row partition.
    """
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    parts = [row_partition(H, world) for H, _ in shapes]
    for i, (X, (H, W)) in enumerate(zip(local, shapes)):
        s, e = parts[i][rank]
        if tuple(X.shape) != (e - s, W):
            raise ValueError(
                f"matrix {i}: rank {rank} holds a shard of shape {tuple(X.shape)}, but a row-sharded "
                f"(Shard(0)) {H}×{W} matrix on {world} ranks gives it {(e - s, W)}"
            )
    transfers = _transfers(units, parts, world)

    def numel(t: _Transfer) -> int:
        return (t.hi - t.lo) * shapes[units[t.unit].matrix][1]

    def rows_of(X: Tensor, matrix: int, r: int, lo: int, hi: int) -> Tensor:
        s = parts[matrix][r][0]
        return X[lo - s : hi - s]

    device = local[0].device if local else torch.device("cpu")

    def move(
        sender: Callable[[_Transfer], int],
        receiver: Callable[[_Transfer], int],
        payload: Callable[[_Transfer], Tensor],
        place: Callable[[_Transfer, Tensor], None],
    ) -> None:
        """Each transfer's rows from ``sender(t)`` to ``receiver(t)``: one all_to_all per dtype."""
        for dtype in sorted({X.dtype for X in local}, key=str):
            mine = [t for t in transfers if local[units[t.unit].matrix].dtype == dtype]
            pieces: dict[int, list[Tensor]] = {}
            expect: dict[int, int] = {}
            for t in mine:
                if sender(t) == rank:
                    pieces.setdefault(receiver(t), []).append(payload(t).to(dtype))
                if receiver(t) == rank:
                    expect[sender(t)] = expect.get(sender(t), 0) + numel(t)
            if not mine:  # the same on every rank: skip the collective together
                continue
            got = _exchange(pieces, expect, dtype, device, world, group)
            offsets = dict.fromkeys(range(world), 0)
            for t in mine:
                if receiver(t) == rank:
                    src, n = sender(t), numel(t)
                    place(t, got[src][offsets[src] : offsets[src] + n].view(t.hi - t.lo, -1))
                    offsets[src] += n

    def mine_and_held(k: int) -> tuple[int, int, int]:
        """Rows ``[lo, hi)`` of unit ``k`` that this rank holds, and its shard's first row."""
        u = units[k]
        s, e = parts[u.matrix][rank]
        return max(s, u.start), min(e, u.stop), s

    owned = [k for k, u in enumerate(units) if u.owner == rank]
    assembled: dict[int, Tensor] = {}
    for k in owned:
        u = units[k]
        assembled[k] = X = local[u.matrix].new_empty((u.stop - u.start, shapes[u.matrix][1]))
        lo, hi, s = mine_and_held(k)
        if lo < hi:
            X[lo - u.start : hi - u.start] = local[u.matrix][lo - s : hi - s]

    def into_unit(t: _Transfer, rows: Tensor) -> None:
        assembled[t.unit][t.lo - units[t.unit].start : t.hi - units[t.unit].start] = rows

    # forward: holders send rows to owners
    move(
        lambda t: t.holder,
        lambda t: units[t.unit].owner,
        lambda t: rows_of(local[units[t.unit].matrix], units[t.unit].matrix, rank, t.lo, t.hi),
        into_unit,
    )
    results = compute([units[k] for k in owned], [assembled[k] for k in owned])
    if len(results) != len(owned):
        raise RuntimeError(f"compute returned {len(results)} outputs for {len(owned)} units")
    by_unit = dict(zip(owned, results))

    out = [X.new_empty(X.shape) for X in local]
    for k in owned:  # rows this rank both owns and holds
        lo, hi, s = mine_and_held(k)
        if lo < hi:
            out[units[k].matrix][lo - s : hi - s] = by_unit[k][lo - units[k].start : hi - units[k].start]

    def into_shard(t: _Transfer, rows: Tensor) -> None:
        m = units[t.unit].matrix
        s = parts[m][rank][0]
        out[m][t.lo - s : t.hi - s] = rows

    # backward: owners send result rows back to holders
    move(
        lambda t: units[t.unit].owner,
        lambda t: t.holder,
        lambda t: by_unit[t.unit][t.lo - units[t.unit].start : t.hi - units[t.unit].start],
        into_shard,
    )

    itemsize = {i: local[i].element_size() for i in range(len(local))}
    total = sent = 0
    for t in transfers:
        u = units[t.unit]
        b = numel(t) * itemsize[u.matrix]
        total += 2 * b
        sent += b * ((t.holder == rank) + (u.owner == rank))
    baseline = sum((world - 1) * H * W * itemsize[i] for i, (H, W) in enumerate(shapes))
    return out, Communication(sent, total, baseline)
