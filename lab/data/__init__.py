"""Synthetic data worlds, each generated from a seed."""
from .mixtures import Mixture, gaussian_1d, gaussian_grid
from .ring import draw, ring

__all__ = ["Mixture", "draw", "gaussian_1d", "gaussian_grid", "ring"]
