"""Synthetic data worlds, each generated from a seed."""
from .mixtures import Mixture, gaussian_1d, gaussian_grid
from .ring import draw, ring
from .tokens import Domain, TokenMixture, cycle, markov, markov2, noise, recall

__all__ = ["Mixture", "draw", "gaussian_1d", "gaussian_grid", "ring",
           "Domain", "TokenMixture", "cycle", "markov", "markov2", "noise", "recall"]
