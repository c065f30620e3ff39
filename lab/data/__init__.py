"""Synthetic data worlds, each generated from a seed."""
from .mixtures import Mixture, gaussian_1d, gaussian_grid
from .tokens import Domain, TokenMixture, cycle, markov, markov2, noise, recall

__all__ = ["Mixture", "gaussian_1d", "gaussian_grid",
           "Domain", "TokenMixture", "cycle", "markov", "markov2", "noise", "recall"]
