"""A small GPT-style byte-level decoder in plain torch.

Architecture (GPT-2 layout, Radford et al. 2019, with the usual modern choices)
    token embedding (256 bytes → ``width``) · ``depth`` pre-norm blocks
    ``x ← x + Attn(LN(x)); x ← x + MLP(LN(x))`` · final LayerNorm · linear read-out
    to 256 logits (untied).  Attention is causal multi-head
    (:func:`torch.nn.functional.scaled_dot_product_attention`) with one fused
    ``qkv`` matrix and an output projection; the MLP is
    ``width → mlp_ratio·width → width`` with GELU.  No biases in linear layers.
    Positions: rotary embeddings on queries and keys (Su et al. 2021, RoFormer,
    "rotate half" form, base 10000) or a learned absolute embedding.

Initialisation
    Normal(0, 0.02) for embeddings and linear weights, the two residual output
    projections scaled by ``1/√(2·depth)`` (GPT-2); LayerNorm gains 1, biases 0.

The read-out ``head`` is the last :class:`torch.nn.Linear` registered, so
:func:`matfun.optim.split_params` gives Muon-type optimizers exactly the 2-D
weights inside the blocks and AdamW the embeddings, the head and the LayerNorms.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GPT", "GPTConfig"]

VOCAB = 256
POSITIONS = ("rotary", "learned")


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Model sizes: ``width`` divisible by ``heads``, an even head size for rotary positions."""

    context: int = 128
    width: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    positions: str = "rotary"

    def __post_init__(self) -> None:
        if min(self.context, self.width, self.depth, self.heads, self.mlp_ratio) < 1:
            raise ValueError(f"GPT sizes must be positive, got {self}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.positions == "rotary" and (self.width // self.heads) % 2:
            raise ValueError(f"rotary positions need an even head size, got {self.width // self.heads}")


def _rotate_half(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    cos: Tensor  # rotary buffers, registered in __init__ only for rotary positions
    sin: Tensor

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.width, 3 * config.width, bias=False)
        self.proj = nn.Linear(config.width, config.width, bias=False)
        self.rotary = config.positions == "rotary"
        if self.rotary:
            hd = config.width // config.heads
            inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
            angles = torch.outer(torch.arange(config.context, dtype=torch.float32), inv)
            angles = torch.cat((angles, angles), dim=-1)
            self.register_buffer("cos", angles.cos(), persistent=False)
            self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        if self.rotary:
            cos, sin = self.cos[:T], self.sin[:T]
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.width)
        self.attn = Attention(config)
        self.ln2 = nn.LayerNorm(config.width)
        self.fc = nn.Linear(config.width, config.mlp_ratio * config.width, bias=False)
        self.proj = nn.Linear(config.mlp_ratio * config.width, config.width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """Byte-level decoder; ``forward(idx)`` returns logits ``(B, T, 256)``; ``loss`` the mean cross-entropy."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(VOCAB, config.width)
        self.pos = nn.Embedding(config.context, config.width) if config.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.ln_f = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, VOCAB, bias=False)
        for name, p in self.named_parameters():
            if p.ndim == 2:
                std = 0.02 / math.sqrt(2 * config.depth) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: Tensor) -> Tensor:
        T = idx.shape[1]
        if T > self.config.context:
            raise ValueError(f"sequence length {T} exceeds the context {self.config.context}")
        x = self.embed(idx)
        if self.pos is not None:
            x = x + self.pos.weight[:T]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def loss(self, idx: Tensor, targets: Tensor) -> Tensor:
        """Mean next-byte cross-entropy in nats per byte."""
        logits = self(idx)
        return F.cross_entropy(logits.reshape(-1, VOCAB).float(), targets.reshape(-1))
