"""A small UNet for low-resolution images, conditioned on c_noise (the raw network F of EDM form).

Levels of residual blocks (GroupNorm → SiLU → 3×3 conv, the noise embedding added in between,
dropout before the second conv), strided-conv downsampling, nearest upsampling with skip
concatenation. The noise embedding is the sinusoidal (positional) embedding of
``emb_scale·c_noise`` followed by a two-layer MLP. About 2–5M parameters at the book's sizes.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import _check
from .denoiser import timestep_embedding


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(nn.functional.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(nn.functional.silu(self.norm2(h))))
        return self.skip(x) + h


class SmallUNet(nn.Module):
    """F(x_in, c_noise) for images (batch, channels, H, W), H and W divisible by 2^(levels − 1)."""

    def __init__(self, channels: int = 1, base: int = 64, mults=(1, 2, 2), *, dropout: float = 0.1,
                 emb_scale: float = 1000.0):
        super().__init__()
        self.channels = _check.integer("channels", channels, low=1)
        base = _check.integer("base", base, low=8)
        self.dropout = _check.real("dropout", dropout, low=0, high=1, high_open=True)
        self.emb_scale = _check.real("emb_scale", emb_scale, low=0, low_open=True)
        self.base = base
        emb = 4 * base
        self.embed = nn.Sequential(nn.Linear(base, emb), nn.SiLU(), nn.Linear(emb, emb))
        widths = [base * _check.integer("mult", m, low=1) for m in mults]
        self.inp = nn.Conv2d(channels, base, 3, padding=1)
        self.down, self.pool = nn.ModuleList(), nn.ModuleList()
        c = base
        for i, w in enumerate(widths):
            self.down.append(ResBlock(c, w, emb, dropout))
            self.pool.append(nn.Conv2d(w, w, 3, stride=2, padding=1) if i < len(widths) - 1 else nn.Identity())
            c = w
        self.mid = ResBlock(c, c, emb, dropout)
        self.up = nn.ModuleList()
        for w in reversed(widths):
            self.up.append(ResBlock(c + w, w, emb, dropout))
            c = w
        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1))
        self.factor = 2 ** (len(widths) - 1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels or x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise ValueError(f"x must have shape (batch, {self.channels}, H, W) with H, W divisible by "
                             f"{self.factor}; got {tuple(x.shape)}")
        emb = self.embed(timestep_embedding(self.emb_scale * c_noise, self.base))
        h, skips = self.inp(x), []
        for block, pool in zip(self.down, self.pool):
            h = block(h, emb)
            skips.append(h)
            h = pool(h)
        h = self.mid(h, emb)
        for block in self.up:
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = nn.functional.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], 1), emb)
        return self.out(h)
