"""The expected answers of the chapter's exercises, kept out of the notebook so that a reader
checks an answer without seeing it first."""
from __future__ import annotations

import numpy as np

from .method import PowerLaw, clip_min


def fixed_point_weight(prior=(0.5, 0.5), slopes=(1.0, 4.0), s: float = 0.5) -> float:
    """Exercise 1: the fixed point's weight of the second domain, ρ_k ∝ (μ_k g_k)^(1/(1−s))."""
    w = (np.asarray(prior) * np.asarray(slopes)) ** (1 / (1 - s))
    return float(w[1] / w.sum())


def slope_by_hand() -> float:
    """Exercise 2: −dL/dn of L(n) = 2 + 5 n^(−0.3) at n = 10 000."""
    return float(PowerLaw(beta=5.0, eps=2.0, alpha=0.3).slope(1e4))


def smallest_after_clip() -> float:
    """Exercise 3: the smallest entry of (0.001, 0.002, 0.3, 0.697) after the official clip at 0.01."""
    return float(clip_min([0.001, 0.002, 0.3, 0.697], 0.01).min())


def spurious_slope_times_n(loss: float = 3.4, eps: float = 0.03, alpha_min: float = 0.05) -> float:
    """Exercise 4: g·n that the α floor hands a flat curve read as α ≈ 0 with a small ε."""
    return float(alpha_min * (loss - eps))
