"""FSDP2-sharded parameters in the matrix optimizers.

A parameter sharded by :func:`torch.distributed.fsdp.fully_shard` is a DTensor with
placement ``Shard(0)`` on a one-dimensional mesh: each rank holds a block of rows.
The optimizers keep every element-wise statistic (momentum, Muon²'s full second
moment, Muon²-F's row statistics) sharded like the parameter, reduce Muon²-F's
column statistics across ranks (a replicated vector), and orthogonalise through
:mod:`matfun.sharding`:

* Muon, and Muon² / HiMuon without tiles: one owner per matrix, balanced by cost
  (gather, Newton–Schulz, scatter back);
* HiMuon and tiled Muon²: blocks of whole tile rows where most of their rows lie —
  no communication when shard boundaries fall on tile boundaries, only the rows of
  cut tiles otherwise.

Either way the update equals the single-device one (to rounding), whatever the
world size.  Other placements (tensor parallel ``Shard(1)``, ``Replicate``, 2-D
meshes) are rejected, naming the parameter, before any state changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import torch
import torch.distributed as dist
from torch import Tensor

from ..sharding import Communication, Unit, plan_owners, plan_tiles, run_units

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor

__all__ = [
    "all_reduce_sum",
    "by_shape",
    "check_placement",
    "is_sharded",
    "like",
    "local",
    "reduce_flags",
    "run_sharded",
]


@functools.cache
def _dtensor_type() -> type[DTensor] | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return None
    return DTensor


def is_sharded(t: Any) -> TypeGuard[DTensor]:
    """Whether ``t`` is a DTensor."""
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def _as_dtensor(t: Tensor) -> DTensor:
    """``t``, which the caller knows is a DTensor, typed as one.

    The optimizers hold sharded parameters as ``Tensor`` (what torch's ``Optimizer``
    and ``nn.Parameter`` are typed as); the functions below that take such a
    ``reference`` or ``directions`` are only called for DTensors.
    """
    return cast("DTensor", t)


def check_placement(p: Tensor, name: str, optimizer: str) -> None:
    """Accept plain tensors and FSDP2 row shards (``Shard(0)`` on a 1-D mesh); raise otherwise."""
    if not is_sharded(p):
        return
    from torch.distributed.tensor import Shard

    placements = tuple(p.placements)
    if p.device_mesh.ndim != 1 or placements != (Shard(0),):
        raise ValueError(
            f"{optimizer}: parameter {name} is a DTensor with placements {placements} on a "
            f"{p.device_mesh.ndim}-D device mesh; supported are plain tensors and FSDP2 row shards "
            "(fully_shard: Shard(0) on a 1-D mesh). Tensor-parallel and replicated DTensors are not supported."
        )


def local(t: Tensor) -> Tensor:
    """This rank's rows of a DTensor (the tensor itself otherwise)."""
    return t.to_local() if is_sharded(t) else t


def like(values: Tensor, reference: Tensor) -> Tensor:
    """``values`` (this rank's rows) as a DTensor sharded like ``reference``; a row vector
    of length ``H`` for a 1-D ``values``."""
    from torch.distributed.tensor import DTensor

    ref = _as_dtensor(reference)
    shape = ref.shape if values.ndim == ref.ndim else ref.shape[: values.ndim]
    return DTensor.from_local(
        values,
        ref.device_mesh,
        ref.placements,
        run_check=False,
        shape=shape,
        stride=torch.empty(shape, device="meta").stride(),
    )


def _group(t: Tensor) -> dist.ProcessGroup:
    return _as_dtensor(t).device_mesh.get_group()


def all_reduce_sum(values: Tensor, reference: Tensor) -> Tensor:
    """The sum over ranks of ``values`` (a new tensor), on ``reference``'s mesh."""
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=_group(reference))
    return out


def reduce_flags(flags: Tensor, reference: Tensor | None) -> Tensor:
    """Element-wise minimum over ranks of 0/1 flags, so that every rank raises together."""
    if reference is None:
        return flags
    out = flags.to(torch.float64).clone()
    dist.all_reduce(out, op=dist.ReduceOp.MIN, group=_group(reference))
    return out


def run_sharded(
    directions: Sequence[Tensor],
    tile_rows: Sequence[int | None],
    compute: Callable[[list[Tensor]], list[Tensor]],
) -> tuple[list[Tensor], Communication]:
    """Orthogonalise row-sharded matrices; return DTensors sharded like the inputs.

    Parameters
    ----------
    directions : sequence of DTensor
        ``(H, W)`` matrices, ``Shard(0)`` on one mesh.
    tile_rows : sequence of int or None
        Per matrix: the tile height (units are blocks of whole tile rows), or None for
        whole matrices with one owner each (balanced by cost).  All entries are ints,
        or all are None.
    compute : callable
        ``compute(matrices) -> outputs`` on whole units (tiles split inside).
    """
    if not directions:
        return [], Communication()
    dts = [_as_dtensor(d) for d in directions]
    mesh: DeviceMesh = dts[0].device_mesh
    if any(d.device_mesh != mesh for d in dts):
        raise ValueError("all sharded parameters of one step must live on the same device mesh")
    shapes = [_matrix_shape(d) for d in dts]
    world = mesh.size()
    units: list[Unit]
    if tile_rows[0] is None:
        units = plan_owners(shapes, world)
    else:
        heights: list[int] = []
        for t, (H, _) in zip(tile_rows, shapes):
            assert t is not None  # all entries are ints or all are None (every caller repeats one value)
            heights.append(min(int(t), H))
        units = plan_tiles(shapes, heights, world)
    outs, comm = run_units(
        [d.to_local() for d in dts],
        shapes,
        units,
        lambda _units, mats: compute(mats) if mats else [],
        group=mesh.get_group(),
    )
    return [like(o, d) for o, d in zip(outs, directions)], comm


def _matrix_shape(t: Tensor) -> tuple[int, int]:
    H, W = t.shape
    return H, W


def by_shape(mats: Sequence[Tensor], fn: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """``fn`` on one stacked batch per (shape, dtype) — an owner's matrices of equal shape
    go through one batched call — and the results in the order of ``mats``."""
    groups: dict[tuple, list[int]] = {}
    for k, m in enumerate(mats):
        groups.setdefault((tuple(m.shape), m.dtype), []).append(k)
    out: dict[int, Tensor] = {}
    for ks in groups.values():
        for k, o in zip(ks, fn(torch.stack([mats[k] for k in ks])).unbind(0)):
            out[k] = o
    return [out[k] for k in range(len(mats))]
