"""The expected answers of the chapter's exercises, kept out of the notebook so that a reader
checks an answer without seeing it first."""
from __future__ import annotations

import math


def alpha_at_init(a_bias: float) -> float:
    """Exercise 1: a head's decay α = σ(−(a + b_a)) for a = 0 (the projection's mean at init)."""
    return 1.0 / (1.0 + math.exp(a_bias))


def stage1_entries(length: int, heads: int) -> int:
    """Exercise 2: entries of one layer's materialised matrices for one sequence: H·T²."""
    return heads * length ** 2


def ssd_parameters(length: int, rank: int) -> int:
    """Exercise 3: free numbers of an SSD-class matrix of length T and rank r: C, B (T×r each)
    and one decay per token."""
    return 2 * length * rank + length
