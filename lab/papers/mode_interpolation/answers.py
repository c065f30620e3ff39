"""The expected answers of the chapter's exercises, kept out of the notebook so that a reader
checks an answer without seeing it first."""
from __future__ import annotations

import numpy as np
import torch

from ...data import gaussian_1d
from .method import oracle_posterior_mean, trajectory_variance


def hal_by_hand() -> float:
    """Exercise 1: Hal with K = 4 of the path [2.0, 2.2, 1.9, 2.1, 2.0]."""
    return float(trajectory_variance(np.array([[2.0, 2.2, 1.9, 2.1, 2.0]]), K=4)[0])


def midpoint_slope(schedule, t: int = 0, h: float = 1e-5) -> float:
    """Exercise 2: the slope d E[x0 | x_t] / d x_t at x_t = 1.5·√ᾱ_t, halfway between modes 1
    and 2 (σ = 0.05), by a central difference."""
    root = float(schedule.alpha_bars[t]) ** 0.5
    x = torch.tensor([[1.5 - h], [1.5 + h]], dtype=torch.float64) * root
    m = oracle_posterior_mean(x, t, gaussian_1d((1.0, 2.0)), schedule)[:, 0]
    return float((m[1] - m[0]) / (2 * h * root))


def removal_keeping(analysis, retain: float) -> float:
    """Exercise 3: the share of hallucinations the K = 10 filter removes when it keeps `retain`
    of the in-support samples."""
    return analysis.operating_point(K=10, retain=retain).removal
