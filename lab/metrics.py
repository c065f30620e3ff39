"""Sample-quality metrics that run offline: sliced Wasserstein, in-mode precision, Fréchet distance.

Shared by the chapters on generative models. Every function takes arrays (NumPy or torch),
checks they are finite, and returns a float.
"""
from __future__ import annotations

import numpy as np

from . import _check


def random_directions(dim: int, n: int = 256, seed: int = 0) -> np.ndarray:
    """`n` fixed random unit vectors in R^dim (rows), drawn from `seed`."""
    dim = _check.integer("dim", dim, low=1)
    n = _check.integer("n", n, low=1)
    v = np.random.default_rng(_check.integer("seed", seed)).standard_normal((n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def sliced_wasserstein(x, y, directions: int = 256, seed: int = 0) -> float:
    """Sliced W2 between two equal-size samples: project on `directions` fixed random unit vectors,
    sort each projection, and return √(mean over directions and ranks of the squared differences)."""
    x = _check.array("x", x, ndim=2)
    y = _check.array("y", y, ndim=2)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape (n, d); got {x.shape} and {y.shape}")
    if len(x) < 1:
        raise ValueError("x and y must hold at least one point")
    v = random_directions(x.shape[1], directions, seed)
    px, py = np.sort(x @ v.T, axis=0), np.sort(y @ v.T, axis=0)
    return float(np.sqrt(np.mean((px - py) ** 2)))


def in_mode_precision(x, mixture, n_sigma: float = 4.0) -> float:
    """Fraction of points within `n_sigma`·σ of some mode centre of `mixture`."""
    n_sigma = _check.real("n_sigma", n_sigma, low=0, low_open=True)
    return float((mixture.nearest_mode_distance(x) <= n_sigma * mixture.sigma).mean())


def _sqrtm_psd(a):
    import torch
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(x, y) -> float:
    """‖μx − μy‖² + tr(Σx + Σy − 2(Σx^½ Σy Σx^½)^½): the Fréchet distance between Gaussians fitted
    to two sets of features (rows are samples). The form via Σx^½ keeps every square root symmetric.
    Computed with torch in float64 (NumPy's threaded LAPACK was slow on a busy small CPU)."""
    import torch
    x = torch.from_numpy(_check.array("x", x, ndim=2, min_len=2))
    y = torch.from_numpy(_check.array("y", y, ndim=2, min_len=2))
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same number of features; got {x.shape[1]} and {y.shape[1]}")
    mx, my = x.mean(0), y.mean(0)
    cx, cy = torch.atleast_2d(torch.cov(x.T)), torch.atleast_2d(torch.cov(y.T))
    root_x = _sqrtm_psd(cx)
    cross = _sqrtm_psd(root_x @ cy @ root_x)
    return float(((mx - my) ** 2).sum() + cx.trace() + cy.trace() - 2 * cross.trace())
