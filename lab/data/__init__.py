"""Synthetic data worlds, each generated from a seed."""
from .mixtures import Mixture, gaussian_1d, gaussian_grid

__all__ = ["Mixture", "gaussian_1d", "gaussian_grid"]
