"""Split a model's parameters between a Muon-family optimizer and AdamW.

Muon-type optimizers are for the hidden layers' weight matrices; embeddings,
the output head, biases and normalisation gains go to AdamW (Jordan et al.
2024; Liu et al. 2025).  :func:`split_params` applies that rule to a model.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["split_params"]

#: module types whose weights are lookup tables, not linear maps
EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)

NamedParams = list[tuple[str, nn.Parameter]]


def split_params(model: nn.Module, head: str | nn.Module | None = "last") -> tuple[NamedParams, NamedParams]:
    """``(hidden, rest)``: hidden weight matrices for Muon/HiMuon/Muon², the rest for AdamW.

    The rule, applied to every trainable parameter (``requires_grad``; shared
    parameters once, under their first name):

    * ``hidden``: parameters with ``ndim >= 2`` (linear weights, conv kernels) that
      belong neither to an embedding (:class:`torch.nn.Embedding`,
      :class:`torch.nn.EmbeddingBag`) nor to the output head;
    * ``rest``: everything else — biases, normalisation gains and other vectors
      or scalars, embedding tables, and the head's parameters.

    Parameters
    ----------
    model : torch.nn.Module
    head : "last", str, torch.nn.Module or None, default "last"
        The output head, whose parameters go to ``rest``: ``"last"`` is the last
        :class:`torch.nn.Linear` in ``model.modules()`` order (the classifier or
        language-model head in the usual layout, e.g. ``lm_head`` registered after
        the blocks); a string names a submodule (as in ``model.named_modules()``,
        e.g. ``"lm_head"``); a module is used as is; ``None`` excludes no head.
        A head tied to the embedding shares its table, which is already in ``rest``.

    Returns
    -------
    hidden, rest : lists of ``(name, parameter)``
        Ready for ``Muon(hidden, ...)`` and ``torch.optim.AdamW(rest, ...)``
        (names then appear in error messages and state dicts).  Together they
        hold every trainable parameter exactly once.

    Raises
    ------
    ValueError
        ``head`` names no submodule, or ``head="last"`` and the model has no
        :class:`torch.nn.Linear`.

    Examples
    --------
    >>> import torch
    >>> from matfun.optim import Muon, split_params
    >>> model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 10))
    >>> hidden, rest = split_params(model)
    >>> [name for name, _ in hidden], [name for name, _ in rest]
    (['1.weight'], ['0.weight', '1.bias', '2.weight', '2.bias'])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    excluded: set[int] = set()
    for module in model.modules():
        if isinstance(module, EMBEDDINGS):
            excluded.update(id(p) for p in module.parameters())
    head_module = _head(model, head)
    if head_module is not None:
        excluded.update(id(p) for p in head_module.parameters())
    hidden: NamedParams = []
    rest: NamedParams = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_hidden = p.ndim >= 2 and id(p) not in excluded and not torch.is_complex(p)
        (hidden if is_hidden else rest).append((name, p))
    return hidden, rest


def _head(model: nn.Module, head: str | nn.Module | None) -> nn.Module | None:
    if head is None or isinstance(head, nn.Module):
        return head
    if head == "last":
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError('head="last": the model has no torch.nn.Linear; pass head=None or the head module')
        return linears[-1]
    if isinstance(head, str):
        modules = dict(model.named_modules())
        if head not in modules:
            raise ValueError(
                f"head={head!r} names no submodule of the model; its first submodules: {list(modules)[:20]}"
            )
        return modules[head]
    raise TypeError(f'head must be "last", a submodule name, a torch.nn.Module or None, got {type(head).__name__}')
