"""The expected answers of the chapter's exercises, kept out of the notebook so that a reader
checks an answer without seeing it first."""
from __future__ import annotations

from .method import clamp_threshold, r_of_t


def mapping_at_stage_1() -> float:
    """Exercise 1: r(t = 1) in stage 1 with q = 2, k = 8, b = 1."""
    return float(r_of_t(1.0, 1))


def clamp_end_q4() -> float:
    """Exercise 2: the largest t clamped to r = 0 in stage 0 when q = 4."""
    return float(clamp_threshold(0, q=4))


def exact_consistency_slope(s: float = 0.5, t: float = 1.0) -> float:
    """Exercise 3: f*(x, t)/x for data N(0, s²): the trajectory through x at t ends at x·s/√(s²+t²)."""
    return s / (s * s + t * t) ** 0.5
