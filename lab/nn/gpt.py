"""A small GPT in the nanoGPT mould: token + position embeddings, pre-LayerNorm blocks of causal
self-attention (through ``scaled_dot_product_attention``) and an MLP, a final LayerNorm and an
untied linear head. :func:`sequence_losses` gives one mean next-token loss per sequence, which is
what per-domain bookkeeping (and data-selection methods such as ADO) need.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .. import _check


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    vocab: int
    context: int = 32
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_mlp: int = 256

    def __post_init__(self):
        for name in ("vocab", "context", "d_model", "n_layers", "n_heads", "d_mlp"):
            _check.integer(name, getattr(self, name), low=1)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (z.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """x ← x + Attn(LN(x)); x ← x + MLP(LN(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_mlp), nn.GELU(),
                                 nn.Linear(cfg.d_mlp, cfg.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Decoder-only transformer: ``model(tokens)`` maps (B, T) token ids to (B, T, vocab) logits."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"cfg must be a GPTConfig; got {type(cfg).__name__}")
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.shape[1] > self.cfg.context:
            raise ValueError(f"tokens must have shape (batch, ≤{self.cfg.context}); got {tuple(tokens.shape)}")
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tok(tokens) + self.pos(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def sequence_losses(model: nn.Module, tokens: torch.Tensor, skip: int = 0) -> torch.Tensor:
    """Mean next-token cross-entropy of each sequence, (B,). Targets are tokens[:, 1:]; the first
    `skip` targets are left out (skip=0 with a random first token: every target has a known
    conditional entropy, so the loss is comparable to the source's entropy rate)."""
    skip = _check.integer("skip", skip, low=0, high=tokens.shape[1] - 2)
    logits = model(tokens[:, :-1])
    nll = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
    return nll[:, skip:].mean(dim=1)
