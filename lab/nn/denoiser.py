"""The toy denoiser MLP of the mode-interpolation paper's code (``Decoder`` / ``TemporalLayer``).

x → Linear(d→W) → N × TemporalLayer(·, temb) → LayerNorm → Linear(W→d), with the integer time
step embedded sinusoidally and projected once. ``shared=True`` repeats one TemporalLayer N times
(shared weights), the quirk of the official code; the book's default uses N separate layers.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import _check


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer steps: [sin(t·f_i), cos(t·f_i)], f_i = exp(−ln(10⁴)·i/(dim/2−1))."""
    dim = _check.integer("dim", dim, low=4)
    if dim % 2:
        raise ValueError(f"dim must be even; got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1))
    args = t.float().reshape(-1, 1) * freqs
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class TemporalLayer(nn.Module):
    """h ← h + Lin₂(act(LN(Lin₁(act(LN(h))) + Lin_t(temb)))); Lin₁, Lin₂ without bias."""

    def __init__(self, width: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width, bias=False)
        self.norm2 = nn.LayerNorm(width)
        self.fc2 = nn.Linear(width, width, bias=False)
        self.time = nn.Linear(width, width)
        self.act = nn.LeakyReLU(0.02)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        out = self.fc1(self.act(self.norm1(h))) + self.time(temb)
        return h + self.fc2(self.act(self.norm2(out)))


class Decoder(nn.Module):
    """ε̂(x, t) for low-dimensional data. `t` is an integer tensor (batch,) or one int for the batch."""

    def __init__(self, dim: int = 1, width: int = 128, layers: int = 3, shared: bool = False):
        super().__init__()
        self.dim = _check.integer("dim", dim, low=1)
        self.width = _check.integer("width", width, low=4)
        _check.integer("layers", layers, low=1)
        self.shared = bool(shared)
        self.inp = nn.Linear(dim, width, bias=False)
        self.t_proj = nn.Sequential(nn.Linear(width, width), nn.LeakyReLU(0.02))
        if shared:
            block = TemporalLayer(width)
            self.blocks = nn.ModuleList([block] * layers)
        else:
            self.blocks = nn.ModuleList(TemporalLayer(width) for _ in range(layers))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (batch, {self.dim}); got {tuple(x.shape)}")
        if isinstance(t, int):
            # one step for the whole batch (sampling): embed once, broadcast over the batch
            t = torch.tensor([t], device=x.device)
        temb = self.t_proj(timestep_embedding(t, self.width))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, temb)
        return self.out(self.out_norm(h))
