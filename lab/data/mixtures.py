"""Mixtures of isotropic Gaussians: the 1-D line of modes and the 2-D 5×5 grids (square, diamond).

Balanced exactly as in the mode-interpolation paper's data: sample i belongs to mode i mod K.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .. import _check

GRID_SPACING = 2.0          # raw distance between neighbouring modes of the square grid
GRID_SIGMA = 0.05           # raw standard deviation of every mode
GRID_NORMALISER = float(np.sqrt(GRID_SIGMA ** 2 + 8.0))   # the data std of the raw square grid


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Equal-weight isotropic Gaussian mixture: modes (K, d), per-coordinate std `sigma`."""
    modes: np.ndarray
    sigma: float
    name: str = "mixture"

    def __post_init__(self):
        modes = _check.array("modes", self.modes, ndim=2, min_len=1)
        object.__setattr__(self, "modes", modes)
        _check.real("sigma", self.sigma, low=0, low_open=True)

    @property
    def dim(self) -> int:
        return self.modes.shape[1]

    @property
    def weights(self) -> np.ndarray:
        return np.full(len(self.modes), 1.0 / len(self.modes))

    def sample(self, n: int, seed: int) -> np.ndarray:
        """n points, mode i mod K for point i, shuffled; deterministic in `seed`."""
        n = _check.integer("n", n, low=1)
        rng = np.random.default_rng(_check.integer("seed", seed))
        idx = np.arange(n) % len(self.modes)
        x = self.modes[idx] + self.sigma * rng.standard_normal((n, self.dim))
        return x[rng.permutation(n)]

    def nearest_mode_distance(self, x) -> np.ndarray:
        """Euclidean distance of each point to its nearest mode centre."""
        x = _check.array("x", x, ndim=2)
        if x.shape[1] != self.dim:
            raise ValueError(f"x must have {self.dim} column(s); got shape {x.shape}")
        return np.sqrt(((x[:, None, :] - self.modes[None]) ** 2).sum(-1)).min(axis=1)


def gaussian_1d(modes=(1.0, 2.0, 3.0), sigma: float = 0.05) -> Mixture:
    """Modes on a line, in raw units (the paper's 1-D data is not normalised)."""
    modes = _check.array("modes", modes, ndim=1, min_len=1)
    return Mixture(np.sort(modes)[:, None], sigma, name=f"1-D, modes {', '.join(f'{m:g}' for m in np.sort(modes))}")


def gaussian_grid(rotated: bool = False) -> Mixture:
    """The 25-mode grid at {−4, −2, 0, 2, 4}², or its 45°-rotated diamond, normalised by 2.8289."""
    axis = np.arange(-4.0, 5.0, GRID_SPACING)
    modes = np.array([(a, b) for a in axis for b in axis])
    if rotated:
        modes = modes @ np.array([[1.0, -1.0], [1.0, 1.0]]) / 2.0
    return Mixture(modes / GRID_NORMALISER, GRID_SIGMA / GRID_NORMALISER,
                   name="diamond grid" if rotated else "square grid")
