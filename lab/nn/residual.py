"""A residual MLP for low-dimensional diffusion and consistency models, conditioned on c_noise.

Input Linear(d→W) plus a noise embedding (the sinusoidal embedding of ``emb_scale·c_noise``,
then Linear + SiLU), ``blocks`` residual blocks z ← z + Linear(SiLU(z)) (optional dropout
inside), and an output Linear(SiLU(z)) → d. It is the raw network F of an EDM-preconditioned
model: it sees c_in·x and c_noise, never x or the noise level directly. Positional (not random
Fourier) noise features, as the ECT authors recommend for stability.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import _check
from .denoiser import timestep_embedding


class ResidualMLP(nn.Module):
    """F(x_in, c_noise) for data of `dim` coordinates; c_noise has shape (batch,)."""

    def __init__(self, dim: int = 2, width: int = 128, blocks: int = 3, *, emb_scale: float = 1000.0,
                 dropout: float = 0.0):
        super().__init__()
        self.dim = _check.integer("dim", dim, low=1)
        self.width = _check.integer("width", width, low=4)
        if width % 2:
            raise ValueError(f"width must be even (it is also the embedding size); got {width}")
        _check.integer("blocks", blocks, low=1)
        self.emb_scale = _check.real("emb_scale", emb_scale, low=0, low_open=True)
        self.dropout = _check.real("dropout", dropout, low=0, high=1, high_open=True)
        self.inp = nn.Linear(dim, width)
        self.emb = nn.Linear(width, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.drop = nn.Dropout(self.dropout)
        self.out = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (batch, {self.dim}); got {tuple(x.shape)}")
        emb = nn.functional.silu(self.emb(timestep_embedding(self.emb_scale * c_noise, self.width)))
        z = self.inp(x) + emb
        for block in self.blocks:
            z = z + self.drop(block(nn.functional.silu(z)))
        return self.out(nn.functional.silu(z))
