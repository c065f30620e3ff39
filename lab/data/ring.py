"""The 2-D ring: equal-weight Gaussians evenly spaced on a circle, and fresh batches on the fly.

The ring is a :class:`~lab.data.mixtures.Mixture`, so the mixtures' helpers (nearest-mode
distance, seeded samples) apply. :func:`draw` samples a batch from any mixture with a
``torch.Generator``, which is how a training loss draws fresh data at every step.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import _check
from .mixtures import Mixture


def ring(modes: int = 8, radius: float = 1.0, sigma: float = 0.05) -> Mixture:
    """`modes` Gaussians of std `sigma` at angles 2πk/modes on a circle of `radius`."""
    modes = _check.integer("modes", modes, low=1)
    radius = _check.real("radius", radius, low=0, low_open=True)
    angles = 2 * np.pi * np.arange(modes) / modes
    centres = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return Mixture(centres, _check.real("sigma", sigma, low=0, low_open=True),
                   name=f"{modes}-mode ring, radius {radius:g}")


def draw(mixture: Mixture, n: int, generator: torch.Generator, *, device=None,
         dtype=torch.float32) -> torch.Tensor:
    """n fresh points of `mixture` (modes drawn uniformly), all randomness from `generator`."""
    if not isinstance(mixture, Mixture):
        raise TypeError(f"mixture must be a Mixture; got {type(mixture).__name__}")
    n = _check.integer("n", n, low=1)
    device = generator.device if device is None else torch.device(device)
    centres = torch.as_tensor(mixture.modes, dtype=dtype, device=device)
    idx = torch.randint(0, len(centres), (n,), generator=generator, device=device)
    noise = torch.randn((n, mixture.dim), generator=generator, device=device, dtype=dtype)
    return centres[idx] + mixture.sigma * noise
