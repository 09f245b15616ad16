"""Torch optimizers built on the :mod:`matfun` maps.

* :class:`Muon` — torch.optim.Muon's algorithm on :class:`matfun.NewtonSchulz`
  (any schedule, step count, precision);
* :class:`HiMuon` — tile-wise Newton–Schulz (:func:`matfun.tiled_newton_schulz_many`)
  with cross-layer batching, a memory budget and a tile-size schedule;
* :class:`Muon2` — Newton–Schulz on the second-moment-preconditioned momentum
  (Muon², full or factorised Muon²-F, optionally tiled).

All three optimise matrices (conv kernels are flattened to ``(out, in·k·k)``);
give vectors and scalars, embeddings and the output head to ``torch.optim.AdamW``
(:func:`split_params` makes that split).  Their default learning-rate rules
differ (``Muon`` and ``Muon2``: ``"original"``, ``HiMuon``: ``"match_rms_adamw"``;
see each class), so the same ``lr`` does not give the same step size.  Every
``step`` is all or nothing, statistics accumulate in float32 or wider, and
``load_state_dict`` rejects a state dict that does not fit.  On CPU the default compute
precision is float32 (native bf16 matmuls there are hundreds of times slower);
on CUDA it is bfloat16, as in torch.optim.Muon.

References
----------
K. Jordan et al., *Muon: An optimizer for hidden layers in neural networks* (2024).
*Hierarchical Muon (HiMuon)*; *Muon²* (second-moment preconditioning, Muon²-F).
``torch.optim.Muon``.
dion (Microsoft): Muon/Muon² with the ``"spectral_norm"`` learning-rate rule.
"""

from .himuon import HiMuon
from .muon import Muon
from .muon2 import Muon2
from .split import split_params

__all__ = ["HiMuon", "Muon", "Muon2", "split_params"]
